//! The delivery layer's decisions, with no I/O (as `smtp::client` is for
//! the protocol): state in, decision out. `attempt` and `scheduler` only
//! carry the plans out.
//!
//! - `error`: [`DeliveryError`], every reason a recipient is not delivered
//!   that is not a server's reply about it; the one place that says
//!   bounced or deferred, and with which status.
//! - `outcome`: [`Attempt`] (one recipient's result) and [`Failure`] (an
//!   error with what is known of the session).
//! - `walk`: [`HostWalk`], the host walk of one attempt (RFC 5321 §5.1),
//!   and the rules of an open session (size, SMTPUTF8, what a broken
//!   transaction leaves open, the plaintext fallback).
//! - `record`: [`record::plan`], what a pass writes to the queue and which
//!   reports it owes.

mod error;
mod outcome;
pub mod record;
pub mod walk;

pub use self::error::DeliveryError;
pub use self::outcome::{Attempt, Failure, HostTry, SessionFacts, Verdict};
pub use self::record::{RecordPlan, Reports};
pub use self::walk::{Fallback, HostWalk, MAX_ADDRESSES, MAX_HOSTS, Ran, Step};

/// The recipient's domain, lower case; an address literal loses its
/// brackets (RFC 5321 §4.1.3). `None` when there is no domain part.
pub fn recipient_domain(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() {
        return None;
    }
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let literal = literal
            .strip_prefix("IPv6:")
            .or_else(|| literal.strip_prefix("ipv6:"))
            .unwrap_or(literal);
        return Some(literal.to_ascii_lowercase());
    }
    Some(domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_domains_are_lower_case_and_literals_unbracketed() {
        assert_eq!(
            recipient_domain("a@Example.NET"),
            Some("example.net".into())
        );
        assert_eq!(recipient_domain("a@b@c.test"), Some("c.test".into()));
        assert_eq!(recipient_domain("a@[127.0.0.1]"), Some("127.0.0.1".into()));
        assert_eq!(recipient_domain("a@[IPv6:::1]"), Some("::1".into()));
        assert_eq!(recipient_domain("postmaster"), None);
        assert_eq!(recipient_domain("a@"), None);
    }
}

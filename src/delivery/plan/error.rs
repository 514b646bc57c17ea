//! [`DeliveryError`]: every reason a recipient is not delivered in an
//! attempt that is not a remote server's reply about that recipient (those
//! are `smtp::client::disposition`'s), and the one place that says whether
//! it is final and which RFC 3463 status it reports.

use std::time::Duration;

use crate::delivery::client::ClientError;
use crate::delivery::route::RouteError;
use crate::smtp::reply::EnhancedCode;

/// Why a recipient was not delivered in this attempt, when no remote reply
/// about it says so. [`DeliveryError::is_permanent`] and
/// [`DeliveryError::status`] decide its fate: bounced or deferred.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The next hop could not be found (null MX, NXDOMAIN, a DNS failure),
    /// or the implicit MX (the domain itself, RFC 5321 §5.1) has no
    /// address: as final as the DNS answer says.
    #[error("{0}")]
    Route(RouteError),
    /// An MX host of the domain has no usable address: the domain's DNS is
    /// broken, maybe for a while. Always temporary.
    #[error("{0}")]
    HostAddress(RouteError),
    /// The TLS policy (DANE, MTA-STS) refused the host before connecting.
    #[error("{reason}")]
    HostRefused {
        /// In words, naming the host.
        reason: String,
    },
    /// The session with a host could not be set up or broke off before it
    /// settled the recipient: the host failed, not the recipient. Always
    /// temporary (RFC 5321 §4.2.5 and Postfix's `smtp_skip_5xx_greeting`).
    #[error("{relay}: {error}")]
    Session {
        /// `host[ip]:port`.
        relay: String,
        /// The client error, in words.
        error: String,
        /// The status it maps to (class 4).
        status: EnhancedCode,
    },
    /// A session failure on a host whose TLS is mandatory by policy
    /// (DANE, MTA-STS): `why` names that policy.
    #[error("{why}: {source}")]
    MandatoryTls {
        /// The policy that made TLS mandatory, in words.
        why: String,
        /// The session failure.
        source: Box<DeliveryError>,
    },
    /// RFC 1870 §6.1: the server declares a size limit below the message.
    #[error("message size {size} exceeds the limit of {limit} bytes at {host}")]
    TooBig { size: u64, limit: u64, host: String },
    /// RFC 6531 §3.4: the message needs SMTPUTF8 and the server does not
    /// offer it; there is no downgrade.
    #[error("{host} does not support SMTPUTF8, which the message needs")]
    NoSmtputf8 { host: String },
    /// RFC 8689 §4.2, §5: a REQUIRETLS message cannot go to the host (no
    /// authenticated TLS, or REQUIRETLS not offered): final, 5.7.30,
    /// since waiting would not make the hop authenticated.
    #[error("{reason}")]
    RequireTls {
        /// In words, naming the host.
        reason: String,
    },
    /// RFC 5321 §5.1: the next hop is this server.
    #[error("{}", crate::delivery::loops::reason(domain))]
    Loop { domain: String },
    /// No host of the next hop could be tried.
    #[error("no usable host for {domain}")]
    NoUsableHost { domain: String },
    /// The queued body could not be read.
    #[error("cannot read the queued body: {reason}")]
    Body { reason: String },
    /// The recipient address has no domain part.
    #[error("{address:?} has no domain part")]
    NoDomain { address: String },
    /// The message outlived `delivery.max_queue_lifetime` (RFC 5321
    /// §4.5.4.1: give up, and say so).
    #[error(
        "message expired after {} in the queue{}",
        humantime::format_duration(*lifetime),
        last_reply.as_ref().map(|last| format!("; last reply: {last}")).unwrap_or_default()
    )]
    Expired {
        lifetime: Duration,
        /// The recipient's last reply, when it had one.
        last_reply: Option<String>,
    },
    /// `sluice queue bounce`.
    #[error("{reason}")]
    Operator { reason: String },
}

impl DeliveryError {
    /// True when retrying cannot help: the recipient is bounced.
    pub fn is_permanent(&self) -> bool {
        match self {
            DeliveryError::Route(error) => error.is_permanent(),
            DeliveryError::TooBig { .. }
            | DeliveryError::NoSmtputf8 { .. }
            | DeliveryError::RequireTls { .. }
            | DeliveryError::Loop { .. }
            | DeliveryError::NoDomain { .. }
            | DeliveryError::Expired { .. }
            | DeliveryError::Operator { .. } => true,
            DeliveryError::HostAddress(_)
            | DeliveryError::HostRefused { .. }
            | DeliveryError::Session { .. }
            | DeliveryError::MandatoryTls { .. }
            | DeliveryError::NoUsableHost { .. }
            | DeliveryError::Body { .. } => false,
        }
    }

    /// The RFC 3463 status reported for it (class 5 exactly when
    /// [`is_permanent`](Self::is_permanent), except 4.4.7 for expiry, as
    /// RFC 3463 §3.5 names it).
    pub fn status(&self) -> EnhancedCode {
        match self {
            DeliveryError::Route(error) => error.status(),
            DeliveryError::HostAddress(error) => error.status().with_class(4),
            DeliveryError::HostRefused { .. } => EnhancedCode::new(4, 7, 5),
            DeliveryError::Session { status, .. } => *status,
            DeliveryError::MandatoryTls { source, .. } => source.status(),
            DeliveryError::TooBig { .. } => EnhancedCode::new(5, 3, 4),
            DeliveryError::NoSmtputf8 { .. } => EnhancedCode::new(5, 6, 7),
            DeliveryError::RequireTls { .. } => crate::delivery::requiretls::STATUS,
            DeliveryError::Loop { .. } => EnhancedCode::new(5, 4, 6),
            DeliveryError::NoUsableHost { .. } => EnhancedCode::new(4, 4, 0),
            DeliveryError::Body { .. } => EnhancedCode::new(4, 3, 0),
            DeliveryError::NoDomain { .. } => EnhancedCode::new(5, 1, 3),
            DeliveryError::Expired { .. } => EnhancedCode::new(4, 4, 7),
            DeliveryError::Operator { .. } => EnhancedCode::new(5, 0, 0),
        }
    }

    /// A session with `relay` that failed with `error`. Whatever the
    /// server said, the session failed, not a recipient: a refusal of the
    /// session (`smtp::client::disposition`) or a transaction broken off
    /// before it settled them, so the status is class 4.
    pub fn session(relay: &str, error: &ClientError) -> DeliveryError {
        let status = match error {
            ClientError::Rejected { reply, .. } => reply.status(),
            ClientError::Connect(_) => EnhancedCode::new(4, 4, 1),
            ClientError::Timeout { .. } => EnhancedCode::new(4, 4, 2),
            ClientError::Io { .. } | ClientError::Closed { .. } => EnhancedCode::new(4, 4, 2),
            ClientError::Protocol { .. } | ClientError::Unexpected { .. } => {
                EnhancedCode::new(4, 5, 0)
            }
            ClientError::TlsHandshake(_) => EnhancedCode::new(4, 7, 5),
            ClientError::TlsNotOffered => EnhancedCode::new(4, 7, 4),
            ClientError::TlsInjection => EnhancedCode::new(4, 7, 0),
            ClientError::AuthNotOffered => EnhancedCode::new(4, 7, 4),
            ClientError::Body(_) => EnhancedCode::new(4, 3, 0),
        };
        DeliveryError::Session {
            relay: relay.to_string(),
            error: error.to_string(),
            status: status.with_class(4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Reply;

    #[test]
    fn route_errors_are_as_final_as_dns_says_and_host_addresses_never() {
        let nxdomain = RouteError::NoSuchDomain {
            domain: "gone.test".into(),
        };
        assert!(DeliveryError::Route(nxdomain.clone()).is_permanent());
        let missing = DeliveryError::HostAddress(RouteError::NoAddress {
            host: "mx.test".into(),
        });
        assert!(!missing.is_permanent());
        assert_eq!(missing.status(), EnhancedCode::new(4, 4, 4));
        assert_eq!(missing.to_string(), "host mx.test has no address record");
    }

    #[test]
    fn a_refused_session_is_temporary_whatever_the_server_said() {
        let reply = Reply::new(554, EnhancedCode::new(5, 7, 1), "go away");
        let error = DeliveryError::session(
            "mx[127.0.0.1]:25",
            &ClientError::Rejected {
                stage: crate::smtp::client::Stage::Greeting,
                reply,
            },
        );
        assert!(!error.is_permanent());
        assert_eq!(error.status(), EnhancedCode::new(4, 7, 1));
    }

    #[test]
    fn policy_refusals_are_final_with_their_rfc_status() {
        // RFC 1870 §6.1, RFC 6531 §3.4, RFC 5321 §5.1.
        let cases = [
            (
                DeliveryError::TooBig {
                    size: 10,
                    limit: 5,
                    host: "mx.test".into(),
                },
                EnhancedCode::new(5, 3, 4),
            ),
            (
                DeliveryError::NoSmtputf8 {
                    host: "mx.test".into(),
                },
                EnhancedCode::new(5, 6, 7),
            ),
            (
                DeliveryError::Loop {
                    domain: "loop.test".into(),
                },
                EnhancedCode::new(5, 4, 6),
            ),
            // RFC 8689 §5.
            (
                DeliveryError::RequireTls {
                    reason: "REQUIRETLS: mx.test does not offer REQUIRETLS".into(),
                },
                EnhancedCode::new(5, 7, 30),
            ),
        ];
        for (error, status) in cases {
            assert!(error.is_permanent(), "{error}");
            assert_eq!(error.status(), status, "{error}");
        }
    }

    #[test]
    fn expiry_names_the_lifetime_and_the_last_reply() {
        let error = DeliveryError::Expired {
            lifetime: Duration::from_secs(5 * 86400),
            last_reply: Some("451 4.3.0 later".into()),
        };
        assert!(error.is_permanent());
        assert_eq!(
            error.to_string(),
            "message expired after 5days in the queue; last reply: 451 4.3.0 later"
        );
    }
}

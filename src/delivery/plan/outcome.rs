//! What one attempt came to for one recipient ([`Attempt`]), and why a
//! group of recipients was not delivered when no reply about them says so
//! ([`Failure`]: a [`DeliveryError`] with what is known of the session).

use crate::delivery::dsn::Diagnostic;
use crate::smtp::reply::{EnhancedCode, Reply};

use super::DeliveryError;

/// What became of one recipient in one attempt: sent, deferred or failed,
/// as `smtp::client::disposition` decides for server replies.
pub use crate::smtp::client::Disposition as Verdict;

/// One recipient's result, with everything the log line and a DSN need.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Index in [`Message::recipients`](sluice_queue::Message::recipients).
    pub index: usize,
    /// Sent, deferred or failed.
    pub verdict: Verdict,
    /// The RFC 3463 status (the reply's, or ours).
    pub status: EnhancedCode,
    /// The remote reply, or our own reason, on one line (stored as
    /// `last_reply`).
    pub reply: String,
    /// What a DSN reports as Diagnostic-Code.
    pub diagnostic: Diagnostic,
    /// The host that answered, for Remote-MTA.
    pub remote_mta: Option<String>,
    /// `host[ip]:port`, or "none" when no server was reached.
    pub relay: String,
    /// `TLSv1.3/CIPHER`, "plaintext", or "none".
    pub tls: String,
    /// Which TLS policy applied (the log line's `tls=`): dane, mta-sts,
    /// required, opportunistic, plaintext, or "none" (no session).
    pub tls_policy: &'static str,
    /// The server that answered offers DSN (RFC 3461): a success report
    /// for a sent recipient is then `delivered`, else `relayed`.
    pub next_hop_dsn: bool,
    /// The hosts tried for this recipient in this attempt before the one
    /// that gave its result, oldest first (`attempts_log` shows each).
    pub earlier: Vec<HostTry>,
}

/// A host tried in an attempt that did not settle the recipient, with what
/// it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTry {
    /// `host[ip]:port`.
    pub relay: String,
    /// `TLSv1.3/CIPHER`, "plaintext", or "none".
    pub tls: String,
    /// Its reply, or our reason, on one line.
    pub reply: String,
}

impl HostTry {
    /// The host of `failure`, and its reply.
    pub fn of(failure: &Failure) -> HostTry {
        HostTry {
            relay: failure.relay.clone().unwrap_or_else(|| "none".into()),
            tls: failure.tls.clone().unwrap_or_else(|| "none".into()),
            reply: failure.reply_line(),
        }
    }
}

/// Facts about an open session, for the log and the DSN.
#[derive(Debug, Clone)]
pub struct SessionFacts {
    /// The host name.
    pub host: String,
    /// `host[ip]:port`.
    pub relay: String,
    /// `TLSv1.3/CIPHER` or "plaintext".
    pub tls: String,
    /// The log line's `tls=`.
    pub tls_policy: &'static str,
    /// The server offers DSN (RFC 3461).
    pub dsn: bool,
}

impl Attempt {
    /// A recipient settled by the server's reply on `session`.
    pub fn from_server(
        index: usize,
        verdict: &crate::smtp::client::Verdict,
        session: &SessionFacts,
    ) -> Attempt {
        let reply = verdict.reply.one_line();
        Attempt {
            index,
            verdict: verdict.disposition,
            status: verdict.status(),
            diagnostic: Diagnostic::Smtp(reply.clone()),
            reply,
            remote_mta: Some(session.host.clone()),
            relay: session.relay.clone(),
            tls: session.tls.clone(),
            tls_policy: session.tls_policy,
            next_hop_dsn: session.dsn,
            earlier: Vec::new(),
        }
    }

    /// A result decided here, not by a remote reply about the recipient:
    /// failed when the error is permanent, else deferred.
    pub fn local(index: usize, failure: &Failure) -> Attempt {
        let verdict = if failure.error.is_permanent() {
            Verdict::Failed
        } else {
            Verdict::Deferred
        };
        let (reply, diagnostic) = match &failure.reply {
            Some(reply) => (reply.one_line(), Diagnostic::Smtp(reply.one_line())),
            None => {
                let reason = failure.error.to_string();
                (
                    format!("{} {}", failure.error.status(), reason),
                    Diagnostic::Local(reason),
                )
            }
        };
        Attempt {
            index,
            verdict,
            status: failure.error.status(),
            reply,
            diagnostic,
            remote_mta: failure.remote_mta.clone(),
            relay: failure.relay.clone().unwrap_or_else(|| "none".into()),
            tls: failure.tls.clone().unwrap_or_else(|| "none".into()),
            tls_policy: failure.tls_policy.unwrap_or("none"),
            next_hop_dsn: false,
            earlier: Vec::new(),
        }
    }
}

/// Why recipients could not be delivered in this attempt: the error, and
/// what is known of the host and session involved.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong; decides the recipients' fate.
    pub error: DeliveryError,
    /// The server's reply, when one refused the session: reported as it
    /// came (Diagnostic-Code: smtp).
    pub reply: Option<Reply>,
    /// The host involved, when one was reached.
    pub remote_mta: Option<String>,
    /// `host[ip]:port`, when a connection was attempted.
    pub relay: Option<String>,
    /// The TLS state of the session, when one was open.
    pub tls: Option<String>,
    /// The TLS policy that applied, when a host was tried under one.
    pub tls_policy: Option<&'static str>,
}

impl From<DeliveryError> for Failure {
    fn from(error: DeliveryError) -> Failure {
        Failure {
            error,
            reply: None,
            remote_mta: None,
            relay: None,
            tls: None,
            tls_policy: None,
        }
    }
}

impl Failure {
    /// A session with `host` at `relay` that failed with `error`.
    pub fn from_client(
        error: &crate::delivery::client::ClientError,
        host: &str,
        relay: &str,
    ) -> Failure {
        Failure {
            reply: error.reply().cloned(),
            remote_mta: Some(host.to_string()),
            relay: Some(relay.to_string()),
            ..Failure::from(DeliveryError::session(relay, error))
        }
    }

    /// The same failure with the session's facts.
    pub fn on_session(self, session: &SessionFacts) -> Failure {
        Failure {
            remote_mta: Some(session.host.clone()),
            relay: Some(session.relay.clone()),
            tls: Some(session.tls.clone()),
            tls_policy: Some(session.tls_policy),
            ..self
        }
    }

    /// The one line stored as `last_reply` (what [`Attempt::local`] gives).
    pub fn reply_line(&self) -> String {
        match &self.reply {
            Some(reply) => reply.one_line(),
            None => format!("{} {}", self.error.status(), self.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_failures_read_like_status_and_reason() {
        let failure = Failure::from(DeliveryError::Route(
            crate::delivery::route::RouteError::NullMx {
                domain: "d.test".into(),
            },
        ));
        let attempt = Attempt::local(3, &failure);
        assert_eq!(attempt.verdict, Verdict::Failed);
        assert_eq!(
            attempt.reply,
            "5.1.10 domain d.test does not accept mail (null MX)"
        );
        assert_eq!(attempt.reply, failure.reply_line());
        assert_eq!(attempt.relay, "none");
        assert_eq!(
            attempt.diagnostic,
            Diagnostic::Local("domain d.test does not accept mail (null MX)".into())
        );
    }
}

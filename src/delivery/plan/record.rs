//! The recording plan: given a message, this pass's attempts, the retry
//! policy and the time, what to write to the queue and which reports the
//! sender is owed. No I/O: the scheduler carries the plan out
//! (`notices::queue_reports`, then `Queue::complete_logged`).
//!
//! The rules, each tested below:
//! - Retries belong to the (message, domain) pair: one next attempt time
//!   per domain of deferred recipients (`RetryPolicy::next_attempts_by_domain`).
//! - RFC 5321 §4.5.4.1: a recipient deferred once more past the message's
//!   lifetime fails now, with 4.4.7 (RFC 3463 §3.5) and its last reply.
//! - RFC 3461 §4.1: which reports NOTIFY asks for: failure (default),
//!   success (`delivered` when the next hop offers DSN, else `relayed`), and
//!   one delay notice after `delivery.delay_warning`; none to the null
//!   sender (RFC 5321 §6.1), which the caller checks where it logs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use sluice_queue::{Message, Outcome, RecipientStatus, RecipientUpdate, ReportKind, wants_report};

use crate::delivery::dsn::{Diagnostic, ReportedRecipient};
use crate::delivery::retry::RetryPolicy;
use crate::smtp::reply::EnhancedCode;

use super::{Attempt, DeliveryError, Failure, Verdict, recipient_domain};

/// What to write after one delivery pass of a message.
#[derive(Debug)]
pub struct RecordPlan {
    /// The attempts as they are recorded and logged (an expired deferral
    /// turned into a failure).
    pub attempts: Vec<Attempt>,
    /// One update per attempt, in the same order.
    pub updates: Vec<RecipientUpdate>,
    /// The next attempt time of each attempt (deferred ones only).
    pub next_attempts: Vec<Option<DateTime<Utc>>>,
    /// When the message expires.
    pub expiry: DateTime<Utc>,
    /// The reports owed, to queue before the updates are written.
    pub reports: Reports,
}

/// The reports one pass owes a message's sender, one per kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reports {
    /// Recipients that failed and asked for (or by default get) a failure
    /// report.
    pub failed: Vec<ReportedRecipient>,
    /// Sent to a next hop that offers DSN, with NOTIFY=SUCCESS.
    pub delivered: Vec<ReportedRecipient>,
    /// Sent to a next hop that does not offer DSN, with NOTIFY=SUCCESS.
    pub relayed: Vec<ReportedRecipient>,
    /// The delay notice's recipients, when one is due now.
    pub delayed: Vec<ReportedRecipient>,
    /// The message's expiry, for the delay notice's Will-Retry-Until.
    pub will_retry_until: Option<DateTime<Utc>>,
}

impl Reports {
    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
            && self.delivered.is_empty()
            && self.relayed.is_empty()
            && self.delayed.is_empty()
    }
}

/// Plans the record of `attempts` of `message` at `now`.
pub fn plan(
    message: &Message,
    mut attempts: Vec<Attempt>,
    policy: &RetryPolicy,
    delay_warning: Option<Duration>,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> RecordPlan {
    let expiry = policy.expires_at(message.received_at);
    let domains: Vec<String> = attempts
        .iter()
        .map(|attempt| {
            recipient_domain(&message.recipients[attempt.index].address).unwrap_or_default()
        })
        .collect();
    let next_by_domain = policy.next_attempts_by_domain(
        attempts
            .iter()
            .zip(&domains)
            .filter(|(attempt, _)| attempt.verdict == Verdict::Deferred)
            .map(|(attempt, domain)| (domain.as_str(), message.recipients[attempt.index].attempts)),
        now,
        message.received_at,
        rng,
    );
    let mut updates = Vec::with_capacity(attempts.len());
    let mut next_attempts = Vec::with_capacity(attempts.len());
    for (attempt, domain) in attempts.iter_mut().zip(&domains) {
        let mut next = None;
        let outcome = match attempt.verdict {
            Verdict::Sent => Outcome::Delivered {
                reply: attempt.reply.clone(),
            },
            Verdict::Deferred if now >= expiry => {
                expire(attempt, policy.max_queue_lifetime);
                Outcome::Failed {
                    reply: attempt.reply.clone(),
                }
            }
            Verdict::Deferred => {
                let at = *next_by_domain
                    .get(domain.as_str())
                    .expect("every deferred attempt's domain was given a next attempt");
                next = Some(at);
                Outcome::Deferred {
                    reply: attempt.reply.clone(),
                    next_attempt_at: at,
                }
            }
            Verdict::Failed => Outcome::Failed {
                reply: attempt.reply.clone(),
            },
        };
        next_attempts.push(next);
        updates.push(RecipientUpdate {
            index: attempt.index,
            outcome,
        });
    }
    let reports = reports_owed(message, &attempts, now, delay_warning, Some(expiry));
    RecordPlan {
        attempts,
        updates,
        next_attempts,
        expiry,
        reports,
    }
}

/// A deferral past the lifetime becomes a 4.4.7 failure that keeps the
/// last reply.
fn expire(attempt: &mut Attempt, lifetime: Duration) {
    attempt.verdict = Verdict::Failed;
    attempt.status = EnhancedCode::new(4, 4, 7);
    let lifetime = humantime::format_duration(lifetime);
    if let Diagnostic::Local(reason) = &attempt.diagnostic {
        attempt.diagnostic = Diagnostic::Local(format!(
            "message expired after {lifetime} in the queue; last error: {reason}"
        ));
    }
    attempt.reply = format!(
        "4.4.7 message expired after {lifetime} in the queue; last reply: {}",
        attempt.reply
    );
}

/// The 4.4.7 failure of open recipient `index` of a message found expired
/// before its attempt.
pub fn expired(message: &Message, index: usize, lifetime: Duration) -> Attempt {
    let error = DeliveryError::Expired {
        lifetime,
        last_reply: message.recipients[index].last_reply.clone(),
    };
    Attempt::local(index, &Failure::from(error))
}

/// The reports `attempts` owe (RFC 3461 §4.1), and the delay notice when
/// `will_retry_until` is given and `delay_warning` has passed without one.
pub fn reports_owed(
    message: &Message,
    attempts: &[Attempt],
    now: DateTime<Utc>,
    delay_warning: Option<Duration>,
    will_retry_until: Option<DateTime<Utc>>,
) -> Reports {
    let mut reports = Reports {
        will_retry_until,
        ..Reports::default()
    };
    for attempt in attempts {
        let dsn = message.recipients[attempt.index].dsn.as_ref();
        match attempt.verdict {
            Verdict::Failed if wants_report(dsn, ReportKind::Failure) => {
                reports.failed.push(reported(message, attempt, now));
            }
            Verdict::Sent if dsn.is_some() && wants_report(dsn, ReportKind::Success) => {
                let reported = reported(message, attempt, now);
                if attempt.next_hop_dsn {
                    reports.delivered.push(reported);
                } else {
                    reports.relayed.push(reported);
                }
            }
            _ => {}
        }
    }
    if will_retry_until.is_some() && delay_notice_due(message, now, delay_warning) {
        reports.delayed = still_deferred(message, attempts, now);
    }
    reports
}

/// True when the message has waited `delay_warning` and got no delay
/// notice yet. A null sender never gets one.
fn delay_notice_due(
    message: &Message,
    now: DateTime<Utc>,
    delay_warning: Option<Duration>,
) -> bool {
    let Some(warning) = delay_warning else {
        return false;
    };
    message.delay_notified_at.is_none()
        && !message.sender.is_empty()
        && chrono::Duration::from_std(warning)
            .is_ok_and(|warning| now >= message.received_at + warning)
}

/// The recipients still deferred after this pass whose NOTIFY allows a
/// delay notice, each with its last reply: this pass's, or the stored one
/// for those not tried in it.
fn still_deferred(
    message: &Message,
    attempts: &[Attempt],
    now: DateTime<Utc>,
) -> Vec<ReportedRecipient> {
    let mut delayed = Vec::new();
    for (index, recipient) in message.recipients.iter().enumerate() {
        if !wants_report(recipient.dsn.as_ref(), ReportKind::Delay) {
            continue;
        }
        match attempts.iter().find(|attempt| attempt.index == index) {
            Some(attempt) if attempt.verdict == Verdict::Deferred => {
                delayed.push(reported(message, attempt, now));
            }
            Some(_) => {}
            None if recipient.status == RecipientStatus::Deferred => {
                let reply = recipient.last_reply.clone().unwrap_or_default();
                delayed.push(ReportedRecipient {
                    address: recipient.address.clone(),
                    original: recipient.dsn.as_ref().and_then(|dsn| dsn.orcpt.clone()),
                    status: status_of(&reply),
                    remote_mta: None,
                    diagnostic: if reply.starts_with(|c: char| c.is_ascii_digit()) {
                        Diagnostic::Smtp(reply)
                    } else {
                        Diagnostic::Local(reply)
                    },
                    last_attempt: now,
                });
            }
            None => {}
        }
    }
    delayed
}

/// The RFC 3463 status in a stored reply (`451 4.3.0 ...` or `4.4.1 ...`),
/// else 4.0.0.
fn status_of(reply: &str) -> EnhancedCode {
    reply
        .split_whitespace()
        .take(2)
        .find_map(|word| {
            let mut parts = word.split('.').map(str::parse::<u16>);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Ok(4)), Some(Ok(subject)), Some(Ok(detail)), None) => {
                    Some(EnhancedCode::new(4, subject, detail))
                }
                _ => None,
            }
        })
        .unwrap_or(EnhancedCode::new(4, 0, 0))
}

fn reported(message: &Message, attempt: &Attempt, now: DateTime<Utc>) -> ReportedRecipient {
    let recipient = &message.recipients[attempt.index];
    ReportedRecipient {
        address: recipient.address.clone(),
        original: recipient.dsn.as_ref().and_then(|dsn| dsn.orcpt.clone()),
        status: attempt.status,
        remote_mta: attempt.remote_mta.clone(),
        diagnostic: attempt.diagnostic.clone(),
        last_attempt: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use sluice_queue::{QueueId, Recipient, RecipientDsn};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            factor: 2.0,
            jitter: 0.0,
            max_queue_lifetime: Duration::from_secs(86400),
        }
    }

    fn recipient(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            status: RecipientStatus::Pending,
            attempts: 0,
            next_attempt_at: None,
            last_reply: None,
            attempts_log: Vec::new(),
            dsn: None,
        }
    }

    fn message(sender: &str, recipients: &[&str]) -> Message {
        Message {
            id: QueueId::parse("Q1").expect("valid ID"),
            sender: sender.into(),
            size: 10,
            received_at: at(0),
            held: false,
            smtputf8: false,
            body_8bit: false,
            recipients: recipients.iter().map(|r| recipient(r)).collect(),
            dsn: None,
            requiretls: false,
            delay_notified_at: None,
        }
    }

    fn deferred(index: usize, reason: &str) -> Attempt {
        Attempt::local(
            index,
            &Failure::from(DeliveryError::NoUsableHost {
                domain: reason.into(),
            }),
        )
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn one_next_attempt_per_domain() {
        let message = message("a@o.test", &["x@d.test", "y@D.test", "z@e.test"]);
        let attempts = vec![deferred(0, "d"), deferred(1, "d"), deferred(2, "e")];
        let plan = plan(&message, attempts, &policy(), None, at(10), &mut rng());
        assert_eq!(plan.next_attempts[0], plan.next_attempts[1]);
        assert_eq!(
            plan.next_attempts[0],
            Some(at(70)),
            "initial delay, no jitter"
        );
        assert!(
            matches!(plan.updates[2].outcome, Outcome::Deferred { next_attempt_at, .. } if next_attempt_at == at(70))
        );
    }

    #[test]
    fn a_deferral_past_the_lifetime_fails_with_4_4_7() {
        // RFC 5321 §4.5.4.1; RFC 3463 §3.5 (4.4.7: delivery time expired).
        let message = message("a@o.test", &["x@d.test"]);
        let plan = plan(
            &message,
            vec![deferred(0, "d.test")],
            &policy(),
            None,
            at(86400),
            &mut rng(),
        );
        let attempt = &plan.attempts[0];
        assert_eq!(attempt.verdict, Verdict::Failed);
        assert_eq!(attempt.status, EnhancedCode::new(4, 4, 7));
        assert_eq!(
            attempt.reply,
            "4.4.7 message expired after 1day in the queue; last reply: 4.4.0 no usable host for d.test"
        );
        assert_eq!(
            attempt.diagnostic,
            Diagnostic::Local(
                "message expired after 1day in the queue; last error: no usable host for d.test"
                    .into()
            )
        );
        assert!(matches!(plan.updates[0].outcome, Outcome::Failed { .. }));
        assert_eq!(plan.next_attempts, [None]);
        assert_eq!(plan.reports.failed.len(), 1, "the failure is reported");
    }

    #[test]
    fn expired_before_the_attempt_keeps_the_last_reply() {
        let mut message = message("a@o.test", &["x@d.test"]);
        message.recipients[0].last_reply = Some("451 4.3.0 later".into());
        let attempt = expired(&message, 0, Duration::from_secs(3600));
        assert_eq!(attempt.verdict, Verdict::Failed);
        assert_eq!(
            attempt.reply,
            "4.4.7 message expired after 1h in the queue; last reply: 451 4.3.0 later"
        );
    }

    #[test]
    fn success_reports_only_on_request_relayed_without_dsn_at_the_next_hop() {
        // RFC 3461 §4.1 (NOTIFY), §6.2 (relayed).
        let mut message = message("a@o.test", &["x@d.test", "y@d.test", "z@d.test"]);
        let success = RecipientDsn {
            notify: Some(sluice_queue::NotifyOn {
                success: true,
                ..sluice_queue::NotifyOn::default()
            }),
            ..RecipientDsn::default()
        };
        message.recipients[0].dsn = Some(success.clone());
        message.recipients[1].dsn = Some(success);
        let facts = super::super::SessionFacts {
            host: "mx.test".into(),
            relay: "mx.test[192.0.2.1]:25".into(),
            tls: "plaintext".into(),
            tls_policy: "opportunistic",
            dsn: true,
        };
        let reply = crate::smtp::reply::Reply::new(250, EnhancedCode::new(2, 0, 0), "ok");
        let verdict = crate::smtp::client::Verdict {
            disposition: Verdict::Sent,
            stage: crate::smtp::client::Stage::EndOfData,
            reply,
        };
        let mut relayed = Attempt::from_server(1, &verdict, &facts);
        relayed.next_hop_dsn = false;
        let attempts = vec![
            Attempt::from_server(0, &verdict, &facts),
            relayed,
            Attempt::from_server(2, &verdict, &facts),
        ];
        let reports = reports_owed(&message, &attempts, at(5), None, None);
        assert_eq!(reports.delivered.len(), 1);
        assert_eq!(reports.delivered[0].address, "x@d.test");
        assert_eq!(reports.relayed.len(), 1);
        assert_eq!(reports.relayed[0].address, "y@d.test");
        assert!(reports.failed.is_empty());
    }

    #[test]
    fn one_delay_notice_after_the_warning_never_to_the_null_sender() {
        let warning = Some(Duration::from_secs(3600));
        let mut message = message("a@o.test", &["x@d.test"]);
        let early = reports_owed(
            &message,
            &[deferred(0, "d")],
            at(60),
            warning,
            Some(at(86400)),
        );
        assert!(early.is_empty(), "not yet");
        let due = reports_owed(
            &message,
            &[deferred(0, "d")],
            at(3600),
            warning,
            Some(at(86400)),
        );
        assert_eq!(due.delayed.len(), 1);
        assert_eq!(due.will_retry_until, Some(at(86400)));
        message.delay_notified_at = Some(at(3600));
        assert!(
            reports_owed(
                &message,
                &[deferred(0, "d")],
                at(7200),
                warning,
                Some(at(86400))
            )
            .is_empty()
        );
        message.delay_notified_at = None;
        message.sender = String::new();
        assert!(
            reports_owed(
                &message,
                &[deferred(0, "d")],
                at(7200),
                warning,
                Some(at(86400))
            )
            .is_empty()
        );
    }

    #[test]
    fn stored_replies_give_their_temporary_status() {
        assert_eq!(status_of("451 4.3.0 try later"), EnhancedCode::new(4, 3, 0));
        assert_eq!(
            status_of("4.4.1 connection refused"),
            EnhancedCode::new(4, 4, 1)
        );
        assert_eq!(status_of("451 try later"), EnhancedCode::new(4, 0, 0));
        assert_eq!(status_of(""), EnhancedCode::new(4, 0, 0));
    }
}

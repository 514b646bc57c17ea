//! `GET /v1/dashboard/overview`: the queue summary (as `GET
//! /v1/queue/summary`) and the top deferral reasons, from one scan of the
//! queue.
//!
//! A reason is a deferred recipient's last reply, as given. Every deferred
//! recipient counts once for its reply, across all destinations (the
//! summary keeps only each destination's most common one). At most
//! [`REASONS_TRACKED`] distinct replies are counted: replies that carry
//! unique text (a queue ID, a timestamp) would otherwise grow without
//! bound; recipients with a reply seen after that are counted in `other`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_queue::{Message, Queue, RecipientStatus};

use crate::admin::error::AdminError;
use crate::admin::summary::{Summary, SummaryBuilder};

/// Distinct replies counted.
pub const REASONS_TRACKED: usize = 1000;

/// Reasons answered, most common first.
pub const REASONS_SHOWN: usize = 10;

/// Destinations named per reason.
const DOMAINS_NAMED: usize = 5;

/// One deferral reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The last reply, as given.
    pub reply: String,
    /// Deferred recipients whose last reply it is.
    pub recipients: u64,
    /// Up to five of their domains, in the order first seen.
    pub domains: Vec<String>,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// As `GET /v1/queue/summary`.
    pub summary: Summary,
    /// The most common reasons, most common first.
    pub reasons: Vec<Reason>,
    /// Deferred recipients whose reply is not among the replies counted.
    pub reasons_other: u64,
}

/// Counts reasons one message at a time.
#[derive(Default)]
struct Reasons {
    tally: HashMap<String, (u64, Vec<String>)>,
    other: u64,
}

impl Reasons {
    fn add(&mut self, message: &Message) {
        for recipient in &message.recipients {
            if recipient.status != RecipientStatus::Deferred {
                continue;
            }
            let Some(reply) = recipient.last_reply.as_deref() else {
                continue;
            };
            let domain = recipient
                .address
                .rsplit_once('@')
                .map_or(recipient.address.as_str(), |(_, domain)| domain)
                .to_ascii_lowercase();
            if !self.tally.contains_key(reply) {
                if self.tally.len() >= REASONS_TRACKED {
                    self.other += 1;
                    continue;
                }
                self.tally.insert(reply.to_string(), (0, Vec::new()));
            }
            let Some(entry) = self.tally.get_mut(reply) else {
                continue;
            };
            entry.0 += 1;
            if entry.1.len() < DOMAINS_NAMED && !entry.1.contains(&domain) {
                entry.1.push(domain);
            }
        }
    }

    fn finish(self) -> (Vec<Reason>, u64) {
        let mut reasons: Vec<Reason> = self
            .tally
            .into_iter()
            .map(|(reply, (recipients, domains))| Reason {
                reply,
                recipients,
                domains,
            })
            .collect();
        reasons.sort_by(|a, b| {
            b.recipients
                .cmp(&a.recipients)
                .then_with(|| a.reply.cmp(&b.reply))
        });
        let cut: u64 = reasons
            .iter()
            .skip(REASONS_SHOWN)
            .map(|reason| reason.recipients)
            .sum();
        reasons.truncate(REASONS_SHOWN);
        (reasons, self.other + cut)
    }
}

/// The overview of every message in `queue`, ages counted at `now`.
/// Blocking: it reads every record once.
pub fn build(queue: &Queue, now: DateTime<Utc>) -> Result<Overview, AdminError> {
    let mut summary = SummaryBuilder::new(now);
    let mut reasons = Reasons::default();
    for message in queue.iter(None) {
        let message = message?;
        summary.add(&message);
        reasons.add(&message);
    }
    let (reasons, reasons_other) = reasons.finish();
    Ok(Overview {
        summary: summary.finish(),
        reasons,
        reasons_other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_queue::{QueueId, Recipient};

    fn message(recipients: &[(&str, RecipientStatus, Option<&str>)]) -> Message {
        Message {
            id: QueueId::parse("A1").unwrap(),
            sender: String::new(),
            size: 10,
            received_at: Utc::now(),
            held: false,
            smtputf8: false,
            body_8bit: false,
            requiretls: false,
            recipients: recipients
                .iter()
                .map(|(address, status, reply)| Recipient {
                    address: address.to_string(),
                    status: *status,
                    attempts: 1,
                    next_attempt_at: None,
                    last_reply: reply.map(str::to_string),
                    attempts_log: Vec::new(),
                    dsn: None,
                })
                .collect(),
            dsn: None,
            delay_notified_at: None,
        }
    }

    #[test]
    fn every_deferred_recipient_counts_for_its_reply() {
        use RecipientStatus::*;
        let mut reasons = Reasons::default();
        reasons.add(&message(&[
            ("a@one.test", Deferred, Some("451 busy")),
            ("b@two.test", Deferred, Some("451 busy")),
            ("c@two.test", Deferred, Some("421 later")),
            ("d@two.test", Pending, Some("451 busy")),
            ("e@one.test", Failed, Some("550 no")),
        ]));
        reasons.add(&message(&[("f@ONE.test", Deferred, Some("451 busy"))]));
        let (list, other) = reasons.finish();
        assert_eq!(other, 0);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].reply, "451 busy");
        assert_eq!(list[0].recipients, 3);
        assert_eq!(list[0].domains, ["one.test", "two.test"]);
        assert_eq!(
            (list[1].reply.as_str(), list[1].recipients),
            ("421 later", 1)
        );
    }

    #[test]
    fn distinct_replies_are_bounded() {
        let mut reasons = Reasons::default();
        for index in 0..(REASONS_TRACKED + 5) {
            let reply = format!("451 queue id {index}");
            reasons.add(&message(&[(
                "a@x.test",
                RecipientStatus::Deferred,
                Some(reply.as_str()),
            )]));
        }
        assert_eq!(reasons.tally.len(), REASONS_TRACKED);
        let (list, other) = reasons.finish();
        assert_eq!(list.len(), REASONS_SHOWN);
        assert_eq!(other, (REASONS_TRACKED + 5 - REASONS_SHOWN) as u64);
    }
}

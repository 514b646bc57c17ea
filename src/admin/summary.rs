//! The queue's shape by destination domain (`sluice queue summary`, like
//! Postfix's `qshape`): for each domain with mail waiting, how many
//! messages, how many deferred and held, their ages in doubling buckets, and
//! the most common last reply.
//!
//! A message counts for a domain when it has a pending or deferred recipient
//! there (once, however many recipients); `deferred` counts those with a
//! deferred recipient there, `held` the held ones. The `total` row counts
//! each message once. Ages are from arrival. `suspended` says whether the
//! domain (or the MX suffix it is known to be shaped under) is suspended
//! now ([`mark_suspended`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sluice_queue::{Message, Queue, RecipientStatus};

use super::error::AdminError;

/// The age buckets: label and upper bound in minutes (the last is open).
pub const AGE_BUCKETS: [(&str, i64); 8] = [
    ("0-5m", 5),
    ("5-10m", 10),
    ("10-20m", 20),
    ("20-40m", 40),
    ("40-80m", 80),
    ("80-160m", 160),
    ("160-320m", 320),
    ("320m+", i64::MAX),
];

/// Distinct last replies counted per domain for `top_reply`: replies that
/// carry unique text (a queue ID) would otherwise grow without bound.
const REPLIES_TRACKED: usize = 32;

/// Message counts per age bucket, serialized as an object in bucket order:
/// `{"0-5m": 1, "5-10m": 0, …}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ages(pub [u64; 8]);

impl Ages {
    fn add(&mut self, age_minutes: i64) {
        let bucket = AGE_BUCKETS
            .iter()
            .position(|(_, limit)| age_minutes < *limit)
            .unwrap_or(AGE_BUCKETS.len() - 1);
        self.0[bucket] += 1;
    }
}

impl Serialize for Ages {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(Some(AGE_BUCKETS.len()))?;
        for ((label, _), count) in AGE_BUCKETS.iter().zip(self.0) {
            map.serialize_entry(label, &count)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Ages {
    fn deserialize<D: Deserializer<'de>>(input: D) -> Result<Ages, D::Error> {
        struct AgesVisitor;
        impl<'de> Visitor<'de> for AgesVisitor {
            type Value = Ages;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of age bucket counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ages, A::Error> {
                let mut ages = Ages::default();
                while let Some((label, count)) = map.next_entry::<String, u64>()? {
                    let index = AGE_BUCKETS
                        .iter()
                        .position(|(name, _)| *name == label)
                        .ok_or_else(|| {
                            serde::de::Error::custom(format!("unknown bucket {label}"))
                        })?;
                    ages.0[index] = count;
                }
                Ok(ages)
            }
        }
        input.deserialize_map(AgesVisitor)
    }
}

/// Counts of one row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages waiting.
    pub messages: u64,
    /// Of those, messages with a deferred recipient (here).
    pub deferred: u64,
    /// Of those, held messages.
    pub held: u64,
    /// Messages by age.
    pub ages: Ages,
}

impl Counts {
    fn add(&mut self, deferred: bool, held: bool, age_minutes: i64) {
        self.messages += 1;
        self.deferred += u64::from(deferred);
        self.held += u64::from(held);
        self.ages.add(age_minutes);
    }
}

/// One destination domain's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRow {
    /// The recipient domain, lower case.
    pub domain: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Whether deliveries to it are suspended now.
    pub suspended: bool,
    /// The most common last reply of its deferred recipients, or `null`.
    pub top_reply: Option<String>,
    /// How many deferred recipients have `top_reply`.
    pub top_reply_count: u64,
}

/// The whole summary: `{"total": {…}, "domains": [{…}, …]}`, domains by
/// message count, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Every message once.
    pub total: Counts,
    /// One row per domain with mail waiting.
    pub domains: Vec<DomainRow>,
}

#[derive(Default)]
struct DomainTally {
    counts: Counts,
    replies: HashMap<String, u64>,
}

/// Builds a [`Summary`] one message at a time; memory grows with the
/// number of domains, not of messages.
pub struct SummaryBuilder {
    now: DateTime<Utc>,
    total: Counts,
    domains: HashMap<String, DomainTally>,
}

impl SummaryBuilder {
    /// A builder whose ages are counted at `now`.
    pub fn new(now: DateTime<Utc>) -> SummaryBuilder {
        SummaryBuilder {
            now,
            total: Counts::default(),
            domains: HashMap::new(),
        }
    }

    /// Counts `message`.
    pub fn add(&mut self, message: &Message) {
        let age_minutes = (self.now - message.received_at).num_minutes().max(0);
        // Per domain: (any deferred recipient, the deferred recipients' replies).
        let mut here: Vec<(String, bool, Vec<&str>)> = Vec::new();
        for recipient in &message.recipients {
            let deferred = match recipient.status {
                RecipientStatus::Pending => false,
                RecipientStatus::Deferred => true,
                RecipientStatus::Delivered | RecipientStatus::Failed => continue,
            };
            let domain = domain_of(&recipient.address);
            let entry = match here.iter_mut().position(|(d, _, _)| *d == domain) {
                Some(index) => &mut here[index],
                None => {
                    here.push((domain, false, Vec::new()));
                    here.last_mut().expect("just pushed")
                }
            };
            if deferred {
                entry.1 = true;
                if let Some(reply) = &recipient.last_reply {
                    entry.2.push(reply);
                }
            }
        }
        if here.is_empty() {
            return;
        }
        let any_deferred = here.iter().any(|(_, deferred, _)| *deferred);
        self.total.add(any_deferred, message.held, age_minutes);
        for (domain, deferred, replies) in here {
            let tally = self.domains.entry(domain).or_default();
            tally.counts.add(deferred, message.held, age_minutes);
            for reply in replies {
                if let Some(count) = tally.replies.get_mut(reply) {
                    *count += 1;
                } else if tally.replies.len() < REPLIES_TRACKED {
                    tally.replies.insert(reply.to_string(), 1);
                }
            }
        }
    }

    /// The summary, domains by message count (largest first), then name.
    pub fn finish(self) -> Summary {
        let mut domains: Vec<DomainRow> = self
            .domains
            .into_iter()
            .map(|(domain, tally)| {
                let top = tally
                    .replies
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
                DomainRow {
                    domain,
                    counts: tally.counts,
                    suspended: false,
                    top_reply_count: top.as_ref().map_or(0, |(_, count)| *count),
                    top_reply: top.map(|(reply, _)| reply),
                }
            })
            .collect();
        domains.sort_by(|a, b| {
            b.counts
                .messages
                .cmp(&a.counts.messages)
                .then_with(|| a.domain.cmp(&b.domain))
        });
        Summary {
            total: self.total,
            domains,
        }
    }
}

/// Sets `suspended` on the rows whose domain `is_suspended` says so.
pub fn mark_suspended(summary: &mut Summary, is_suspended: impl Fn(&str) -> bool) {
    for row in &mut summary.domains {
        row.suspended = is_suspended(&row.domain);
    }
}

/// The summary of every message in `queue`, ages counted at `now`.
/// Blocking: it reads every record once.
pub fn build(queue: &Queue, now: DateTime<Utc>) -> Result<Summary, AdminError> {
    let mut builder = SummaryBuilder::new(now);
    for message in queue.iter(None) {
        builder.add(&message?);
    }
    Ok(builder.finish())
}

/// The domain of an address, lower case; the whole address when it has no
/// `@` (`postmaster`).
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, domain)| domain)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use sluice_queue::{QueueId, Recipient};

    fn recipient(address: &str, status: RecipientStatus, reply: Option<&str>) -> Recipient {
        Recipient {
            address: address.into(),
            status,
            attempts: 0,
            next_attempt_at: None,
            last_reply: reply.map(str::to_string),
            attempts_log: Vec::new(),
            dsn: None,
        }
    }

    fn message(minutes_old: i64, held: bool, recipients: Vec<Recipient>) -> Message {
        Message {
            id: QueueId::parse("A1").unwrap(),
            sender: "a@example.org".into(),
            size: 10,
            received_at: now() - chrono::Duration::minutes(minutes_old),
            held,
            smtputf8: false,
            body_8bit: false,
            requiretls: false,
            recipients,
            dsn: None,
            delay_notified_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
    }

    #[test]
    fn rows_count_messages_per_domain_with_ages_and_the_top_reply() {
        use RecipientStatus::*;
        let later = Some("451 4.3.0 later");
        let mut builder = SummaryBuilder::new(now());
        builder.add(&message(
            1,
            false,
            vec![
                recipient("a@Example.NET", Deferred, later),
                recipient("b@example.net", Deferred, later),
                recipient("c@example.com", Pending, None),
            ],
        ));
        builder.add(&message(
            7,
            true,
            vec![recipient("d@example.net", Pending, None)],
        ));
        builder.add(&message(
            400,
            false,
            vec![
                recipient("e@example.net", Deferred, Some("421 4.7.0 busy")),
                recipient("f@example.org", Delivered, None),
            ],
        ));
        // Nothing open: not waiting anywhere.
        builder.add(&message(
            1,
            false,
            vec![recipient("g@example.org", Failed, None)],
        ));
        let summary = builder.finish();
        assert_eq!(summary.total.messages, 3);
        assert_eq!(summary.total.deferred, 2);
        assert_eq!(summary.total.held, 1);
        assert_eq!(summary.total.ages.0, [1, 1, 0, 0, 0, 0, 0, 1]);
        let domains: Vec<&str> = summary.domains.iter().map(|d| d.domain.as_str()).collect();
        assert_eq!(domains, ["example.net", "example.com"]);
        let net = &summary.domains[0];
        assert_eq!(
            (net.counts.messages, net.counts.deferred, net.counts.held),
            (3, 2, 1)
        );
        assert_eq!(net.top_reply.as_deref(), Some("451 4.3.0 later"));
        assert_eq!(net.top_reply_count, 2);
        assert!(!net.suspended);
        let com = &summary.domains[1];
        assert_eq!((com.counts.messages, com.counts.deferred), (1, 0));
        assert_eq!(com.top_reply, None);
    }

    #[test]
    fn ages_fall_in_doubling_buckets() {
        let mut ages = Ages::default();
        for minutes in [0, 4, 5, 9, 10, 39, 40, 159, 160, 319, 320, 100_000] {
            ages.add(minutes);
        }
        assert_eq!(ages.0, [2, 2, 1, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn json_has_the_buckets_in_order_and_round_trips() {
        let mut builder = SummaryBuilder::new(now());
        builder.add(&message(
            30,
            false,
            vec![recipient(
                "a@example.net",
                RecipientStatus::Deferred,
                Some("451 x"),
            )],
        ));
        let summary = builder.finish();
        let text = serde_json::to_string(&summary).unwrap();
        assert!(
            text.contains(r#""ages":{"0-5m":0,"5-10m":0,"10-20m":0,"20-40m":1,"40-80m":0,"80-160m":0,"160-320m":0,"320m+":0}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"domain":"example.net","messages":1,"deferred":1,"held":0,"#),
            "{text}"
        );
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, summary);
    }
}

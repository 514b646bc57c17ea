//! The queue's domain types: queue IDs, envelopes, per-recipient state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::dsn::{MessageDsn, RecipientDsn};

/// A queue ID: short, unique, `[A-Za-z0-9]+`, and sorting in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(String);

impl QueueId {
    /// Parses an ID given by a user; `None` unless it is `[A-Za-z0-9]{1,64}`.
    pub fn parse(text: &str) -> Option<QueueId> {
        let valid =
            !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| QueueId(text.to_string()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the SMTP server learned about a message when it accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    /// Forward paths, in the order given.
    pub recipients: Vec<String>,
    /// The client asked for SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The client declared BODY=8BITMIME.
    pub body_8bit: bool,
    /// DSN parameters (RFC 3461), when the client gave any: RET and ENVID,
    /// and NOTIFY and ORCPT per recipient, in the order of `recipients`
    /// (empty, or one entry per recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<EnvelopeDsn>,
    /// The client gave REQUIRETLS (RFC 8689): only authenticated TLS, to
    /// hops that offer REQUIRETLS. Absent in records written before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
}

/// The DSN parameters of one transaction (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeDsn {
    /// RET and ENVID from MAIL.
    pub message: MessageDsn,
    /// NOTIFY and ORCPT from each RCPT, in the order of the recipients.
    pub recipients: Vec<RecipientDsn>,
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not yet attempted.
    Pending,
    /// Attempted, failed temporarily, due again at `next_attempt_at`.
    Deferred,
    /// Accepted by the next hop.
    Delivered,
    /// Failed permanently (and bounced, unless the sender is null).
    Failed,
}

/// One recipient of a queued message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path, as given in RCPT TO.
    pub address: String,
    /// Where delivery to it stands.
    pub status: RecipientStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When it is due (again); `None` once delivered or failed.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last reply from the next hop, e.g. `451 4.3.0 try later`.
    pub last_reply: Option<String>,
    /// NOTIFY and ORCPT (RFC 3461), when the client gave either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<RecipientDsn>,
    /// The last [`ATTEMPTS_LOG_LEN`] delivery attempts, oldest first. Absent
    /// from records written before it existed (and empty then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts_log: Vec<AttemptRecord>,
}

/// How many attempts [`Recipient::attempts_log`] keeps per recipient.
pub const ATTEMPTS_LOG_LEN: usize = 20;

/// One delivery attempt of one recipient, as `sluice queue show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the attempt's outcome was recorded.
    pub at: DateTime<Utc>,
    /// The server that answered, `host[address]:port`, or `none` when no
    /// server was reached.
    pub relay: String,
    /// The TLS version and cipher, `plaintext`, or `none`.
    pub tls: String,
    /// The reply (or the local reason), on one line.
    pub reply: String,
}

/// An attempt to append to the log of the recipient at `index` in
/// [`Message::recipients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAttempt {
    /// Index into [`Message::recipients`].
    pub index: usize,
    /// What happened.
    pub attempt: AttemptRecord,
}

/// A queued message as stored: envelope plus per-recipient state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The queue ID.
    pub id: QueueId,
    /// Empty for the null sender.
    pub sender: String,
    /// Body size in bytes.
    pub size: u64,
    /// When the message was committed.
    pub received_at: DateTime<Utc>,
    /// Parked by the operator: never claimed until released.
    pub held: bool,
    /// The client asked for SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The client declared BODY=8BITMIME.
    pub body_8bit: bool,
    /// Every recipient with its delivery state, in RCPT order.
    pub recipients: Vec<Recipient>,
    /// RET and ENVID (RFC 3461), when the client gave either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<MessageDsn>,
    /// When the delay notice went to the sender; at most one is ever sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_notified_at: Option<DateTime<Utc>>,
    /// REQUIRETLS (RFC 8689), from the envelope; `false` in older records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted it.
    Delivered {
        /// The next hop's reply.
        reply: String,
    },
    /// Temporary failure; try again at `next_attempt_at`.
    Deferred {
        /// The next hop's reply (or a description of the local error).
        reply: String,
        /// When to try again.
        next_attempt_at: DateTime<Utc>,
    },
    /// Permanent failure.
    Failed {
        /// The next hop's reply (or a description of the local error).
        reply: String,
    },
    /// Failed without a delivery attempt (the operator bounced it): as
    /// [`Outcome::Failed`], but the recipient's attempt count is unchanged.
    Bounced {
        /// Why, for the recipient's last reply and the DSN.
        reply: String,
    },
}

/// An outcome for the recipient at `index` in [`Message::recipients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    /// Index into [`Message::recipients`].
    pub index: usize,
    /// What happened.
    pub outcome: Outcome,
}

/// Digits of [`IdGenerator`] IDs, in ASCII order so that text order is number order.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Base62 digits of the time part: 62^9 microseconds reach past the year 2300.
const TIME_DIGITS: usize = 9;

/// Random base62 digits after the time part, so that an ID stays unique even
/// if the clock steps back across a restart.
const RANDOM_DIGITS: usize = 3;

/// Allocates queue IDs: 9 base62 digits of a strictly increasing microsecond
/// clock, then 3 random base62 digits. IDs therefore sort in allocation
/// (arrival) order, and never repeat within a process even when many are
/// allocated in the same microsecond.
pub(crate) struct IdGenerator {
    /// The time part of the last ID handed out, in microseconds since 1970.
    last_micros: std::sync::atomic::AtomicU64,
}

impl IdGenerator {
    /// A generator whose IDs all sort after `floor` (the newest ID on disk).
    pub(crate) fn new(floor: Option<&QueueId>) -> IdGenerator {
        let floor_micros = floor.and_then(|id| decode_time(id.as_str())).unwrap_or(0);
        IdGenerator {
            last_micros: std::sync::atomic::AtomicU64::new(floor_micros),
        }
    }

    /// A fresh ID, greater than every ID this generator returned before.
    pub(crate) fn next(&self) -> QueueId {
        use rand::Rng;
        use std::sync::atomic::Ordering;
        let now = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
        let previous = self
            .last_micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .expect("the update closure always returns Some");
        let micros = now.max(previous + 1);
        let mut text = String::with_capacity(TIME_DIGITS + RANDOM_DIGITS);
        let mut digits = [0u8; TIME_DIGITS];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = BASE62[(rest % 62) as usize];
            rest /= 62;
        }
        text.extend(digits.iter().map(|&b| b as char));
        let mut rng = rand::thread_rng();
        for _ in 0..RANDOM_DIGITS {
            text.push(BASE62[rng.gen_range(0..62)] as char);
        }
        QueueId(text)
    }
}

/// The microsecond time encoded at the start of an ID this queue generated.
fn decode_time(text: &str) -> Option<u64> {
    let digits = text.as_bytes().get(..TIME_DIGITS)?;
    digits.iter().try_fold(0u64, |acc, &b| {
        let value = BASE62.iter().position(|&d| d == b)? as u64;
        acc.checked_mul(62)?.checked_add(value)
    })
}

impl Recipient {
    /// Appends `attempt` to the log, dropping the oldest beyond
    /// [`ATTEMPTS_LOG_LEN`].
    pub(crate) fn log_attempt(&mut self, attempt: AttemptRecord) {
        if self.attempts_log.len() >= ATTEMPTS_LOG_LEN {
            let excess = self.attempts_log.len() + 1 - ATTEMPTS_LOG_LEN;
            self.attempts_log.drain(..excess);
        }
        self.attempts_log.push(attempt);
    }

    /// True while the recipient still needs a delivery attempt.
    pub(crate) fn is_open(&self) -> bool {
        matches!(
            self.status,
            RecipientStatus::Pending | RecipientStatus::Deferred
        )
    }
}

impl Message {
    /// True when no recipient is left pending or deferred: the message is done
    /// and leaves the queue.
    pub(crate) fn is_finished(&self) -> bool {
        !self.recipients.iter().any(Recipient::is_open)
    }

    /// When the message is next due for delivery: the earliest next attempt
    /// of its open recipients (a pending recipient without a time is due since
    /// the message arrived). `None` when held or finished.
    pub(crate) fn due_at(&self) -> Option<DateTime<Utc>> {
        due_time(
            self.held,
            self.received_at,
            self.recipients
                .iter()
                .map(|r| (r.status, r.next_attempt_at)),
        )
    }
}

/// [`Message::due_at`] over the fields it needs.
fn due_time(
    held: bool,
    received_at: DateTime<Utc>,
    recipients: impl Iterator<Item = (RecipientStatus, Option<DateTime<Utc>>)>,
) -> Option<DateTime<Utc>> {
    if held {
        return None;
    }
    recipients
        .filter(|(status, _)| {
            matches!(status, RecipientStatus::Pending | RecipientStatus::Deferred)
        })
        .map(|(_, next)| next.unwrap_or(received_at))
        .min()
}

/// What the index and the counters need of a stored message, decoded
/// without the strings (sender, addresses, replies, attempt history) that
/// make most of a record, so rebuilding the index at open allocates and
/// parses little.
#[derive(Debug, Deserialize)]
pub(crate) struct Sketch<'a> {
    /// The queue ID, borrowed from the record when it can be.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// Parked by the operator.
    pub held: bool,
    /// When the message was committed.
    pub received_at: DateTime<Utc>,
    /// Status and next attempt of each recipient.
    pub recipients: Vec<RecipientSketch>,
}

/// The part of a [`Recipient`] a [`Sketch`] keeps.
#[derive(Debug, Deserialize)]
pub(crate) struct RecipientSketch {
    /// Where delivery to it stands.
    pub status: RecipientStatus,
    /// When it is due (again).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Sketch<'_> {
    /// [`Message::due_at`] of the message sketched.
    pub(crate) fn due_at(&self) -> Option<DateTime<Utc>> {
        due_time(
            self.held,
            self.received_at,
            self.recipients
                .iter()
                .map(|r| (r.status, r.next_attempt_at)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_alphanumeric_and_sort_in_allocation_order() {
        let generator = IdGenerator::new(None);
        let ids: Vec<QueueId> = (0..10_000).map(|_| generator.next()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(QueueId::parse(id.as_str()).as_ref(), Some(id));
            assert_eq!(id.as_str().len(), TIME_DIGITS + RANDOM_DIGITS);
        }
    }

    #[test]
    fn ids_sort_after_the_floor_even_if_the_clock_is_behind_it() {
        let far_future = IdGenerator {
            last_micros: std::sync::atomic::AtomicU64::new(62u64.pow(9) - 10),
        }
        .next();
        let generator = IdGenerator::new(Some(&far_future));
        let next = generator.next();
        assert!(next > far_future, "{next} should sort after {far_future}");
    }

    #[test]
    fn due_time_is_the_earliest_open_recipient_and_none_when_held() {
        let received_at = Utc::now();
        let later = received_at + chrono::Duration::seconds(60);
        let recipient = |status, next_attempt_at| Recipient {
            address: "a@example.org".into(),
            status,
            attempts: 0,
            next_attempt_at,
            last_reply: None,
            dsn: None,
            attempts_log: Vec::new(),
        };
        let mut message = Message {
            id: QueueId("x".into()),
            sender: String::new(),
            size: 0,
            received_at,
            held: false,
            smtputf8: false,
            body_8bit: false,
            requiretls: false,
            recipients: vec![
                recipient(RecipientStatus::Delivered, None),
                recipient(RecipientStatus::Deferred, Some(later)),
            ],
            dsn: None,
            delay_notified_at: None,
        };
        assert_eq!(message.due_at(), Some(later));
        message
            .recipients
            .push(recipient(RecipientStatus::Pending, None));
        assert_eq!(message.due_at(), Some(received_at));
        message.held = true;
        assert_eq!(message.due_at(), None);
        message.held = false;
        message.recipients.retain(|r| !r.is_open());
        assert!(message.is_finished());
        assert_eq!(message.due_at(), None);
    }

    #[test]
    fn the_attempts_log_keeps_the_last_twenty() {
        let mut recipient = Recipient {
            address: "a@example.org".into(),
            status: RecipientStatus::Deferred,
            attempts: 0,
            next_attempt_at: None,
            last_reply: None,
            attempts_log: Vec::new(),
            dsn: None,
        };
        for n in 0..25 {
            recipient.log_attempt(AttemptRecord {
                at: Utc::now(),
                relay: "mx.example.org[192.0.2.1]:25".into(),
                tls: "none".into(),
                reply: format!("451 4.3.0 try {n}"),
            });
        }
        assert_eq!(recipient.attempts_log.len(), ATTEMPTS_LOG_LEN);
        assert_eq!(recipient.attempts_log[0].reply, "451 4.3.0 try 5");
        assert_eq!(recipient.attempts_log[19].reply, "451 4.3.0 try 24");
    }

    #[test]
    fn a_record_without_an_attempts_log_still_reads() {
        // As written before the log existed.
        let old = r#"{"address":"a@example.org","status":"deferred","attempts":2,
            "next_attempt_at":"2026-11-25T10:00:00Z","last_reply":"451 4.3.0 later"}"#;
        let recipient: Recipient = serde_json::from_str(old).expect("old record");
        assert!(recipient.attempts_log.is_empty());
        assert_eq!(recipient.attempts, 2);
        let written = serde_json::to_string(&recipient).unwrap();
        assert!(!written.contains("attempts_log"), "{written}");
    }
}

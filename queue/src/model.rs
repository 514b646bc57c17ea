//! The queue's domain types: queue IDs, envelopes, per-recipient state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_reply: Option<String>,
}

/// A queued message as stored: envelope plus per-recipient state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: QueueId,
    /// Empty for the null sender.
    pub sender: String,
    /// Body size in bytes.
    pub size: u64,
    pub received_at: DateTime<Utc>,
    pub held: bool,
    pub smtputf8: bool,
    pub body_8bit: bool,
    pub recipients: Vec<Recipient>,
}

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted it.
    Delivered { reply: String },
    /// Temporary failure; try again at `next_attempt_at`.
    Deferred {
        reply: String,
        next_attempt_at: DateTime<Utc>,
    },
    /// Permanent failure.
    Failed { reply: String },
}

/// An outcome for the recipient at `index` in [`Message::recipients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub index: usize,
    pub outcome: Outcome,
}

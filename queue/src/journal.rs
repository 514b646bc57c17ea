//! The journal: a durable, ordered record of every recipient's change of
//! state, written in the same sled database, under the same state lock and
//! before the same group-commit flush as the change itself, so that no
//! change that survives a crash is without its entry. The binary turns
//! entries into delivery events for its subscribers (`[[events]]`); the
//! queue knows nothing of what they become.
//!
//! Why this ordering is safe: an entry is inserted before the record it
//! describes is updated, both into the one sled log, and the caller's
//! `durable()` covers both. sled recovers a prefix of its log, so a record
//! change found after a crash implies its entry was found too. The reverse
//! (an entry whose change was lost) is possible; subscribers get events at
//! least once, and a change retried after the crash writes a second entry
//! with the same event identity (queue ID, recipient, attempt, kind).
//!
//! Layout: tree `journal`, key = sequence number (u64, big endian), value =
//! the JSON of a [`JournalEntry`]; tree `journal_cursors`, key = subscriber
//! name, value = the last sequence number it has taken (u64, big endian);
//! tree `journal_notes`, key = queue ID, value = the message's Message-ID,
//! kept while the message is queued so that every entry can carry it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::QueueError;
use crate::model::{AttemptRecord, Message, RecipientStatus};
use crate::store::StoreSlot;

/// What happened to a recipient (or, for [`JournalKind::Note`], to no
/// recipient: an entry the binary appended itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// The message was accepted into the queue.
    Received,
    /// The next hop accepted the recipient.
    Delivered,
    /// The attempt failed temporarily; it is due again.
    Deferred,
    /// The recipient failed permanently (a 5xx, expiry, the operator).
    Failed,
    /// The message left the queue without the recipient being settled
    /// (`queue delete`).
    Deleted,
    /// An entry appended by [`Queue::journal_append`](crate::Queue::journal_append).
    Note,
}

/// One entry of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The entry's place in the journal, from 1; set when it is read.
    #[serde(skip)]
    pub seq: u64,
    /// When the change was made.
    pub time: DateTime<Utc>,
    /// What happened.
    pub kind: JournalKind,
    /// The queue ID (empty for a [`JournalKind::Note`] about no message).
    #[serde(default)]
    pub queue_id: String,
    /// The envelope sender (empty for the null sender).
    #[serde(default)]
    pub sender: String,
    /// The recipient's forward path.
    #[serde(default)]
    pub recipient: String,
    /// The message's Message-ID header, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Attempts made so far for the recipient.
    #[serde(default)]
    pub attempts: u32,
    /// The recipient's last reply after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The attempt this change records, when one was logged with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptRecord>,
    /// For a [`JournalKind::Note`]: the binary's own payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl JournalEntry {
    /// An entry of the binary's own about no message (`payload` is its
    /// own encoding, returned as [`JournalEntry::note`]).
    pub fn note(payload: String) -> JournalEntry {
        JournalEntry {
            seq: 0,
            time: Utc::now(),
            kind: JournalKind::Note,
            queue_id: String::new(),
            sender: String::new(),
            recipient: String::new(),
            message_id: None,
            attempts: 0,
            reply: None,
            attempt: None,
            note: Some(payload),
        }
    }
}

/// The journal's trees and its sequence counter.
pub(crate) struct Journal {
    /// The database open now: the trees are looked up at each use, so the
    /// journal follows a database that `Queue::recover` reopened.
    slot: StoreSlot,
    next: AtomicU64,
    /// Entries are written only while a subscriber is configured: a relay
    /// without subscribers pays nothing.
    enabled: AtomicBool,
}

fn storage(what: &str) -> impl Fn(sled::Error) -> QueueError + '_ {
    move |error| QueueError::Storage(format!("journal {what}: {error}"))
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(bytes: &[u8]) -> u64 {
    let mut key = [0u8; 8];
    let len = bytes.len().min(8);
    key[..len].copy_from_slice(&bytes[..len]);
    u64::from_be_bytes(key)
}

const ENTRIES: &str = "journal";
const CURSORS: &str = "journal_cursors";
const NOTES: &str = "journal_notes";

impl Journal {
    fn tree(&self, name: &str) -> Result<sled::Tree, QueueError> {
        self.slot.get()?.named_tree(name)
    }

    pub(crate) fn open(slot: StoreSlot) -> Result<Journal, QueueError> {
        let last = slot
            .get()?
            .named_tree(ENTRIES)?
            .last()
            .map_err(storage("open"))?
            .map(|(key, _)| seq_of(&key))
            .unwrap_or(0);
        Ok(Journal {
            slot,
            next: AtomicU64::new(last + 1),
            enabled: AtomicBool::new(false),
        })
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Inserts `entries` (not yet durable: the caller's flush makes them so).
    pub(crate) fn insert(&self, entries: &[JournalEntry]) -> Result<(), QueueError> {
        for entry in entries {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            let value = serde_json::to_vec(entry)
                .map_err(|error| QueueError::Storage(format!("journal entry encoding: {error}")))?;
            self.tree(ENTRIES)?
                .insert(seq_key(seq), value)
                .map_err(storage("write"))?;
        }
        Ok(())
    }

    /// Keeps the message's Message-ID for its later entries.
    pub(crate) fn set_note(&self, queue_id: &str, message_id: &str) -> Result<(), QueueError> {
        self.tree(NOTES)?
            .insert(queue_id.as_bytes(), message_id.as_bytes())
            .map(|_| ())
            .map_err(storage("note"))
    }

    pub(crate) fn message_id(&self, queue_id: &str) -> Option<String> {
        self.tree(NOTES)
            .ok()?
            .get(queue_id.as_bytes())
            .ok()
            .flatten()
            .map(|value| String::from_utf8_lossy(&value).into_owned())
    }

    pub(crate) fn forget_note(&self, queue_id: &str) -> Result<(), QueueError> {
        self.tree(NOTES)?
            .remove(queue_id.as_bytes())
            .map(|_| ())
            .map_err(storage("note"))
    }

    /// Up to `max` entries after `after`, in order.
    pub(crate) fn read(&self, after: u64, max: usize) -> Result<Vec<JournalEntry>, QueueError> {
        let mut out = Vec::new();
        for item in self
            .tree(ENTRIES)?
            .range(seq_key(after.saturating_add(1))..)
        {
            let (key, value) = item.map_err(storage("read"))?;
            let seq = seq_of(&key);
            match serde_json::from_slice::<JournalEntry>(&value) {
                Ok(mut entry) => {
                    entry.seq = seq;
                    out.push(entry);
                }
                Err(error) => {
                    tracing::error!(seq, %error, "skipping a corrupt journal entry");
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The last sequence number `subscriber` has taken (0: none).
    pub(crate) fn cursor(&self, subscriber: &str) -> Result<Option<u64>, QueueError> {
        Ok(self
            .tree(CURSORS)?
            .get(subscriber.as_bytes())
            .map_err(storage("cursor"))?
            .map(|value| seq_of(&value)))
    }

    pub(crate) fn set_cursor(&self, subscriber: &str, seq: u64) -> Result<(), QueueError> {
        self.tree(CURSORS)?
            .insert(subscriber.as_bytes(), &seq_key(seq))
            .map(|_| ())
            .map_err(storage("cursor"))
    }

    /// The last sequence number written (0: none).
    pub(crate) fn last(&self) -> u64 {
        self.next.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Entries in the journal after `after`.
    pub(crate) fn count_after(&self, after: u64) -> u64 {
        let last = self.last();
        if last <= after {
            return 0;
        }
        // Entries are numbered without gaps between prunes: the difference
        // is the count (bounded by what is stored, for a cursor from before
        // the entries were pruned).
        let stored = self
            .tree(ENTRIES)
            .map(|tree| tree.len() as u64)
            .unwrap_or(0);
        (last - after).min(stored)
    }

    /// Removes entries up to `upto` (every subscriber has taken them).
    pub(crate) fn prune(&self, upto: u64) -> Result<usize, QueueError> {
        let mut removed = 0;
        let keys: Vec<_> = self
            .tree(ENTRIES)?
            .range(..=seq_key(upto))
            .keys()
            .take(10_000)
            .collect::<Result<_, _>>()
            .map_err(storage("prune"))?;
        let entries = self.tree(ENTRIES)?;
        for key in keys {
            entries.remove(key).map_err(storage("prune"))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The entries a change from `before` to `after` owes: one per recipient
    /// whose state changed; `attempts_added` says for each recipient whether
    /// an attempt was logged with the change. `removed`: the message left
    /// the queue (open recipients of a removed message were deleted).
    pub(crate) fn changes(
        &self,
        before: &Message,
        after: &Message,
        removed: bool,
    ) -> Vec<JournalEntry> {
        let now = Utc::now();
        let message_id = self.message_id(before.id.as_str());
        let mut out = Vec::new();
        for (old, new) in before.recipients.iter().zip(&after.recipients) {
            let attempt_added = new.attempts_log.len() != old.attempts_log.len()
                || new.attempts_log.last() != old.attempts_log.last();
            let kind = match (old.status, new.status) {
                (_, RecipientStatus::Delivered) if old.status != RecipientStatus::Delivered => {
                    JournalKind::Delivered
                }
                (_, RecipientStatus::Failed) if old.status != RecipientStatus::Failed => {
                    JournalKind::Failed
                }
                (_, RecipientStatus::Deferred)
                    if new.attempts != old.attempts || old.status != RecipientStatus::Deferred =>
                {
                    JournalKind::Deferred
                }
                (RecipientStatus::Pending | RecipientStatus::Deferred, _) if removed => {
                    JournalKind::Deleted
                }
                _ => continue,
            };
            out.push(JournalEntry {
                seq: 0,
                time: now,
                kind,
                queue_id: after.id.to_string(),
                sender: after.sender.clone(),
                recipient: new.address.clone(),
                message_id: message_id.clone(),
                attempts: new.attempts,
                reply: new.last_reply.clone(),
                attempt: attempt_added
                    .then(|| new.attempts_log.last().cloned())
                    .flatten(),
                note: None,
            });
        }
        out
    }

    /// The entries a new message owes: one `received` per recipient.
    pub(crate) fn received(
        &self,
        message: &Message,
        message_id: Option<&str>,
    ) -> Vec<JournalEntry> {
        message
            .recipients
            .iter()
            .map(|recipient| JournalEntry {
                seq: 0,
                time: message.received_at,
                kind: JournalKind::Received,
                queue_id: message.id.to_string(),
                sender: message.sender.clone(),
                recipient: recipient.address.clone(),
                message_id: message_id.map(str::to_string),
                attempts: 0,
                reply: None,
                attempt: None,
                note: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_keys_order_as_numbers() {
        assert!(seq_key(2) < seq_key(10));
        assert_eq!(seq_of(&seq_key(12345)), 12345);
    }
}

//! sluice-queue: the durable, sled-backed outbound mail queue.
//!
//! The queue stores envelopes, bodies and per-recipient delivery state, and
//! answers "what is due". It knows nothing about SMTP or sockets: the binary
//! decides what a delivery means and reports outcomes back.
//!
//! Durability: every method documented as durable returns only once its change
//! is on disk (fsync). Concurrent durable writes share fsyncs (group commit).

mod model;

pub use model::{Envelope, Message, Outcome, QueueId, Recipient, RecipientStatus, RecipientUpdate};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// Everything that can go wrong in the queue, in words an operator understands.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool directory could not be created or read.
    #[error("spool {path}: {source}")]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process (normally a running `sluice serve`) holds the spool.
    #[error("spool {path} is in use by another process")]
    Locked { path: PathBuf },
    /// A read or write on a body file failed.
    #[error("queue {id}: body I/O: {source}")]
    Body { id: String, source: std::io::Error },
    /// The storage engine failed.
    #[error("queue storage: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("queue {id}: corrupt record: {reason}")]
    Corrupt { id: String, reason: String },
    /// No message with this ID is queued.
    #[error("no such message: {0}")]
    NotFound(String),
    /// The queue is shutting down and accepts no more writes.
    #[error("queue is closed")]
    Closed,
}

/// Tunables for [`Queue::open`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// sled's page cache capacity in bytes.
    pub cache_capacity: u64,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            cache_capacity: 64 * 1024 * 1024,
        }
    }
}

/// Counts of queued messages and recipients, for metrics and `queue list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u64,
    pub held: u64,
    pub pending: u64,
    pub deferred: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// A handle on the queue; cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {}

/// A message body being written, before it is committed.
///
/// Dropping it without [`Queue::commit`] removes every trace of it.
pub struct BodyWriter {}

/// Streams a committed body without holding it all in memory.
pub struct BodyReader {}

/// A message claimed for delivery. Until [`Queue::complete`] or
/// [`Queue::unclaim`] no other caller can claim it; claims do not survive a
/// restart, so work in flight at a crash becomes due again.
#[derive(Debug, Clone)]
pub struct Claim {
    pub message: Message,
}

impl Queue {
    /// Opens (creating if needed) the spool at `path`. Fails with
    /// [`QueueError::Locked`] when another process holds it.
    pub fn open(path: &Path, options: QueueOptions) -> Result<Queue, QueueError> {
        let _ = (path, options);
        todo!()
    }

    /// Starts a new message body; its queue ID is allocated now so that a
    /// `Received:` header naming it can be written first.
    pub fn new_body(&self) -> Result<BodyWriter, QueueError> {
        todo!()
    }

    /// Makes a message durable: returns its ID only once body, envelope and
    /// per-recipient state are on disk. The message is due at once.
    pub async fn commit(
        &self,
        envelope: Envelope,
        body: BodyWriter,
    ) -> Result<QueueId, QueueError> {
        let _ = (envelope, body);
        todo!()
    }

    /// Convenience: [`Queue::new_body`], write `body`, [`Queue::commit`].
    pub async fn enqueue(&self, envelope: Envelope, body: &[u8]) -> Result<QueueId, QueueError> {
        let _ = (envelope, body);
        todo!()
    }

    /// The message with this ID, or `None`.
    pub fn get(&self, id: &QueueId) -> Result<Option<Message>, QueueError> {
        let _ = id;
        todo!()
    }

    /// Streams every queued message in ID order (which is arrival order),
    /// starting after `after` when given. Memory does not grow with the queue.
    pub fn iter(
        &self,
        after: Option<&QueueId>,
    ) -> impl Iterator<Item = Result<Message, QueueError>> + '_ {
        let _ = after;
        std::iter::empty()
    }

    /// Opens the body of a queued message for reading.
    pub fn open_body(&self, id: &QueueId) -> Result<BodyReader, QueueError> {
        let _ = id;
        todo!()
    }

    /// The earliest time at which an unclaimed, unheld message is due.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>, QueueError> {
        todo!()
    }

    /// Claims up to `max` messages due at or before `now`, oldest due first.
    /// Costs O(returned items), not a scan of the queue.
    pub fn claim_due(&self, now: DateTime<Utc>, max: usize) -> Result<Vec<Claim>, QueueError> {
        let _ = (now, max);
        todo!()
    }

    /// Signalled whenever work may have become due earlier than
    /// [`Queue::next_due`] said before (enqueue, retry, release, unclaim).
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        todo!()
    }

    /// Records delivery outcomes for a claimed message and ends the claim.
    /// Durable on return. When no recipient is left pending or deferred, the
    /// message leaves the queue; the returned message shows the final state.
    pub async fn complete(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<Message, QueueError> {
        let _ = (id, updates);
        todo!()
    }

    /// Ends a claim without recording anything; the message is due again at
    /// its previous time.
    pub fn unclaim(&self, id: &QueueId) {
        let _ = id;
    }

    /// Parks a message: it is never claimed until released. Durable.
    pub async fn hold(&self, id: &QueueId) -> Result<Message, QueueError> {
        let _ = id;
        todo!()
    }

    /// Un-parks a held message. Durable.
    pub async fn release(&self, id: &QueueId) -> Result<Message, QueueError> {
        let _ = id;
        todo!()
    }

    /// Makes every deferred recipient of the message due now. Durable.
    pub async fn retry_now(&self, id: &QueueId) -> Result<Message, QueueError> {
        let _ = id;
        todo!()
    }

    /// Removes the message, body included. Durable.
    pub async fn delete(&self, id: &QueueId) -> Result<(), QueueError> {
        let _ = id;
        todo!()
    }

    /// Counts by status.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        todo!()
    }

    /// Flushes everything to disk and stops the group-commit flusher.
    pub async fn close(&self) -> Result<(), QueueError> {
        todo!()
    }
}

impl BodyWriter {
    /// The queue ID this body will be committed under.
    pub fn id(&self) -> &QueueId {
        todo!()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        todo!()
    }

    /// True when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = buf;
        todo!()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BodyReader {
    /// The body's total size in bytes.
    pub fn size(&self) -> u64 {
        todo!()
    }
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let _ = buf;
        todo!()
    }
}

//! sluice-queue: the durable, sled-backed outbound mail queue.
//!
//! The queue stores envelopes, bodies and per-recipient delivery state, and
//! answers "what is due". It knows nothing about SMTP or sockets: the binary
//! decides what a delivery means and reports outcomes back.
//!
//! # Durability
//!
//! Every method documented as durable returns only once its change is on disk
//! (fsync). Concurrent durable writes share fsyncs (group commit, see
//! `commit.rs`): a writer applies its change to sled in memory, then waits for
//! the next flush of the one flusher thread, which calls sled's flush and then
//! fsyncs sled's files (sled itself only issues `sync_file_range`, see
//! `store::Durability`). One flush serves every writer that was waiting when
//! it started.
//!
//! # Layout of the spool directory
//!
//! ```text
//! spool/lock          held (flock) by the process that has the queue open
//! spool/db/           the sled database, one tree "queue" (see store.rs):
//!                       m<ID>            record: Message + where its body is (JSON)
//!                       b<ID>/<u32 BE>   inline body chunk, 4 KiB each
//!                       p<ID>            chunks of ID being written or removed
//!                     and a tree "suspensions": destination -> Suspension (JSON)
//! spool/bodies/<ID>   bodies bigger than 64 KiB
//! spool/tmp/<ID>      big bodies being received; emptied at open
//! ```
//!
//! Bodies up to 64 KiB (most mail) are kept in memory while received and
//! committed as 4 KiB chunks written just before the record, so they share
//! its group fsync and cost none of their own. The chunks are that small
//! because sled writes any page bigger than 1/8 of its segment as a separate
//! blob file, which would cost a file creation and an fsync of its own
//! (`store::Durability` syncs them; only records with thousands of
//! recipients get that big). Bigger bodies spill to `tmp/<ID>` while
//! received; at commit the file is fsynced, renamed into `bodies/` and the
//! directory fsynced *before* the record is written, so a durable record
//! always has its body. Readers stream either kind in chunks
//! ([`BodyReader`]), so a 50 MiB message never needs 50 MiB of memory. A body
//! file whose record is missing (a crash between the two steps, or between a
//! record's removal and its file's) is removed at open.
//!
//! The async methods never touch a body file on the caller's thread (a
//! runtime worker): spilling, persisting and removing files run on tokio's
//! blocking pool, and a writer waits for its group flush asynchronously.
//! A [`BodyReader`] opens its file at the first read; reading a body file
//! ([`BodyReader::is_file`]) is the caller's to move off the runtime.
//!
//! Queue IDs are 12 characters: 9 base62 digits of a strictly increasing
//! microsecond clock (seeded at open from the newest ID on disk), then 3
//! random ones; they sort in arrival order and do not repeat across restarts.
//!
//! # Scheduling
//!
//! The due-time index and the delivery leases live in memory (`schedule.rs`),
//! rebuilt from the records at open together with the counters behind
//! [`Queue::stats`]: leases therefore vanish on restart and work in flight at a
//! crash is due again. A message is due at the earliest `next_attempt_at` of
//! its pending or deferred recipients, unless held.
//!
//! # Administrative handles
//!
//! [`Queue::open_admin`] opens the spool for `sluice queue` while no server
//! runs: same lock, same records, same group commit, but no due index and no
//! counters, so opening costs milliseconds however big the queue is. Since
//! the records are the truth and a serving [`Queue::open`] rebuilds its index
//! from them, whatever an administrative handle writes (hold, release, retry,
//! delete, outcomes, a new DSN) is scheduled exactly as if the server had
//! written it. Such a handle never hands out work ([`Queue::claim_due`] is
//! empty) and counts [`Queue::stats`] by reading every record.
//!
//! # Storage failures
//!
//! sled refuses every write after an I/O error on its log, until the
//! database is opened again. The queue remembers the first failed write or
//! flush ([`Queue::failure`], [`Queue::failed`]) so that its owner can stop
//! and restart instead of refusing mail forever. Errors on a body file being
//! received ([`QueueError::Body`]) are not such failures: they fail that one
//! message and leave the database untouched.

mod body;
mod commit;
mod dsn;
mod failure;
mod journal;
pub use journal::{JournalEntry, JournalKind};
mod memory;
pub use memory::limit_heap_arenas;
mod model;
mod schedule;
mod side;
mod stats;
mod store;
mod suspensions;
mod usage;
pub use usage::SpoolUsage;

pub use body::{BodyReader, BodyWriter};
pub use dsn::{
    MessageDsn, NotifyOn, OriginalRecipient, RecipientDsn, ReportKind, Ret, wants_report,
};
pub use model::{
    ATTEMPTS_LOG_LEN, AttemptRecord, Envelope, EnvelopeDsn, LoggedAttempt, Message, Outcome,
    QueueId, Recipient, RecipientStatus, RecipientUpdate,
};
pub use side::SideTree;
pub use suspensions::Suspension;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::body::{FinishedBody, Spool, sync_dir};
use crate::commit::GroupCommit;
use crate::failure::Failure;
use crate::model::IdGenerator;
use crate::schedule::Schedule;
use crate::store::{BodyPlace, Durability, Record, Store, StoreSlot};

/// How long a delivery result may wait for a flush that another writer
/// starts (see [`GroupCommit::durable_within`]) before it gets one of its
/// own. It is durable on return either way; this only bounds how long a
/// crash before that flush could make the message go out again, which
/// delivery's at-least-once promise allows.
const RESULT_FLUSH_DELAY: Duration = Duration::from_millis(2);

/// Everything that can go wrong in the queue, in words an operator understands.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool directory could not be created or read.
    #[error("spool {path}: {source}")]
    Spool {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Another process (normally a running `sluice serve`) holds the spool.
    #[error("spool {path} is in use by another process")]
    Locked {
        /// The spool directory.
        path: PathBuf,
    },
    /// A read or write on a body file failed.
    #[error("queue {id}: body I/O: {source}")]
    Body {
        /// The message whose body it is.
        id: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error("queue storage: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("queue {id}: corrupt record: {reason}")]
    Corrupt {
        /// The message (or, for an undecodable key, the key as text).
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No message with this ID is queued.
    #[error("no such message: {0}")]
    NotFound(String),
    /// The queue is shutting down and accepts no more writes.
    #[error("queue is closed")]
    Closed,
}

impl QueueError {
    /// True when the filesystem was full (`ENOSPC`, or `EDQUOT` for a
    /// quota): the client is told `452 4.3.1`, not `451 4.3.0`.
    pub fn is_no_space(&self) -> bool {
        let no_space = |error: &std::io::Error| {
            error.kind() == std::io::ErrorKind::StorageFull
                || error.kind() == std::io::ErrorKind::QuotaExceeded
        };
        match self {
            QueueError::Spool { source, .. } | QueueError::Body { source, .. } => no_space(source),
            // sled's errors come as text; its I/O errors carry the OS's.
            QueueError::Storage(text) => {
                text.contains("No space left on device") || text.contains("Disk quota exceeded")
            }
            _ => false,
        }
    }
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
            cache_capacity: 16 * 1024 * 1024,
        }
    }
}

/// Counts of queued messages and recipients, for metrics and `queue list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in the queue (held ones included).
    pub messages: u64,
    /// Messages parked by [`Queue::hold`].
    pub held: u64,
    /// Recipients of queued messages not yet attempted.
    pub pending: u64,
    /// Recipients of queued messages waiting for a retry.
    pub deferred: u64,
    /// Recipients already delivered, of messages still queued for others.
    pub delivered: u64,
    /// Recipients failed permanently, of messages still queued for others.
    pub failed: u64,
}

/// A handle on the queue; cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    /// The open database; empty only while [`Queue::recover`] reopens it.
    store: StoreSlot,
    /// What the group commit flushes: the open database's files (`None`
    /// while it is reopened).
    durability: Arc<Mutex<Option<Durability>>>,
    /// The first failed write or flush since the database was (re)opened.
    failure: Failure,
    /// The cache capacity the database is (re)opened with.
    cache_capacity: u64,
    spool: Arc<Spool>,
    ids: IdGenerator,
    /// The in-memory index and counters (none in an administrative handle);
    /// the lock also serialises read-modify-write of records so that
    /// concurrent changes to one message do not race.
    state: Mutex<State>,
    group: GroupCommit,
    changed: Arc<Notify>,
    /// Every recipient's change of state, for delivery events.
    journal: journal::Journal,
    /// Held (flock) for as long as the queue is open; declared last so that
    /// it is released only after sled closed its files.
    _lock: File,
}

/// What [`Inner::state`] guards: the due index and counters of a serving
/// handle; `None` for an administrative one ([`Queue::open_admin`]), which
/// keeps neither and lets the next serving open rebuild them from the records.
type State = Option<Index>;

/// The due-time index and the counters, rebuilt from the records at open.
struct Index {
    schedule: Schedule,
    stats: QueueStats,
}

/// Which kind of handle [`Queue::open_with`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The server's: due index, counters, leases, orphan cleanup.
    Serve,
    /// `sluice queue` offline: records only.
    Admin,
}

/// A message claimed for delivery. Until [`Queue::complete`] or
/// [`Queue::unclaim`] no other caller can claim it; claims do not survive a
/// restart, so work in flight at a crash becomes due again.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The message as it was when claimed.
    pub message: Message,
}

impl Queue {
    /// Opens (creating if needed) the spool at `path` for serving: rebuilds
    /// the due index and the counters from every record and removes body
    /// files without a record, so it reads the whole queue. Fails with
    /// [`QueueError::Locked`] when another process holds it.
    pub fn open(path: &Path, options: QueueOptions) -> Result<Queue, QueueError> {
        Queue::open_with(path, options, Mode::Serve)
    }

    /// Opens (creating if needed) the spool at `path` for administration
    /// while no server runs (`sluice queue`): takes the same exclusive lock
    /// and writes with the same durability, but reads no record at open, so
    /// it costs the same on a queue of 100,000 messages as on an empty one.
    ///
    /// Everything but scheduling works: [`Queue::get`], [`Queue::iter`],
    /// bodies, [`Queue::hold`], [`Queue::release`], [`Queue::retry_now`],
    /// [`Queue::delete`], [`Queue::complete`] (a bounce) and enqueueing (its
    /// DSN). [`Queue::claim_due`] returns nothing and [`Queue::next_due`]
    /// `None`: the server delivers, from the records, once it opens the
    /// spool. [`Queue::stats`] reads every record.
    pub fn open_admin(path: &Path, options: QueueOptions) -> Result<Queue, QueueError> {
        Queue::open_with(path, options, Mode::Admin)
    }

    fn open_with(path: &Path, options: QueueOptions, mode: Mode) -> Result<Queue, QueueError> {
        let usage = SpoolUsage::default();
        let spool = Arc::new(Spool::new(path, usage.clone()));
        let existing = path
            .ancestors()
            .find(|dir| dir.exists())
            .map(Path::to_path_buf);
        for dir in [path, spool.bodies.as_path(), spool.tmp.as_path()] {
            std::fs::create_dir_all(dir).map_err(spool_error(dir))?;
        }
        // A spool created now must survive a power cut with its name: every
        // directory that gained an entry is fsynced, from the one that
        // existed down to the spool's parent (the spool's own entries are
        // synced below, once sled created its files).
        if let Some(existing) = existing.filter(|existing| existing != path) {
            for dir in path.ancestors().skip(1) {
                sync_dir(dir).map_err(spool_error(dir))?;
                if dir == existing {
                    break;
                }
            }
        }
        let lock = lock_spool(path)?;
        let db_dir = path.join("db");
        // Rebuilt on a database instance of its own, dropped before the
        // serving one opens: sled 0.34 keeps every page it read until each of
        // its 256 cache shards saw 64 accesses (lru.rs), whatever the cache
        // capacity, so a scan of every record in the serving instance would
        // keep the whole record tree (about 1 KB a message) in memory for
        // good. The second open costs a fraction of the scan.
        let rebuilt = match mode {
            Mode::Serve => Some(Index::rebuild_apart(&db_dir)?),
            Mode::Admin => None,
        };
        let failure = Failure::default();
        let store = Store::open(&db_dir, options.cache_capacity)?
            .with_usage(usage.clone())
            .with_failure(failure.clone());
        let durability = Arc::new(Mutex::new(Some(store.durability(&db_dir)?)));
        for dir in [path, db_dir.as_path()] {
            sync_dir(dir).map_err(spool_error(dir))?;
        }

        clear_dir(&spool.tmp)?;
        let interrupted = store.recover_interrupted()?;
        if interrupted > 0 {
            tracing::info!(
                count = interrupted,
                "removed body chunks of writes interrupted by a crash"
            );
        }
        let state = match rebuilt {
            Some(index) => {
                remove_orphan_bodies(&store, &spool)?;
                // Opening sled decodes its whole snapshot (tens of MB at a
                // million messages) between allocations that stay: give the
                // holes back.
                memory::release_free();
                if index.stats.messages > 0 {
                    // Nothing in the database counts as reusable until the
                    // queue has drained once.
                    usage.set_live(database_bytes(&db_dir));
                }
                tracing::info!(spool = %path.display(), messages = index.stats.messages, "queue opened");
                Some(index)
            }
            None => {
                tracing::debug!(spool = %path.display(), "queue opened for administration");
                None
            }
        };

        let ids = IdGenerator::new(store.last_id()?.as_ref());
        let group = GroupCommit::start({
            let durability = durability.clone();
            let failure = failure.clone();
            move || {
                let mut durability = durability.lock().unwrap_or_else(|p| p.into_inner());
                match durability.as_mut() {
                    Some(durability) => durability.flush().inspect_err(|error| failure.set(error)),
                    None => Err("the spool's database is being reopened".to_string()),
                }
            }
        })
        .map_err(spool_error(path))?;
        let slot = StoreSlot::new(store);
        let journal = journal::Journal::open(slot.clone())?;
        Ok(Queue {
            inner: Arc::new(Inner {
                store: slot,
                durability,
                failure,
                cache_capacity: options.cache_capacity,
                spool,
                ids,
                state: Mutex::new(state),
                group,
                changed: Arc::new(Notify::new()),
                journal,
                _lock: lock,
            }),
        })
    }

    /// Starts a new message body; its queue ID is allocated now so that a
    /// `Received:` header naming it can be written first.
    pub fn new_body(&self) -> Result<BodyWriter, QueueError> {
        if self.inner.group.is_closed() {
            return Err(QueueError::Closed);
        }
        Ok(BodyWriter::new(
            self.inner.ids.next(),
            self.inner.spool.clone(),
        ))
    }

    /// Makes a message durable: returns its ID only once body, envelope and
    /// per-recipient state are on disk. The message is due at once.
    pub async fn commit(
        &self,
        envelope: Envelope,
        body: BodyWriter,
    ) -> Result<QueueId, QueueError> {
        self.commit_noted(envelope, body, false, None).await
    }

    /// [`Queue::commit`] for a message that is held from the start (a
    /// milter's quarantine): stored as durably, never due until released.
    /// Held in the same record as it is stored, so no delivery can claim
    /// it in between.
    pub async fn commit_held(
        &self,
        envelope: Envelope,
        body: BodyWriter,
    ) -> Result<QueueId, QueueError> {
        self.commit_noted(envelope, body, true, None).await
    }

    /// [`Queue::commit`] (held when `held`), with the message's Message-ID
    /// for the journal's entries about it.
    pub async fn commit_noted(
        &self,
        envelope: Envelope,
        body: BodyWriter,
        held: bool,
        message_id: Option<String>,
    ) -> Result<QueueId, QueueError> {
        if self.inner.group.is_closed() {
            return Err(QueueError::Closed);
        }
        let (id, size, body) = body.finish()?;
        let now = Utc::now();
        let (message_dsn, mut recipient_dsn) = match envelope.dsn {
            Some(dsn) => (
                Some(dsn.message).filter(|dsn| dsn.ret.is_some() || dsn.envid.is_some()),
                dsn.recipients.into_iter(),
            ),
            None => (None, Vec::new().into_iter()),
        };
        let message = Message {
            id: id.clone(),
            sender: envelope.sender,
            size,
            received_at: now,
            held,
            smtputf8: envelope.smtputf8,
            body_8bit: envelope.body_8bit,
            requiretls: envelope.requiretls,
            recipients: envelope
                .recipients
                .into_iter()
                .map(|address| Recipient {
                    address,
                    status: RecipientStatus::Pending,
                    attempts: 0,
                    next_attempt_at: Some(now),
                    last_reply: None,
                    dsn: recipient_dsn.next().filter(|dsn| !dsn.is_empty()),
                    attempts_log: Vec::new(),
                })
                .collect(),
            dsn: message_dsn,
            delay_notified_at: None,
        };
        let (place, inline) = match body {
            FinishedBody::Inline(bytes) => (
                BodyPlace::Inline {
                    chunks: store::chunk_count(bytes.len()),
                },
                bytes,
            ),
            FinishedBody::Spilled { file, pending } => {
                let spool = self.inner.spool.clone();
                let file_id = id.clone();
                tokio::task::spawn_blocking(move || {
                    FinishedBody::persist_file(file, &pending, &spool, &file_id)
                })
                .await
                .map_err(|error| QueueError::Body {
                    id: id.to_string(),
                    source: std::io::Error::other(error.to_string()),
                })??;
                (BodyPlace::File, Vec::new())
            }
        };
        let record = Record {
            message,
            body: place,
        };
        // Written and indexed under the state lock that every change holds,
        // so that no change sees the record before the index does (the
        // index trusts each record to be what it was last set from), and
        // indexed before the fsync so that a cancelled commit cannot leave
        // a stored but unscheduled message; claiming it early risks at most
        // a duplicate delivery after a crash, never a loss.
        let inserted = {
            let mut state = self.inner.state();
            // The journal's entries go into the log before the record (see
            // journal.rs: why this ordering is safe).
            let journaled = if self.inner.journal.enabled() {
                let entries = self
                    .inner
                    .journal
                    .received(&record.message, message_id.as_deref());
                message_id
                    .as_deref()
                    .map_or(Ok(()), |message_id| {
                        self.inner.journal.set_note(id.as_str(), message_id)
                    })
                    .and_then(|()| self.inner.journal.insert(&entries))
            } else {
                Ok(())
            };
            let inserted = journaled.and_then(|()| {
                self.inner
                    .store()
                    .and_then(|store| store.insert_new(&record, &inline))
            });
            if inserted.is_ok()
                && let Some(index) = state.as_mut()
            {
                index.schedule.set(&id, None, record.message.due_at());
                index.stats.add(&record.message);
            }
            inserted
        };
        if let Err(error) = inserted {
            if place == BodyPlace::File {
                self.inner.remove_body_file(&id).await;
            }
            return Err(error);
        }
        if let Err(error) = self.inner.group.durable().await {
            if self.inner.forget(&record) {
                self.inner.remove_body_file(&id).await;
            }
            return Err(error);
        }
        tracing::debug!(queue_id = %id, size, recipients = record.message.recipients.len(), "queued");
        self.inner.signal_changed();
        Ok(id)
    }

    /// Convenience: [`Queue::new_body`], write `body`, [`Queue::commit`].
    pub async fn enqueue(&self, envelope: Envelope, body: &[u8]) -> Result<QueueId, QueueError> {
        let mut writer = self.new_body()?;
        writer
            .append(body)
            .await
            .map_err(|source| QueueError::Body {
                id: writer.id().to_string(),
                source,
            })?;
        self.commit(envelope, writer).await
    }

    /// The message with this ID, or `None`.
    pub fn get(&self, id: &QueueId) -> Result<Option<Message>, QueueError> {
        Ok(self.inner.store()?.get(id)?.map(|record| record.message))
    }

    /// Streams every queued message in ID order (which is arrival order),
    /// starting after `after` when given. Memory does not grow with the queue.
    pub fn iter(
        &self,
        after: Option<&QueueId>,
    ) -> impl Iterator<Item = Result<Message, QueueError>> + '_ {
        let (records, closed) = match self.inner.store() {
            Ok(store) => (Some(store.records(after)), None),
            Err(error) => (None, Some(Err(error))),
        };
        records
            .into_iter()
            .flatten()
            .chain(closed)
            .map(|record| record.map(|record| record.message))
    }

    /// The named key-value tree beside the queue (e.g. `"mta-sts"`), for
    /// state that must survive a restart; the queue never reads it.
    pub fn side_tree(&self, name: &str) -> Result<SideTree, QueueError> {
        SideTree::new(name, self.inner.slot())
    }

    /// Opens the body of a queued message for reading. Does no file I/O: a
    /// body file is opened at the first read, and reading it
    /// ([`BodyReader::is_file`]) blocks, so async code does that on the
    /// blocking pool.
    pub fn open_body(&self, id: &QueueId) -> Result<BodyReader, QueueError> {
        let store = self.inner.store()?;
        let (size, place) = store
            .body_place(id)?
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        match place {
            BodyPlace::Inline { chunks } => {
                Ok(BodyReader::inline(store.tree(), id.clone(), size, chunks))
            }
            BodyPlace::File => Ok(BodyReader::file(self.inner.spool.body_path(id), id, size)),
        }
    }

    /// The earliest time at which an unclaimed, unheld message is due.
    /// Always `None` on an administrative handle.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>, QueueError> {
        Ok(self
            .inner
            .state()
            .as_ref()
            .and_then(|index| index.schedule.next_due()))
    }

    /// Claims up to `max` messages due at or before `now`, oldest due first.
    /// Costs O(returned items), not a scan of the queue. Always empty on an
    /// administrative handle, which does not deliver.
    pub fn claim_due(&self, now: DateTime<Utc>, max: usize) -> Result<Vec<Claim>, QueueError> {
        let ids = match self.inner.state().as_mut() {
            Some(index) => index.schedule.claim_due(now, max),
            None => return Ok(Vec::new()),
        };
        let mut claims = Vec::with_capacity(ids.len());
        for (position, id) in ids.iter().enumerate() {
            match self.inner.store().and_then(|store| store.get(id)) {
                Ok(Some(record)) => claims.push(Claim {
                    message: record.message,
                }),
                // Deleted between the index and the read: nothing to deliver.
                Ok(None) => {
                    if let Some(index) = self.inner.state().as_mut() {
                        index.schedule.remove(id, None);
                    }
                }
                Err(QueueError::Corrupt { id: text, reason }) => {
                    // Leave it claimed so it is not handed out in a loop; the
                    // operator sees the error in `queue list` and can delete it.
                    tracing::error!(queue_id = %text, %reason, "corrupt record not delivered");
                }
                Err(error) => {
                    if let Some(index) = self.inner.state().as_mut() {
                        for id in &ids[position..] {
                            index.schedule.unclaim(id);
                        }
                        for claim in &claims {
                            index.schedule.unclaim(&claim.message.id);
                        }
                    }
                    return Err(error);
                }
            }
        }
        Ok(claims)
    }

    /// Signalled whenever work may have become due earlier than
    /// [`Queue::next_due`] said before (enqueue, retry, release, unclaim, and
    /// complete when recipients remain). Both wakes every current waiter and
    /// stores a permit for the next one, so a scheduler that was busy when the
    /// change happened does not miss it.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.inner.changed.clone()
    }

    /// Records delivery outcomes for a claimed message and ends the claim.
    /// Durable on return. When no recipient is left pending or deferred, the
    /// message leaves the queue; the returned message shows the final state.
    ///
    /// Updates for recipients that are already delivered or failed (say, the
    /// operator bounced the message meanwhile) or that do not exist are
    /// ignored.
    pub async fn complete(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
    ) -> Result<Message, QueueError> {
        self.complete_logged(id, updates, Vec::new()).await
    }

    /// [`Queue::complete`], also appending `attempts` to the recipients'
    /// [`Recipient::attempts_log`] (the last [`ATTEMPTS_LOG_LEN`] are kept),
    /// in the same durable write. Attempts for recipients that are already
    /// delivered or failed, or that do not exist, are ignored.
    pub async fn complete_logged(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
        attempts: Vec<LoggedAttempt>,
    ) -> Result<Message, QueueError> {
        self.change_within(id, Lease::End, RESULT_FLUSH_DELAY, |message| {
            for logged in attempts {
                if let Some(recipient) = message.recipients.get_mut(logged.index)
                    && recipient.is_open()
                {
                    recipient.log_attempt(logged.attempt);
                }
            }
            for update in updates {
                let Some(recipient) = message.recipients.get_mut(update.index) else {
                    tracing::warn!(queue_id = %message.id, index = update.index, "outcome for a recipient that does not exist");
                    continue;
                };
                if !recipient.is_open() {
                    continue;
                }
                if !matches!(update.outcome, Outcome::Bounced { .. }) {
                    recipient.attempts = recipient.attempts.saturating_add(1);
                }
                let (status, reply, next_attempt_at) = match update.outcome {
                    Outcome::Delivered { reply } => (RecipientStatus::Delivered, reply, None),
                    Outcome::Failed { reply } | Outcome::Bounced { reply } => {
                        (RecipientStatus::Failed, reply, None)
                    }
                    Outcome::Deferred {
                        reply,
                        next_attempt_at,
                    } => (RecipientStatus::Deferred, reply, Some(next_attempt_at)),
                };
                recipient.status = status;
                recipient.last_reply = Some(reply);
                recipient.next_attempt_at = next_attempt_at;
            }
            Disposition::Keep
        })
        .await
    }

    /// Ends a claim without recording anything; the message is due again at
    /// its previous time.
    pub fn unclaim(&self, id: &QueueId) {
        let due = self
            .inner
            .state()
            .as_mut()
            .and_then(|index| index.schedule.unclaim(id));
        if due.is_some() {
            self.inner.signal_changed();
        }
    }

    /// Puts off the open recipients at `indices` until `until` without
    /// charging them an attempt (a suspended or shaped destination), noting
    /// `note` as their last reply. The claim, if any, is kept: the caller
    /// ends it as usual. Durable.
    pub async fn postpone(
        &self,
        id: &QueueId,
        indices: &[usize],
        until: DateTime<Utc>,
        note: &str,
    ) -> Result<Message, QueueError> {
        self.change(id, Lease::Keep, |message| {
            for &index in indices {
                if let Some(recipient) = message.recipients.get_mut(index)
                    && recipient.is_open()
                {
                    recipient.next_attempt_at = Some(until);
                    recipient.last_reply = Some(note.to_string());
                }
            }
            Disposition::Keep
        })
        .await
    }

    /// Every stored suspension, expired ones included (the caller decides).
    pub fn suspensions(&self) -> Result<Vec<Suspension>, QueueError> {
        let tree = self.inner.store()?.named_tree(suspensions::TREE)?;
        let mut found = Vec::new();
        for entry in tree.iter() {
            let (key, value) = entry
                .map_err(|error| QueueError::Storage(format!("reading suspensions: {error}")))?;
            match serde_json::from_slice::<Suspension>(&value) {
                Ok(suspension) => found.push(suspension),
                Err(error) => tracing::warn!(
                    destination = %String::from_utf8_lossy(&key),
                    %error,
                    "unreadable suspension ignored"
                ),
            }
        }
        Ok(found)
    }

    /// Stores (or replaces) the suspension of its destination. Durable.
    pub async fn suspend(&self, suspension: &Suspension) -> Result<(), QueueError> {
        if self.inner.group.is_closed() {
            return Err(QueueError::Closed);
        }
        let tree = self.inner.store()?.named_tree(suspensions::TREE)?;
        let value = serde_json::to_vec(suspension)
            .map_err(|error| QueueError::Storage(format!("encoding a suspension: {error}")))?;
        tree.insert(suspension.destination.as_bytes(), value)
            .map_err(|error| QueueError::Storage(format!("writing a suspension: {error}")))?;
        self.inner.group.durable().await
    }

    /// Removes the suspension of `destination`; true when there was one.
    /// Durable.
    pub async fn resume(&self, destination: &str) -> Result<bool, QueueError> {
        if self.inner.group.is_closed() {
            return Err(QueueError::Closed);
        }
        let tree = self.inner.store()?.named_tree(suspensions::TREE)?;
        let removed = tree
            .remove(destination.as_bytes())
            .map_err(|error| QueueError::Storage(format!("removing a suspension: {error}")))?;
        self.inner.group.durable().await?;
        Ok(removed.is_some())
    }

    /// Parks a message: it is never claimed until released. Durable.
    pub async fn hold(&self, id: &QueueId) -> Result<Message, QueueError> {
        self.change(id, Lease::Keep, |message| {
            message.held = true;
            Disposition::Keep
        })
        .await
    }

    /// Un-parks a held message. Durable.
    pub async fn release(&self, id: &QueueId) -> Result<Message, QueueError> {
        self.change(id, Lease::Keep, |message| {
            message.held = false;
            Disposition::Keep
        })
        .await
    }

    /// Makes every deferred recipient of the message due now. Durable. A held
    /// message stays held (and so is not delivered until released).
    pub async fn retry_now(&self, id: &QueueId) -> Result<Message, QueueError> {
        let now = Utc::now();
        self.change(id, Lease::Keep, |message| {
            for recipient in &mut message.recipients {
                // A pending recipient with a time was put off (postpone).
                if recipient.status == RecipientStatus::Deferred
                    || (recipient.status == RecipientStatus::Pending
                        && recipient.next_attempt_at.is_some())
                {
                    recipient.next_attempt_at = Some(now);
                }
            }
            Disposition::Keep
        })
        .await
    }

    /// Records that the delay notice for the message went out at `at`, so
    /// that none is sent again, even after a restart. Durable on return;
    /// the claim, if any, is kept.
    pub async fn note_delay_notice(
        &self,
        id: &QueueId,
        at: DateTime<Utc>,
    ) -> Result<Message, QueueError> {
        self.change(id, Lease::Keep, |message| {
            message.delay_notified_at = Some(at);
            Disposition::Keep
        })
        .await
    }

    /// Removes the message, body included. Durable. A claimed message is
    /// removed too; its claimer's [`Queue::complete`] then fails with
    /// [`QueueError::NotFound`].
    pub async fn delete(&self, id: &QueueId) -> Result<(), QueueError> {
        self.change(id, Lease::Keep, |_| Disposition::Remove)
            .await
            .map(drop)
    }

    /// Counts by status. Cheap: the counters are kept up to date in memory.
    /// An administrative handle keeps none and counts by reading every
    /// record (corrupt ones are skipped).
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        if let Some(index) = self.inner.state().as_ref() {
            return Ok(index.stats.clone());
        }
        let mut stats = QueueStats::default();
        for record in self.inner.store()?.records(None) {
            match record {
                Ok(record) => stats.add(&record.message),
                Err(QueueError::Corrupt { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(stats)
    }

    /// Messages in the queue, from the in-memory counters; `None` for an
    /// administrative handle, which keeps none (see [`Queue::stats`]).
    pub fn queued_messages(&self) -> Option<u64> {
        self.inner
            .state()
            .as_ref()
            .map(|index| index.stats.messages)
    }

    /// Why the storage failed, once a write or a flush of the database
    /// failed: sled then refuses every further write until the spool is
    /// opened again (by a new process), so the owner should stop and
    /// restart. `None` while healthy. A failed body file write
    /// ([`QueueError::Body`]) does not count.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.get()
    }

    /// What the queue writes, counted as it happens (for the free-space
    /// reserve of the binary).
    pub fn usage(&self) -> SpoolUsage {
        self.inner.spool.usage.clone()
    }

    /// Bytes the database's file takes on disk: once the queue drained, all
    /// but [`SpoolUsage::live`] of it is space sled reuses for new writes.
    pub fn database_bytes(&self) -> u64 {
        database_bytes(&self.inner.spool.root.join("db"))
    }

    /// Resolves once [`Queue::failure`] is set (at once if it already is).
    pub async fn failed(&self) -> String {
        self.inner.failure.wait().await
    }

    /// Opens the database again after a storage failure ([`Queue::failure`]),
    /// in this process: sled refuses every write after an I/O error until
    /// it is reopened. The reopened database holds exactly what was durable
    /// (every change acknowledged so far; the changes whose writers got an
    /// error are gone, as after a crash), so the due index and the counters
    /// are rebuilt from it; leases are kept, so that deliveries in flight
    /// are not handed out twice. Returns `Ok(false)` when nothing had
    /// failed.
    ///
    /// Changes wait (on the state lock) while this runs; durable writes in
    /// between fail as they did since the failure. Fails, leaving the
    /// database closed and the failure in place for the next try, when sled
    /// cannot be opened: still full, or a handle on the failed instance
    /// (a body being read for a delivery) still holds sled's lock.
    /// Blocking: call it on the blocking pool.
    pub fn recover(&self) -> Result<bool, QueueError> {
        let Some(reason) = self.inner.failure.get() else {
            return Ok(false);
        };
        let db_dir = self.inner.spool.root.join("db");
        let mut state = self.inner.state();
        *self
            .inner
            .durability
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
        drop(self.inner.store.take());
        let store = Store::open(&db_dir, self.inner.cache_capacity)?
            .with_usage(self.inner.spool.usage.clone())
            .with_failure(self.inner.failure.clone());
        store.recover_interrupted()?;
        let durability = store.durability(&db_dir)?;
        if let Some(index) = state.as_mut() {
            let mut rebuilt = Index::rebuild(&store)?;
            rebuilt.schedule.carry_claims(&index.schedule);
            *index = rebuilt;
            let live = if index.stats.messages > 0 {
                database_bytes(&db_dir)
            } else {
                0
            };
            self.inner.spool.usage.set_live(live);
        }
        *self
            .inner
            .durability
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(durability);
        self.inner.store.put(store);
        self.inner.failure.clear();
        drop(state);
        self.inner.changed.notify_waiters();
        tracing::info!(spool = %self.inner.spool.root.display(), failure = %reason, "queue database reopened after the storage failure: writing again");
        Ok(true)
    }

    /// Number of group flushes (each one fsync) since the queue was opened,
    /// for metrics and benchmarks.
    pub fn flush_count(&self) -> u64 {
        self.inner.group.count()
    }

    /// Flushes everything to disk and stops the group-commit flusher. Durable
    /// methods called afterwards fail with [`QueueError::Closed`].
    pub async fn close(&self) -> Result<(), QueueError> {
        let Some(thread) = self.inner.group.shutdown() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|error| QueueError::Storage(format!("joining the flusher: {error}")))?
            .map_err(|_| QueueError::Storage("the queue flusher panicked".into()))?;
        match self.inner.group.last_error() {
            None => Ok(()),
            Some(error) => Err(QueueError::Storage(format!("final flush: {error}"))),
        }
    }

    /// Read-modify-write of one record, then wait for durability.
    async fn change(
        &self,
        id: &QueueId,
        lease: Lease,
        edit: impl FnOnce(&mut Message) -> Disposition,
    ) -> Result<Message, QueueError> {
        self.change_within(id, lease, Duration::ZERO, edit).await
    }

    /// [`Queue::change`], made durable by a flush that starts within `delay`
    /// (see [`GroupCommit::durable_within`]).
    /// Writes journal entries for every change from now on (`true`), or
    /// none (`false`, the default: a relay without event subscribers pays
    /// nothing).
    pub fn set_journal(&self, on: bool) {
        self.inner.journal.set_enabled(on);
    }

    /// Whether changes are journaled now ([`Queue::set_journal`]).
    pub fn journal_enabled(&self) -> bool {
        self.inner.journal.enabled()
    }

    /// Up to `max` journal entries after sequence number `after`, in order.
    pub fn journal_read(&self, after: u64, max: usize) -> Result<Vec<JournalEntry>, QueueError> {
        self.inner.journal.read(after, max)
    }

    /// The last sequence number `subscriber` took, `None` for a subscriber
    /// never seen (which starts at the current end of the journal).
    pub fn journal_cursor(&self, subscriber: &str) -> Result<Option<u64>, QueueError> {
        self.inner.journal.cursor(subscriber)
    }

    /// Records that `subscriber` took every entry up to `seq`; durable on
    /// return (a crash before that re-sends them: at least once).
    pub async fn journal_ack(&self, subscriber: &str, seq: u64) -> Result<(), QueueError> {
        self.inner.journal.set_cursor(subscriber, seq)?;
        self.inner.group.durable_within(RESULT_FLUSH_DELAY).await
    }

    /// The last sequence number written (0: none yet).
    pub fn journal_last(&self) -> u64 {
        self.inner.journal.last()
    }

    /// How many entries follow sequence number `after`.
    pub fn journal_pending(&self, after: u64) -> u64 {
        self.inner.journal.count_after(after)
    }

    /// Removes the entries up to `upto`, which every subscriber has taken.
    pub fn journal_prune(&self, upto: u64) -> Result<usize, QueueError> {
        self.inner.journal.prune(upto)
    }

    /// Appends entries that are about no change of a message (the binary's
    /// own events); durable on return.
    pub async fn journal_append(&self, entries: Vec<JournalEntry>) -> Result<(), QueueError> {
        if !self.inner.journal.enabled() || entries.is_empty() {
            return Ok(());
        }
        {
            let _state = self.inner.state();
            self.inner.journal.insert(&entries)?;
        }
        self.inner.group.durable_within(RESULT_FLUSH_DELAY).await
    }

    async fn change_within(
        &self,
        id: &QueueId,
        lease: Lease,
        delay: Duration,
        edit: impl FnOnce(&mut Message) -> Disposition,
    ) -> Result<Message, QueueError> {
        let changed = self.inner.apply(id, lease, edit)?;
        self.inner.group.durable_within(delay).await?;
        if changed.removed_file {
            self.inner.remove_body_file(id).await;
        }
        if changed.due {
            self.inner.signal_changed();
        }
        Ok(changed.message)
    }
}

/// Whether [`Queue::change`] ends the caller's claim on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    Keep,
    End,
}

/// What a change decides about the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Keep it if any recipient is still open, else remove it.
    Keep,
    /// Remove it whatever its state.
    Remove,
}

/// The outcome of [`Inner::apply`].
struct Changed {
    /// The message after the change.
    message: Message,
    /// The message left the queue and its body file is to be removed once
    /// that is durable.
    removed_file: bool,
    /// The message is (again) in the due index.
    due: bool,
}

impl Index {
    /// [`Index::rebuild`] on a database instance opened for it and closed
    /// after it, with a small cache; then hands the memory its pages took
    /// back to the system.
    fn rebuild_apart(db_dir: &Path) -> Result<Index, QueueError> {
        let index = {
            let store = Store::open(db_dir, 1024 * 1024)?;
            Index::rebuild(&store)?
        };
        memory::release_free();
        Ok(index)
    }

    /// Reads every record into a fresh index; corrupt records are logged
    /// and skipped.
    fn rebuild(store: &Store) -> Result<Index, QueueError> {
        let mut index = Index {
            schedule: Schedule::default(),
            stats: QueueStats::default(),
        };
        let mut staged = schedule::Staged::default();
        let mut sketches = store.sketches();
        while let Some(sketch) = sketches.next_sketch() {
            match sketch {
                Ok((id, sketch)) => {
                    if let Some(due) = sketch.due_at() {
                        index.schedule.stage(&mut staged, &id, due);
                    }
                    index.stats.add_sketch(&sketch);
                }
                Err(QueueError::Corrupt { id, reason }) => {
                    tracing::error!(queue_id = %id, %reason, "skipping corrupt queue record");
                }
                Err(other) => return Err(other),
            }
        }
        index.schedule.add_staged(staged);
        Ok(index)
    }
}

impl Inner {
    /// The open database, or an error while [`Queue::recover`] reopens it.
    fn store(&self) -> Result<Arc<Store>, QueueError> {
        self.store.get()
    }

    /// The slot holding the open database, for handles that outlive a
    /// reopening ([`SideTree`]).
    fn slot(&self) -> StoreSlot {
        self.store.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update of State is completed before anything that can panic
        // (sled writes come first), so a poisoned lock still holds a
        // consistent index.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn signal_changed(&self) {
        self.changed.notify_waiters();
        self.changed.notify_one();
    }

    /// Takes back a message whose commit failed: its sender is told it was
    /// not accepted (and will send it again), so it must neither be
    /// delivered nor listed. Best effort: when the storage refuses the
    /// removal too (sled refuses every write after an I/O error), the record
    /// stays in sled's memory, but it never reaches the disk either.
    /// Returns true when its body file is to be removed (by the caller,
    /// off the runtime).
    fn forget(&self, record: &Record) -> bool {
        let id = &record.message.id;
        let mut state = self.state();
        // As it is now: a change may have come between commit and failure.
        let store = match self.store() {
            Ok(store) => store,
            Err(error) => {
                tracing::warn!(queue_id = %id, %error, "could not remove a message whose commit failed");
                return false;
            }
        };
        let current = match store.get(id) {
            Ok(Some(current)) => current,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(queue_id = %id, %error, "could not remove a message whose commit failed");
                return false;
            }
        };
        match store.remove(&current) {
            Ok(()) => {
                if let Some(index) = state.as_mut() {
                    index.schedule.remove(id, current.message.due_at());
                    index.stats.remove(&current.message);
                }
                current.body == BodyPlace::File
            }
            Err(error) => {
                tracing::warn!(queue_id = %id, %error, "could not remove a message whose commit failed");
                false
            }
        }
    }

    /// Removes the body file of a message that left the queue (or never
    /// entered it), on the blocking pool. A failure is harmless, only
    /// logged: open() removes body files without a record.
    async fn remove_body_file(&self, id: &QueueId) {
        let path = self.spool.body_path(id);
        let removal = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
        match removal {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(error)) => {
                tracing::warn!(queue_id = %id, %error, "could not remove a body file");
            }
            Err(error) => {
                tracing::warn!(queue_id = %id, %error, "could not remove a body file");
            }
        }
    }

    /// The synchronous part of a change: under the state lock, read the
    /// record, edit it, write it back (or remove it), update index and
    /// counters. Not yet durable.
    fn apply(
        &self,
        id: &QueueId,
        lease: Lease,
        edit: impl FnOnce(&mut Message) -> Disposition,
    ) -> Result<Changed, QueueError> {
        if self.group.is_closed() {
            return Err(QueueError::Closed);
        }
        let mut state = self.state();
        let store = self.store()?;
        let Some(mut record) = store.get(id)? else {
            return Err(QueueError::NotFound(id.to_string()));
        };
        let before = record.message.clone();
        let disposition = edit(&mut record.message);
        let removing = disposition == Disposition::Remove || record.message.is_finished();
        if self.journal.enabled() {
            let entries = self.journal.changes(&before, &record.message, removing);
            self.journal.insert(&entries)?;
            if removing {
                self.journal.forget_note(id.as_str())?;
            }
        }
        if removing {
            store.remove(&record)?;
            if let Some(index) = state.as_mut() {
                index.schedule.remove(id, before.due_at());
                index.stats.remove(&before);
            }
            return Ok(Changed {
                removed_file: record.body == BodyPlace::File,
                message: record.message,
                due: false,
            });
        }
        store.update(&record)?;
        let due = record.message.due_at();
        let Some(index) = state.as_mut() else {
            return Ok(Changed {
                message: record.message,
                removed_file: false,
                due: false,
            });
        };
        if lease == Lease::End {
            index.schedule.unclaim(id);
        }
        index.schedule.set(id, before.due_at(), due);
        index.stats.remove(&before);
        index.stats.add(&record.message);
        Ok(Changed {
            message: record.message,
            removed_file: false,
            due: due.is_some() && !index.schedule.is_claimed(id),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(thread) = self.group.shutdown()
            && thread.join().is_err()
        {
            tracing::error!("the queue flusher panicked");
        }
    }
}

/// Takes the spool's lock file, or reports who has it.
fn lock_spool(root: &Path) -> Result<File, QueueError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = root.join("lock");
    // Never through a symbolic link: the spool's owner could point one at
    // a file of root's choosing (DESIGN.md "Local access and privileges").
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(spool_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(QueueError::Locked {
            path: root.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(QueueError::Spool { path, source }),
    }
}

/// Removes everything in `dir` (uncommitted bodies of a previous run). A file
/// that cannot be removed only wastes space, so that is a warning.
fn clear_dir(dir: &Path) -> Result<(), QueueError> {
    for entry in std::fs::read_dir(dir).map_err(spool_error(dir))? {
        remove_leftover(&entry.map_err(spool_error(dir))?.path());
    }
    Ok(())
}

/// Removes body files whose record is gone: a crash struck between writing
/// the file and its record, or between removing the record and the file.
/// Bytes allocated to sled's data file in `db_dir` (0 when unreadable).
fn database_bytes(db_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(db_dir.join("db")).map_or(0, |meta| meta.blocks() * 512)
}

fn remove_orphan_bodies(store: &Store, spool: &Spool) -> Result<(), QueueError> {
    let dir = &spool.bodies;
    for entry in std::fs::read_dir(dir).map_err(spool_error(dir))? {
        let entry = entry.map_err(spool_error(dir))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(QueueId::parse) else {
            tracing::warn!(path = %entry.path().display(), "unexpected file in the body spool");
            continue;
        };
        if !store.contains(&id)? {
            tracing::info!(queue_id = %id, "removing a body file without a record");
            remove_leftover(&entry.path());
        }
    }
    Ok(())
}

fn remove_leftover(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "could not remove a leftover spool file");
    }
}

fn spool_error(path: &Path) -> impl Fn(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Spool {
        path: path.to_path_buf(),
        source,
    }
}

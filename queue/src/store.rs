//! The on-disk layout in sled: one tree, keys by prefix.
//!
//! - `m` ++ id: the [`Record`] (JSON): the [`Message`] and where its body is.
//! - `b` ++ id ++ `/` ++ chunk number (u32 big-endian): one inline body chunk.
//! - `p` ++ id: a message whose chunks are being written or removed.
//!
//! Queue IDs are `[A-Za-z0-9]+`, so `/` never occurs inside one and `m` keys
//! sort in ID order.
//!
//! Writes are plain inserts and removals, not [`sled::Batch`]es: a batch takes
//! sled's process-wide write lock, which waits for any flush in progress and
//! so would stall every writer (and the async runtime threads they run on)
//! for the length of each group flush. Instead the order of writes carries
//! the meaning, relying on sled recovering a prefix of its log after a crash:
//! a new message's chunks are written before its record, so a record always
//! has its body; a removed message loses its record before its chunks. The
//! `p` marker, written first and removed last, names the message whose
//! chunks a crash may have orphaned; [`Store::recover_interrupted`] removes
//! them at open.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::QueueError;
use crate::failure::Failure;
use crate::model::{Message, QueueId, Sketch};
use crate::usage::{self, SpoolUsage};

/// Bytes per inline body chunk. sled writes any page bigger than an eighth
/// of its 512 KiB segment as a separate "blob" file that it never fsyncs; a
/// leaf holds up to 17 entries, so entries stay small enough (17 × 4 KiB)
/// that pages never become blobs and the group fsync covers everything.
pub(crate) const CHUNK_SIZE: usize = 4 * 1024;

/// How much longer than [`CHUNK_SIZE`] a body's last chunk may be rather
/// than leave its tail to a chunk of its own: a message of 4 KiB plus its
/// `Received:` header then takes one chunk, not two, saving a sled insert
/// and a removal. Leaves (17 entries at most in sled) stay far below sled's
/// blob threshold (a quarter of its 512 KiB segment).
pub(crate) const CHUNK_SLACK: usize = 1024;

/// What a record is counted as in [`SpoolUsage::live`] (its encoded length
/// is not at hand at its removal).
const RECORD_ESTIMATE: usize = 1024;

/// A message's share of the database's live data in [`SpoolUsage::live`]:
/// its chunks, counted whole, and its record. The same at insertion and at
/// removal, so that the estimate neither drifts up nor down.
fn live_size(chunks: u32) -> u64 {
    u64::from(chunks) * CHUNK_SIZE as u64 + RECORD_ESTIMATE as u64
}

/// The name of the sled tree holding the queue.
const TREE: &str = "queue";

const RECORD_PREFIX: u8 = b'm';
const CHUNK_PREFIX: u8 = b'b';
const MARKER_PREFIX: u8 = b'p';

/// Where a message's body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum BodyPlace {
    /// In the tree, as this many [`CHUNK_SIZE`] chunks.
    Inline { chunks: u32 },
    /// In `bodies/<id>` beside the database.
    File,
}

/// What is stored under a message's record key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub message: Message,
    pub body: BodyPlace,
}

/// How long [`Store::open`] waits for sled's lock left by a database this
/// process has just closed.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the open [`Store`] is kept, shared by the queue and the handles
/// that outlive a reopening of the database ([`crate::SideTree`]); empty
/// while the database is reopened. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreSlot(Arc<RwLock<Option<Arc<Store>>>>);

impl StoreSlot {
    pub(crate) fn new(store: Store) -> StoreSlot {
        StoreSlot(Arc::new(RwLock::new(Some(Arc::new(store)))))
    }

    /// The open database, or an error while it is reopened.
    pub(crate) fn get(&self) -> Result<Arc<Store>, QueueError> {
        self.0
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or_else(|| QueueError::Storage("the spool's database is being reopened".into()))
    }

    /// Empties the slot, returning what it held.
    pub(crate) fn take(&self) -> Option<Arc<Store>> {
        self.0
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }

    /// Puts a (re)opened database in the slot.
    pub(crate) fn put(&self, store: Store) {
        *self.0.write().unwrap_or_else(|poison| poison.into_inner()) = Some(Arc::new(store));
    }
}

/// The sled database and the queue tree inside it.
pub(crate) struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// Set by the first failed write: sled refuses every later one.
    failure: Failure,
    /// Where every write is counted, for the free-space reserve.
    usage: SpoolUsage,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    ///
    /// The caller holds the spool's lock file, so no other process can hold
    /// sled's own lock; a sled lock still held is the last of a database
    /// this process closed a moment ago (sled's threads drop their handles
    /// shortly after the `Db`). That is waited out, for at most
    /// [`SLED_LOCK_WAIT`].
    pub(crate) fn open(dir: &Path, cache_capacity: u64) -> Result<Store, QueueError> {
        let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(cache_capacity)
                .mode(sled::Mode::HighThroughput)
                // Only the group-commit flusher makes data durable, so that
                // one fsync serves every writer waiting at that moment.
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(ref io))
                    if io.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(QueueError::Locked {
                            path: dir.to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(other) => {
                    return Err(QueueError::Storage(format!(
                        "opening {}: {other}",
                        dir.display()
                    )));
                }
            }
        };
        let tree = db
            .open_tree(TREE)
            .map_err(storage("opening the queue tree"))?;
        Ok(Store {
            db,
            tree,
            failure: Failure::default(),
            usage: SpoolUsage::default(),
        })
    }

    /// Records this store's failed writes in `failure`, which outlives a
    /// reopening of the database.
    pub(crate) fn with_failure(mut self, failure: Failure) -> Store {
        self.failure = failure;
        self
    }

    /// Counts this store's writes in `usage` from now on.
    pub(crate) fn with_usage(mut self, usage: SpoolUsage) -> Store {
        self.usage = usage;
        self
    }

    /// Turns a sled write error about `id` into a [`QueueError`] and records
    /// the failure: after an I/O error sled refuses every further write.
    fn written<T>(&self, id: &QueueId, result: sled::Result<T>) -> Result<T, QueueError> {
        result.map_err(|error| {
            let error = QueueError::Storage(format!("queue {id}: {error}"));
            self.failure.set(&error.to_string());
            error
        })
    }

    /// The side tree `name` (see [`crate::SideTree`]); never the queue's.
    pub(crate) fn side_tree(&self, name: &str) -> Result<sled::Tree, QueueError> {
        let full = format!("side/{name}");
        self.db
            .open_tree(full.as_bytes())
            .map_err(storage("opening a side tree"))
    }

    /// Another tree of the same database (flushed by the same group
    /// commit), opened on first use.
    pub(crate) fn named_tree(&self, name: &str) -> Result<sled::Tree, QueueError> {
        self.db
            .open_tree(name)
            .map_err(|error| QueueError::Storage(format!("opening the {name} tree: {error}")))
    }

    /// A clone of the tree handle, for body readers.
    pub(crate) fn tree(&self) -> sled::Tree {
        self.tree.clone()
    }

    /// What the group-commit flusher calls to make every write so far
    /// durable.
    pub(crate) fn durability(&self, dir: &Path) -> Result<Durability, QueueError> {
        let path = dir.join("db");
        let data_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| QueueError::Spool {
                path: path.clone(),
                source,
            })?;
        Ok(Durability {
            db: self.db.clone(),
            data_file,
            data_path: path,
            blobs: dir.join("blobs"),
            synced_blobs: HashSet::new(),
            blobs_listed: None,
        })
    }

    /// The record of message `id`, if queued.
    pub(crate) fn get(&self, id: &QueueId) -> Result<Option<Record>, QueueError> {
        let value = self.tree.get(record_key(id)).map_err(storage_for(id))?;
        value.map(|bytes| decode(id, &bytes)).transpose()
    }

    /// True when a record for `id` exists.
    /// A message's body size and place, or `None`: reads the record like
    /// [`Store::get`] but decodes only those fields (no allocation for the
    /// sender, recipients or dates), for opening a body.
    pub(crate) fn body_place(&self, id: &QueueId) -> Result<Option<(u64, BodyPlace)>, QueueError> {
        let Some(bytes) = self.tree.get(record_key(id)).map_err(storage_for(id))? else {
            return Ok(None);
        };
        let record: BodyOf = decode_as(id, &bytes)?;
        if record.message.id != *id {
            return Err(corrupt_names(id, &record.message.id));
        }
        Ok(Some((record.message.size, record.body)))
    }

    pub(crate) fn contains(&self, id: &QueueId) -> Result<bool, QueueError> {
        self.tree
            .contains_key(record_key(id))
            .map_err(storage_for(id))
    }

    /// Writes a new message: its inline body chunks (if any), then its record.
    /// Not durable until the next group flush.
    pub(crate) fn insert_new(&self, record: &Record, inline_body: &[u8]) -> Result<(), QueueError> {
        let id = &record.message.id;
        let has_chunks = !inline_body.is_empty();
        if has_chunks {
            self.mark_interrupted(id)?;
        }
        let chunks = chunk_count(inline_body.len());
        for number in 0..chunks {
            let start = number as usize * CHUNK_SIZE;
            let end = if number + 1 == chunks {
                inline_body.len()
            } else {
                start + CHUNK_SIZE
            };
            self.insert(id, chunk_key(id, number), &inline_body[start..end])?;
        }
        let encoded = encode(record);
        self.usage.stored(live_size(chunks));
        self.insert(id, record_key(id), &encoded)?;
        if has_chunks {
            self.unmark_interrupted(id)?;
        }
        Ok(())
    }

    /// Overwrites a message's record. Not durable until the next group flush.
    pub(crate) fn update(&self, record: &Record) -> Result<(), QueueError> {
        let id = &record.message.id;
        let encoded = encode(record);
        self.usage.wrote(encoded.len() as u64);
        self.written(id, self.tree.insert(record_key(id), encoded))
            .map(drop)
    }

    /// Removes a message's record, then its inline chunks. A body file is
    /// left for the caller to remove once this is durable.
    pub(crate) fn remove(&self, record: &Record) -> Result<(), QueueError> {
        let id = &record.message.id;
        let chunks = match record.body {
            BodyPlace::Inline { chunks } => chunks,
            BodyPlace::File => 0,
        };
        if chunks > 0 {
            self.mark_interrupted(id)?;
        }
        self.usage
            .wrote(u64::from(chunks + 1) * usage::WRITE_OVERHEAD);
        self.usage.released(live_size(chunks));
        self.written(id, self.tree.remove(record_key(id)))?;
        for number in 0..chunks {
            self.written(id, self.tree.remove(chunk_key(id, number)))?;
        }
        if chunks > 0 {
            self.unmark_interrupted(id)?;
        }
        Ok(())
    }

    /// Finishes what a crash interrupted: removes the inline chunks of every
    /// message whose insertion or removal was marked but whose record is
    /// absent. Returns how many messages were cleaned up.
    pub(crate) fn recover_interrupted(&self) -> Result<usize, QueueError> {
        let mut cleaned = 0;
        for entry in self.tree.scan_prefix([MARKER_PREFIX]) {
            let (key, _) = entry.map_err(storage("reading interrupted writes"))?;
            let id = id_from_prefixed_key(&key)?;
            if !self.contains(&id)? {
                let mut prefix = vec![CHUNK_PREFIX];
                prefix.extend_from_slice(id.as_str().as_bytes());
                prefix.push(b'/');
                for chunk in self.tree.scan_prefix(&prefix) {
                    let (chunk_key, _) = chunk.map_err(storage_for(&id))?;
                    self.written(&id, self.tree.remove(chunk_key))?;
                }
                cleaned += 1;
            }
            self.written(&id, self.tree.remove(key))?;
        }
        Ok(cleaned)
    }

    fn insert(&self, id: &QueueId, key: Vec<u8>, value: &[u8]) -> Result<(), QueueError> {
        self.usage.wrote((key.len() + value.len()) as u64);
        self.written(id, self.tree.insert(key, value)).map(drop)
    }

    fn mark_interrupted(&self, id: &QueueId) -> Result<(), QueueError> {
        self.insert(id, marker_key(id), &[])
    }

    fn unmark_interrupted(&self, id: &QueueId) -> Result<(), QueueError> {
        self.written(id, self.tree.remove(marker_key(id))).map(drop)
    }

    /// Inline body chunk `number` of message `id`.
    pub(crate) fn chunk(
        tree: &sled::Tree,
        id: &QueueId,
        number: u32,
    ) -> Result<Option<sled::IVec>, QueueError> {
        tree.get(chunk_key(id, number)).map_err(storage_for(id))
    }

    /// Every record in ID order, starting after `after`. Lazy: holds one
    /// record at a time.
    pub(crate) fn records(
        &self,
        after: Option<&QueueId>,
    ) -> impl Iterator<Item = Result<Record, QueueError>> + use<> {
        let start = match after {
            Some(id) => Bound::Excluded(record_key(id)),
            None => Bound::Included(vec![RECORD_PREFIX]),
        };
        let end = Bound::Excluded(vec![RECORD_PREFIX + 1]);
        self.tree.range::<Vec<u8>, _>((start, end)).map(|entry| {
            let (key, value) = entry.map_err(storage("reading the queue"))?;
            let id = id_from_prefixed_key(&key)?;
            decode(&id, &value)
        })
    }

    /// Every record in ID order, read as a [`Sketch`] (what the index
    /// needs), for rebuilding the index. sled's reading (pages read and
    /// decoded) runs on a thread of its own, ahead of the caller's JSON
    /// decoding: each was about half of a start-up's work.
    pub(crate) fn sketches(&self) -> Sketches {
        let records = self
            .tree
            .range(vec![RECORD_PREFIX]..vec![RECORD_PREFIX + 1]);
        let (sender, receiver) = std::sync::mpsc::sync_channel(BATCHES_AHEAD);
        let reader = std::thread::Builder::new()
            .name("sluice-index-read".into())
            .spawn(move || read_ahead(records, &sender));
        match reader {
            Ok(reader) => Sketches {
                entries: Entries::Ahead {
                    receiver: Some(receiver),
                    batch: Vec::new().into_iter(),
                    reader: Some(reader),
                },
                value: None,
            },
            // No thread to be had: read in line.
            Err(_) => Sketches {
                entries: Entries::Inline(Box::new(
                    self.tree
                        .range(vec![RECORD_PREFIX]..vec![RECORD_PREFIX + 1]),
                )),
                value: None,
            },
        }
    }

    /// The ID of the newest record, if any.
    pub(crate) fn last_id(&self) -> Result<Option<QueueId>, QueueError> {
        let last = self
            .tree
            .range(vec![RECORD_PREFIX]..vec![RECORD_PREFIX + 1])
            .next_back()
            .transpose()
            .map_err(storage("reading the queue"))?;
        last.map(|(key, _)| id_from_prefixed_key(&key)).transpose()
    }
}

/// Records read ahead in a batch.
type Batch = Vec<sled::Result<(sled::IVec, sled::IVec)>>;

/// Records in a batch read ahead, and batches waiting at most.
const BATCH_RECORDS: usize = 256;
const BATCHES_AHEAD: usize = 8;

/// Sends `records` in batches, up to the first error included, until the
/// receiver is gone.
fn read_ahead(records: sled::Iter, sender: &std::sync::mpsc::SyncSender<Batch>) {
    let mut batch = Vec::with_capacity(BATCH_RECORDS);
    for entry in records {
        let failed = entry.is_err();
        batch.push(entry);
        if (batch.len() == BATCH_RECORDS || failed)
            && sender
                .send(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_RECORDS),
                ))
                .is_err()
        {
            return;
        }
        if failed {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = sender.send(batch);
    }
}

/// Where [`Sketches`] takes its records from.
enum Entries {
    Inline(Box<sled::Iter>),
    Ahead {
        /// `None` once dropped, so the reader stops.
        receiver: Option<std::sync::mpsc::Receiver<Batch>>,
        batch: std::vec::IntoIter<sled::Result<(sled::IVec, sled::IVec)>>,
        reader: Option<std::thread::JoinHandle<()>>,
    },
}

impl Entries {
    fn next(&mut self) -> Option<sled::Result<(sled::IVec, sled::IVec)>> {
        match self {
            Entries::Inline(records) => records.next(),
            Entries::Ahead {
                receiver, batch, ..
            } => loop {
                if let Some(entry) = batch.next() {
                    return Some(entry);
                }
                *batch = receiver.as_ref()?.recv().ok()?.into_iter();
            },
        }
    }
}

impl Drop for Entries {
    /// Stops the reader and waits for it, so that no handle on the
    /// database outlives the sketches (the index is rebuilt on a database
    /// instance that is closed right after).
    fn drop(&mut self) {
        if let Entries::Ahead {
            receiver, reader, ..
        } = self
        {
            drop(receiver.take());
            if let Some(reader) = reader.take() {
                let _ = reader.join();
            }
        }
    }
}

/// A lending iterator over record sketches (a [`Sketch`] borrows its
/// record's bytes).
pub(crate) struct Sketches {
    entries: Entries,
    value: Option<sled::IVec>,
}

/// How a record is read for a sketch: only `message`, the rest skipped.
#[derive(Deserialize)]
struct RecordSketch<'a> {
    #[serde(borrow)]
    message: Sketch<'a>,
}

impl Sketches {
    /// The next record's ID and sketch.
    pub(crate) fn next_sketch(&mut self) -> Option<Result<(QueueId, Sketch<'_>), QueueError>> {
        let (key, value) = match self.entries.next()? {
            Ok(entry) => entry,
            Err(error) => return Some(Err(storage("reading the queue")(error))),
        };
        let id = match id_from_prefixed_key(&key) {
            Ok(id) => id,
            Err(error) => return Some(Err(error)),
        };
        let value = self.value.insert(value);
        let sketch = match decode_as::<RecordSketch<'_>>(&id, value) {
            Ok(record) => record.message,
            Err(error) => return Some(Err(error)),
        };
        if sketch.id != id.as_str() {
            let named = sketch.id.to_string();
            return Some(Err(QueueError::Corrupt {
                id: id.to_string(),
                reason: format!("record names message {named}"),
            }));
        }
        Some(Ok((id, sketch)))
    }
}

/// Makes sled's writes durable. sled's own flush writes its log with
/// `sync_file_range` only, which persists neither the file's size nor the
/// drive's write cache, and it never fsyncs the blob files it writes for
/// oversized pages (a record with thousands of recipients). So after sled's
/// flush this fsyncs new blob files (and their directory), then the log file.
pub(crate) struct Durability {
    db: sled::Db,
    data_file: File,
    data_path: PathBuf,
    blobs: PathBuf,
    /// Blob files already fsynced, so each is synced once.
    synced_blobs: HashSet<OsString>,
    /// The blob directory's modification time at the last listing, when
    /// it was old enough then (see [`Durability::blobs_unchanged`]).
    blobs_listed: Option<SystemTime>,
}

/// How much older than the listing a directory's modification time must be
/// for an unchanged time to prove an unchanged directory: file systems stamp
/// times from a coarse clock (a few milliseconds), so an entry created in
/// the same tick as a listing may leave the time as it was.
const MTIME_SETTLED: Duration = Duration::from_secs(2);

impl Durability {
    /// Makes every write applied before the call durable.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        self.db
            .flush()
            .map_err(|error| format!("sled flush: {error}"))?;
        self.sync_blobs()
            .map_err(|error| format!("fsync of {}: {error}", self.blobs.display()))?;
        self.data_file
            .sync_data()
            .map_err(|error| format!("fsync of {}: {error}", self.data_path.display()))
    }

    /// True when the blob directory has not changed since its last listing:
    /// its modification time is still the one seen then, and that time was
    /// settled. One `statx` instead of opening and listing the directory at
    /// every flush (sled writes blobs only for oversized pages, rarely).
    fn blobs_unchanged(&self) -> std::io::Result<bool> {
        let Some(listed) = self.blobs_listed else {
            return Ok(false);
        };
        match std::fs::metadata(&self.blobs) {
            Ok(metadata) => Ok(metadata.modified()? == listed),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn sync_blobs(&mut self) -> std::io::Result<()> {
        if self.blobs_unchanged()? {
            return Ok(());
        }
        // Taken before the listing: a change after it moves the time on.
        let listing_started = SystemTime::now();
        let modified = match std::fs::metadata(&self.blobs) {
            Ok(metadata) => metadata.modified()?,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut present = HashSet::new();
        let mut synced_new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()).and_then(|file| file.sync_data()) {
                    Ok(()) => synced_new = true,
                    // Garbage-collected by sled meanwhile.
                    Err(error) if error.kind() == ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if synced_new {
            File::open(&self.blobs)?.sync_all()?;
        }
        let settled = modified
            .checked_add(MTIME_SETTLED)
            .is_some_and(|settled| settled <= listing_started);
        self.blobs_listed = settled.then_some(modified);
        Ok(())
    }
}

/// Number of chunks an inline body of `len` bytes takes: [`CHUNK_SIZE`]
/// each, the last one up to [`CHUNK_SLACK`] longer.
pub(crate) fn chunk_count(len: usize) -> u32 {
    let full = len / CHUNK_SIZE;
    let count = match len % CHUNK_SIZE {
        0 => full,
        _ if full == 0 => 1,
        tail if tail <= CHUNK_SLACK => full,
        _ => full + 1,
    };
    u32::try_from(count).expect("inline bodies are at most INLINE_MAX bytes")
}

fn record_key(id: &QueueId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.as_str().len());
    key.push(RECORD_PREFIX);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn chunk_key(id: &QueueId, number: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.as_str().len() + 6);
    key.push(CHUNK_PREFIX);
    key.extend_from_slice(id.as_str().as_bytes());
    key.push(b'/');
    key.extend_from_slice(&number.to_be_bytes());
    key
}

fn marker_key(id: &QueueId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.as_str().len());
    key.push(MARKER_PREFIX);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn id_from_prefixed_key(key: &[u8]) -> Result<QueueId, QueueError> {
    key.get(1..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(QueueId::parse)
        .ok_or_else(|| QueueError::Corrupt {
            id: String::from_utf8_lossy(key).into_owned(),
            reason: "key does not name a queue ID".into(),
        })
}

fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("records contain only JSON-representable values")
}

fn decode(id: &QueueId, bytes: &[u8]) -> Result<Record, QueueError> {
    let record: Record = decode_as(id, bytes)?;
    if record.message.id != *id {
        return Err(corrupt_names(id, &record.message.id));
    }
    Ok(record)
}

/// The fields of a [`Record`] that [`Store::body_place`] needs; serde skips
/// the others.
#[derive(Deserialize)]
struct BodyOf {
    message: SizeOf,
    body: BodyPlace,
}

#[derive(Deserialize)]
struct SizeOf {
    id: QueueId,
    size: u64,
}

fn decode_as<'a, T: Deserialize<'a>>(id: &QueueId, bytes: &'a [u8]) -> Result<T, QueueError> {
    serde_json::from_slice(bytes).map_err(|error| QueueError::Corrupt {
        id: id.to_string(),
        reason: error.to_string(),
    })
}

fn corrupt_names(id: &QueueId, named: &QueueId) -> QueueError {
    QueueError::Corrupt {
        id: id.to_string(),
        reason: format!("record names message {named}"),
    }
}

fn storage(context: &'static str) -> impl Fn(sled::Error) -> QueueError {
    move |error| QueueError::Storage(format!("{context}: {error}"))
}

fn storage_for(id: &QueueId) -> impl Fn(sled::Error) -> QueueError + '_ {
    move |error| QueueError::Storage(format!("queue {id}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdGenerator, Recipient, RecipientStatus};

    fn record(id: &QueueId, chunks: u32) -> Record {
        Record {
            message: Message {
                id: id.clone(),
                sender: String::new(),
                size: 0,
                received_at: chrono::Utc::now(),
                held: false,
                smtputf8: false,
                body_8bit: false,
                requiretls: false,
                recipients: vec![Recipient {
                    address: "a@example.org".into(),
                    status: RecipientStatus::Pending,
                    attempts: 0,
                    next_attempt_at: None,
                    last_reply: None,
                    dsn: None,
                    attempts_log: Vec::new(),
                }],
                dsn: None,
                delay_notified_at: None,
            },
            body: BodyPlace::Inline { chunks },
        }
    }

    fn keys(store: &Store) -> Vec<Vec<u8>> {
        store
            .tree
            .iter()
            .keys()
            .map(|key| key.expect("key").to_vec())
            .collect()
    }

    #[test]
    fn body_place_reads_what_get_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("store opens");
        let ids = IdGenerator::new(None);
        let (inline, file, absent) = (ids.next(), ids.next(), ids.next());
        let mut with_size = record(&inline, 1);
        with_size.message.size = 1234;
        store.insert_new(&with_size, b"x").expect("insert");
        let mut spilled = record(&file, 0);
        spilled.body = BodyPlace::File;
        store.insert_new(&spilled, &[]).expect("insert");

        assert_eq!(
            store.body_place(&inline).expect("read"),
            Some((1234, BodyPlace::Inline { chunks: 1 }))
        );
        assert_eq!(
            store.body_place(&file).expect("read"),
            Some((0, BodyPlace::File))
        );
        assert_eq!(store.body_place(&absent).expect("read"), None);
        // A record stored under another message's key is corrupt, as for get.
        store
            .insert(&absent, record_key(&absent), &encode(&with_size))
            .expect("insert");
        assert!(matches!(
            store.body_place(&absent),
            Err(QueueError::Corrupt { .. })
        ));
        assert!(matches!(
            store.get(&absent),
            Err(QueueError::Corrupt { .. })
        ));
    }

    #[test]
    fn sketches_give_what_full_records_give() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("store opens");
        let ids = IdGenerator::new(None);
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        let mut expected = Vec::new();
        for (held, status, next) in [
            (false, RecipientStatus::Pending, None),
            (false, RecipientStatus::Deferred, Some(later)),
            (true, RecipientStatus::Deferred, Some(later)),
            (false, RecipientStatus::Delivered, None),
        ] {
            let id = ids.next();
            let mut record = record(&id, 0);
            record.message.held = held;
            record.message.recipients[0].status = status;
            record.message.recipients[0].next_attempt_at = next;
            record.message.recipients[0].last_reply = Some("451 \"quoted\" later".into());
            record
                .message
                .recipients
                .push(record.message.recipients[0].clone());
            record.message.recipients[1].status = RecipientStatus::Failed;
            store.insert_new(&record, &[]).expect("insert");
            expected.push(record.message);
        }
        let mut sketches = store.sketches();
        for message in &expected {
            let (id, sketch) = sketches
                .next_sketch()
                .expect("one per record")
                .expect("reads");
            assert_eq!(id, message.id);
            assert_eq!(sketch.due_at(), message.due_at());
            let (mut full, mut sketched) =
                (crate::QueueStats::default(), crate::QueueStats::default());
            full.add(message);
            sketched.add_sketch(&sketch);
            assert_eq!(full, sketched);
        }
        assert!(sketches.next_sketch().is_none());
    }

    #[test]
    fn a_short_tail_shares_the_last_chunk() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + CHUNK_SLACK), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + CHUNK_SLACK + 1), 2);
        assert_eq!(chunk_count(2 * CHUNK_SIZE), 2);
        assert_eq!(chunk_count(3 * CHUNK_SIZE + 1), 3);
    }

    #[test]
    fn a_body_reads_back_whole_whatever_its_chunking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("store opens");
        let ids = IdGenerator::new(None);
        for len in [
            0,
            1,
            CHUNK_SIZE,
            CHUNK_SIZE + CHUNK_SLACK,
            CHUNK_SIZE + CHUNK_SLACK + 1,
            3 * CHUNK_SIZE + 7,
        ] {
            let id = ids.next();
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let chunks = chunk_count(len);
            store
                .insert_new(&record(&id, chunks), &body)
                .expect("insert");
            let mut read = Vec::new();
            for number in 0..chunks {
                let chunk = Store::chunk(&store.tree, &id, number)
                    .expect("read")
                    .expect("chunk present");
                assert!(chunk.len() <= CHUNK_SIZE + CHUNK_SLACK);
                read.extend_from_slice(&chunk);
            }
            assert!(
                Store::chunk(&store.tree, &id, chunks)
                    .expect("read")
                    .is_none()
            );
            assert_eq!(read, body, "body of {len} octets");
        }
    }

    #[test]
    fn chunks_orphaned_by_an_interrupted_insert_are_removed_at_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("store opens");
        let ids = IdGenerator::new(None);
        let (kept, orphaned) = (ids.next(), ids.next());
        store
            .insert_new(&record(&kept, 2), &[7u8; CHUNK_SIZE + CHUNK_SLACK + 1])
            .expect("insert");
        // A crash after the marker and a chunk, before the record.
        store.mark_interrupted(&orphaned).expect("mark");
        store
            .insert(&orphaned, chunk_key(&orphaned, 0), b"x")
            .expect("chunk");
        let before = keys(&store).len();

        assert_eq!(store.recover_interrupted().expect("recovery"), 1);
        let after = keys(&store);
        assert_eq!(after.len(), before - 2, "marker and chunk removed");
        assert_eq!(
            after.len(),
            3,
            "the complete message keeps record and chunks"
        );
        assert!(store.get(&kept).expect("get").is_some());
    }

    #[test]
    fn an_interrupted_removal_that_kept_the_record_keeps_the_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("store opens");
        let id = IdGenerator::new(None).next();
        store.insert_new(&record(&id, 1), b"body").expect("insert");
        store.mark_interrupted(&id).expect("mark");
        assert_eq!(store.recover_interrupted().expect("recovery"), 0);
        assert_eq!(keys(&store).len(), 2, "record and chunk kept, marker gone");
        store.remove(&record(&id, 1)).expect("remove");
        assert!(keys(&store).is_empty(), "removal leaves nothing");
    }
}

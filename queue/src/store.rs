//! The on-disk layout in sled: one tree, keys by prefix, atomic batches.
//!
//! Everything lives in the tree `queue` so that a message's record and its
//! inline body chunks are written by one atomic [`sled::Batch`]:
//!
//! - `m` ++ id: the [`Record`] (JSON): the [`Message`] and where its body is.
//! - `b` ++ id ++ `/` ++ chunk number (u32 big-endian): one inline body chunk.
//!
//! Queue IDs are `[A-Za-z0-9]+`, so `/` never occurs inside one and `m` keys
//! sort in ID order.

use std::fs::File;
use std::ops::Bound;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::QueueError;
use crate::model::{Message, QueueId};

/// Bytes per inline body chunk. sled writes any page bigger than an eighth
/// of its 512 KiB segment as a separate "blob" file that it never fsyncs; a
/// leaf holds up to 17 entries, so entries stay small enough (17 × 4 KiB)
/// that pages never become blobs and the group fsync covers everything.
pub(crate) const CHUNK_SIZE: usize = 4 * 1024;

/// The name of the sled tree holding the queue.
const TREE: &str = "queue";

const RECORD_PREFIX: u8 = b'm';
const CHUNK_PREFIX: u8 = b'b';

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

/// The sled database and the queue tree inside it.
pub(crate) struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub(crate) fn open(dir: &Path, cache_capacity: u64) -> Result<Store, QueueError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .mode(sled::Mode::HighThroughput)
            // Only the group-commit flusher makes data durable, so that one
            // fsync serves every writer waiting at that moment.
            .flush_every_ms(None)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                    QueueError::Locked {
                        path: dir.to_path_buf(),
                    }
                }
                other => QueueError::Storage(format!("opening {}: {other}", dir.display())),
            })?;
        let tree = db
            .open_tree(TREE)
            .map_err(storage("opening the queue tree"))?;
        Ok(Store { db, tree })
    }

    /// A clone of the database handle, for the flusher.
    pub(crate) fn db(&self) -> sled::Db {
        self.db.clone()
    }

    /// A clone of the tree handle, for body readers.
    pub(crate) fn tree(&self) -> sled::Tree {
        self.tree.clone()
    }

    /// The data file sled writes its log into, opened for fsync: sled's own
    /// flush only issues `sync_file_range`, which neither persists the file's
    /// size nor flushes the drive's cache.
    pub(crate) fn data_file(dir: &Path) -> Result<File, QueueError> {
        let path = dir.join("db");
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| QueueError::Spool { path, source })
    }

    /// The record of message `id`, if queued.
    pub(crate) fn get(&self, id: &QueueId) -> Result<Option<Record>, QueueError> {
        let value = self.tree.get(record_key(id)).map_err(storage_for(id))?;
        value.map(|bytes| decode(id, &bytes)).transpose()
    }

    /// True when a record for `id` exists.
    pub(crate) fn contains(&self, id: &QueueId) -> Result<bool, QueueError> {
        self.tree
            .contains_key(record_key(id))
            .map_err(storage_for(id))
    }

    /// Writes a new message: its inline body chunks (if any) and its record,
    /// in one atomic batch. Not durable until the next group flush.
    pub(crate) fn insert_new(&self, record: &Record, inline_body: &[u8]) -> Result<(), QueueError> {
        let id = &record.message.id;
        let mut batch = sled::Batch::default();
        for (number, chunk) in inline_body.chunks(CHUNK_SIZE).enumerate() {
            let number = u32::try_from(number).expect("inline bodies have few chunks");
            batch.insert(chunk_key(id, number), chunk);
        }
        batch.insert(record_key(id), encode(record));
        self.tree.apply_batch(batch).map_err(storage_for(id))
    }

    /// Overwrites a message's record. Not durable until the next group flush.
    pub(crate) fn update(&self, record: &Record) -> Result<(), QueueError> {
        let id = &record.message.id;
        self.tree
            .insert(record_key(id), encode(record))
            .map(drop)
            .map_err(storage_for(id))
    }

    /// Removes a message's record and inline chunks in one atomic batch. A
    /// body file is left for the caller to remove once this is durable.
    pub(crate) fn remove(&self, record: &Record) -> Result<(), QueueError> {
        let id = &record.message.id;
        let mut batch = sled::Batch::default();
        if let BodyPlace::Inline { chunks } = record.body {
            for number in 0..chunks {
                batch.remove(chunk_key(id, number));
            }
        }
        batch.remove(record_key(id));
        self.tree.apply_batch(batch).map_err(storage_for(id))
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
            let id = id_from_record_key(&key)?;
            decode(&id, &value)
        })
    }

    /// The ID of the newest record, if any.
    pub(crate) fn last_id(&self) -> Result<Option<QueueId>, QueueError> {
        let last = self
            .tree
            .range(vec![RECORD_PREFIX]..vec![RECORD_PREFIX + 1])
            .next_back()
            .transpose()
            .map_err(storage("reading the queue"))?;
        last.map(|(key, _)| id_from_record_key(&key)).transpose()
    }
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

fn id_from_record_key(key: &[u8]) -> Result<QueueId, QueueError> {
    key.get(1..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(QueueId::parse)
        .ok_or_else(|| QueueError::Corrupt {
            id: String::from_utf8_lossy(key).into_owned(),
            reason: "record key is not a queue ID".into(),
        })
}

fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("records contain only JSON-representable values")
}

fn decode(id: &QueueId, bytes: &[u8]) -> Result<Record, QueueError> {
    let record: Record = serde_json::from_slice(bytes).map_err(|error| QueueError::Corrupt {
        id: id.to_string(),
        reason: error.to_string(),
    })?;
    if record.message.id != *id {
        return Err(QueueError::Corrupt {
            id: id.to_string(),
            reason: format!("record names message {}", record.message.id),
        });
    }
    Ok(record)
}

fn storage(context: &'static str) -> impl Fn(sled::Error) -> QueueError {
    move |error| QueueError::Storage(format!("{context}: {error}"))
}

fn storage_for(id: &QueueId) -> impl Fn(sled::Error) -> QueueError + '_ {
    move |error| QueueError::Storage(format!("queue {id}: {error}"))
}

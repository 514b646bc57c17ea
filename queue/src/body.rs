//! Message bodies: buffered in memory while small, spilled to a file when
//! big, streamed back chunk by chunk.
//!
//! A [`BodyWriter`] keeps up to [`INLINE_MAX`] bytes in memory; those bodies
//! are committed into the sled tree as [`CHUNK_SIZE`](crate::store::CHUNK_SIZE) chunks just before the
//! record, and share its group fsync. Past the threshold
//! the writer spills to `tmp/<id>`; at commit that file is fsynced, renamed to
//! `bodies/<id>` and the directory fsynced, all before the record is written.
//!
//! None of this touches a file on the caller's thread, which is an async
//! runtime worker: creating and writing the spill file
//! ([`BodyWriter::append`]), persisting it at commit, and removing it when
//! the body is dropped all run on tokio's blocking pool
//! (`spawn_blocking`). A body that stays in memory never pays for that. A
//! [`BodyReader`] opens its file only at its first read, so opening one is
//! free; reading a file body ([`BodyReader::is_file`]) blocks and belongs on
//! the blocking pool too.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::QueueError;
use crate::model::QueueId;
use crate::store::Store;
use crate::usage::SpoolUsage;

/// Bodies up to this size live in the sled tree; bigger ones in files.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

/// Buffer size for body file I/O: a spilled body is written in pieces of at
/// least this size, one trip to the blocking pool each.
const FILE_BUFFER: usize = 64 * 1024;

/// The spool directory's layout.
#[derive(Debug)]
pub(crate) struct Spool {
    /// Committed body files, named by queue ID.
    pub bodies: PathBuf,
    /// Body files being written, not yet committed; emptied at open.
    pub tmp: PathBuf,
    /// Where bodies being received are counted (see [`SpoolUsage`]).
    pub usage: SpoolUsage,
    /// The spool directory itself.
    pub root: PathBuf,
}

impl Spool {
    pub(crate) fn new(root: &Path, usage: SpoolUsage) -> Spool {
        Spool {
            bodies: root.join("bodies"),
            tmp: root.join("tmp"),
            usage,
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn body_path(&self, id: &QueueId) -> PathBuf {
        self.bodies.join(id.as_str())
    }
}

/// A message body being written, before it is committed.
///
/// Dropping it without [`Queue::commit`](crate::Queue::commit) removes every
/// trace of it. The first 64 KiB stay in memory; past that, the body goes to
/// a spool file in pieces of 64 KiB or more, each written on the blocking
/// pool (no fsync: that happens at commit). After a failed write the body is
/// discarded and cannot be committed.
pub struct BodyWriter {
    id: QueueId,
    spool: Arc<Spool>,
    len: u64,
    /// Bytes counted in [`SpoolUsage::in_flight`], uncounted at drop.
    counted: u64,
    state: WriterState,
}

enum WriterState {
    /// Still small: kept in memory.
    Memory(Vec<u8>),
    /// Spilled: bytes not yet written to the file wait in `pending`. `file`
    /// is `None` while a write is in flight on the blocking pool, which then
    /// owns it (and removes it, should this writer be dropped meanwhile).
    Spilled {
        file: Option<SpillFile>,
        pending: Vec<u8>,
    },
    /// Handed over to commit (or failed to spill): nothing to clean up.
    Taken,
}

/// A spilled body's file in `tmp/`, removed when dropped unless
/// [`FinishedBody::persist_file`] moved it into `bodies/`. Its drop removes
/// a file, so it is dropped on the blocking pool (see [`BodyWriter`]'s
/// `Drop`).
pub(crate) struct SpillFile {
    id: QueueId,
    path: PathBuf,
    file: File,
    /// Cleared once the file was renamed away: nothing left to remove.
    remove_on_drop: bool,
}

impl SpillFile {
    /// Creates `path`. Blocking.
    fn create(id: QueueId, path: PathBuf) -> io::Result<SpillFile> {
        let file = create_file(&path)?;
        Ok(SpillFile {
            id,
            path,
            file,
            remove_on_drop: true,
        })
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if self.remove_on_drop {
            remove_uncommitted(&self.id, &self.path);
        }
    }
}

/// A body ready to be committed.
pub(crate) enum FinishedBody {
    Inline(Vec<u8>),
    /// The file, and the tail of the body not yet written to it.
    Spilled {
        file: SpillFile,
        pending: Vec<u8>,
    },
}

impl BodyWriter {
    pub(crate) fn new(id: QueueId, spool: Arc<Spool>) -> BodyWriter {
        BodyWriter {
            id,
            spool,
            len: 0,
            counted: 0,
            state: WriterState::Memory(Vec::new()),
        }
    }

    /// The queue ID this body will be committed under.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` to the body. While the body fits in memory
    /// (64 KiB) this only copies; past that, every 64 KiB gathered
    /// are written to the spill file on tokio's blocking pool, so the
    /// calling task never waits for the disk on a runtime worker. After an
    /// error the body is gone (its file removed before this returns) and
    /// cannot be committed.
    pub async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let result = self.append_inner(bytes).await;
        if result.is_err() {
            self.discard();
        }
        result
    }

    async fn append_inner(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !matches!(self.state, WriterState::Taken) {
            // Counted until the body is committed or dropped.
            self.spool.usage.receiving(bytes.len() as u64);
            self.counted += bytes.len() as u64;
        }
        match &mut self.state {
            WriterState::Memory(buffer) if buffer.len() + bytes.len() <= INLINE_MAX => {
                buffer.extend_from_slice(bytes);
                self.len += bytes.len() as u64;
                return Ok(());
            }
            WriterState::Memory(buffer) => {
                let mut pending = std::mem::take(buffer);
                pending.extend_from_slice(bytes);
                self.state = WriterState::Spilled {
                    file: None,
                    pending,
                };
            }
            WriterState::Spilled { pending, .. } => {
                pending.extend_from_slice(bytes);
                if pending.len() < FILE_BUFFER {
                    self.len += bytes.len() as u64;
                    return Ok(());
                }
            }
            WriterState::Taken => {
                return Err(io::Error::other("an earlier write to this body failed"));
            }
        }
        self.len += bytes.len() as u64;
        self.write_pending().await
    }

    /// Writes the pending bytes to the spill file (creating it first, at the
    /// spill) on the blocking pool.
    async fn write_pending(&mut self) -> io::Result<()> {
        let WriterState::Spilled { file, pending } = &mut self.state else {
            return Ok(());
        };
        let file = file.take();
        let mut bytes = std::mem::take(pending);
        let length = bytes.len() as u64;
        let id = self.id.clone();
        let path = self.spool.tmp.join(self.id.as_str());
        let (file, buffer) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let mut file = match file {
                Some(file) => file,
                None => SpillFile::create(id, path)?,
            };
            // On an error `file` is dropped here, which removes it.
            file.file.write_all(&bytes)?;
            bytes.clear();
            Ok((file, bytes))
        })
        .await
        .map_err(io::Error::other)??;
        if let WriterState::Spilled {
            file: slot,
            pending,
        } = &mut self.state
        {
            *slot = Some(file);
            // The buffer goes round again rather than a new one growing.
            *pending = buffer;
        }
        // No longer held in memory but written to the filesystem: counted
        // as written since the last sample, no longer as in flight.
        let moved = length.min(self.counted);
        self.counted -= moved;
        self.spool.usage.received(moved);
        self.spool.usage.wrote(length);
        Ok(())
    }

    /// Replaces the first `length` bytes written with `replacement`: with
    /// `length` 0 it puts a header in front of the message (a DKIM
    /// signature, known only once the whole body was hashed); with the
    /// length of the header section it rewrites that section. A body in
    /// memory is edited in place (spilling when it outgrows 64 KiB); a
    /// spilled body is copied into a new file behind `replacement`, on the
    /// blocking pool, which costs a read and a write of the whole file.
    /// After an error the body is gone, as after a failed append.
    pub async fn replace_start(&mut self, length: u64, replacement: &[u8]) -> io::Result<()> {
        if length > self.len {
            return Err(io::Error::other(format!(
                "cannot replace {length} bytes of a body of {}",
                self.len
            )));
        }
        let result = self.replace_start_inner(length, replacement).await;
        if result.is_err() {
            self.discard();
        }
        result
    }

    async fn replace_start_inner(&mut self, length: u64, replacement: &[u8]) -> io::Result<()> {
        let length_in_memory = usize::try_from(length).map_err(io::Error::other)?;
        match &mut self.state {
            WriterState::Memory(buffer) => {
                buffer.splice(..length_in_memory, replacement.iter().copied());
                self.len = buffer.len() as u64;
                if buffer.len() > INLINE_MAX {
                    let pending = std::mem::take(buffer);
                    self.state = WriterState::Spilled {
                        file: None,
                        pending,
                    };
                    self.write_pending().await?;
                }
                Ok(())
            }
            WriterState::Spilled { .. } => {
                // Everything into the file first, then copy it behind the
                // replacement into a new file that takes the old one's name.
                self.write_pending().await?;
                let WriterState::Spilled { file, .. } = &mut self.state else {
                    return Err(io::Error::other("the body is no longer being written"));
                };
                let Some(mut spill) = file.take() else {
                    return Err(io::Error::other("an earlier write to this body failed"));
                };
                let added = replacement.len() as u64;
                let replacement = replacement.to_vec();
                let new_path = spill.path.with_extension("rewrite");
                let spill = tokio::task::spawn_blocking(move || -> io::Result<SpillFile> {
                    let copy = (|| -> io::Result<File> {
                        let mut old = open_file(&spill.path)?;
                        io::Seek::seek(&mut old, io::SeekFrom::Start(length))?;
                        let mut new = create_file(&new_path)?;
                        new.write_all(&replacement)?;
                        io::copy(&mut BufReader::with_capacity(FILE_BUFFER, old), &mut new)?;
                        std::fs::rename(&new_path, &spill.path)?;
                        Ok(new)
                    })();
                    match copy {
                        Ok(new) => {
                            spill.file = new;
                            Ok(spill)
                        }
                        Err(error) => {
                            let _ = std::fs::remove_file(&new_path);
                            // `spill` removes the old file as it drops.
                            Err(error)
                        }
                    }
                })
                .await
                .map_err(io::Error::other)??;
                self.len = self.len - length + added;
                if let WriterState::Spilled { file, .. } = &mut self.state {
                    *file = Some(spill);
                }
                Ok(())
            }
            WriterState::Taken => Err(io::Error::other("an earlier write to this body failed")),
        }
    }

    /// Everything written so far, in one buffer: a copy of a body in
    /// memory, or the spill file read back on the blocking pool.
    pub async fn read_back(&mut self) -> io::Result<Vec<u8>> {
        match &self.state {
            WriterState::Memory(buffer) => return Ok(buffer.clone()),
            WriterState::Spilled { .. } => {}
            WriterState::Taken => {
                return Err(io::Error::other("an earlier write to this body failed"));
            }
        }
        let result = self.write_pending().await;
        if let Err(error) = result {
            self.discard();
            return Err(error);
        }
        let path = self.spool.tmp.join(self.id.as_str());
        let capacity = usize::try_from(self.len).unwrap_or(0);
        tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut bytes = Vec::with_capacity(capacity);
            open_file(&path)?.read_to_end(&mut bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Takes the body for commit; from now on the caller owns any file.
    pub(crate) fn finish(mut self) -> Result<(QueueId, u64, FinishedBody), QueueError> {
        let body = match std::mem::replace(&mut self.state, WriterState::Taken) {
            WriterState::Memory(bytes) => FinishedBody::Inline(bytes),
            WriterState::Spilled {
                file: Some(file),
                pending,
            } => FinishedBody::Spilled { file, pending },
            WriterState::Spilled { file: None, .. } | WriterState::Taken => {
                return Err(QueueError::Body {
                    id: self.id.to_string(),
                    source: io::Error::other("an earlier write to the body failed"),
                });
            }
        };
        Ok((self.id.clone(), self.len, body))
    }

    /// Drops whatever was written (after a failed write: the body is
    /// incomplete and must never be committed).
    fn discard(&mut self) {
        if let WriterState::Spilled {
            file: Some(file), ..
        } = std::mem::replace(&mut self.state, WriterState::Taken)
        {
            drop_off_runtime(file);
        }
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        self.spool.usage.received(self.counted);
        self.discard();
    }
}

/// Drops `file` (which removes it) on the blocking pool when called on a
/// tokio runtime, else right here.
pub(crate) fn drop_off_runtime(file: SpillFile) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(file));
        }
        Err(_) => drop(file),
    }
}

fn remove_uncommitted(id: &QueueId, path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(queue_id = %id, path = %path.display(), %error,
            "could not remove an uncommitted body file");
    }
}

impl FinishedBody {
    /// For a spilled body: write its tail, fsync the file, move it to
    /// `bodies/<id>`, fsync that directory. Blocking; run it off the async
    /// runtime. On failure the file is removed.
    pub(crate) fn persist_file(
        mut file: SpillFile,
        pending: &[u8],
        spool: &Spool,
        id: &QueueId,
    ) -> Result<(), QueueError> {
        let final_path = spool.body_path(id);
        let result = (|| -> io::Result<()> {
            file.file.write_all(pending)?;
            file.file.sync_all()?;
            std::fs::rename(&file.path, &final_path)?;
            file.remove_on_drop = false;
            sync_dir(&spool.bodies)
        })();
        result.map_err(|source| {
            // `file` removes the temporary file (if still there) as it drops.
            let _ = std::fs::remove_file(&final_path);
            QueueError::Body {
                id: id.to_string(),
                source,
            }
        })
    }
}

/// fsyncs a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Streams a committed body without holding it all in memory.
///
/// Reads of a small body come from sled (usually its cache); a big body is
/// read from its file through a 64 KiB buffer, so a read may wait for the
/// disk once per 64 KiB.
pub struct BodyReader {
    size: u64,
    source: ReaderSource,
}

enum ReaderSource {
    /// Chunks in the sled tree, fetched one at a time.
    Inline {
        tree: sled::Tree,
        id: QueueId,
        chunks: u32,
        next_chunk: u32,
        current: sled::IVec,
        offset: usize,
    },
    /// A body file, opened at the first read.
    File {
        path: PathBuf,
        id: QueueId,
        reader: Option<BufReader<File>>,
    },
}

impl BodyReader {
    pub(crate) fn inline(tree: sled::Tree, id: QueueId, size: u64, chunks: u32) -> BodyReader {
        BodyReader {
            size,
            source: ReaderSource::Inline {
                tree,
                id,
                chunks,
                next_chunk: 0,
                current: sled::IVec::default(),
                offset: 0,
            },
        }
    }

    /// A reader of the body file at `path`, which it opens at its first
    /// read: creating one does no I/O.
    pub(crate) fn file(path: PathBuf, id: &QueueId, size: u64) -> BodyReader {
        BodyReader {
            size,
            source: ReaderSource::File {
                path,
                id: id.clone(),
                reader: None,
            },
        }
    }

    /// The body's total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the body is read from a file (bodies over 64 KiB): each
    /// read may then wait for the disk, so async code reads it on the
    /// blocking pool (`spawn_blocking`). Reads of other bodies come from
    /// the database's memory cache.
    pub fn is_file(&self) -> bool {
        matches!(self.source, ReaderSource::File { .. })
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            ReaderSource::File { path, id, reader } => {
                let reader = match reader {
                    Some(reader) => reader,
                    None => {
                        let file = open_file(path).map_err(|error| {
                            io::Error::new(
                                error.kind(),
                                format!("queue {id}: body file {}: {error}", path.display()),
                            )
                        })?;
                        reader.insert(BufReader::with_capacity(FILE_BUFFER, file))
                    }
                };
                reader.read(buf)
            }
            ReaderSource::Inline {
                tree,
                id,
                chunks,
                next_chunk,
                current,
                offset,
            } => {
                while *offset == current.len() {
                    if *next_chunk == *chunks {
                        return Ok(0);
                    }
                    *current = Store::chunk(tree, id, *next_chunk)
                        .map_err(io::Error::other)?
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("queue {id}: body chunk {next_chunk} is missing (message deleted?)"),
                            )
                        })?;
                    *next_chunk += 1;
                    *offset = 0;
                }
                let n = buf.len().min(current.len() - *offset);
                buf[..n].copy_from_slice(&current[*offset..*offset + n]);
                *offset += n;
                Ok(n)
            }
        }
    }
}

/// Creates (or truncates) a body file, 0600, never through a symbolic link.
fn create_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens a body file for reading, never through a symbolic link.
fn open_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

//! Message bodies: buffered in memory while small, spilled to a file when
//! big, streamed back chunk by chunk.
//!
//! A [`BodyWriter`] keeps up to [`INLINE_MAX`] bytes in memory; those bodies
//! are committed into the sled tree as [`CHUNK_SIZE`](crate::store::CHUNK_SIZE) chunks just before the
//! record, and share its group fsync. Past the threshold
//! the writer spills to `tmp/<id>`; at commit that file is fsynced, renamed to
//! `bodies/<id>` and the directory fsynced, all before the record is written.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::QueueError;
use crate::model::QueueId;
use crate::store::Store;

/// Bodies up to this size live in the sled tree; bigger ones in files.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

/// Buffer size for body file I/O.
const FILE_BUFFER: usize = 64 * 1024;

/// The spool directory's layout.
#[derive(Debug)]
pub(crate) struct Spool {
    /// Committed body files, named by queue ID.
    pub bodies: PathBuf,
    /// Body files being written, not yet committed; emptied at open.
    pub tmp: PathBuf,
}

impl Spool {
    pub(crate) fn new(root: &Path) -> Spool {
        Spool {
            bodies: root.join("bodies"),
            tmp: root.join("tmp"),
        }
    }

    pub(crate) fn body_path(&self, id: &QueueId) -> PathBuf {
        self.bodies.join(id.as_str())
    }
}

/// A message body being written, before it is committed.
///
/// Dropping it without [`Queue::commit`](crate::Queue::commit) removes every
/// trace of it. The first 64 KiB stay in memory; past that, writes go to a
/// spool file through a 64 KiB buffer: plain `write(2)`s into the page cache,
/// no fsync (that happens at commit, off the async runtime), so writing from
/// an async task is fine. After a failed write the body is discarded and
/// cannot be committed.
pub struct BodyWriter {
    id: QueueId,
    spool: Arc<Spool>,
    len: u64,
    state: WriterState,
}

enum WriterState {
    /// Still small: kept in memory.
    Memory(Vec<u8>),
    /// Spilled to `path` in the spool's `tmp/`.
    Spilled {
        file: BufWriter<File>,
        path: PathBuf,
    },
    /// Handed over to commit (or failed to spill): nothing to clean up.
    Taken,
}

/// A body ready to be committed.
pub(crate) enum FinishedBody {
    Inline(Vec<u8>),
    Spilled {
        file: BufWriter<File>,
        path: PathBuf,
    },
}

impl BodyWriter {
    pub(crate) fn new(id: QueueId, spool: Arc<Spool>) -> BodyWriter {
        BodyWriter {
            id,
            spool,
            len: 0,
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

    /// Takes the body for commit; from now on the caller owns any file.
    pub(crate) fn finish(mut self) -> Result<(QueueId, u64, FinishedBody), QueueError> {
        let body = match std::mem::replace(&mut self.state, WriterState::Taken) {
            WriterState::Memory(bytes) => FinishedBody::Inline(bytes),
            WriterState::Spilled { file, path } => FinishedBody::Spilled { file, path },
            WriterState::Taken => {
                return Err(QueueError::Body {
                    id: self.id.to_string(),
                    source: io::Error::other("an earlier write to the body failed"),
                });
            }
        };
        Ok((self.id.clone(), self.len, body))
    }

    fn spill(&mut self, buffered: &[u8]) -> io::Result<()> {
        let path = self.spool.tmp.join(self.id.as_str());
        self.state = WriterState::Taken;
        let file = File::create(&path)?;
        // From here on, Drop removes the file whatever happens.
        self.state = WriterState::Spilled {
            file: BufWriter::with_capacity(FILE_BUFFER, file),
            path,
        };
        if let WriterState::Spilled { file, .. } = &mut self.state {
            file.write_all(buffered)?;
        }
        Ok(())
    }
}

impl BodyWriter {
    fn write_inner(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.state {
            WriterState::Memory(bytes) if bytes.len() + buf.len() <= INLINE_MAX => {
                bytes.extend_from_slice(buf);
            }
            WriterState::Memory(bytes) => {
                let buffered = std::mem::take(bytes);
                self.spill(&buffered)?;
                if let WriterState::Spilled { file, .. } = &mut self.state {
                    file.write_all(buf)?;
                }
            }
            WriterState::Spilled { file, .. } => file.write_all(buf)?,
            WriterState::Taken => {
                return Err(io::Error::other("an earlier write to this body failed"));
            }
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Drops whatever was written (after a failed write: the body is
    /// incomplete and must never be committed).
    fn discard(&mut self) {
        if let WriterState::Spilled { path, .. } =
            std::mem::replace(&mut self.state, WriterState::Taken)
        {
            remove_uncommitted(&self.id, &path);
        }
    }
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.write_inner(buf) {
            Ok(()) => Ok(buf.len()),
            Err(error) => {
                self.discard();
                Err(error)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

fn remove_uncommitted(id: &QueueId, path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(queue_id = %id, path = %path.display(), %error,
            "could not remove an uncommitted body file");
    }
}

impl FinishedBody {
    /// For a spilled body: fsync the file, move it to `bodies/<id>`, fsync
    /// that directory. Blocking; run it off the async runtime. On failure the
    /// file is removed.
    pub(crate) fn persist_file(
        file: BufWriter<File>,
        tmp_path: &Path,
        spool: &Spool,
        id: &QueueId,
    ) -> Result<(), QueueError> {
        let final_path = spool.body_path(id);
        let result = (|| -> io::Result<()> {
            let file = file.into_inner().map_err(|error| error.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(tmp_path, &final_path)?;
            sync_dir(&spool.bodies)
        })();
        result.map_err(|source| {
            let _ = std::fs::remove_file(tmp_path);
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
    File(BufReader<File>),
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

    pub(crate) fn file(path: &Path, id: &QueueId, size: u64) -> Result<BodyReader, QueueError> {
        let file = File::open(path).map_err(|source| QueueError::Body {
            id: id.to_string(),
            source,
        })?;
        Ok(BodyReader {
            size,
            source: ReaderSource::File(BufReader::with_capacity(FILE_BUFFER, file)),
        })
    }

    /// The body's total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            ReaderSource::File(file) => file.read(buf),
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

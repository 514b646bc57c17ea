//! A queued message's content as stored (`sluice queue cat`, like Postfix's
//! `postcat -q`): streamed in chunks, never loaded whole, optionally cut
//! after the header section.

use std::io::{self, Read, Write};

use sluice_queue::{Queue, QueueId};

use super::error::AdminError;

/// Bytes read from the body at a time.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Writes the stored message read from `body` (`Queue::open_body`; our
/// `Received:` header included) to `out`, chunk by chunk; with
/// `headers_only`, only its header section (without the empty line that
/// ends it). Blocking.
pub fn copy(mut body: impl Read, headers_only: bool, out: &mut dyn Write) -> Result<(), CopyError> {
    let mut cut = headers_only.then(HeaderCut::default);
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = match body.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(CopyError::Read(error)),
        };
        let chunk = &buffer[..read];
        match &mut cut {
            None => out.write_all(chunk).map_err(CopyError::Output)?,
            Some(cut) => {
                let (keep, done) = cut.feed(chunk);
                out.write_all(&keep).map_err(CopyError::Output)?;
                if done {
                    return Ok(());
                }
            }
        }
    }
}

/// Opens the body of message `id` for [`copy`].
pub fn open(queue: &Queue, id: &QueueId) -> Result<sluice_queue::BodyReader, AdminError> {
    queue.open_body(id).map_err(AdminError::from)
}

/// Why [`copy`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The stored message could not be read.
    #[error("reading the stored message: {0}")]
    Read(io::Error),
    /// The output failed (the reader went away).
    #[error("writing the message: {0}")]
    Output(io::Error),
}

/// Finds the end of the header section (RFC 5322 §2.1: the first empty
/// line) across chunk boundaries. Lines end in CRLF; a bare LF is taken as
/// a line end too.
#[derive(Debug)]
pub struct HeaderCut {
    /// The next byte starts a line.
    at_line_start: bool,
    /// A CR at the start of a line was held back: it may begin the empty
    /// line.
    held_cr: bool,
    /// The empty line was found.
    done: bool,
}

impl Default for HeaderCut {
    fn default() -> Self {
        HeaderCut {
            at_line_start: true,
            held_cr: false,
            done: false,
        }
    }
}

impl HeaderCut {
    /// The part of `chunk` that belongs to the header section, and whether
    /// the section ended in it.
    pub fn feed(&mut self, chunk: &[u8]) -> (Vec<u8>, bool) {
        let mut keep = Vec::with_capacity(chunk.len() + 1);
        for &byte in chunk {
            if self.done {
                break;
            }
            if self.held_cr {
                self.held_cr = false;
                if byte == b'\n' {
                    self.done = true;
                    break;
                }
                keep.push(b'\r');
                self.at_line_start = false;
            }
            match byte {
                b'\r' if self.at_line_start => self.held_cr = true,
                b'\n' if self.at_line_start => self.done = true,
                b'\n' => {
                    keep.push(byte);
                    self.at_line_start = true;
                }
                _ => {
                    keep.push(byte);
                    self.at_line_start = false;
                }
            }
        }
        (keep, self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_in_pieces(message: &[u8], size: usize) -> Vec<u8> {
        let mut cut = HeaderCut::default();
        let mut kept = Vec::new();
        for piece in message.chunks(size) {
            let (keep, done) = cut.feed(piece);
            kept.extend_from_slice(&keep);
            if done {
                break;
            }
        }
        kept
    }

    #[test]
    fn the_header_ends_at_the_first_empty_line_whatever_the_chunking() {
        let message = b"Received: from x\r\n\tby y\r\nSubject: a\r\rb\r\n\r\nBody\r\n\r\nmore\r\n";
        for size in 1..message.len() {
            assert_eq!(
                cut_in_pieces(message, size),
                b"Received: from x\r\n\tby y\r\nSubject: a\r\rb\r\n",
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn bare_lf_line_ends_and_a_message_without_body() {
        assert_eq!(cut_in_pieces(b"A: 1\nB: 2\n\nbody\n", 3), b"A: 1\nB: 2\n");
        assert_eq!(cut_in_pieces(b"A: 1\r\nB: 2\r\n", 4), b"A: 1\r\nB: 2\r\n");
        assert_eq!(cut_in_pieces(b"\r\nbody", 4), b"");
    }
}

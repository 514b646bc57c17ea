//! A minimal blocking HTTP/1.1 client over the admin socket (a UNIX
//! socket): one request per connection (`Connection: close`), the answer's
//! body read as it arrives (`Content-Length`, chunked, or up to the close),
//! and a body cut short is an error, never a short answer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The largest answer head read.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// An answer: its status and its body, to be read.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    body: Box<dyn Read + Send>,
}

impl Response {
    /// The body as a reader (fails with `UnexpectedEof` when cut short).
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        self.body
    }

    /// The body parsed as JSON.
    pub fn into_json<T: serde::de::DeserializeOwned>(self) -> io::Result<T> {
        serde_json::from_reader(self.body).map_err(io::Error::other)
    }
}

/// Sends one request to the API on the socket at `socket`; any status is an
/// answer. `read_timeout` bounds each read of the answer.
pub fn request(
    socket: &Path,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    read_timeout: Duration,
) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(read_timeout))?;
    let body = body.unwrap_or_default();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method != "GET" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader).map(|(status, framing)| Response {
        status,
        body: match framing {
            Framing::Length(length) => Box::new(Exact {
                inner: reader,
                left: length,
            }),
            Framing::Chunked => Box::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }),
            Framing::Close => Box::new(reader),
        },
    })
}

enum Framing {
    Length(u64),
    Chunked,
    Close,
}

fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<String> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the admin socket closed before answering",
        ));
    }
    if read > *budget {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the admin API's answer head is too long",
        ));
    }
    *budget -= read;
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn read_response(reader: &mut impl BufRead) -> io::Result<(u16, Framing)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut budget = MAX_HEAD_BYTES;
    let status_line = read_line(reader, &mut budget)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .filter(|_| status_line.starts_with("HTTP/1."))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("not an HTTP answer: {status_line:?}")))?;
    let mut framing = Framing::Close;
    loop {
        let line = read_line(reader, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("bad header line in the answer: {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().ends_with("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            let length = value
                .parse::<u64>()
                .map_err(|_| bad(format!("bad Content-Length in the answer: {value:?}")))?;
            framing = Framing::Length(length);
        }
    }
    Ok((status, framing))
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the admin API's answer was cut short",
    )
}

/// A body of a known length.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(cut_short());
        }
        self.left -= read as u64;
        Ok(read)
    }
}

/// A chunked body (RFC 9112 §7.1).
struct Chunked<R> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut budget = MAX_HEAD_BYTES;
            let line = read_line(&mut self.inner, &mut budget).map_err(|_| cut_short())?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size in the answer: {line:?}"),
                )
            })?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !read_line(&mut self.inner, &mut budget)
                    .map_err(|_| cut_short())?
                    .is_empty()
                {}
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(cut_short());
        }
        self.left -= read as u64;
        if self.left == 0 {
            let mut budget = 2;
            read_line(&mut self.inner, &mut budget).map_err(|_| cut_short())?;
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(answer: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut reader = BufReader::new(answer);
        let (status, framing) = read_response(&mut reader)?;
        let mut body: Box<dyn Read> = match framing {
            Framing::Length(left) => Box::new(Exact {
                inner: reader,
                left,
            }),
            Framing::Chunked => Box::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }),
            Framing::Close => Box::new(reader),
        };
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes)?;
        Ok((status, bytes))
    }

    #[test]
    fn chunked_and_sized_bodies_are_read_whole() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked).unwrap(), (200, b"abcde".to_vec()));
        let sized = b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope";
        assert_eq!(body_of(sized).unwrap(), (404, b"nope".to_vec()));
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabc";
        assert!(body_of(chunked).is_err());
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        assert!(body_of(sized).is_err());
        assert!(body_of(b"garbage\r\n\r\n").is_err());
    }
}

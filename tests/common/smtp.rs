//! A blocking SMTP client for tests, line-oriented, plain or TLS (STARTTLS
//! or implicit, rustls). Each step has a panicking form for tests that
//! expect success and a fallible `try_` form for tests where the server may
//! fail or go away under the client. Also the parsers of reply lines.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::server::DEADLINE;

/// The server name TLS clients check: the `hostname` of every test config.
const SERVER_NAME: &str = "sluice.test";

/// A blocking, line-oriented SMTP client for tests.
pub struct SmtpClient {
    /// The TCP connection (carrying TLS records once TLS started).
    pub stream: TcpStream,
    /// The TLS session, once started.
    tls: Option<Box<rustls::ClientConnection>>,
    /// Bytes received (decrypted) but not consumed yet.
    buffer: Vec<u8>,
}

impl SmtpClient {
    /// Connects (no greeting read).
    pub fn connect(address: SocketAddr) -> SmtpClient {
        SmtpClient::try_connect(address, DEADLINE).expect("connect to SMTP listener")
    }

    /// Connects with `timeout` for every read (no greeting read).
    pub fn try_connect(address: SocketAddr, timeout: Duration) -> io::Result<SmtpClient> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(SmtpClient {
            stream,
            tls: None,
            buffer: Vec::new(),
        })
    }

    /// Implicit TLS: connects and handshakes right away (no greeting read).
    pub fn connect_tls(address: SocketAddr, config: Arc<rustls::ClientConfig>) -> SmtpClient {
        SmtpClient::connect(address).start_tls(config)
    }

    /// Handshakes as a TLS client of `sluice.test` (after the 220 to
    /// STARTTLS, or right after connecting).
    pub fn start_tls(mut self, config: Arc<rustls::ClientConfig>) -> SmtpClient {
        assert!(self.tls.is_none(), "already TLS");
        assert!(
            self.buffer.is_empty(),
            "the server sent {:?} before the TLS handshake",
            String::from_utf8_lossy(&self.buffer)
        );
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
        let mut connection =
            rustls::ClientConnection::new(config, name).expect("client connection");
        while connection.is_handshaking() {
            connection
                .complete_io(&mut self.stream)
                .expect("TLS handshake");
        }
        self.tls = Some(Box::new(connection));
        self
    }

    /// The TLS version in use, `None` before TLS.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls
            .as_ref()
            .and_then(|connection| connection.protocol_version())
    }

    /// Changes how long a read may wait.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).expect("write to server");
    }

    /// Writes raw bytes (and flushes them under TLS).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.stream.write_all(bytes),
            Some(connection) => {
                let mut tls = rustls::Stream::new(connection.as_mut(), &mut self.stream);
                tls.write_all(bytes)?;
                tls.flush()
            }
        }
    }

    /// Writes `line` plus CRLF.
    pub fn send_line(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    /// Reads one whole reply (all lines of a multi-line reply, joined by "\n").
    /// Returns what came so far ("" if nothing) on EOF.
    pub fn read_reply(&mut self) -> String {
        let mut reply = String::new();
        if let Err(error) = self.read_reply_into(&mut reply) {
            panic!("reading a reply failed: {error} (so far {reply:?})");
        }
        reply
    }

    /// Like [`SmtpClient::read_reply`]; an EOF before a whole reply is an error.
    pub fn try_read_reply(&mut self) -> io::Result<String> {
        let mut reply = String::new();
        if self.read_reply_into(&mut reply)? {
            Ok(reply)
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {reply:?}"),
            ))
        }
    }

    /// Appends the lines of one reply to `reply`; false when the stream
    /// ended before its last line.
    fn read_reply_into(&mut self, reply: &mut String) -> io::Result<bool> {
        loop {
            let Some(line) = self.read_line()? else {
                return Ok(false);
            };
            if !reply.is_empty() {
                reply.push('\n');
            }
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(true);
            }
        }
    }

    /// The next line without its line ending (a partial last line too);
    /// `None` at the end of the stream.
    fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            let end = match self.buffer.iter().position(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                None if self.fill()? > 0 => continue,
                None if self.buffer.is_empty() => return Ok(None),
                None => self.buffer.len(),
            };
            let line: Vec<u8> = self.buffer.drain(..end).collect();
            let line = String::from_utf8_lossy(&line);
            return Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()));
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream (a TLS
    /// peer closing without close_notify counts as the end).
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let read = match &mut self.tls {
            None => self.stream.read(&mut chunk),
            Some(connection) => {
                match rustls::Stream::new(connection.as_mut(), &mut self.stream).read(&mut chunk) {
                    Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    other => other,
                }
            }
        }?;
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(read)
    }

    /// Sends a command line and returns its reply.
    pub fn command(&mut self, line: &str) -> String {
        self.send_line(line);
        self.read_reply()
    }

    /// Sends a command line and returns its reply.
    pub fn try_command(&mut self, line: &str) -> io::Result<String> {
        self.try_send_raw(format!("{line}\r\n").as_bytes())?;
        self.try_read_reply()
    }

    /// Sends a command and asserts the reply starts with `code`.
    pub fn expect(&mut self, line: &str, code: &str) -> String {
        let reply = self.command(line);
        assert!(
            reply.starts_with(code),
            "after {line:?} expected a {code} reply, got {reply:?}"
        );
        reply
    }

    /// Sends a command; a reply not starting with `code` is an error.
    pub fn try_expect(&mut self, line: &str, code: &str) -> io::Result<String> {
        let reply = self.try_command(line)?;
        if reply.starts_with(code) {
            Ok(reply)
        } else {
            Err(io::Error::other(format!(
                "after {line:?} expected {code}, got {reply:?}"
            )))
        }
    }

    /// Reads until the server closes the connection; returns what came.
    pub fn read_to_end(&mut self) -> String {
        String::from_utf8_lossy(&self.read_bytes_to_end()).into_owned()
    }

    /// Reads until the server closes the connection (or a read fails);
    /// returns the bytes that came.
    pub fn read_bytes_to_end(&mut self) -> Vec<u8> {
        while let Ok(read) = self.fill() {
            if read == 0 {
                break;
            }
        }
        std::mem::take(&mut self.buffer)
    }

    /// EHLO, MAIL, RCPT…, DATA with `body` (CRLF lines, not dot-stuffed by the
    /// caller: this does it), returns the queue ID from the final 250.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.expect("EHLO client.test", "250");
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), "250");
        }
        self.expect("DATA", "354");
        let mut data = String::new();
        for line in body.split("\r\n") {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        if body.ends_with("\r\n") {
            data.truncate(data.len() - 2);
        }
        data.push_str(".\r\n");
        self.send_raw(data.as_bytes());
        let reply = self.read_reply();
        queue_id(&reply).unwrap_or_else(|| panic!("expected 250 queued as, got {reply:?}"))
    }

    /// MAIL, RCPT…, DATA, then `data` as it is (CRLF lines, dot-stuffed
    /// already) and the end-of-data line; returns the final reply, whatever
    /// its code. A refused command or a broken connection is an error.
    pub fn try_transaction(&mut self, from: &str, to: &[&str], data: &[u8]) -> io::Result<String> {
        self.try_expect(&format!("MAIL FROM:<{from}>"), "250")?;
        for rcpt in to {
            self.try_expect(&format!("RCPT TO:<{rcpt}>"), "250")?;
        }
        self.try_expect("DATA", "354")?;
        self.try_send_raw(data)?;
        self.try_send_raw(b".\r\n")?;
        self.try_read_reply()
    }
}

/// The ID in "250 2.0.0 Ok: queued as <ID>".
pub fn queue_id(reply: &str) -> Option<String> {
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ")?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_string())
}

/// The enhanced status code of a reply line ("250 2.1.0 Ok" → "2.1.0").
pub fn enhanced_code(reply: &str) -> Option<&str> {
    let code = reply.get(4..)?.split(' ').next()?;
    let parts: Vec<&str> = code.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then_some(code)
}

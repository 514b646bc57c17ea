//! Submitting the prepared message to the running server over SMTP.
//!
//! # Where
//!
//! The message goes to the running server's first `relay`-kind listener
//! (submission listeners require TLS and AUTH): the address the server
//! recorded in `<spool>/smtp.address` when it started (so a listener on port
//! 0, or a configuration edited since, is still found; only with an absolute
//! spool path, since a relative one depends on the working directory, which
//! may be anyone's), else the first relay `[[listener]]` of the
//! configuration. When the recorded address does not answer (a stale file
//! after a crash), the configured one is tried. A wildcard listener address
//! (`0.0.0.0`, `::`) is reached on `127.0.0.1` / `::1`; loopback is in the
//! default `relay_networks`, so no AUTH is needed.
//!
//! # How
//!
//! One blocking connection (sendmail has no async runtime): EHLO, or HELO on
//! the same session when EHLO gets a permanent (5xx) refusal; `MAIL FROM`
//! (with `BODY=8BITMIME` and `SMTPUTF8` when the server offers them and, for
//! SMTPUTF8, an address needs it); `RCPT TO` per recipient, where any refusal
//! fails the whole submission (nothing is queued); then DATA. The message is
//! streamed from stdin to the socket, dot-stuffed (RFC 5321 §4.5.2): a message
//! of any size is never held in memory. The queue ID is taken from the
//! `250 2.0.0 Ok: queued as <ID>` reply.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::{Config, ListenerKind};
use crate::runfile;

use super::SendmailError;
use super::message::WriteError;

/// How long to wait for the connection to the local server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Submits one message to the running server: `write_message` writes it
/// with CRLF line endings, not dot-stuffed. Returns the queue ID once the
/// server has the message on disk.
pub fn submit(
    config: &Config,
    sender: &str,
    recipients: &[String],
    write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
) -> Result<String, SendmailError> {
    let mut client = connect(config)?;
    client.submit(
        config.hostname.as_str(),
        sender,
        recipients,
        config.limits.data_timeout,
        write_message,
    )
}

/// Connects to the first of [`submission_addresses`] that answers; the
/// error of the last one tried when none does.
fn connect(config: &Config) -> Result<Client, SendmailError> {
    let mut failure = None;
    for address in submission_addresses(config)? {
        match Client::connect(address, config.limits.command_timeout) {
            Ok(client) => return Ok(client),
            Err(error @ SendmailError::Connect { .. }) => failure = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(failure.expect("submission_addresses returns at least one address"))
}

/// Where to submit, in order: the first relay listener the running server
/// recorded in the spool, then the first relay `[[listener]]` configured
/// (when it differs and its port is known). Never empty.
fn submission_addresses(config: &Config) -> Result<Vec<SocketAddr>, SendmailError> {
    let recorded = runfile::read_listeners(&config.spool.path).and_then(|listeners| {
        listeners
            .into_iter()
            .find(|(kind, _)| *kind == ListenerKind::Relay)
            .map(|(_, address)| reachable(address))
    });
    match (recorded, listener_address(config)) {
        (Some(recorded), Ok(configured)) if configured != recorded => {
            Ok(vec![recorded, configured])
        }
        (Some(recorded), _) => Ok(vec![recorded]),
        (None, configured) => configured.map(|address| vec![address]),
    }
}

/// A wildcard address (`0.0.0.0`, `::`) as reached from this host.
fn reachable(mut address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    address
}

/// The address of the first configured relay listener, wildcards mapped to
/// loopback.
fn listener_address(config: &Config) -> Result<SocketAddr, SendmailError> {
    let listener = config
        .listeners
        .iter()
        .find(|listener| listener.kind == ListenerKind::Relay)
        .ok_or_else(|| {
            SendmailError::NoListener(
                "the configuration has no relay-kind [[listener]] (submission listeners \
                 require TLS and AUTH)"
                    .into(),
            )
        })?;
    let address = listener.address;
    if address.port() == 0 {
        return Err(SendmailError::NoListener(format!(
            "the first relay [[listener]] address {address} has port 0 and no running server \
             recorded its address in {}; is sluice serve running?",
            runfile::smtp_address_file(&config.spool.path).display()
        )));
    }
    Ok(reachable(address))
}

/// One SMTP reply: its code and its text lines joined by spaces.
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// A blocking SMTP client for one submission.
struct Client {
    address: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    command_timeout: Duration,
}

impl Client {
    fn connect(address: SocketAddr, command_timeout: Duration) -> Result<Client, SendmailError> {
        let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|error| {
            SendmailError::Connect {
                address,
                reason: match error.kind() {
                    io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                        "connection timed out".into()
                    }
                    _ => error.to_string(),
                },
            }
        })?;
        let broken = |error: io::Error| SendmailError::Conversation {
            what: "setting up the connection",
            address,
            reason: error.to_string(),
        };
        stream
            .set_read_timeout(Some(command_timeout))
            .map_err(broken)?;
        stream
            .set_write_timeout(Some(command_timeout))
            .map_err(broken)?;
        let reader = BufReader::new(stream.try_clone().map_err(broken)?);
        Ok(Client {
            address,
            reader,
            writer: BufWriter::with_capacity(64 * 1024, stream),
            command_timeout,
        })
    }

    fn broken(&self, what: &'static str, error: impl ToString) -> SendmailError {
        SendmailError::Conversation {
            what,
            address: self.address,
            reason: error.to_string(),
        }
    }

    /// Reads one (possibly multi-line) reply (RFC 5321 §4.2.1).
    fn read_reply(&mut self) -> Result<Reply, SendmailError> {
        let mut text = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = Read::take(&mut self.reader, 4096).read_until(b'\n', &mut line);
            let read = read.map_err(|error| self.broken("reading a reply", error))?;
            if read == 0 {
                return Err(self.broken("reading a reply", "the connection was closed"));
            }
            let content = String::from_utf8_lossy(&line).trim_end().to_string();
            let code = content
                .get(..3)
                .and_then(|code| code.parse::<u16>().ok())
                .filter(|code| (200..600).contains(code))
                .ok_or_else(|| {
                    self.broken("reading a reply", format!("garbled reply {content:?}"))
                })?;
            let last = content.as_bytes().get(3) != Some(&b'-');
            text.push(content);
            if last {
                return Ok(Reply {
                    code,
                    text: text.join(" "),
                });
            }
        }
    }

    /// Sends a command line and reads its reply, whatever it is.
    fn send(&mut self, line: &str) -> Result<Reply, SendmailError> {
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\r\n"))
            .and_then(|()| self.writer.flush())
            .map_err(|error| self.broken("sending a command", error))?;
        self.read_reply()
    }

    /// Sends a command line and reads its reply; a 4xx/5xx ends the session.
    fn command(&mut self, line: &str) -> Result<Reply, SendmailError> {
        let reply = self.send(line)?;
        if !reply.is_positive() {
            return Err(self.refused(line, reply));
        }
        Ok(reply)
    }

    /// Ends the session after a refusal: QUIT, and the error naming it.
    fn refused(&mut self, command: &str, reply: Reply) -> SendmailError {
        let _ = self
            .writer
            .write_all(b"QUIT\r\n")
            .and_then(|()| self.writer.flush());
        SendmailError::Refused {
            command: command.to_string(),
            reply: reply.text,
        }
    }

    /// Opens the session: EHLO, or HELO on the same session when EHLO is
    /// refused permanently (RFC 5321 §3.2: a server that does not support
    /// the extensions answers EHLO with a 5xx). Returns the EHLO keywords
    /// (none after HELO).
    fn greet(&mut self, hostname: &str) -> Result<Vec<String>, SendmailError> {
        let ehlo = format!("EHLO {hostname}");
        let reply = self.send(&ehlo)?;
        if reply.is_positive() {
            return Ok(reply
                .text
                .split(' ')
                .map(|word| word.trim_start_matches("250-").to_ascii_uppercase())
                .collect());
        }
        if !(500..600).contains(&reply.code) {
            return Err(self.refused(&ehlo, reply));
        }
        self.command(&format!("HELO {hostname}"))?;
        Ok(Vec::new())
    }

    /// Runs the transaction; `write_message` writes the message.
    /// Returns the queue ID of the final reply.
    fn submit(
        &mut self,
        hostname: &str,
        sender: &str,
        recipients: &[String],
        data_timeout: Duration,
        write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
    ) -> Result<String, SendmailError> {
        let greeting = self.read_reply()?;
        if greeting.code != 220 {
            return Err(self.refused("the connection", greeting));
        }
        let keywords = self.greet(hostname)?;
        let offers = |keyword: &str| keywords.iter().any(|word| word == keyword);
        let mut mail = format!("MAIL FROM:<{sender}>");
        if offers("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        let needs_utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if needs_utf8 && offers("SMTPUTF8") {
            mail.push_str(" SMTPUTF8");
        }
        self.command(&mail)?;
        for recipient in recipients {
            self.command(&format!("RCPT TO:<{recipient}>"))?;
        }
        let reply = self.command("DATA")?;
        if reply.code != 354 {
            return Err(self.refused("DATA", reply));
        }
        let mut data = DotStuffer::new(&mut self.writer);
        // On an input error the end-of-data marker is never sent: the
        // server discards the unfinished transaction when we hang up.
        match write_message(&mut data) {
            Ok(()) => {}
            Err(WriteError::Input(error)) => return Err(error.into()),
            Err(WriteError::Output(error)) => {
                return Err(self.broken("sending the message", error));
            }
        }
        let written = self
            .writer
            .write_all(b".\r\n")
            .and_then(|()| self.writer.flush());
        written.map_err(|error| self.broken("sending the message", error))?;
        let set_timeout = |timeout| self.reader.get_ref().set_read_timeout(Some(timeout));
        set_timeout(data_timeout).map_err(|error| self.broken("waiting for the reply", error))?;
        let reply = self.read_reply()?;
        if reply.code != 250 {
            return Err(self.refused("the message", reply));
        }
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(self.command_timeout));
        let _ = self.command("QUIT");
        queue_id(&reply.text).ok_or_else(|| {
            self.broken(
                "reading the final reply",
                format!("no queue ID in {:?}", reply.text),
            )
        })
    }
}

/// Dot-stuffs a stream of CRLF-terminated lines (RFC 5321 §4.5.2: a line
/// beginning with `.` gets one more).
struct DotStuffer<W> {
    out: W,
    at_line_start: bool,
}

impl<W: Write> DotStuffer<W> {
    fn new(out: W) -> Self {
        DotStuffer {
            out,
            at_line_start: true,
        }
    }
}

impl<W: Write> Write for DotStuffer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(&first) = buf.first() else {
            return Ok(0);
        };
        if self.at_line_start && first == b'.' {
            self.out.write_all(b".")?;
        }
        let line_end = buf.iter().position(|&byte| byte == b'\n');
        let piece = &buf[..line_end.map_or(buf.len(), |end| end + 1)];
        self.out.write_all(piece)?;
        self.at_line_start = line_end.is_some();
        Ok(piece.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The ID in `250 2.0.0 Ok: queued as <ID>`.
fn queue_id(reply: &str) -> Option<String> {
    let id = reply
        .split("queued as ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listener_is_reached_on_loopback_and_port_0_refused() {
        let mut config = Config::default();
        config.listeners[0].address = "0.0.0.0:2525".parse().unwrap();
        assert_eq!(
            listener_address(&config).unwrap(),
            "127.0.0.1:2525".parse().unwrap()
        );
        config.listeners[0].address = "[::]:2525".parse().unwrap();
        assert_eq!(
            listener_address(&config).unwrap(),
            "[::1]:2525".parse().unwrap()
        );
        config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
        assert!(listener_address(&config).is_err());
    }

    #[test]
    fn recorded_relay_listener_comes_before_the_configured_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.spool.path = dir.path().to_path_buf();
        config.listeners[0].address = "127.0.0.1:2525".parse().unwrap();
        let configured: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        assert_eq!(submission_addresses(&config).unwrap(), [configured]);

        std::fs::write(
            runfile::smtp_address_file(dir.path()),
            "submission 127.0.0.1:587\nrelay 0.0.0.0:40001\n",
        )
        .unwrap();
        let recorded: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(
            submission_addresses(&config).unwrap(),
            [recorded, configured]
        );

        config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
        assert_eq!(submission_addresses(&config).unwrap(), [recorded]);

        std::fs::remove_file(runfile::smtp_address_file(dir.path())).unwrap();
        let error = submission_addresses(&config).unwrap_err().to_string();
        assert!(
            error.contains("port 0") && error.contains("smtp.address"),
            "{error}"
        );
    }

    #[test]
    fn queue_id_is_read_from_the_final_reply() {
        assert_eq!(
            queue_id("250 2.0.0 Ok: queued as Abc123").as_deref(),
            Some("Abc123")
        );
        assert_eq!(queue_id("250 2.0.0 Ok"), None);
    }

    #[test]
    fn lines_starting_with_a_dot_are_stuffed_across_writes() {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::new(&mut out);
        for piece in [&b".a\r\nb.\r\n"[..], b".", b"\r\n", b"x", b".y\r\n.."] {
            stuffer.write_all(piece).unwrap();
        }
        assert_eq!(out, b"..a\r\nb.\r\n..\r\nx.y\r\n...");
    }
}

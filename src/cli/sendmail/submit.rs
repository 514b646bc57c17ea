//! Submitting the prepared message to the running server over SMTP, or,
//! when none answers, to the same session run in this process over the
//! spool ([`super::maildrop`]).
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
//! A thin blocking pump (std sockets with timeouts; sendmail has no async
//! runtime) over the same protocol core as delivery: [`Opening`] for the
//! greeting, EHLO, and HELO on the same session when EHLO is refused;
//! [`Transaction`] for `MAIL FROM` (with `BODY=8BITMIME` when offered, and
//! `SMTPUTF8` when offered and an address needs it), `RCPT TO` per
//! recipient, and DATA; [`ReplyBuffer`] to read replies; [`DotStuffer`] for
//! the body (RFC 5321 §4.5.2). The message is streamed from stdin to the
//! socket: a message of any size is never held in memory.
//!
//! sendmail's own rules, applied here on top of the machines: any 4xx or
//! 5xx ends the submission with the server's reply, nothing queued (a
//! refused recipient too, unlike Postfix); so commands go one at a time,
//! never pipelined, and a refused RCPT is seen before DATA. No SIZE
//! parameter: a streamed message's size is not known beforehand. The queue
//! ID is taken from the `250 2.0.0 Ok: queued as <ID>` reply.

use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::{Config, ListenerKind};
use crate::runfile;
use crate::smtp::client::{self, Envelope, Opening, OpeningStep, Stage, Step, Transaction};
use crate::smtp::dot::DotStuffer;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{Reply, ReplyBuffer};

use super::SendmailError;
use super::maildrop::Maildrop;
use super::message::WriteError;

/// How long to wait for the connection to the local server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Submits one message to the running server: `write_message` writes it
/// with CRLF line endings, not dot-stuffed. Returns the queue ID once the
/// server has the message on disk.
///
/// When no server answers and the spool path is absolute, the message goes
/// through the same SMTP session run in this process over the spool
/// ([`Maildrop`]): the same `Received:` field, added headers, DKIM
/// signatures and durable commit as a submission, and exit 0 once it is
/// on disk. The running server delivers it when it starts.
pub fn submit(
    config: &Config,
    sender: &str,
    recipients: &[String],
    write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
) -> Result<String, SendmailError> {
    let refused = match connect_server(config) {
        Ok((stream, address)) => {
            let mut connection =
                Connection::over(stream, format!("the server at {address}"), config)?;
            return connection.submit(config, sender, recipients, write_message);
        }
        Err(error) => error,
    };
    let maildrop = Maildrop::open(config, refused)?;
    let (ours, theirs) = UnixStream::pair().map_err(|error| maildrop.failed(error))?;
    let session = maildrop
        .serve(theirs)
        .map_err(|error| maildrop.failed(error))?;
    let mut connection = Connection::over(ours, maildrop.describe(), config)?;
    let submitted = connection.submit(config, sender, recipients, write_message);
    // Hanging up ends the local session, if it is not over yet.
    drop(connection);
    maildrop.close(session)?;
    submitted
}

/// Connects to the first of [`submission_addresses`] that answers; the
/// error of the last one tried when none does.
pub(super) fn connect_server(config: &Config) -> Result<(TcpStream, SocketAddr), SendmailError> {
    let mut failure = None;
    for address in submission_addresses(config)? {
        match connect_to(address) {
            Ok(stream) => return Ok((stream, address)),
            Err(error) => failure = Some(error),
        }
    }
    Err(failure.expect("submission_addresses returns at least one address"))
}

/// A TCP connection to `address`, or [`SendmailError::Connect`].
fn connect_to(address: SocketAddr) -> Result<TcpStream, SendmailError> {
    TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|error| SendmailError::Connect {
        address,
        reason: match error.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".into(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "connection timed out".into(),
            _ => error.to_string(),
        },
    })
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

/// A blocking byte stream to an SMTP session: a TCP connection to the
/// running server, or the pipe to the session this process runs over the
/// spool when no server answers ([`Maildrop`]).
pub(super) trait Socket: Read + Write + Sized {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn try_clone(&self) -> io::Result<Self>;
}

macro_rules! socket {
    ($type:ty) => {
        impl Socket for $type {
            fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$type>::set_read_timeout(self, timeout)
            }
            fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$type>::set_write_timeout(self, timeout)
            }
            fn try_clone(&self) -> io::Result<Self> {
                <$type>::try_clone(self)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// The blocking I/O of one submission: a socket with timeouts, the output
/// the machines append, and the replies read so far. It holds no SMTP rule:
/// those are in [`crate::smtp::client`], and sendmail's own in
/// [`Connection::transaction`].
struct Connection<S: Socket> {
    /// Who answers, for messages: "the server at 127.0.0.1:2525".
    server: String,
    reader: S,
    writer: BufWriter<S>,
    /// What the machines appended and is not written yet.
    out: Vec<u8>,
    replies: ReplyBuffer,
    command_timeout: Duration,
}

impl<S: Socket> Connection<S> {
    /// The submission over `stream`, connected to `server`.
    fn over(stream: S, server: String, config: &Config) -> Result<Connection<S>, SendmailError> {
        let command_timeout = config.limits.command_timeout;
        let broken = |error: io::Error| SendmailError::Conversation {
            what: "setting up the connection",
            server: server.clone(),
            reason: error.to_string(),
        };
        stream
            .set_read_timeout(Some(command_timeout))
            .map_err(broken)?;
        stream
            .set_write_timeout(Some(command_timeout))
            .map_err(broken)?;
        let reader = stream.try_clone().map_err(broken)?;
        Ok(Connection {
            server,
            reader,
            writer: BufWriter::with_capacity(64 * 1024, stream),
            out: Vec::with_capacity(512),
            replies: ReplyBuffer::new(),
            command_timeout,
        })
    }

    /// The whole submission: the opening, the transaction, the queue ID
    /// from the final reply.
    fn submit(
        &mut self,
        config: &Config,
        sender: &str,
        recipients: &[String],
        write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
    ) -> Result<String, SendmailError> {
        let capabilities = self.open(config.hostname.as_str())?;
        let envelope = Envelope {
            sender,
            recipients,
            // A streamed message's size is not known in advance: no SIZE parameter.
            size: None,
            eight_bit: true,
            smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
            message_dsn: None,
            recipient_dsn: &[],
            chunking: false,
            requiretls: false,
        };
        let reply = self.transaction(
            &capabilities,
            envelope,
            config.limits.data_timeout,
            write_message,
        )?;
        let text = reply.one_line();
        queue_id(&text).ok_or_else(|| {
            self.broken(
                "reading the final reply",
                format!("no queue ID in {text:?}"),
            )
        })
    }

    fn broken(&self, what: &'static str, error: impl ToString) -> SendmailError {
        SendmailError::Conversation {
            what,
            server: self.server.clone(),
            reason: error.to_string(),
        }
    }

    /// The command line waiting in the output, for naming it in an error.
    fn pending_command(&self) -> String {
        String::from_utf8_lossy(&self.out).trim_end().to_string()
    }

    /// Writes what the machines appended.
    fn send(&mut self) -> Result<(), SendmailError> {
        let written = self
            .writer
            .write_all(&self.out)
            .and_then(|()| self.writer.flush());
        self.out.clear();
        written.map_err(|error| self.broken("sending a command", error))
    }

    /// Reads one (possibly multi-line) reply, waiting at most `timeout` for
    /// each read.
    fn read_reply(&mut self, timeout: Duration) -> Result<Reply, SendmailError> {
        self.reader
            .set_read_timeout(Some(timeout))
            .map_err(|error| self.broken("waiting for a reply", error))?;
        loop {
            match self.replies.next_reply() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(error) => return Err(self.broken("reading a reply", error)),
            }
            let input = self.replies.input();
            let filled = input.len();
            input.resize(filled + 4096, 0);
            let read = self.reader.read(&mut input[filled..]);
            input.truncate(filled + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(self.broken("reading a reply", "the connection was closed")),
                Ok(_) => {}
                Err(error) => return Err(self.broken("reading a reply", error)),
            }
        }
    }

    /// Ends the session after a refusal: QUIT (without waiting for its
    /// reply), and the error naming what was refused.
    fn refused(&mut self, command: String, reply: &Reply) -> SendmailError {
        self.out.clear();
        client::quit(&mut self.out);
        let _ = self.send();
        SendmailError::Refused {
            command,
            reply: reply.one_line(),
        }
    }

    /// Opens the session: the greeting, EHLO, and HELO on the same session
    /// when EHLO is refused ([`Opening`]). Returns what the server offers.
    fn open(&mut self, hostname: &str) -> Result<Capabilities, SendmailError> {
        let (mut opening, mut step) = Opening::new(hostname);
        let mut command = "the connection".to_string();
        loop {
            match step {
                OpeningStep::Read(_) => {
                    if !self.out.is_empty() {
                        command = self.pending_command();
                        self.send()?;
                    }
                    let reply = self.read_reply(self.command_timeout)?;
                    step = opening.receive(reply, &mut self.out);
                }
                OpeningStep::Ready(capabilities) => return Ok(capabilities),
                OpeningStep::Refused(refusal) => return Err(self.refused(command, &refusal.reply)),
            }
        }
    }

    /// Runs the mail transaction ([`Transaction`]) with sendmail's rules on
    /// top: any refusal ends the submission with nothing queued, which is
    /// why commands go one at a time (a refused RCPT is seen before DATA).
    /// `write_message` writes the message, streamed to the socket through
    /// the dot-stuffer. Returns the server's final reply.
    fn transaction(
        &mut self,
        capabilities: &Capabilities,
        envelope: Envelope<'_>,
        data_timeout: Duration,
        write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
    ) -> Result<Reply, SendmailError> {
        let capabilities = Capabilities {
            // One command at a time: see above.
            pipelining: false,
            ..capabilities.clone()
        };
        let (mut transaction, mut step) =
            Transaction::start(envelope, &capabilities, &mut self.out);
        let mut write_message = Some(write_message);
        let mut final_reply = None;
        loop {
            match step {
                Step::Read(stage) => {
                    let command = match stage {
                        Stage::EndOfData => "the message".to_string(),
                        _ => self.pending_command(),
                    };
                    self.send()?;
                    let timeout = match stage {
                        Stage::EndOfData => data_timeout,
                        _ => self.command_timeout,
                    };
                    let reply = self.read_reply(timeout)?;
                    let accepted = match stage {
                        Stage::Data => reply.code() == 354,
                        Stage::EndOfData => reply.code() == 250,
                        _ => reply.is_positive(),
                    };
                    if !accepted {
                        return Err(self.refused(command, &reply));
                    }
                    if stage == Stage::EndOfData {
                        final_reply = Some(reply.clone());
                    }
                    step = transaction.receive(reply, &mut self.out);
                }
                Step::SendBody => {
                    self.send()?;
                    // Follow-up transactions come only after a refused RCPT,
                    // which never reaches the machine (see above).
                    let write_message = write_message
                        .take()
                        .expect("a transaction with no refused RCPT asks for the body once");
                    self.send_body(write_message)?;
                    step = transaction.body_sent();
                }
                // The envelope above asks for DATA, never BDAT.
                Step::SendChunk => {
                    return Err(self.broken("sending the message", "BDAT was not asked for"));
                }
                Step::Done(_) => break,
            }
        }
        let Some(reply) = final_reply else {
            return Err(self.broken("sending the message", "the transaction ended without it"));
        };
        client::quit(&mut self.out);
        if self.send().is_ok() {
            let _ = self.read_reply(self.command_timeout);
        }
        Ok(reply)
    }

    /// Streams the message, dot-stuffed, and the final dot. On an input
    /// error the final dot is never sent: the server discards the
    /// unfinished transaction when we hang up.
    fn send_body(
        &mut self,
        write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
    ) -> Result<(), SendmailError> {
        let mut body = StuffedBody {
            stuffer: DotStuffer::new(),
            chunk: Vec::new(),
            out: &mut self.writer,
        };
        let written =
            write_message(&mut body).and_then(|()| body.finish().map_err(WriteError::Output));
        match written {
            Ok(()) => Ok(()),
            Err(WriteError::Input(error)) => Err(error.into()),
            Err(WriteError::Output(error)) => Err(self.broken("sending the message", error)),
        }
    }
}

/// The body as DATA carries it: every write goes through the one
/// dot-stuffer on its way to the socket.
struct StuffedBody<'a, W: Write> {
    stuffer: DotStuffer,
    /// The stuffed form of the last write.
    chunk: Vec<u8>,
    out: &'a mut W,
}

impl<W: Write> StuffedBody<'_, W> {
    /// Writes the end of data (`CRLF . CRLF`, the CRLF only when missing)
    /// and flushes.
    fn finish(&mut self) -> io::Result<()> {
        self.chunk.clear();
        self.stuffer.finish(&mut self.chunk);
        self.out.write_all(&self.chunk)?;
        self.out.flush()
    }
}

impl<W: Write> Write for StuffedBody<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.chunk.clear();
        self.stuffer.encode(buf, &mut self.chunk);
        self.out.write_all(&self.chunk)?;
        Ok(buf.len())
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
    fn the_body_is_stuffed_across_writes_and_ended_with_the_final_dot() {
        let mut out = Vec::new();
        let mut body = StuffedBody {
            stuffer: DotStuffer::new(),
            chunk: Vec::new(),
            out: &mut out,
        };
        for piece in [&b".a\r\nb.\r\n"[..], b".", b"\r\n", b"x", b".y\r\n"] {
            body.write_all(piece).unwrap();
        }
        body.finish().unwrap();
        assert_eq!(out, b"..a\r\nb.\r\n..\r\nx.y\r\n.\r\n");
    }
}

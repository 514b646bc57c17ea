//! Submitting the prepared message to the running server over SMTP on its
//! UNIX socket, or, when none answers, to the same session run in this
//! process over the spool ([`super::maildrop`]) or to the maildrop helper.
//!
//! # Where
//!
//! The message goes to the running server's `local.submit_socket` (default
//! `<spool>/submit.sock`), never over TCP: while the server is down, any
//! user may bind its TCP ports, and would get the message. The server
//! serves the socket as a relay listener serves a loopback client and
//! names the peer's uid in `Received:`. When nothing answers there, root and
//! the spool's owner write the spool ([`super::maildrop`]); other users go
//! through the setgid helper ([`super::helper`]).
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
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::smtp::client::{self, Envelope, Opening, OpeningStep, Stage, Step, Transaction};
use crate::smtp::dot::DotStuffer;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{Reply, ReplyBuffer};

use super::SendmailError;
use super::maildrop::Maildrop;
use super::message::WriteError;

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
            let mut connection = Connection::over(
                stream,
                format!("the server at {}", address.display()),
                config,
            )?;
            return connection.submit(config, sender, recipients, write_message);
        }
        Err(error) => error,
    };
    if matches!(refused, SendmailError::Connect { .. })
        && config.spool.path.is_absolute()
        && !super::helper::may_write_spool(config)
    {
        return super::helper::drop_off(config, sender, recipients, write_message, &refused);
    }
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

/// Connects to the running server's `local.submit_socket` (never TCP: a
/// process that took a TCP port while the server is down must get
/// nothing), or [`SendmailError::Connect`].
pub(super) fn connect_server(config: &Config) -> Result<(UnixStream, PathBuf), SendmailError> {
    let path = config.local.submit_socket(&config.spool.path);
    match UnixStream::connect(&path) {
        Ok(stream) => Ok((stream, path)),
        Err(error) => Err(SendmailError::Connect {
            socket: path,
            reason: match error.kind() {
                io::ErrorKind::ConnectionRefused => "connection refused".into(),
                io::ErrorKind::NotFound => "no such socket".into(),
                _ => error.to_string(),
            },
        }),
    }
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

//! The SMTP client's I/O shell: one connection to one remote server.
//!
//! Everything protocol-shaped (reply parsing, capabilities, command text,
//! dot-stuffing) is in `protocol`; this file reads and writes bytes under the
//! RFC 5321 §4.5.3.2 timeouts, upgrades to TLS, and runs one mail transaction
//! per call so a connection can carry several messages.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::protocol::{
    Capabilities, DotStuffer, MAX_REPLY_BYTES, Reply, ReplyError, auth_plain, base64_line,
    mail_from, parse_reply, rcpt_to,
};

/// RFC 5321 §4.5.3.2 timeouts, from `[delivery]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect (and TLS handshake).
    pub connect: Duration,
    /// Greeting, EHLO, MAIL, RCPT, DATA, each body block written, RSET.
    pub command: Duration,
    /// The reply after the final dot.
    pub data: Duration,
}

/// The negotiated TLS protocol version and cipher suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)
    }
}

/// Why talking to a remote server failed. Only a 5xx reply is permanent:
/// connection, timeout and TLS problems are worth another try later.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(io::Error),
    /// No reply (or no progress writing) within the RFC 5321 §4.5.3.2 timeout.
    #[error("timed out {stage}")]
    Timeout { stage: &'static str },
    /// Reading or writing the socket failed.
    #[error("I/O error {stage}: {source}")]
    Io {
        stage: &'static str,
        source: io::Error,
    },
    /// The server closed the connection.
    #[error("connection closed by the server {stage}")]
    Closed { stage: &'static str },
    /// The server's reply was not SMTP.
    #[error("unreadable reply {stage}: {source}")]
    Protocol {
        stage: &'static str,
        source: ReplyError,
    },
    /// A reply that makes no sense where it came (RFC 5321 §4.3.2), such as
    /// a 2xx to DATA where 354 must come: nothing can be concluded from it.
    #[error("unexpected reply {stage}: {reply}")]
    Unexpected { stage: &'static str, reply: Reply },
    /// The server refused a session command (greeting, EHLO, STARTTLS, AUTH, RSET).
    #[error("{stage} rejected: {reply}")]
    Rejected { stage: &'static str, reply: Reply },
    /// The TLS handshake failed (including certificate verification).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    /// The policy requires TLS and the server does not offer STARTTLS.
    #[error("TLS is required but the server does not offer STARTTLS")]
    TlsNotOffered,
    /// Bytes arrived after the STARTTLS 220 before the handshake (RFC 3207 §4.2).
    #[error("the server sent data before the TLS handshake (STARTTLS injection)")]
    TlsInjection,
    /// `relay_auth` is set and the smarthost offers no usable mechanism.
    #[error("AUTH is required but the server offers neither PLAIN nor LOGIN over TLS")]
    AuthNotOffered,
    /// The queued body could not be read: the transaction was abandoned.
    #[error("the queued body could not be read: {0}")]
    Body(io::Error),
}

impl ClientError {
    /// True when the server refused with a 5xx reply (do not retry).
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Rejected { reply, .. } if reply.is_permanent())
    }

    /// The server's reply, when the failure was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// A message body to send, in chunks, without holding a large one in memory.
pub enum Body {
    /// A small body read at once (`None` once sent).
    Memory(Option<Bytes>),
    /// Chunks from a reader thread; an `Err` aborts the transaction so a
    /// truncated message is never ended with the final dot.
    Stream(mpsc::Receiver<io::Result<Bytes>>),
}

impl Body {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        match self {
            Body::Memory(bytes) => bytes.take().map(Ok),
            Body::Stream(receiver) => receiver.recv().await,
        }
    }
}

/// One mail transaction: envelope and the facts that choose MAIL parameters.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    /// Reverse path; empty for the null sender.
    pub sender: &'a str,
    /// Forward paths, one RCPT each.
    pub recipients: &'a [String],
    /// Body size, for the SIZE parameter (RFC 1870).
    pub size: u64,
    /// Send BODY=8BITMIME when the server offers it (RFC 6152).
    pub eight_bit: bool,
    /// Send SMTPUTF8 (RFC 6531); the caller checked it is offered if needed.
    pub smtputf8: bool,
}

/// What the server said for each recipient of a transaction, in order: the
/// MAIL reply when MAIL was refused, else the RCPT reply when RCPT was
/// refused, else the DATA reply when DATA was refused, else the reply to the
/// end of data.
#[derive(Debug, Clone)]
pub struct TransactionResult {
    /// One reply per recipient, in the order given.
    pub replies: Vec<Reply>,
}

/// A transaction that broke off before every recipient had a reply.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TransactionError {
    /// What went wrong.
    pub error: ClientError,
    /// One entry per recipient, in order: `Some` when the server already
    /// refused that recipient at RCPT (a verdict that stands), `None` when
    /// its outcome is unknown.
    pub replies: Vec<Option<Reply>>,
    /// True when the final dot was (being) sent: the server may have taken
    /// the message, so sending it elsewhere now could duplicate it.
    pub data_sent: bool,
}

/// RFC 5321 §3.8: a 421 reply, whatever the command, announces that the
/// server is closing the session; nothing more will be answered.
fn closing(reply: &Reply, stage: &'static str) -> Result<(), ClientError> {
    if reply.code == 421 {
        return Err(ClientError::Rejected {
            stage,
            reply: reply.clone(),
        });
    }
    Ok(())
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Flush the outgoing body buffer once it holds this much.
const WRITE_CHUNK: usize = 64 * 1024;

/// An open SMTP connection, greeted and (after [`Connection::ehlo`]) ready
/// for transactions.
pub struct Connection {
    stream: Stream,
    /// Received bytes not yet parsed into a reply.
    buffer: Vec<u8>,
    capabilities: Capabilities,
    tls: Option<TlsInfo>,
    timeouts: Timeouts,
    peer: SocketAddr,
    /// Transactions completed on this connection.
    transactions: u32,
    /// False once the session is in an unknown state (an I/O error, a
    /// timeout, an unreadable reply, a 421, a refused RSET): it must not be
    /// reused for another transaction.
    usable: bool,
}

impl Connection {
    /// Opens a TCP connection to `peer` (the greeting is not read yet).
    pub async fn connect(peer: SocketAddr, timeouts: Timeouts) -> Result<Connection, ClientError> {
        let stream = match tokio::time::timeout(timeouts.connect, TcpStream::connect(peer)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ClientError::Connect(error)),
            Err(_) => {
                return Err(ClientError::Timeout {
                    stage: "connecting",
                });
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream: Stream::Plain(stream),
            buffer: Vec::with_capacity(4096),
            capabilities: Capabilities::default(),
            tls: None,
            timeouts,
            peer,
            transactions: 0,
            usable: true,
        })
    }

    /// Starts TLS at once, before the greeting (implicit TLS, RFC 8314 §3.3).
    pub async fn start_implicit_tls(
        self,
        connector: &TlsConnector,
        server_name: ServerName<'static>,
    ) -> Result<Connection, ClientError> {
        self.upgrade(connector, server_name).await
    }

    /// The remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// What the last EHLO reply offered.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The TLS session, or `None` for plaintext.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// True while the session is in a known, clean state between
    /// transactions (nothing unread, no error, no 421), so it may carry
    /// another one.
    pub fn is_usable(&self) -> bool {
        // Bytes nobody asked for would be read as the next command's reply.
        self.usable && self.buffer.is_empty()
    }

    /// Transactions completed on this connection so far.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Reads the 220 greeting (RFC 5321 §4.3.1); any other reply is an error.
    pub async fn read_greeting(&mut self) -> Result<Reply, ClientError> {
        let reply = self
            .read_reply("reading the greeting", self.timeouts.command)
            .await?;
        if reply.code != 220 {
            return Err(ClientError::Rejected {
                stage: "greeting",
                reply,
            });
        }
        Ok(reply)
    }

    /// EHLO, falling back to HELO when the server does not know EHLO
    /// (RFC 5321 §3.2: a 500/502 reply); records the capabilities.
    pub async fn ehlo(&mut self, hostname: &str) -> Result<(), ClientError> {
        let reply = self
            .command(&format!("EHLO {hostname}\r\n"), "EHLO")
            .await?;
        if reply.is_positive() {
            self.capabilities = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if !matches!(reply.code, 500 | 501 | 502 | 504 | 550) {
            return Err(ClientError::Rejected {
                stage: "EHLO",
                reply,
            });
        }
        let reply = self
            .command(&format!("HELO {hostname}\r\n"), "HELO")
            .await?;
        if !reply.is_positive() {
            return Err(ClientError::Rejected {
                stage: "HELO",
                reply,
            });
        }
        self.capabilities = Capabilities::default();
        Ok(())
    }

    /// Sends STARTTLS (RFC 3207) and checks the 220. On a refusal the
    /// session goes on in plaintext, unchanged.
    pub async fn send_starttls(&mut self) -> Result<(), ClientError> {
        let reply = self.command("STARTTLS\r\n", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(ClientError::Rejected {
                stage: "STARTTLS",
                reply,
            });
        }
        // Anything already received came in plaintext after the 220 and must
        // not be read as if it came over TLS.
        if !self.buffer.is_empty() {
            return Err(ClientError::TlsInjection);
        }
        Ok(())
    }

    /// After [`Connection::send_starttls`]: the handshake, then EHLO again
    /// (RFC 3207 §4.2: everything learned before TLS is forgotten).
    pub async fn finish_starttls(
        self,
        connector: &TlsConnector,
        server_name: ServerName<'static>,
        hostname: &str,
    ) -> Result<Connection, ClientError> {
        let mut connection = self.upgrade(connector, server_name).await?;
        connection.ehlo(hostname).await?;
        Ok(connection)
    }

    async fn upgrade(
        self,
        connector: &TlsConnector,
        server_name: ServerName<'static>,
    ) -> Result<Connection, ClientError> {
        let Stream::Plain(tcp) = self.stream else {
            return Err(ClientError::TlsHandshake("TLS is already active".into()));
        };
        let stream =
            match tokio::time::timeout(self.timeouts.connect, connector.connect(server_name, tcp))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(ClientError::TlsHandshake(error.to_string())),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        stage: "in the TLS handshake",
                    });
                }
            };
        let (_, session) = stream.get_ref();
        let tls = TlsInfo {
            version: session
                .protocol_version()
                .map(|version| match version {
                    rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
                    rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_else(|| "TLS".into()),
            cipher: session
                .negotiated_cipher_suite()
                .map(|suite| format!("{:?}", suite.suite()))
                .unwrap_or_else(|| "unknown".into()),
        };
        Ok(Connection {
            stream: Stream::Tls(Box::new(stream)),
            buffer: Vec::with_capacity(4096),
            capabilities: Capabilities::default(),
            tls: Some(tls),
            timeouts: self.timeouts,
            peer: self.peer,
            transactions: 0,
            usable: true,
        })
    }

    /// AUTH PLAIN, else AUTH LOGIN (RFC 4954). Only call this under TLS.
    pub async fn authenticate(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let reply = if self.capabilities.offers_auth("PLAIN") {
            self.command(&auth_plain(username, password), "AUTH PLAIN")
                .await?
        } else if self.capabilities.offers_auth("LOGIN") {
            let reply = self.command("AUTH LOGIN\r\n", "AUTH LOGIN").await?;
            if reply.code != 334 {
                return Err(ClientError::Rejected {
                    stage: "AUTH LOGIN",
                    reply,
                });
            }
            let reply = self
                .command(&base64_line(username), "AUTH LOGIN user name")
                .await?;
            if reply.code != 334 {
                return Err(ClientError::Rejected {
                    stage: "AUTH LOGIN user name",
                    reply,
                });
            }
            self.command(&base64_line(password), "AUTH LOGIN password")
                .await?
        } else {
            return Err(ClientError::AuthNotOffered);
        };
        if reply.code != 235 {
            return Err(ClientError::Rejected {
                stage: "AUTH",
                reply,
            });
        }
        Ok(())
    }

    /// Runs one mail transaction: MAIL, RCPT for every recipient, DATA and
    /// the body, pipelined when the server offers PIPELINING (RFC 2920).
    ///
    /// `Ok` gives every recipient its reply. An `Err` means the transaction
    /// broke off (connection lost, timeout, unreadable reply, a `421`
    /// closing the session, unreadable body): it still carries the replies
    /// that settled some recipients before that (their own refusal at RCPT),
    /// and says whether the end of data had been sent. Afterwards the
    /// connection is no longer [usable](Connection::is_usable).
    pub async fn send(
        &mut self,
        transaction: &Transaction<'_>,
        body: &mut Body,
    ) -> Result<TransactionResult, TransactionError> {
        let result = self.run_transaction(transaction, body).await;
        if result.is_err() {
            self.usable = false;
        }
        result
    }

    async fn run_transaction(
        &mut self,
        transaction: &Transaction<'_>,
        body: &mut Body,
    ) -> Result<TransactionResult, TransactionError> {
        let capabilities = &self.capabilities;
        let mail = mail_from(
            transaction.sender,
            capabilities.size.map(|_| transaction.size),
            transaction.eight_bit && capabilities.eight_bit_mime,
            transaction.smtputf8 && capabilities.smtputf8,
        );
        let pipelined = capabilities.pipelining;
        let count = transaction.recipients.len();
        let mut rcpt_replies: Vec<Reply> = Vec::with_capacity(count);
        // Only a recipient's own refusal survives a failure later on: an
        // accepted recipient's fate is decided by the end of data.
        let broken_off = |error: ClientError, rcpt_replies: &[Reply], data_sent: bool| {
            let mut replies: Vec<Option<Reply>> = rcpt_replies
                .iter()
                .map(|reply| (!reply.is_positive() && reply.code != 421).then(|| reply.clone()))
                .collect();
            replies.resize(count, None);
            TransactionError {
                error,
                replies,
                data_sent,
            }
        };

        if pipelined {
            let mut batch = mail.clone();
            for recipient in transaction.recipients {
                batch.push_str(&rcpt_to(recipient));
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), "sending MAIL, RCPT and DATA")
                .await
                .map_err(|error| broken_off(error, &[], false))?;
        }
        let mail_reply = if pipelined {
            self.read_reply("after MAIL", self.timeouts.command).await
        } else {
            self.command(&mail, "MAIL").await
        }
        .map_err(|error| broken_off(error, &[], false))?;
        // RFC 5321 §3.8: 421 means the server is closing the session; no
        // further reply will come.
        closing(&mail_reply, "MAIL").map_err(|error| broken_off(error, &[], false))?;
        if !mail_reply.is_positive() {
            if pipelined {
                // Drain the RCPT and DATA replies (RFC 2920 §3.1); they say
                // nothing about the recipients once MAIL was refused.
                let mut data_reply = None;
                for stage in std::iter::repeat_n("after RCPT", count).chain(["after DATA"]) {
                    match self.read_reply(stage, self.timeouts.command).await {
                        Ok(reply) if reply.code == 421 => {
                            self.usable = false;
                            break;
                        }
                        Ok(reply) => data_reply = Some(reply),
                        Err(_) => {
                            self.usable = false;
                            break;
                        }
                    }
                }
                if self.usable {
                    self.abort_transaction(data_reply.as_ref()).await;
                }
            } else {
                self.abort_transaction(None).await;
            }
            return Ok(TransactionResult {
                replies: vec![mail_reply; count],
            });
        }

        for recipient in transaction.recipients {
            let reply = if pipelined {
                self.read_reply("after RCPT", self.timeouts.command).await
            } else {
                self.command(&rcpt_to(recipient), "RCPT").await
            }
            .map_err(|error| broken_off(error, &rcpt_replies, false))?;
            if let Err(error) = closing(&reply, "RCPT") {
                return Err(broken_off(error, &rcpt_replies, false));
            }
            rcpt_replies.push(reply);
        }

        let any_accepted = rcpt_replies.iter().any(Reply::is_positive);
        let data_reply = if pipelined {
            Some(self.read_reply("after DATA", self.timeouts.command).await)
        } else if any_accepted {
            Some(self.command("DATA\r\n", "DATA").await)
        } else {
            None
        }
        .transpose()
        .map_err(|error| broken_off(error, &rcpt_replies, false))?;
        if let Some(reply) = data_reply.as_ref().filter(|_| any_accepted) {
            if reply.code == 421 {
                let error = closing(reply, "DATA").expect_err("a 421 reply is closing");
                return Err(broken_off(error, &rcpt_replies, false));
            }
            // RFC 5321 §4.3.2: DATA is answered 354, 4xx or 5xx. Taking a
            // 2xx as the recipients' verdict would report mail as delivered
            // whose body was never sent.
            if reply.is_positive() || (reply.is_intermediate() && reply.code != 354) {
                let error = ClientError::Unexpected {
                    stage: "after DATA",
                    reply: reply.clone(),
                };
                return Err(broken_off(error, &rcpt_replies, false));
            }
        }
        match &data_reply {
            Some(reply) if reply.code == 354 && any_accepted => {}
            other => {
                // No recipient left, or DATA refused: no body is sent.
                // RFC 5321 §4.1.1.4: DATA after no valid recipient must be
                // refused; pipelining made us send it anyway.
                let data_refusal = other.clone();
                if data_refusal.as_ref().is_some_and(|reply| reply.code == 421) {
                    self.usable = false;
                } else {
                    self.abort_transaction(data_refusal.as_ref()).await;
                }
                let replies = rcpt_replies
                    .into_iter()
                    .map(|rcpt| match (&data_refusal, rcpt.is_positive()) {
                        (Some(data), true) => data.clone(),
                        _ => rcpt,
                    })
                    .collect();
                return Ok(TransactionResult { replies });
            }
        }

        let mut data_sent = false;
        self.send_body(body, &mut data_sent)
            .await
            .map_err(|error| broken_off(error, &rcpt_replies, data_sent))?;
        let final_reply = self
            .read_reply("after the end of data", self.timeouts.data)
            .await
            .map_err(|error| broken_off(error, &rcpt_replies, true))?;
        if final_reply.code == 421 || final_reply.is_intermediate() {
            self.usable = false;
        }
        self.transactions += 1;
        let replies = rcpt_replies
            .into_iter()
            .map(|rcpt| {
                if rcpt.is_positive() {
                    final_reply.clone()
                } else {
                    rcpt
                }
            })
            .collect();
        Ok(TransactionResult { replies })
    }

    /// After a transaction that sent no body: when the server still answered
    /// DATA with 354 (RFC 2920 §3.1), end the empty data; then RSET so the
    /// connection is clean for the next message. The recipients' replies are
    /// known already, so a failure here only makes the connection unusable.
    async fn abort_transaction(&mut self, data_reply: Option<&Reply>) {
        let result = async {
            if data_reply.is_some_and(|reply| reply.code == 354) {
                self.write(b".\r\n", "ending an empty DATA").await?;
                let _ = self
                    .read_reply("after an empty DATA", self.timeouts.data)
                    .await?;
            }
            self.rset().await
        }
        .await;
        if let Err(error) = result {
            tracing::debug!(peer = %self.peer, %error, "cannot reset the session; closing it");
            self.usable = false;
        }
    }

    /// Sends the body, dot-stuffed, and the final dot. `data_sent` is set
    /// as the write carrying the final dot starts: from then on the server
    /// may have the whole message.
    async fn send_body(
        &mut self,
        body: &mut Body,
        data_sent: &mut bool,
    ) -> Result<(), ClientError> {
        let mut stuffer = DotStuffer::new();
        let mut output = Vec::with_capacity(WRITE_CHUNK + 1024);
        while let Some(chunk) = body.next_chunk().await {
            let chunk = chunk.map_err(ClientError::Body)?;
            stuffer.encode(&chunk, &mut output);
            if output.len() >= WRITE_CHUNK {
                self.write(&output, "sending the body").await?;
                output.clear();
            }
        }
        stuffer.finish(&mut output);
        *data_sent = true;
        self.write(&output, "sending the body").await
    }

    /// RSET (RFC 5321 §4.1.1.5); a refusal makes the connection unusable.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        let reply = self.command("RSET\r\n", "RSET").await?;
        if !reply.is_positive() {
            self.usable = false;
            return Err(ClientError::Rejected {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    /// QUIT and close, without waiting long for the goodbye.
    pub async fn quit(mut self) {
        let quick = Duration::from_secs(2).min(self.timeouts.command);
        let _ = tokio::time::timeout(quick, async {
            if self.write(b"QUIT\r\n", "QUIT").await.is_ok() {
                let _ = self.read_reply("after QUIT", quick).await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// Sends one command and reads its reply; errors name the command as
    /// "sending X" or "after X".
    async fn command(&mut self, line: &str, command: &'static str) -> Result<Reply, ClientError> {
        let (sending, after) = stages(command);
        self.write(line.as_bytes(), sending).await?;
        self.read_reply(after, self.timeouts.command).await
    }

    async fn write(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), ClientError> {
        let stream = &mut self.stream;
        match tokio::time::timeout(self.timeouts.command, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                self.usable = false;
                Err(ClientError::Io { stage, source })
            }
            Err(_) => {
                self.usable = false;
                Err(ClientError::Timeout { stage })
            }
        }
    }

    async fn read_reply(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Parsing starts over from the first byte, so it only runs when a
        // line was completed: a peer sending one byte at a time costs
        // linear, not quadratic, work.
        let mut parse = true;
        loop {
            let result = if parse {
                parse_reply(&self.buffer)
            } else {
                Ok(None)
            };
            let error = match result {
                Ok(Some((reply, used))) => {
                    self.buffer.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {
                    self.buffer.reserve(4096);
                    let before = self.buffer.len();
                    match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer))
                        .await
                    {
                        Ok(Ok(0)) => ClientError::Closed { stage },
                        Ok(Ok(_)) => {
                            parse = self.buffer[before..].contains(&b'\n')
                                || self.buffer.len() > MAX_REPLY_BYTES;
                            continue;
                        }
                        Ok(Err(source)) => ClientError::Io { stage, source },
                        Err(_) => ClientError::Timeout { stage },
                    }
                }
                Err(source) => ClientError::Protocol { stage, source },
            };
            self.usable = false;
            return Err(error);
        }
    }
}

/// How errors name the moments around `command`: (while sending it, while
/// waiting for its reply).
fn stages(command: &'static str) -> (&'static str, &'static str) {
    match command {
        "EHLO" => ("sending EHLO", "after EHLO"),
        "HELO" => ("sending HELO", "after HELO"),
        "STARTTLS" => ("sending STARTTLS", "after STARTTLS"),
        "AUTH PLAIN" => ("sending AUTH PLAIN", "after AUTH PLAIN"),
        "AUTH LOGIN" => ("sending AUTH LOGIN", "after AUTH LOGIN"),
        "AUTH LOGIN user name" => ("sending the AUTH user name", "after the AUTH user name"),
        "AUTH LOGIN password" => ("sending the AUTH password", "after the AUTH password"),
        "MAIL" => ("sending MAIL", "after MAIL"),
        "RCPT" => ("sending RCPT", "after RCPT"),
        "DATA" => ("sending DATA", "after DATA"),
        "RSET" => ("sending RSET", "after RSET"),
        other => (other, other),
    }
}

/// The name to send in SNI and check the certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_string())
        .map_err(|error| ClientError::TlsHandshake(format!("{host:?} is not a TLS name: {error}")))
}

/// A connector from a shared client configuration.
pub fn connector(config: Arc<rustls::ClientConfig>) -> TlsConnector {
    TlsConnector::from(config)
}

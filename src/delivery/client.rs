//! The SMTP client's I/O shell: one connection to one remote server, a
//! thin pump over the pure machines of `smtp::client` (as
//! `server::connection` is for the inbound session). It reads and writes
//! bytes under the RFC 5321 §4.5.3.2 timeouts, upgrades to TLS and streams
//! the body; every protocol decision is the machines'.

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

use crate::smtp::client::{
    self as machine, Auth, AuthStep, Envelope, Opening, OpeningStep, Refusal, Stage, Step,
    Transaction, Verdict,
};
use crate::smtp::dot::DotStuffer;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{Reply, ReplyBuffer, ReplyError};

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

/// What the client was doing when I/O failed, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Opening the TCP connection.
    Connecting,
    /// The TLS handshake.
    TlsHandshake,
    /// Writing the commands (or body) of a stage.
    Sending(Stage),
    /// Waiting for the reply of a stage.
    After(Stage),
}

impl std::fmt::Display for Moment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Moment::Connecting => f.write_str("connecting"),
            Moment::TlsHandshake => f.write_str("in the TLS handshake"),
            Moment::Sending(stage) => write!(f, "sending {stage}"),
            Moment::After(Stage::Greeting) => f.write_str("reading the greeting"),
            Moment::After(stage) => write!(f, "after {stage}"),
        }
    }
}

/// Why talking to a remote server failed. None of these fails a recipient:
/// the verdicts that can come from the server's replies are
/// [`smtp::client::disposition`](crate::smtp::client::disposition)'s.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(io::Error),
    /// No reply (or no progress writing) within the RFC 5321 §4.5.3.2 timeout.
    #[error("timed out {moment}")]
    Timeout { moment: Moment },
    /// Reading or writing the socket failed.
    #[error("I/O error {moment}: {source}")]
    Io { moment: Moment, source: io::Error },
    /// The server closed the connection.
    #[error("connection closed by the server {moment}")]
    Closed { moment: Moment },
    /// The server's reply was not SMTP.
    #[error("unreadable reply {moment}: {source}")]
    Protocol { moment: Moment, source: ReplyError },
    /// A reply that makes no sense where it came (RFC 5321 §4.3.2), such as
    /// a 2xx to DATA where 354 must come: nothing can be concluded from it.
    #[error("unexpected reply after {stage}: {}", reply.one_line())]
    Unexpected { stage: Stage, reply: Reply },
    /// The server refused a session command (greeting, EHLO, STARTTLS,
    /// AUTH) or closed the session with 421.
    #[error("{stage} rejected: {}", reply.one_line())]
    Rejected { stage: Stage, reply: Reply },
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
    /// The server's reply, when the failure was a refusal.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

impl From<Refusal> for ClientError {
    fn from(refusal: Refusal) -> ClientError {
        ClientError::Rejected {
            stage: refusal.stage,
            reply: refusal.reply,
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

/// Opens the body afresh for each transaction that sends it (a follow-up
/// after "too many recipients" sends it again).
pub type Bodies<'a> = dyn FnMut() -> io::Result<Body> + Send + 'a;

/// A transaction that broke off before every recipient had a verdict.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TransactionError {
    /// What went wrong.
    pub error: ClientError,
    /// One entry per recipient, in order: `Some` when the server already
    /// settled it (its own refusal at RCPT, or an earlier transaction of
    /// the same message), `None` when its outcome is unknown.
    pub verdicts: Vec<Option<Verdict>>,
    /// True when the final dot was (being) sent: the server may have taken
    /// the message, so sending it elsewhere now could duplicate it.
    pub data_sent: bool,
    /// True when the server cannot have accepted anything: on a pooled
    /// connection, a stale session worth replacing with a fresh one.
    pub before_transaction: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An LMTP server's UNIX socket (`lmtp:unix:/path`).
    Unix(tokio::net::UnixStream),
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
            Stream::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
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
            Stream::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Stream::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Flush the outgoing body buffer once it holds this much.
const WRITE_CHUNK: usize = 64 * 1024;

/// An open SMTP connection, greeted and (after [`Connection::open`]) ready
/// for transactions.
pub struct Connection {
    stream: Stream,
    /// Received bytes not yet parsed into a reply.
    replies: ReplyBuffer,
    /// Commands and body bytes on their way out; kept to be reused by the
    /// next transaction.
    out: Vec<u8>,
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
                    moment: Moment::Connecting,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream: Stream::Plain(stream),
            replies: ReplyBuffer::new(),
            out: Vec::new(),
            capabilities: Capabilities::default(),
            tls: None,
            timeouts,
            peer,
            transactions: 0,
            usable: true,
        })
    }

    /// Opens an LMTP server's UNIX socket at `path` (the greeting is not
    /// read yet). `peer` is what the connection reports as its address
    /// (nothing listens on it).
    pub async fn connect_unix(
        path: &std::path::Path,
        peer: SocketAddr,
        timeouts: Timeouts,
    ) -> Result<Connection, ClientError> {
        let stream =
            match tokio::time::timeout(timeouts.connect, tokio::net::UnixStream::connect(path))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(ClientError::Connect(error)),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        moment: Moment::Connecting,
                    });
                }
            };
        Ok(Connection {
            stream: Stream::Unix(stream),
            replies: ReplyBuffer::new(),
            out: Vec::new(),
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
        self.usable && self.replies.is_empty()
    }

    /// Transactions completed on this connection so far.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Reads the greeting and sends EHLO (HELO when EHLO is refused), as
    /// [`Opening`] says; records the capabilities.
    pub async fn open(&mut self, hostname: &str) -> Result<(), ClientError> {
        let (opening, step) = Opening::new(hostname);
        self.run_opening(opening, step, Vec::new()).await
    }

    /// Like [`Connection::open`], or for an LMTP server (RFC 2033) with
    /// LHLO when `lmtp`.
    pub async fn open_as(&mut self, hostname: &str, lmtp: bool) -> Result<(), ClientError> {
        let (opening, step) = if lmtp {
            Opening::lmtp(hostname)
        } else {
            Opening::new(hostname)
        };
        self.run_opening(opening, step, Vec::new()).await
    }

    async fn run_opening(
        &mut self,
        mut opening: Opening,
        mut step: OpeningStep,
        mut out: Vec<u8>,
    ) -> Result<(), ClientError> {
        loop {
            match step {
                OpeningStep::Read(stage) => {
                    self.write(&out, Moment::Sending(stage)).await?;
                    out.clear();
                    let reply = self.read_reply(stage, self.timeouts.command).await?;
                    step = opening.receive(reply, &mut out);
                }
                OpeningStep::Ready(capabilities) => {
                    self.capabilities = capabilities;
                    return Ok(());
                }
                OpeningStep::Refused(refusal) => return Err(refusal.into()),
            }
        }
    }

    /// Sends STARTTLS (RFC 3207) and checks the 220. On a refusal the
    /// session goes on in plaintext, unchanged.
    pub async fn send_starttls(&mut self) -> Result<(), ClientError> {
        let mut out = Vec::new();
        machine::starttls(&mut out);
        self.write(&out, Moment::Sending(Stage::StartTls)).await?;
        let reply = self
            .read_reply(Stage::StartTls, self.timeouts.command)
            .await?;
        machine::starttls_reply(reply)?;
        // Anything already received came in plaintext after the 220 and must
        // not be read as if it came over TLS.
        if !self.replies.is_empty() {
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
        let lmtp = self.capabilities.lmtp;
        let mut connection = self.upgrade(connector, server_name).await?;
        let mut out = Vec::new();
        let (opening, step) = Opening::after_starttls_as(hostname, lmtp, &mut out);
        connection.run_opening(opening, step, out).await?;
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
                        moment: Moment::TlsHandshake,
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
            replies: ReplyBuffer::new(),
            out: Vec::new(),
            capabilities: Capabilities::default(),
            tls: Some(tls),
            timeouts: self.timeouts,
            peer: self.peer,
            transactions: 0,
            usable: true,
        })
    }

    /// AUTH PLAIN, else AUTH LOGIN (RFC 4954), as [`Auth`] says. Only call
    /// this under TLS.
    pub async fn authenticate(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        let mut out = Vec::new();
        let Some((mut auth, mut step)) =
            Auth::start(&self.capabilities, username, password, &mut out)
        else {
            return Err(ClientError::AuthNotOffered);
        };
        loop {
            match step {
                AuthStep::Read => {
                    self.write(&out, Moment::Sending(Stage::Auth)).await?;
                    out.clear();
                    let reply = self.read_reply(Stage::Auth, self.timeouts.command).await?;
                    step = auth.receive(reply, &mut out);
                }
                AuthStep::Done => return Ok(()),
                AuthStep::Refused(refusal) => return Err(refusal.into()),
            }
        }
    }

    /// Runs one message's transaction (and the follow-ups for recipients
    /// over the server's limit) as [`Transaction`] says: the commands it
    /// asks for, pipelined in one write when the server offers PIPELINING,
    /// and the body from `bodies`, streamed in 64 KiB writes.
    ///
    /// `Ok` gives every recipient its verdict. An `Err` means the session
    /// broke off (connection lost, timeout, unreadable reply, a `421`, a
    /// reply that makes no sense, an unreadable body): it still carries the
    /// verdicts known before that. Afterwards the connection is no longer
    /// [usable](Connection::is_usable).
    pub async fn send(
        &mut self,
        envelope: Envelope<'_>,
        bodies: &mut Bodies<'_>,
    ) -> Result<Vec<Verdict>, TransactionError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let (mut transaction, mut step) =
            Transaction::start(envelope, &self.capabilities, &mut out);
        let mut failure = None;
        let outcome = loop {
            let result = match step {
                Step::Read(stage) => self.exchange(&out, stage).await.map(|reply| {
                    out.clear();
                    transaction.receive(reply, &mut out)
                }),
                Step::SendBody => self.send_body(&mut out, &mut transaction, bodies).await,
                Step::SendChunk => self.send_chunks(&mut out, &mut transaction, bodies).await,
                Step::Done(outcome) => break outcome,
            };
            step = result.unwrap_or_else(|error| {
                failure = Some(error);
                Step::Done(transaction.interrupted())
            });
        };
        out.clear();
        self.out = out;
        self.transactions += outcome.completed;
        if !outcome.reusable {
            self.usable = false;
        }
        let Some(broken) = outcome.broken else {
            return Ok(outcome
                .verdicts
                .into_iter()
                .map(|verdict| verdict.expect("a finished transaction settles everyone"))
                .collect());
        };
        self.usable = false;
        let error = match (failure, broken.reply) {
            (Some(error), _) => error,
            (None, Some(reply)) if reply.code() == 421 => ClientError::Rejected {
                stage: broken.stage,
                reply,
            },
            (None, Some(reply)) => ClientError::Unexpected {
                stage: broken.stage,
                reply,
            },
            (None, None) => unreachable!("the machine breaks off on its own only for a reply"),
        };
        Err(TransactionError {
            error,
            verdicts: outcome.verdicts,
            data_sent: broken.data_sent,
            before_transaction: broken.before_transaction,
        })
    }

    /// Writes what `out` holds for `stage`, then reads its reply.
    async fn exchange(&mut self, out: &[u8], stage: Stage) -> Result<Reply, ClientError> {
        self.write(out, Moment::Sending(stage)).await?;
        let timeout = if stage == Stage::EndOfData {
            self.timeouts.data
        } else {
            self.timeouts.command
        };
        self.read_reply(stage, timeout).await
    }

    /// Sends the body, dot-stuffed, and the final dot; tells the machine
    /// as the write carrying the final dot starts, since from then on the
    /// server may have the whole message.
    async fn send_body(
        &mut self,
        out: &mut Vec<u8>,
        transaction: &mut Transaction<'_>,
        bodies: &mut Bodies<'_>,
    ) -> Result<Step, ClientError> {
        let sending = Moment::Sending(Stage::Body);
        self.write(out, Moment::Sending(Stage::Data)).await?;
        out.clear();
        let mut body = bodies().map_err(ClientError::Body)?;
        let mut stuffer = DotStuffer::new();
        out.reserve(WRITE_CHUNK + 1024);
        while let Some(chunk) = body.next_chunk().await {
            let chunk = chunk.map_err(ClientError::Body)?;
            stuffer.encode(&chunk, out);
            if out.len() >= WRITE_CHUNK {
                self.write(out, sending).await?;
                out.clear();
            }
        }
        stuffer.finish(out);
        let step = transaction.body_sent();
        self.write(out, sending).await?;
        out.clear();
        Ok(step)
    }

    /// Sends the body with BDAT (RFC 3030), as stored: each chunk of the
    /// body as one BDAT, its reply read before the next goes (the machine
    /// decides on each), the last one marked LAST. One chunk is read ahead
    /// to know which is the last; a body that ends in a read error never
    /// gets its LAST.
    async fn send_chunks(
        &mut self,
        out: &mut Vec<u8>,
        transaction: &mut Transaction<'_>,
        bodies: &mut Bodies<'_>,
    ) -> Result<Step, ClientError> {
        self.write(out, Moment::Sending(Stage::Rcpt)).await?;
        out.clear();
        let mut body = bodies().map_err(ClientError::Body)?;
        let mut current = body
            .next_chunk()
            .await
            .transpose()
            .map_err(ClientError::Body)?;
        loop {
            let next = match current {
                Some(_) => body
                    .next_chunk()
                    .await
                    .transpose()
                    .map_err(ClientError::Body)?,
                None => None,
            };
            let chunk = current.take().unwrap_or_default();
            let last = next.is_none();
            let stage = transaction.chunk(chunk.len(), last, out);
            out.extend_from_slice(&chunk);
            let reply = self.exchange(out, stage).await?;
            out.clear();
            let step = transaction.receive(reply, out);
            if last || step != Step::SendChunk {
                return Ok(step);
            }
            current = next;
        }
    }

    /// QUIT and close, without waiting long for the goodbye.
    pub async fn quit(mut self) {
        let quick = Duration::from_secs(2).min(self.timeouts.command);
        let _ = tokio::time::timeout(quick, async {
            let mut out = Vec::new();
            machine::quit(&mut out);
            if self.write(&out, Moment::Sending(Stage::Quit)).await.is_ok() {
                let _ = self.read_reply(Stage::Quit, quick).await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// Writes `bytes` (nothing when empty) under the command timeout.
    async fn write(&mut self, bytes: &[u8], moment: Moment) -> Result<(), ClientError> {
        if bytes.is_empty() {
            return Ok(());
        }
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
                Err(ClientError::Io { moment, source })
            }
            Err(_) => {
                self.usable = false;
                Err(ClientError::Timeout { moment })
            }
        }
    }

    /// Reads one reply to `stage` within `timeout`.
    async fn read_reply(&mut self, stage: Stage, timeout: Duration) -> Result<Reply, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let moment = Moment::After(stage);
        loop {
            let error = match self.replies.next_reply() {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {
                    match tokio::time::timeout_at(
                        deadline,
                        self.stream.read_buf(self.replies.input()),
                    )
                    .await
                    {
                        Ok(Ok(0)) => ClientError::Closed { moment },
                        Ok(Ok(_)) => continue,
                        Ok(Err(source)) => ClientError::Io { moment, source },
                        Err(_) => ClientError::Timeout { moment },
                    }
                }
                Err(source) => ClientError::Protocol { moment, source },
            };
            self.usable = false;
            return Err(error);
        }
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

//! One inbound SMTP connection: the only I/O around the protocol core. It
//! reads bytes and hands them on: command lines, split off by
//! [`CommandLines`], to the pure [`Session`]; message octets to the
//! [`DataIntake`] or [`ChunkIntake`]. It writes the replies they give,
//! stores the octets the intake keeps in a queue body file, and commits the
//! message (in one place, `commit`). The timeouts are its own: per command
//! line, per line of DATA, per 1000 octets of BDAT.
//!
//! Replies to pipelined commands (RFC 2920) are collected and written
//! whenever the input holds no further complete command, i.e. before the
//! connection would wait for the client, and as soon as more than
//! `MAX_PENDING_OUTPUT` octets of them are pending.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use sluice_queue::BodyWriter;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::auth::dkim::{Signer, SigningStream};
use crate::auth::verify::{Verifier, strip_forged};
use crate::config::Config;
use crate::context::Context;
use crate::server::limits::AuthFailures;
use crate::server::milters;
use crate::server::sasl::Authenticator;
use crate::smtp::intake::{ChunkIntake, DataIntake, IntakeLimits, Outcome, Refusal};
use crate::smtp::line::{CommandLines, Line};
use crate::smtp::lines::LineBreaker;
use crate::smtp::message_id::MessageIdScanner;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Action, LogReply, MessageOutcome, Session, SessionConfig, log_address};

/// How long the last replies may take to write when closing.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much the input buffer grows by when it is full.
const READ_CHUNK: usize = 16 * 1024;
/// Replies held for the client at most: past this they are written out
/// before the next pipelined command is read (RFC 2920 §3.1 lets a server
/// flush whenever it likes), so a client that writes commands without ever
/// reading the replies cannot make the server hold more than this.
const MAX_PENDING_OUTPUT: usize = 32 * 1024;

/// What every connection of a server shares.
pub struct Shared {
    /// The server context (config, queue, metrics, shutdown).
    pub ctx: Context,
    /// Session settings for relay listeners (`auth_required` false).
    pub relay_config: Arc<SessionConfig>,
    /// Session settings for submission listeners (`auth_required` true).
    pub submission_config: Arc<SessionConfig>,
    /// Present when `[tls]` is configured.
    pub tls: Option<TlsAcceptor>,
    /// `[[user]]` checks.
    pub auth: Authenticator,
    /// Delays after failed AUTH attempts, per client.
    pub auth_failures: Arc<AuthFailures>,
    /// The `[[dkim]]` keys, loaded at start or reload.
    pub dkim: Signer,
    /// Present when `[verify] enabled`.
    pub verifier: Option<Verifier>,
    /// Screens, client limits, recipient validation, greylisting.
    pub front_door: Arc<crate::frontdoor::FrontDoor>,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("client closed the connection")]
    Eof,
    #[error("timeout")]
    Timeout,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("shutting down")]
    Shutdown,
}

/// How a session over one stream ended.
enum End {
    /// Closed (QUIT, an error, EOF, timeout, shutdown).
    Closed,
    /// STARTTLS accepted: continue over TLS on the same socket.
    StartTls,
}

/// What a read produced.
enum Filled {
    Data,
    Shutdown,
}

/// Serves one accepted connection to its end. `implicit_tls` is set for
/// `submissions` listeners (RFC 8314 §3.3): the handshake comes first.
/// Logs a `connect` line and a `disconnect` line with the commands by verb,
/// Postfix style (`ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6`).
pub async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<SessionConfig>,
    implicit_tls: bool,
) {
    let _ = stream.set_nodelay(true);
    tracing::info!(client = %peer.ip(), "connect");
    let mut session = Session::new(config, peer.ip(), implicit_tls);
    session.set_front_door(shared.front_door.checks_commands());
    serve_session(&shared, stream, peer, &mut session, implicit_tls).await;
    tracing::info!(client = %peer.ip(), "disconnect {}", session.commands());
}

/// Serves one session over a local stream rather than an accepted socket:
/// `sluice sendmail` when no server answers (the pipe from its submission
/// code, or stdin and stdout for `-bs`), as a listener of `config` serves a
/// client at `peer`. No TLS: `config` must not offer STARTTLS. Logs the
/// `connect` and `disconnect` lines as [`serve`] does.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: S,
    peer: SocketAddr,
    config: Arc<SessionConfig>,
    local_peer: Option<(u32, &str)>,
) {
    tracing::info!(client = %peer.ip(), "connect");
    let mut session = Session::new(config, peer.ip(), false);
    if let Some((uid, name)) = local_peer {
        session.set_local_peer(uid, name);
    }
    let greeting = session.greeting();
    // Without STARTTLS on offer, the session can only end closed.
    let settings = shared.ctx.config();
    let _ = serve_over(shared, &settings, stream, &mut session, Some(greeting)).await;
    tracing::info!(client = %peer.ip(), "disconnect {}", session.commands());
}

/// The whole of one connection: the implicit TLS handshake, the session,
/// and the session again over TLS after STARTTLS.
async fn serve_session(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    session: &mut Session,
    implicit_tls: bool,
) {
    // One snapshot of the settings for the whole connection, STARTTLS
    // included: a reload meanwhile applies to the next connection, never to
    // half of this one.
    let settings = shared.ctx.config();
    let timeout = settings.limits.command_timeout;
    if implicit_tls {
        let Some(acceptor) = shared.tls.clone() else {
            tracing::error!(client = %peer.ip(), "implicit TLS listener without [tls]");
            return;
        };
        let Some(stream) = handshake(&acceptor, stream, peer, timeout).await else {
            return;
        };
        let greeting = session.greeting();
        serve_over(shared, &settings, stream, session, Some(greeting)).await;
        return;
    }
    let greeting = session.greeting();
    let Some(stream) = serve_over(shared, &settings, stream, session, Some(greeting)).await else {
        return;
    };
    let Some(acceptor) = shared.tls.clone() else {
        return;
    };
    let Some(stream) = handshake(&acceptor, stream, peer, timeout).await else {
        return;
    };
    session.tls_started();
    serve_over(shared, &settings, stream, session, None).await;
}

/// Runs `session` over `stream`, first sending `greeting` if given, and
/// closes it; returns the stream instead when the session accepted
/// STARTTLS. RFC 3207 §4.2: plaintext pipelined after STARTTLS is discarded
/// with the plaintext connection's buffers.
async fn serve_over<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    settings: &Arc<Config>,
    stream: S,
    session: &mut Session,
    greeting: Option<Reply>,
) -> Option<S> {
    let mut connection = Connection::new(stream, shared, settings.clone());
    if let Some(greeting) = greeting {
        connection.output_reply(&greeting);
    }
    match connection.run(session).await {
        End::Closed => {
            connection.close().await;
            None
        }
        End::StartTls => Some(connection.stream),
    }
}

/// What a connection gets once shutdown started: `421 4.3.0` when the server
/// stops because the spool failed, else `421 4.3.2`.
pub(crate) fn closing_reply(ctx: &Context) -> Reply {
    if ctx.queue.failure().is_some() {
        Session::storage_failure_reply()
    } else {
        Session::shutdown_reply()
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let (_, state) = stream.get_ref();
            tracing::info!(
                client = %peer.ip(),
                version = ?state.protocol_version(),
                cipher = ?state.negotiated_cipher_suite().map(|suite| suite.suite()),
                "TLS established"
            );
            Some(stream)
        }
        Ok(Err(error)) => {
            tracing::info!(client = %peer.ip(), %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(client = %peer.ip(), "TLS handshake timed out");
            None
        }
    }
}

/// A message being received with BDAT, across its chunks.
struct Chunked<'a> {
    /// `None` once the message is refused or a write failed.
    body: Option<BodyWriter>,
    /// Sees every byte stored, when the message may be signed.
    signing: Option<SigningStream<'a>>,
    storage_failed: bool,
    /// Counts the chunks off and decides on the message.
    intake: ChunkIntake,
    scan: Scan,
}

/// What looks at, and reshapes, a message's octets on their way to the body.
struct Scan {
    /// Finds the Message-ID for the log.
    message_id: MessageIdScanner,
    /// Breaks lines over 998 octets before they are signed and stored.
    lines: LineBreaker,
}

impl Scan {
    fn new() -> Scan {
        Scan {
            message_id: MessageIdScanner::new(),
            lines: LineBreaker::new(),
        }
    }
}

struct Connection<'a, S> {
    stream: S,
    shared: &'a Shared,
    /// The settings as they were when the connection opened, used to its
    /// end (a reload does not change a session halfway).
    settings: Arc<Config>,
    input: BytesMut,
    output: Vec<u8>,
    /// Splits the input into command lines, within their length limits.
    lines: CommandLines,
    chunked: Option<Chunked<'a>>,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Connection<'a, S> {
    fn new(stream: S, shared: &'a Shared, settings: Arc<Config>) -> Connection<'a, S> {
        Connection {
            stream,
            shared,
            settings,
            input: BytesMut::with_capacity(4096),
            output: Vec::with_capacity(1024),
            lines: CommandLines::new(),
            chunked: None,
        }
    }

    fn output_reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Runs the command loop until the session ends or asks for TLS.
    async fn run(&mut self, session: &mut Session) -> End {
        match self.commands(session).await {
            Ok(end) => end,
            Err(ConnectionError::Timeout) => {
                tracing::info!(client = %session.client(), "timeout, closing");
                self.output_reply(&session.timeout_reply());
                End::Closed
            }
            Err(ConnectionError::Shutdown) => {
                let reply = closing_reply(&self.shared.ctx);
                self.output_reply(&reply);
                End::Closed
            }
            Err(error) => {
                if session.transaction().is_some() {
                    tracing::info!(
                        client = %session.client(),
                        reason = %error,
                        "transaction abandoned: connection lost"
                    );
                }
                End::Closed
            }
        }
    }

    /// Writes what is pending and closes the write side, giving a client
    /// that does not read at most [`CLOSE_TIMEOUT`].
    async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.flush().await.is_ok() {
                let _ = self.stream.shutdown().await;
            }
        })
        .await;
    }

    async fn commands(&mut self, session: &mut Session) -> Result<End, ConnectionError> {
        let command_timeout = self.settings.limits.command_timeout;
        let min_free = self.settings.spool.min_free;
        // The timeout bounds the wait for a whole command line (RFC 5321
        // §4.5.3.2.7), not each read: a client trickling a byte at a time
        // cannot hold the connection open (slowloris).
        let mut deadline = Instant::now() + command_timeout;
        loop {
            while let Some(line) = self.lines.next(&mut self.input, session.in_auth_exchange()) {
                let action = match line {
                    Line::Complete(line) => {
                        let was_chunking = session.transaction().is_some_and(|t| t.chunking);
                        // Cached: at most one statvfs a second for the process.
                        session.set_storage_headroom(self.shared.ctx.disk.headroom(min_free));
                        let action = session.handle_line(&line);
                        if let Some(reply) = action.refusal()
                            && let Some(recipient) = crate::events::rcpt_address(&line)
                        {
                            let ctx = &self.shared.ctx;
                            crate::events::rejected(
                                &ctx.queue,
                                &ctx.config().cluster.node,
                                session.client(),
                                session.transaction().map(|t| t.sender.as_str()),
                                &[recipient.as_str()],
                                reply,
                            );
                        }
                        if !was_chunking {
                            // A new transaction (or none) starts from scratch.
                            self.chunked = None;
                        }
                        action
                    }
                    Line::TooLong(kind) => session.line_too_long(kind),
                };
                if let Some(end) = self.act(session, action).await? {
                    return Ok(end);
                }
                if self.output.len() >= MAX_PENDING_OUTPUT {
                    self.flush().await?;
                }
                deadline = Instant::now() + command_timeout;
            }
            // Only an idle session may be interrupted by a shutdown.
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left, session.is_idle()).await? {
                Filled::Data => {}
                Filled::Shutdown => return Err(ConnectionError::Shutdown),
            }
        }
    }

    /// Carries out one session action; `Some(end)` ends the command loop.
    async fn act(
        &mut self,
        session: &mut Session,
        action: Action,
    ) -> Result<Option<End>, ConnectionError> {
        match action {
            Action::Reply(reply) => self.output_reply(&reply),
            Action::Close(replies) => {
                for reply in &replies {
                    self.output_reply(reply);
                }
                return Ok(Some(End::Closed));
            }
            Action::StartTls(reply) => {
                self.output_reply(&reply);
                self.flush().await?;
                self.input.clear();
                return Ok(Some(End::StartTls));
            }
            Action::Authenticate(credentials) => {
                // The back-off earned by earlier failures comes before the
                // (bounded) argon2 work, so failing fast costs no hashes.
                let failures = &self.shared.auth_failures;
                tokio::time::sleep(failures.pending_delay(session.client())).await;
                let user = self.shared.auth.verify(credentials).await;
                if user.is_none() {
                    let delay = failures.failure_delay(session.client());
                    tokio::time::sleep(delay).await;
                }
                let next = session.auth_result(user);
                return Box::pin(self.act(session, next)).await;
            }
            Action::Check(check) => {
                let refusal = self.shared.front_door.check(&check).await;
                let next = session.check_result(refusal);
                return Box::pin(self.act(session, next)).await;
            }
            Action::ReceiveData(reply) => {
                let outcome = match self.shared.ctx.queue.new_body() {
                    Ok(body) => {
                        self.output_reply(&reply);
                        self.receive_data(session, body).await?
                    }
                    Err(error) => {
                        tracing::error!(client = %session.client(), %error, "cannot start a queue file");
                        MessageOutcome::StorageFailed
                    }
                };
                let next = session.message_finished(outcome);
                return Box::pin(self.act(session, next)).await;
            }
            Action::ReceiveChunk {
                size,
                last,
                refusal,
            } => {
                if let Some(refusal) = refusal {
                    self.skip_chunk(size).await?;
                    self.output_reply(&refusal);
                    return Ok(None);
                }
                let next = self.receive_chunk(session, size, last).await?;
                return Box::pin(self.act(session, next)).await;
            }
        }
        Ok(None)
    }

    /// Reads a DATA message into `body` up to the end marker, then commits it.
    async fn receive_data(
        &mut self,
        session: &Session,
        body: BodyWriter,
    ) -> Result<MessageOutcome, ConnectionError> {
        let settings = self.settings.clone();
        let limits = &settings.limits;
        let mut signing = self.signing_stream(session);
        let (mut body, mut storage_failed) = start_body(session, body, signing.as_mut()).await;
        let mut intake = DataIntake::new(self.intake_limits());
        let mut decoded = Vec::with_capacity(READ_CHUNK);
        let mut scan = Scan::new();
        let mut broken = Vec::new();
        // The data timeout bounds the wait for each line of the message, not
        // each read (as Postfix's smtpd_per_record_deadline): a client
        // trickling a byte at a time cannot hold the connection open.
        let data_timeout = limits.data_timeout;
        let mut deadline = Instant::now() + data_timeout;
        let outcome = loop {
            let consumed = intake.feed(&self.input, &mut decoded);
            if memchr::memchr(b'\n', &self.input[..consumed]).is_some() {
                deadline = Instant::now() + data_timeout;
            }
            self.input.advance(consumed);
            if intake.is_refused() {
                // Stop storing anything of it.
                body = None;
            } else if !decoded.is_empty() {
                let stored = scan.lines.feed(&decoded, &mut broken);
                storage_failed |= write_body(&mut body, stored).await;
                scan.message_id.feed(stored);
                if let Some(signing) = signing.as_mut() {
                    signing.write(stored);
                }
            }
            decoded.clear();
            match intake.outcome() {
                Outcome::NeedMore => {}
                outcome => break outcome,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.fill(left, false).await?;
        };
        Ok(self
            .finish(session, outcome, body, signing, storage_failed, scan)
            .await)
    }

    /// Reads one accepted BDAT chunk into the message being built; returns
    /// what the session says to the chunk, or to the message once it is
    /// complete or refused.
    async fn receive_chunk(
        &mut self,
        session: &mut Session,
        size: u64,
        last: bool,
    ) -> Result<Action, ConnectionError> {
        let mut chunked = match self.chunked.take() {
            Some(chunked) => chunked,
            None => {
                let mut signing = self.signing_stream(session);
                let (body, storage_failed) = match self.shared.ctx.queue.new_body() {
                    Ok(body) => start_body(session, body, signing.as_mut()).await,
                    Err(error) => {
                        tracing::error!(client = %session.client(), %error, "cannot start a queue file");
                        (None, true)
                    }
                };
                Chunked {
                    body,
                    signing,
                    storage_failed,
                    intake: ChunkIntake::new(self.intake_limits()),
                    scan: Scan::new(),
                }
            }
        };
        chunked.intake.start_chunk(size, last);
        let mut deadline = ChunkDeadline::new(self.settings.limits.data_timeout);
        let mut broken = Vec::new();
        loop {
            let take = chunked.intake.feed(&self.input);
            let chunk = self.input.split_to(take);
            deadline.received(take);
            if chunked.intake.is_refused() {
                chunked.body = None;
            } else if !chunk.is_empty() {
                let stored = chunked.scan.lines.feed(&chunk, &mut broken);
                chunked.storage_failed |= write_body(&mut chunked.body, stored).await;
                chunked.scan.message_id.feed(stored);
                if let Some(signing) = chunked.signing.as_mut() {
                    signing.write(stored);
                }
            }
            if chunked.intake.remaining() == 0 {
                break;
            }
            self.fill(deadline.left(), false).await?;
        }
        let outcome = match chunked.intake.outcome() {
            Outcome::ChunkAccepted { octets } if !chunked.storage_failed => {
                self.chunked = Some(chunked);
                return Ok(session.chunk_received(octets));
            }
            outcome => outcome,
        };
        let outcome = self
            .finish(
                session,
                outcome,
                chunked.body,
                chunked.signing,
                chunked.storage_failed,
                chunked.scan,
            )
            .await;
        Ok(session.message_finished(outcome))
    }

    /// Reads and drops `size` octets of a refused BDAT chunk.
    async fn skip_chunk(&mut self, size: u64) -> Result<(), ConnectionError> {
        let mut deadline = ChunkDeadline::new(self.settings.limits.data_timeout);
        let mut remaining = size;
        loop {
            let take = remaining.min(self.input.len() as u64) as usize;
            self.input.advance(take);
            remaining -= take as u64;
            deadline.received(take);
            if remaining == 0 {
                return Ok(());
            }
            self.fill(deadline.left(), false).await?;
        }
    }

    /// The end of a message read with DATA or BDAT: commits it when the
    /// intake accepted it and every write succeeded, else says why not.
    async fn finish(
        &mut self,
        session: &Session,
        outcome: Outcome,
        body: Option<BodyWriter>,
        mut signing: Option<SigningStream<'a>>,
        storage_failed: bool,
        mut scan: Scan,
    ) -> MessageOutcome {
        match outcome {
            Outcome::Refused(refusal) => {
                log_refused(&self.shared.ctx, session, refusal);
                MessageOutcome::Refused(refusal)
            }
            Outcome::Complete { octets } => match body {
                Some(body) if !storage_failed => {
                    if let Err(outcome) = self.within_reserve(session) {
                        return outcome;
                    }
                    // What the breaker still holds (a last header line with
                    // no line end) goes in too.
                    let rest = scan.lines.finish();
                    let mut body = Some(body);
                    if !rest.is_empty() {
                        if write_body(&mut body, &rest).await {
                            return MessageOutcome::StorageFailed;
                        }
                        scan.message_id.feed(&rest);
                        if let Some(signing) = signing.as_mut() {
                            signing.write(&rest);
                        }
                    }
                    let Some(mut body) = body else {
                        return MessageOutcome::StorageFailed;
                    };
                    let ctx = &self.shared.ctx;
                    let held = match milters::run(
                        ctx,
                        &self.shared.dkim,
                        session,
                        &mut body,
                        &mut signing,
                    )
                    .await
                    {
                        Ok(held) => held,
                        Err(outcome) => return outcome,
                    };
                    if let Err(outcome) = self.sign(session, &mut body, signing).await {
                        return outcome;
                    }
                    if let Err(outcome) = self.verify(session, &mut body).await {
                        return outcome;
                    }
                    let broken_lines = scan.lines.broken();
                    self.commit(
                        session,
                        body,
                        octets,
                        scan.message_id.finish(),
                        broken_lines,
                        held,
                    )
                    .await
                }
                _ => MessageOutcome::StorageFailed,
            },
            // A chunk the intake accepted ends the message here only when
            // storing it failed; the intake never stops short.
            Outcome::ChunkAccepted { .. } | Outcome::NeedMore => MessageOutcome::StorageFailed,
        }
    }

    /// Refuses the message (`452 4.3.1`, nothing queued) when receiving it
    /// took the spool's free space below `spool.min_free`: MAIL let it in
    /// with the space there was, but a burst of sessions may have taken
    /// more since (see [`crate::disk`]).
    fn within_reserve(&self, session: &Session) -> Result<(), MessageOutcome> {
        let ctx = &self.shared.ctx;
        if ctx.disk.headroom(ctx.config().spool.min_free) != Some(0) {
            return Ok(());
        }
        tracing::info!(
            client = %session.client(),
            reason = "spool free space below spool.min_free at the end of the message",
            reply = "452 4.3.1",
            "transaction refused"
        );
        Err(MessageOutcome::NoSpace)
    }

    /// The stream that signs the message, when it may be signed: it comes
    /// from `relay_networks` (which covers `sluice sendmail`, over loopback)
    /// or an authenticated client, and there are `[[dkim]]` keys.
    fn signing_stream(&self, session: &Session) -> Option<SigningStream<'a>> {
        if !(session.is_relay_client() || session.user().is_some()) {
            return None;
        }
        self.shared.dkim.stream()
    }

    /// Puts the DKIM signatures, if any, in front of the message. A
    /// signing failure (a crypto error: never expected) leaves the message
    /// unsigned, as a milter failing open would; only a failed write to the
    /// body refuses it.
    async fn sign(
        &self,
        session: &Session,
        body: &mut BodyWriter,
        signing: Option<SigningStream<'_>>,
    ) -> Result<(), MessageOutcome> {
        let Some(signing) = signing else {
            return Ok(());
        };
        let signatures = match signing.finish() {
            Ok(signatures) => signatures,
            Err(error) => {
                tracing::error!(client = %session.client(), queue_id = %body.id(), %error,
                    "DKIM signing failed; the message goes unsigned");
                return Ok(());
            }
        };
        if signatures.count == 0 {
            return Ok(());
        }
        if let Err(error) = body.replace_start(0, &signatures.header).await {
            tracing::error!(queue_id = %body.id(), %error, "writing the DKIM signature failed");
            return Err(MessageOutcome::StorageFailed);
        }
        self.shared
            .ctx
            .metrics
            .dkim_signatures
            .inc_by(signatures.count as u64);
        tracing::debug!(
            queue_id = %body.id(),
            domain = %signatures.domain.as_deref().unwrap_or(""),
            signatures = signatures.count,
            "DKIM signed"
        );
        Ok(())
    }

    /// With `[verify]`, for a client outside `relay_networks` that did not
    /// authenticate: checks SPF, DKIM and DMARC, puts the
    /// `Authentication-Results` field at the top after removing those the
    /// client sent in our name, and refuses a DMARC failure under
    /// `p=reject` when `enforce_dmarc` says so.
    async fn verify(&self, session: &Session, body: &mut BodyWriter) -> Result<(), MessageOutcome> {
        let Some(verifier) = &self.shared.verifier else {
            return Ok(());
        };
        if session.is_relay_client() || session.user().is_some() {
            return Ok(());
        }
        let Some(transaction) = session.transaction() else {
            return Ok(());
        };
        let message = match body.read_back().await {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(queue_id = %body.id(), %error, "reading the message back failed");
                return Err(MessageOutcome::StorageFailed);
            }
        };
        let verdict = verifier
            .check(
                &message,
                session.client(),
                session.helo_name().unwrap_or(""),
                &transaction.sender,
            )
            .await;
        let metrics = &self.shared.ctx.metrics;
        for (kind, result) in &verdict.results {
            metrics
                .auth_results
                .get_or_create(&vec![
                    ("kind".to_string(), kind.to_string()),
                    ("result".to_string(), result.to_string()),
                ])
                .inc();
        }
        let summary: Vec<String> = verdict
            .results
            .iter()
            .map(|(kind, result)| format!("{kind}={result}"))
            .collect();
        tracing::info!(queue_id = %body.id(), client = %session.client(),
            results = %summary.join(","), "authentication checked");
        if verdict.reject {
            log_refused(&self.shared.ctx, session, Refusal::DmarcReject);
            return Err(MessageOutcome::Refused(Refusal::DmarcReject));
        }
        let (length, mut replacement) =
            strip_forged(&message, verifier.hostname()).unwrap_or_default();
        replacement.splice(0..0, verdict.header.bytes());
        if let Err(error) = body.replace_start(length as u64, &replacement).await {
            tracing::error!(queue_id = %body.id(), %error, "writing Authentication-Results failed");
            return Err(MessageOutcome::StorageFailed);
        }
        Ok(())
    }

    /// Makes the message durable; returns only once the queue says so.
    /// `octets` is the message as received; the log gives the stored size
    /// (with our `Received:` and any added fields), as `queue show` does.
    async fn commit(
        &mut self,
        session: &Session,
        body: BodyWriter,
        octets: u64,
        message_id: Option<&str>,
        broken_lines: u64,
        held: bool,
    ) -> MessageOutcome {
        let ctx = &self.shared.ctx;
        let Some(envelope) = session.envelope() else {
            return MessageOutcome::StorageFailed;
        };
        let sender = display_sender(&envelope.sender);
        let recipients = envelope.recipients.len();
        let size = body.len();
        let committed = ctx
            .queue
            .commit_noted(envelope, body, held, message_id.map(str::to_string))
            .await;
        match committed {
            Ok(id) => {
                ctx.metrics.messages_received.inc();
                ctx.metrics.message_size_bytes.observe(octets as f64);
                tracing::info!(
                    queue_id = %id,
                    client = %session.client(),
                    helo = %session.helo_name().unwrap_or(""),
                    sender = %sender,
                    message_id = %message_id.unwrap_or("-"),
                    size,
                    nrcpt = recipients,
                    protocol = %session.protocol(),
                    user = %session.user().unwrap_or("-"),
                    broken_lines,
                    held,
                    "message accepted"
                );
                MessageOutcome::Queued(id.to_string())
            }
            Err(error) => {
                tracing::error!(
                    client = %session.client(),
                    sender = %sender,
                    %error,
                    reason = "queue commit failed",
                    "transaction refused"
                );
                if error.is_no_space() {
                    MessageOutcome::NoSpace
                } else {
                    MessageOutcome::StorageFailed
                }
            }
        }
    }

    /// The limits every message is held to.
    fn intake_limits(&self) -> IntakeLimits {
        let limits = &self.settings.limits;
        IntakeLimits {
            max_size: limits.max_message_size,
            max_hops: limits.max_hops.get(),
        }
    }

    /// Writes out pending replies.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        if self.output.is_empty() {
            return Ok(());
        }
        let timeout = self.settings.limits.command_timeout;
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(ConnectionError::Timeout),
        }
        self.output.clear();
        Ok(())
    }

    /// Flushes replies, then waits for more input (at most `timeout`). When
    /// `interruptible`, a server shutdown ends the wait.
    async fn fill(
        &mut self,
        timeout: Duration,
        interruptible: bool,
    ) -> Result<Filled, ConnectionError> {
        self.flush().await?;
        if self.input.capacity() - self.input.len() < 1024 {
            self.input.reserve(READ_CHUNK);
        }
        let shutdown = self.shared.ctx.shutdown.clone();
        let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.input));
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if interruptible => Ok(Filled::Shutdown),
            result = read => match result {
                Err(_) => Err(ConnectionError::Timeout),
                Ok(Ok(0)) => Err(ConnectionError::Eof),
                Ok(Ok(_)) => Ok(Filled::Data),
                Ok(Err(error)) => Err(ConnectionError::Io(error)),
            },
        }
    }
}

/// BDAT data must keep arriving at this many octets per data timeout, the
/// most a text line may have (RFC 5321 §4.5.3.1.6), as DATA must send a
/// line per data timeout.
const PROGRESS_OCTETS: usize = 1000;

/// The deadline for BDAT chunk data: restarted whenever another
/// [`PROGRESS_OCTETS`] have arrived, so that a client trickling a byte at a
/// time cannot hold the connection open (slowloris).
struct ChunkDeadline {
    timeout: Duration,
    deadline: Instant,
    /// Octets received since the deadline was last restarted.
    progress: usize,
}

impl ChunkDeadline {
    fn new(timeout: Duration) -> ChunkDeadline {
        ChunkDeadline {
            timeout,
            deadline: Instant::now() + timeout,
            progress: 0,
        }
    }

    fn received(&mut self, octets: usize) {
        self.progress = self.progress.saturating_add(octets);
        if self.progress >= PROGRESS_OCTETS {
            self.progress = 0;
            self.deadline = Instant::now() + self.timeout;
        }
    }

    /// Time left until the deadline.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Writes the `Received:` header the message starts with (to `signing`
/// too, which sees everything stored); returns the body (`None` when the
/// write failed) and whether a write failed.
async fn start_body(
    session: &Session,
    body: BodyWriter,
    signing: Option<&mut SigningStream<'_>>,
) -> (Option<BodyWriter>, bool) {
    let header = session.received_header(body.id().as_str(), chrono::Utc::now());
    let mut body = Some(body);
    let storage_failed = write_body(&mut body, header.as_bytes()).await;
    if let Some(signing) = signing {
        signing.write(header.as_bytes());
    }
    (body, storage_failed)
}

/// Writes to the body unless it is gone; returns true when a write failed
/// (the body is then dropped, removing every trace of it). A body past
/// 64 KiB is written to its spool file on the blocking pool, never on this
/// runtime worker; a smaller one is only copied.
async fn write_body(body: &mut Option<BodyWriter>, bytes: &[u8]) -> bool {
    let Some(writer) = body.as_mut() else {
        return false;
    };
    match writer.append(bytes).await {
        Ok(()) => false,
        Err(error) => {
            tracing::error!(queue_id = %writer.id(), %error, "writing the message body failed");
            *body = None;
            true
        }
    }
}

/// The `transaction refused` line for a message refused at its end, with
/// the reply the client gets, as a refused command's line has.
fn log_refused(ctx: &crate::context::Context, session: &Session, refusal: Refusal) {
    let recipients: Vec<&str> = session
        .transaction()
        .map(|t| t.recipients.iter().map(String::as_str).collect())
        .unwrap_or_default();
    crate::events::rejected(
        &ctx.queue,
        &ctx.config().cluster.node,
        session.client(),
        session.transaction().map(|t| t.sender.as_str()),
        &recipients,
        &refusal.reply(),
    );
    let sender = session
        .transaction()
        .map(|t| display_sender(&t.sender))
        .unwrap_or_default();
    let command = match session.transaction() {
        Some(transaction) if transaction.chunking => "bdat",
        _ => "data",
    };
    tracing::info!(
        client = %session.client(),
        helo = %session.helo_name().unwrap_or(""),
        sender = %sender,
        command,
        reason = %refusal.reason(),
        reply = %LogReply(&refusal.reply()),
        "transaction refused"
    );
}

/// The sender for logs: `<>` for the null sender, quoted when it is not
/// one plain token ([`log_address`]).
fn display_sender(sender: &str) -> String {
    log_address(sender).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use sluice_queue::{Queue, QueueOptions};
    use tokio::io::{AsyncBufReadExt as _, BufReader, DuplexStream};

    /// What a connection needs, over a queue in `spool`; no TLS, no users.
    fn shared_in_memory(spool: &std::path::Path) -> (Arc<Shared>, Arc<SessionConfig>, Queue) {
        let mut config = Config::default();
        config.spool.path = spool.to_path_buf();
        let queue = Queue::open(spool, QueueOptions::default()).expect("open queue");
        let ctx = Context::new(Arc::new(config), queue.clone());
        let session_config = Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 1 << 20,
            max_recipients: 10,
            max_errors: 20,
            max_junk_commands: 100,
            max_auth_failures: 3,
            tls_available: false,
            auth_required: false,
            policy: crate::policy::Policy::new(&ctx.config().policy),
        });
        let front_door = Arc::new(crate::frontdoor::FrontDoor::new(
            &ctx,
            &ctx.config(),
            Default::default(),
            Default::default(),
        ));
        let shared = Arc::new(Shared {
            ctx,
            relay_config: session_config.clone(),
            submission_config: session_config.clone(),
            tls: None,
            auth: Authenticator::new(&[]),
            auth_failures: Arc::new(AuthFailures::new()),
            dkim: Signer::empty(),
            verifier: None,
            front_door,
        });
        (shared, session_config, queue)
    }

    /// A connection over an in-memory stream, served by a task; returns the
    /// client end and the spool's queue.
    fn serve_in_memory(spool: &std::path::Path) -> (BufReader<DuplexStream>, Queue) {
        let (shared, session_config, queue) = shared_in_memory(spool);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut session = Session::new(session_config, "127.0.0.1".parse().expect("ip"), false);
            let greeting = session.greeting();
            let settings = shared.ctx.config();
            serve_over(&shared, &settings, server, &mut session, Some(greeting)).await;
        });
        (BufReader::new(client), queue)
    }

    /// A client that pipelines `EHLO` lines without end and reads only the
    /// first `readable` octets of the replies, then nothing more.
    struct NeverReads {
        readable: usize,
        written: usize,
        /// Where in the EHLO line the next read starts.
        offset: usize,
    }

    impl AsyncRead for NeverReads {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            const LINE: &[u8] = b"EHLO client.test\r\n";
            let this = self.get_mut();
            while buf.remaining() > 0 {
                let rest = &LINE[this.offset..];
                let take = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..take]);
                this.offset = (this.offset + take) % LINE.len();
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for NeverReads {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            let room = this.readable - this.written;
            if room == 0 {
                // Blocked for good: the client never reads again.
                return std::task::Poll::Pending;
            }
            let take = room.min(data.len());
            this.written += take;
            std::task::Poll::Ready(Ok(take))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn replies_to_a_client_that_never_reads_are_not_buffered_without_bound() {
        use futures::FutureExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let (shared, session_config, _queue) = shared_in_memory(dir.path());
        let mut session = Session::new(session_config, "127.0.0.1".parse().expect("ip"), false);
        let stream = NeverReads {
            readable: 64 * 1024,
            written: 0,
            offset: 0,
        };
        let settings = shared.ctx.config();
        let mut connection = Connection::new(stream, &shared, settings);
        // One poll runs the connection until its write blocks for good.
        assert!(connection.run(&mut session).now_or_never().is_none());
        assert_eq!(
            connection.stream.written,
            64 * 1024,
            "the client's window is full"
        );
        assert!(
            connection.output.len() <= MAX_PENDING_OUTPUT + 1024,
            "{} octets of replies held for a client that does not read",
            connection.output.len()
        );
    }

    async fn reply(client: &mut BufReader<DuplexStream>) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            client.read_line(&mut line).await.expect("read reply");
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    }

    async fn start_transaction(client: &mut BufReader<DuplexStream>) {
        client
            .get_mut()
            .write_all(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
            .await
            .expect("write");
        for expected in ["220", "250", "250", "250"] {
            let got = reply(client).await;
            assert!(
                got.starts_with(expected),
                "expected {expected}, got {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn queue_failure_at_data_answers_451() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut client, queue) = serve_in_memory(dir.path());
        start_transaction(&mut client).await;
        queue.close().await.expect("close queue");
        client
            .get_mut()
            .write_all(b"DATA\r\n")
            .await
            .expect("write");
        let got = reply(&mut client).await;
        assert!(got.starts_with("451 4.3.0"), "{got:?}");
    }

    #[tokio::test]
    async fn queue_failure_at_bdat_answers_451_after_the_chunk_and_stays_in_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut client, queue) = serve_in_memory(dir.path());
        start_transaction(&mut client).await;
        queue.close().await.expect("close queue");
        client
            .get_mut()
            .write_all(b"BDAT 6\r\nSubj\r\nNOOP\r\n")
            .await
            .expect("write");
        let got = reply(&mut client).await;
        assert!(got.starts_with("451 4.3.0"), "{got:?}");
        let got = reply(&mut client).await;
        assert!(
            got.starts_with("250 2.0.0 Ok"),
            "the chunk was read: {got:?}"
        );
    }

    #[tokio::test]
    async fn failed_commit_answers_451_and_leaves_nothing_queued() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut client, queue) = serve_in_memory(dir.path());
        start_transaction(&mut client).await;
        client
            .get_mut()
            .write_all(b"DATA\r\n")
            .await
            .expect("write");
        assert!(reply(&mut client).await.starts_with("354"));
        // The queue stops accepting writes between 354 and the final dot.
        queue.close().await.expect("close queue");
        client
            .get_mut()
            .write_all(b"Subject: lost\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            .await
            .expect("write");
        let got = reply(&mut client).await;
        assert!(got.starts_with("451 4.3.0"), "{got:?}");
        assert!(reply(&mut client).await.starts_with("221"));
        assert_eq!(
            queue.iter(None).count(),
            0,
            "nothing half-written is queued"
        );
    }
}

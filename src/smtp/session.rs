//! The SMTP session state machine (RFC 5321 §4.1.4 command order, §3.3 mail
//! transactions), with PIPELINING (RFC 2920), SIZE (RFC 1870), CHUNKING
//! (RFC 3030), STARTTLS (RFC 3207) and AUTH (RFC 4954).
//!
//! Pure: the connection layer feeds it command lines and events (TLS started,
//! credentials checked, message stored) and does what the returned
//! [`Action`] says. Every transition is a unit test below.
//!
//! Decisions where the RFCs leave a choice:
//! - EHLO/HELO is required before MAIL (RFC 5321 §4.1.4), else `503 5.5.1`.
//! - After HELO (not EHLO) no extension is in effect: MAIL parameters
//!   (SIZE, BODY, SMTPUTF8) get `555 5.5.4`, AUTH gets `503 5.5.1`.
//! - `RCPT TO:<postmaster>` (unqualified, any case; RFC 5321 §4.5.1) is
//!   always accepted and stored as `postmaster@<hostname>`, which is then
//!   delivered like any other address (give it a `[routes]` entry).
//!   `postmaster@<hostname>` is accepted from anyone, as are all addresses
//!   in `accept_domains`, postmaster included.
//! - A recipient given twice in one transaction (the same text after the
//!   domain is lowercased) is answered 250 and stored once.
//! - Every reply carries an RFC 3463 enhanced code except those RFC 2034 §3
//!   exempts or that cannot carry one: the `220` greeting (its text is fixed
//!   by the contract), the EHLO/HELO `250` (an enhanced code would break EHLO
//!   keyword parsing), and the intermediate `354` and `334` replies (a `334`
//!   carries the base64 challenge).
//! - DATA with no accepted recipient is `503 5.5.1` (RFC 5321 §3.3 allows
//!   503 or 554); a bare CR or LF in DATA refuses the message with
//!   `550 5.5.2` after reading it to its end.
//! - Protocol errors (5xx replies to commands) are counted; at
//!   `limits.max_errors` the connection is closed with `421 4.7.0`.
//! - An AUTH command or response over 12,288 octets (RFC 4954 §4; see
//!   `smtp::line`) gets `500 5.5.6` and ends the exchange (RFC 4954 §6).
//!
//! The relay decision for RCPT is asked of [`crate::policy::Policy`], which
//! is pure and synchronous, so the session decides at once instead of
//! asking the I/O shell through an [`Action`]. What becomes of a message's
//! octets is decided by `smtp::intake`; the session only maps its outcome
//! to the reply ([`Session::message_finished`]).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use sluice_queue::{Envelope, EnvelopeDsn, MessageDsn, RecipientDsn};

use crate::policy::Policy;
use crate::smtp::command::{
    AuthMechanism, BodyType, Command, CommandError, ForwardPath, Mailbox, RcptParameters,
    ReversePath,
};
use crate::smtp::counts::{CommandCounts, Verb};
use crate::smtp::intake::Refusal;
use crate::smtp::line::LineKind;
use crate::smtp::reply::{EnhancedCode, Reply};

/// What a session needs to know about its listener and limits.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name, in the greeting, EHLO and Received headers.
    pub hostname: String,
    /// `limits.max_message_size`, advertised with SIZE.
    pub max_message_size: u64,
    /// `limits.max_recipients`.
    pub max_recipients: usize,
    /// Protocol errors after which the connection is closed.
    pub max_errors: u32,
    /// NOOP, RSET, VRFY and HELP allowed; the next gets `421 4.7.0`.
    pub max_junk_commands: u32,
    /// Failed AUTH attempts after which the connection is closed.
    pub max_auth_failures: u32,
    /// A certificate is configured: STARTTLS may be offered.
    pub tls_available: bool,
    /// Submission listeners: MAIL needs AUTH first (RFC 6409 §4.3).
    pub auth_required: bool,
    /// The relay decision.
    pub policy: Policy,
}

/// Checked by the connection layer (off the runtime), then handed back with
/// [`Session::auth_result`].
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity.
    pub username: String,
    /// The password as sent.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the connection layer must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the reply and read the next command.
    Reply(Reply),
    /// Send the replies, then close the connection.
    Close(Vec<Reply>),
    /// Send the 354 reply, then read the message with a
    /// [`crate::smtp::intake::DataIntake`] and call
    /// [`Session::message_finished`].
    ReceiveData(Reply),
    /// Read exactly `size` octets of a BDAT chunk (RFC 3030 §2). When
    /// `refusal` is set, discard them and send that reply; otherwise feed
    /// them to the transaction's [`crate::smtp::intake::ChunkIntake`] and
    /// call [`Session::chunk_received`] (or, once the message is complete
    /// or refused, [`Session::message_finished`]).
    ReceiveChunk {
        size: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    /// Send the reply, discard any input already read (RFC 3207 §4.2), do
    /// the TLS handshake, then call [`Session::tls_started`].
    StartTls(Reply),
    /// Verify these credentials and call [`Session::auth_result`].
    Authenticate(Credentials),
    /// Ask the front door (`crate::frontdoor`) whether this MAIL or RCPT
    /// may go on, and call [`Session::check_result`].
    Check(Check),
}

/// A MAIL or RCPT that the front door must allow first (client rates,
/// recipient validation, greylisting). Only asked for when the I/O shell
/// said a front door is in place ([`Session::set_front_door`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The client's address.
    pub client: IpAddr,
    /// From `relay_networks` or authenticated: exempt from greylisting.
    pub trusted: bool,
    /// The reverse path; empty for `<>`.
    pub sender: String,
    /// The forward path of a RCPT; `None` for MAIL.
    pub recipient: Option<String>,
}

/// What a MAIL or RCPT waiting for [`Session::check_result`] does once
/// allowed.
#[derive(Debug, Clone)]
enum Pending {
    Mail(Transaction),
    Rcpt {
        address: String,
        parameters: RcptParameters,
    },
}

impl Action {
    /// The reply a command got when it is a refusal (4xx or 5xx).
    pub fn refusal(&self) -> Option<&Reply> {
        let reply = match self {
            Action::Reply(reply) | Action::ReceiveData(reply) | Action::StartTls(reply) => reply,
            Action::Close(replies) => replies.first()?,
            Action::ReceiveChunk { refusal, .. } => refusal.as_ref()?,
            Action::Authenticate(_) | Action::Check(_) => return None,
        };
        (reply.code() >= 400).then_some(reply)
    }

    /// True when the command was refused.
    pub fn refuses(&self) -> bool {
        self.refusal().is_some()
    }
}

/// How a message read with DATA or BDAT ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Durably queued under this ID.
    Queued(String),
    /// Refused by the message intake, with the reply it names.
    Refused(Refusal),
    /// The queue could not store it.
    StorageFailed,
    /// Refused by a milter, with its reply.
    Milter(Reply),
    /// Accepted and dropped, as a milter said.
    Discarded,
    /// Storing it would have taken the spool below its reserve, or the
    /// disk was full (`452 4.3.1`, RFC 3463 §3.4).
    NoSpace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthStep {
    None,
    /// AUTH PLAIN sent without an initial response: waiting for it.
    PlainResponse,
    LoginUsername,
    LoginPassword {
        username: String,
    },
}

#[derive(Debug, Clone)]
struct Greeted {
    name: String,
    extended: bool,
}

/// The mail transaction in progress (RFC 5321 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The reverse path; empty for `<>`.
    pub sender: String,
    /// Accepted forward paths, as given (domain lowercased).
    pub recipients: Vec<String>,
    /// `SMTPUTF8` was given on MAIL.
    pub smtputf8: bool,
    /// `BODY=8BITMIME` was given on MAIL.
    pub body_8bit: bool,
    /// `REQUIRETLS` was given on MAIL (RFC 8689).
    pub requiretls: bool,
    /// A BDAT chunk was accepted: DATA and RCPT are out of sequence now.
    pub chunking: bool,
    /// DSN parameters (RFC 3461) of MAIL and of each RCPT; `None` until a
    /// command carries one.
    pub dsn: Option<EnvelopeDsn>,
}

/// One client's SMTP session.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    client: IpAddr,
    relay_client: bool,
    tls: bool,
    greeted: Option<Greeted>,
    user: Option<String>,
    transaction: Option<Transaction>,
    auth: AuthStep,
    errors: u32,
    /// NOOP, RSET, VRFY and HELP so far (commands that move no mail).
    junk: u32,
    auth_failures: u32,
    /// The commands so far, by verb, for the disconnect log line.
    commands: CommandCounts,
    /// Why the command being handled was refused, when the refusal is a
    /// policy decision worth a `transaction refused` line.
    refusal_reason: Option<&'static str>,
    /// A local submission's sender process (`from userid 1001 (alice)`),
    /// named in the `Received:` field instead of an address.
    local_peer: Option<String>,
    /// How many bytes new mail may still take from the spool before it
    /// reaches `spool.min_free` (`None`: no limit). MAIL gets `452 4.3.1`
    /// when it is 0 or below the `SIZE=` declared. Set by the I/O shell
    /// ([`Session::set_storage_headroom`]).
    storage_headroom: Option<u64>,
    /// MAIL and RCPT end in [`Action::Check`] ([`Session::set_front_door`]).
    front_door: bool,
    /// The MAIL or RCPT waiting for [`Session::check_result`].
    pending: Option<Pending>,
}

const fn code(class: u8, subject: u16, detail: u16) -> EnhancedCode {
    EnhancedCode(class, subject, detail)
}

impl Session {
    /// A session for a client at `client`; `tls` is true on implicit-TLS
    /// listeners (RFC 8314), where the handshake came first.
    pub fn new(config: Arc<SessionConfig>, client: IpAddr, tls: bool) -> Session {
        let relay_client = config.policy.is_relay_client(client);
        Session {
            config,
            client,
            relay_client,
            tls,
            greeted: None,
            user: None,
            transaction: None,
            auth: AuthStep::None,
            errors: 0,
            junk: 0,
            auth_failures: 0,
            commands: CommandCounts::default(),
            refusal_reason: None,
            storage_headroom: None,
            local_peer: None,
            front_door: false,
            pending: None,
        }
    }

    /// Marks the session as a local submission by user `name` (uid `uid`),
    /// as told by the kernel (SO_PEERCRED): the `Received:` field names them
    /// (`by host (sluice, from userid 1001 (alice))`, as Postfix does).
    pub fn set_local_peer(&mut self, uid: u32, name: &str) {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_graphic() && !"()\\".contains(*c))
            .collect();
        self.local_peer = Some(format!("from userid {uid} ({name})"));
    }

    /// Tells the session that a front door checks MAIL and RCPT: once
    /// everything else allowed them, they end in [`Action::Check`].
    pub fn set_front_door(&mut self, enabled: bool) {
        self.front_door = enabled;
    }

    /// The front door's answer to the [`Action::Check`] asked: `None`
    /// lets the MAIL or RCPT go on; a refusal is answered (and logged with
    /// its reason) instead.
    pub fn check_result(&mut self, refusal: Option<(Reply, &'static str)>) -> Action {
        let pending = self.pending.take();
        let verb = match pending {
            Some(Pending::Mail(_)) => Verb::of(b"MAIL"),
            _ => Verb::of(b"RCPT"),
        };
        match (refusal, pending) {
            (Some((reply, reason)), _) => {
                self.commands.refused_later(verb);
                self.refusal_reason = Some(reason);
                let action = if reply.code() >= 500 {
                    self.error(reply)
                } else {
                    Action::Reply(reply)
                };
                self.log_refusal(verb, &action);
                action
            }
            (None, Some(Pending::Mail(transaction))) => {
                self.transaction = Some(transaction);
                Action::Reply(Reply::new(250, code(2, 1, 0), "Ok"))
            }
            (
                None,
                Some(Pending::Rcpt {
                    address,
                    parameters,
                }),
            ) => self.add_recipient(address, parameters),
            (None, None) => self.bad_sequence("Error: nothing to check"),
        }
    }

    fn check(&self, transaction: &Transaction, recipient: Option<String>) -> Action {
        Action::Check(Check {
            client: self.client,
            trusted: self.relay_client || self.user.is_some(),
            sender: transaction.sender.clone(),
            recipient,
        })
    }

    /// Tells the session whether the spool's free space is below the
    /// reserve (`spool.min_free`); while it is, MAIL gets
    /// `452 4.3.1 Insufficient system storage` (RFC 3463 §3.4: mail system
    /// full) and the rest of the session goes on.
    pub fn set_storage_low(&mut self, low: bool) {
        self.storage_headroom = low.then_some(0);
    }

    /// Tells the session how many bytes new mail may take before the
    /// spool's free space reaches the reserve (`None`: unlimited). MAIL gets
    /// `452 4.3.1` when nothing is left or its `SIZE=` declaration
    /// (RFC 1870) is more than what is left.
    pub fn set_storage_headroom(&mut self, headroom: Option<u64>) {
        self.storage_headroom = headroom;
    }

    /// The commands of this connection so far, by verb.
    pub fn commands(&self) -> &CommandCounts {
        &self.commands
    }

    /// `220 <hostname> ESMTP sluice`.
    pub fn greeting(&self) -> Reply {
        Reply::plain(
            220,
            vec![format!("{} ESMTP sluice", self.config.hostname).into()],
        )
    }

    /// `421 4.7.0` for a connection over `max_connections(_per_ip)`.
    pub fn too_many_connections(hostname: &str) -> Reply {
        Reply::new(
            421,
            code(4, 7, 0),
            format!("{hostname} Error: too many connections, try again later"),
        )
    }

    /// `421 4.4.2` when the client was silent too long (RFC 5321 §4.5.3.2).
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(
            421,
            code(4, 4, 2),
            format!("{} Error: timeout exceeded", self.config.hostname),
        )
    }

    /// `421 4.3.2` for idle connections when the server shuts down.
    pub fn shutdown_reply() -> Reply {
        Reply::new(421, code(4, 3, 2), "shutting down")
    }

    /// `421 4.3.0` for idle and new connections when the server stops
    /// because its spool cannot be written (RFC 3463 §3.4: mail system
    /// status, other or undefined): the client keeps the mail and retries.
    pub fn storage_failure_reply() -> Reply {
        Reply::new(
            421,
            code(4, 3, 0),
            "local storage failure, restarting: try again later",
        )
    }

    /// The client's address.
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The EHLO/HELO name, once given.
    pub fn helo_name(&self) -> Option<&str> {
        self.greeted.as_ref().map(|greeted| greeted.name.as_str())
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True when the client connects from `relay_networks`.
    pub fn is_relay_client(&self) -> bool {
        self.relay_client
    }

    /// True when TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The transaction in progress, if any.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
    }

    /// True between transactions and outside an AUTH exchange: a shutdown may
    /// close the connection now without losing anything.
    pub fn is_idle(&self) -> bool {
        self.transaction.is_none() && self.auth == AuthStep::None
    }

    /// The envelope of the transaction in progress, for the queue.
    pub fn envelope(&self) -> Option<Envelope> {
        self.transaction.as_ref().map(|transaction| Envelope {
            sender: transaction.sender.clone(),
            recipients: transaction.recipients.clone(),
            smtputf8: transaction.smtputf8,
            body_8bit: transaction.body_8bit,
            dsn: transaction.dsn.clone(),
            requiretls: transaction.requiretls,
        })
    }

    /// RFC 3848 protocol word for Received headers: only registered words
    /// (RFC 5321 §4.4), so a HELO session over TLS says ESMTPS (there is no
    /// "SMTPS"): TLS and AUTH are extensions, so ESMTP was in use.
    pub fn protocol(&self) -> &'static str {
        let extended = self
            .greeted
            .as_ref()
            .is_some_and(|greeted| greeted.extended);
        match (extended, self.tls, self.user.is_some()) {
            (false, false, false) => "SMTP",
            (_, false, false) => "ESMTP",
            (_, true, false) => "ESMTPS",
            (_, false, true) => "ESMTPA",
            (_, true, true) => "ESMTPSA",
        }
    }

    /// The `Received:` header (RFC 5321 §4.4) for the message being received,
    /// CRLF-terminated, to be written before the message.
    pub fn received_header(&self, id: &str, now: DateTime<Utc>) -> String {
        let helo = self
            .helo_name()
            .map_or(Cow::Borrowed("unknown"), trace_name);
        let address = match self.client {
            IpAddr::V4(v4) => format!("[{v4}]"),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => format!("[{v4}]"),
                None => format!("[IPv6:{v6}]"),
            },
        };
        let recipient = match self.transaction.as_ref().map(|t| t.recipients.as_slice()) {
            // Naming the recipient only when there is one leaks no Bcc.
            Some([single]) => format!("\r\n\tfor <{single}>"),
            _ => String::new(),
        };
        if let Some(peer) = &self.local_peer {
            return format!(
                "Received: by {host} (sluice, {peer})\r\n\twith {protocol} id {id}{recipient};\r\n\t{date}\r\n",
                host = self.config.hostname,
                protocol = self.protocol(),
                date = now.to_rfc2822(),
            );
        }
        format!(
            "Received: from {helo} ({address})\r\n\tby {host} (sluice) with {protocol} id {id}{recipient};\r\n\t{date}\r\n",
            host = self.config.hostname,
            protocol = self.protocol(),
            date = now.to_rfc2822(),
        )
    }

    /// Handles one command line (without CRLF), or an AUTH response line
    /// while an AUTH exchange is in progress.
    pub fn handle_line(&mut self, line: &[u8]) -> Action {
        if self.auth != AuthStep::None {
            return self.auth_response(line);
        }
        let action = match Command::parse(line) {
            Ok(command) => self.handle(command),
            Err(error) => self.parse_error(error),
        };
        let verb = Verb::of(line);
        self.commands.count(verb, !action.refuses());
        self.log_refusal(verb, &action);
        action
    }

    /// One info line per refused command, with the reply: `transaction
    /// refused` with the reason for a policy decision, else `command
    /// refused`.
    fn log_refusal(&mut self, verb: Verb, action: &Action) {
        let reason = self.refusal_reason.take();
        let Some(reply) = action.refusal() else {
            return;
        };
        let sender = self
            .transaction
            .as_ref()
            .map(|transaction| log_address(&transaction.sender));
        let sender = sender.as_deref().unwrap_or("-");
        let helo = self.helo_name().unwrap_or("");
        match reason {
            Some(reason) => tracing::info!(
                client = %self.client,
                helo = %helo,
                sender = %sender,
                command = verb.name(),
                reason,
                reply = %LogReply(reply),
                "transaction refused"
            ),
            None => tracing::info!(
                client = %self.client,
                helo = %helo,
                sender = %sender,
                command = verb.name(),
                reply = %LogReply(reply),
                "command refused"
            ),
        }
    }

    /// True while an AUTH exchange waits for the client's response to a
    /// `334` challenge: the next line is that response, not a command.
    pub fn in_auth_exchange(&self) -> bool {
        self.auth != AuthStep::None
    }

    /// A line longer than its limit ([`crate::smtp::line`]): a command line
    /// over 512 octets (RFC 5321 §4.5.3.1.4), or an AUTH command or response
    /// over 12,288 (RFC 4954 §4), which also ends the AUTH exchange.
    pub fn line_too_long(&mut self, kind: LineKind) -> Action {
        self.auth = AuthStep::None;
        self.commands.count(Verb::of(b""), false);
        let action = self.line_too_long_reply(kind);
        self.log_refusal(Verb::of(b""), &action);
        action
    }

    fn line_too_long_reply(&mut self, kind: LineKind) -> Action {
        match kind {
            LineKind::Command => self.error(Reply::new(500, code(5, 5, 2), "Error: line too long")),
            // RFC 4954 §6.
            LineKind::Auth => self.error(Reply::new(
                500,
                code(5, 5, 6),
                "Authentication Exchange line is too long",
            )),
        }
    }

    /// TLS is now active: everything learned before is forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.greeted = None;
        self.transaction = None;
        self.auth = AuthStep::None;
        self.user = None;
    }

    /// The result of checking [`Credentials`]: the user name when they were
    /// right, `None` when wrong.
    pub fn auth_result(&mut self, user: Option<String>) -> Action {
        self.auth = AuthStep::None;
        match user {
            Some(user) => {
                tracing::info!(client = %self.client, user = %user, "authenticated");
                self.user = Some(user);
                Action::Reply(Reply::new(235, code(2, 7, 0), "Authentication successful"))
            }
            None => {
                self.commands.refused_later(Verb::of(b"auth"));
                self.auth_failed()
            }
        }
    }

    /// Failed AUTH attempts so far (the connection layer delays accordingly).
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// A non-final BDAT chunk of `size` octets was stored.
    pub fn chunk_received(&mut self, size: u64) -> Action {
        Action::Reply(Reply::new(
            250,
            code(2, 0, 0),
            format!("{size} octets received"),
        ))
    }

    /// The message of the current transaction was stored or refused; the
    /// transaction ends either way.
    pub fn message_finished(&mut self, outcome: MessageOutcome) -> Action {
        if let Some(transaction) = self.transaction.take()
            && !matches!(
                outcome,
                MessageOutcome::Queued(_) | MessageOutcome::Discarded
            )
        {
            self.commands
                .refused_later(Verb::message(transaction.chunking));
        }
        let reply = match outcome {
            MessageOutcome::Queued(id) => {
                Reply::new(250, code(2, 0, 0), format!("Ok: queued as {id}"))
            }
            MessageOutcome::Refused(refusal) => refusal.reply(),
            MessageOutcome::Milter(reply) => reply,
            MessageOutcome::Discarded => Reply::new(250, code(2, 0, 0), "Ok"),
            MessageOutcome::StorageFailed => Reply::new(
                451,
                code(4, 3, 0),
                "Error: queue write error, try again later",
            ),
            MessageOutcome::NoSpace => {
                Reply::new(452, code(4, 3, 1), "Insufficient system storage")
            }
        };
        Action::Reply(reply)
    }

    fn handle(&mut self, command: Command) -> Action {
        if matches!(
            command,
            Command::Rset | Command::Noop | Command::Vrfy | Command::Help
        ) && let Some(close) = self.junk_command()
        {
            return close;
        }
        match command {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { sender, parameters } => self.mail(sender, parameters),
            Command::Rcpt {
                recipient,
                parameters,
            } => self.rcpt(recipient, parameters),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.transaction = None;
                ok("Ok")
            }
            Command::Noop => ok("Ok"),
            Command::Quit => Action::Close(vec![Reply::new(221, code(2, 0, 0), "Bye")]),
            Command::Vrfy => Action::Reply(Reply::new(
                252,
                code(2, 1, 5),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => {
                self.error(Reply::new(502, code(5, 5, 1), "Error: EXPN not supported"))
            }
            Command::Help => Action::Reply(Reply::new(
                214,
                code(2, 0, 0),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
        }
    }

    fn parse_error(&mut self, error: CommandError) -> Action {
        match error {
            CommandError::Unrecognized => self.error(Reply::new(
                500,
                code(5, 5, 2),
                "Error: command not recognized",
            )),
            CommandError::Syntax(what) => self.error(Reply::new(
                501,
                code(5, 5, 4),
                format!("Syntax error: {what}"),
            )),
            CommandError::BdatSyntax(what) => {
                // The chunk's length is unknown: its octets cannot be skipped.
                Action::Close(vec![Reply::new(
                    501,
                    code(5, 5, 4),
                    format!("Syntax error in BDAT: {what}; closing"),
                )])
            }
            CommandError::UnknownParameter(parameter) => self.error(Reply::new(
                555,
                code(5, 5, 4),
                format!("Error: parameter {parameter} not supported"),
            )),
            CommandError::UnknownMechanism(mechanism) => self.error(Reply::new(
                504,
                code(5, 5, 4),
                format!("Error: authentication mechanism {mechanism} not supported"),
            )),
        }
    }

    /// Counts a protocol error; past `max_errors` the connection is closed.
    fn error(&mut self, reply: Reply) -> Action {
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            tracing::info!(client = %self.client, errors = self.errors, "too many errors, closing");
            return Action::Close(vec![
                reply,
                Reply::new(
                    421,
                    code(4, 7, 0),
                    format!("{} Error: too many errors", self.config.hostname),
                ),
            ]);
        }
        Action::Reply(reply)
    }

    /// Counts a command that moves no mail; past `max_junk_commands` the
    /// connection is closed with `421 4.7.0` (as Postfix's
    /// `smtpd_junk_command_limit`), so a client cannot hold a session open
    /// with NOOPs.
    fn junk_command(&mut self) -> Option<Action> {
        self.junk += 1;
        if self.junk <= self.config.max_junk_commands {
            return None;
        }
        tracing::info!(client = %self.client, commands = self.junk, "too many junk commands, closing");
        Some(Action::Close(vec![Reply::new(
            421,
            code(4, 7, 0),
            format!(
                "{} Error: too many junk commands, closing",
                self.config.hostname
            ),
        )]))
    }

    fn bad_sequence(&mut self, text: &'static str) -> Action {
        self.error(Reply::new(503, code(5, 5, 1), text))
    }

    fn hello(&mut self, name: String, extended: bool) -> Action {
        // RFC 5321 §4.1.4: EHLO/HELO also reset any transaction.
        self.transaction = None;
        self.greeted = Some(Greeted { name, extended });
        let host = self.config.hostname.clone();
        if !extended {
            return Action::Reply(Reply::plain(250, vec![host.into()]));
        }
        let mut lines: Vec<Cow<'static, str>> = vec![
            host.into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.config.tls_available && !self.tls {
            lines.push("STARTTLS".into());
        }
        // RFC 4954 §4: passwords only ever travel encrypted.
        if self.tls && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        // RFC 8689 §4: offered only where it can be honoured, under TLS.
        if self.tls {
            lines.push("REQUIRETLS".into());
        }
        Action::Reply(Reply::plain(250, lines))
    }

    fn mail(
        &mut self,
        sender: ReversePath,
        parameters: crate::smtp::command::MailParameters,
    ) -> Action {
        if self.greeted.is_none() {
            return self.bad_sequence("Error: send HELO/EHLO first");
        }
        if self.transaction.is_some() {
            return self.bad_sequence("Error: nested MAIL command");
        }
        if self.config.auth_required && self.user.is_none() {
            self.refusal_reason = Some("authentication required");
            return self.error(Reply::new(530, code(5, 7, 0), "Authentication required"));
        }
        // RFC 5321 §4.1.1.11, RFC 1869 §4: service extensions are in effect
        // only after EHLO; after HELO their parameters are not accepted (a
        // BODY=8BITMIME or SMTPUTF8 would otherwise be recorded and relied on).
        let extended = self
            .greeted
            .as_ref()
            .is_some_and(|greeted| greeted.extended);
        if !extended
            && (parameters.size.is_some()
                || parameters.body.is_some()
                || parameters.smtputf8
                || parameters.ret.is_some()
                || parameters.envid.is_some())
        {
            return self.error(Reply::new(
                555,
                code(5, 5, 4),
                "Error: MAIL parameters need EHLO, not HELO",
            ));
        }
        // RFC 8689 §4.1: REQUIRETLS only on a session under TLS.
        if parameters.requiretls && !self.tls {
            self.refusal_reason = Some("REQUIRETLS without TLS");
            return self.error(Reply::new(
                530,
                code(5, 7, 10),
                "REQUIRETLS needs a TLS session",
            ));
        }
        let sender = match sender {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(mailbox) => {
                if !mailbox.is_ascii() && !parameters.smtputf8 {
                    return self.refuse_utf8(&mailbox);
                }
                mailbox.to_string()
            }
        };
        if parameters
            .size
            .is_some_and(|size| size > self.config.max_message_size)
        {
            self.refusal_reason = Some("declared size over limit");
            return Action::Reply(Reply::new(
                552,
                code(5, 3, 4),
                "Error: message size exceeds fixed maximum message size",
            ));
        }
        if let Some(headroom) = self.storage_headroom
            && (headroom == 0 || parameters.size.is_some_and(|size| size > headroom))
        {
            self.refusal_reason = Some(if headroom == 0 {
                "spool free space below spool.min_free"
            } else {
                "declared size over the spool's free space above spool.min_free"
            });
            return Action::Reply(Reply::new(
                452,
                code(4, 3, 1),
                "Insufficient system storage",
            ));
        }
        let transaction = Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8: parameters.smtputf8,
            body_8bit: parameters.body == Some(BodyType::EightBitMime),
            requiretls: parameters.requiretls,
            chunking: false,
            dsn: (parameters.ret.is_some() || parameters.envid.is_some()).then(|| EnvelopeDsn {
                message: MessageDsn {
                    ret: parameters.ret,
                    envid: parameters.envid,
                },
                recipients: Vec::new(),
            }),
        };
        if self.front_door {
            let check = self.check(&transaction, None);
            self.pending = Some(Pending::Mail(transaction));
            return check;
        }
        self.transaction = Some(transaction);
        Action::Reply(Reply::new(250, code(2, 1, 0), "Ok"))
    }

    fn refuse_utf8(&mut self, mailbox: &Mailbox) -> Action {
        // RFC 6531 §3.5 / RFC 6533 (5.6.7).
        self.error(Reply::new(
            553,
            code(5, 6, 7),
            format!("<{mailbox}>: non-ASCII address needs SMTPUTF8"),
        ))
    }

    fn rcpt(&mut self, recipient: ForwardPath, parameters: RcptParameters) -> Action {
        let Some(transaction) = self.transaction.as_ref() else {
            return self.bad_sequence("Error: need MAIL command");
        };
        // RFC 1869 §4: DSN is an extension, in effect only after EHLO.
        let extended = self
            .greeted
            .as_ref()
            .is_some_and(|greeted| greeted.extended);
        if !extended && !parameters.is_empty() {
            return self.error(Reply::new(
                555,
                code(5, 5, 4),
                "Error: RCPT parameters need EHLO, not HELO",
            ));
        }
        if transaction.chunking {
            return self.bad_sequence("Error: RCPT after BDAT");
        }
        if transaction.recipients.len() >= self.config.max_recipients {
            return Action::Reply(Reply::new(452, code(4, 5, 3), "Error: too many recipients"));
        }
        let smtputf8 = transaction.smtputf8;
        let address = match recipient {
            // RFC 5321 §4.5.1: <postmaster> must be accepted; it is ours.
            ForwardPath::Postmaster => format!("postmaster@{}", self.config.hostname),
            ForwardPath::Mailbox(mailbox) => {
                if !mailbox.is_ascii() && !smtputf8 {
                    return self.refuse_utf8(&mailbox);
                }
                let our_postmaster = mailbox.local_part.eq_ignore_ascii_case("postmaster")
                    && mailbox.domain.eq_ignore_ascii_case(&self.config.hostname);
                let allowed = our_postmaster
                    || self.config.policy.may_send_to_mailbox(
                        &mailbox.local_part,
                        &mailbox.domain,
                        self.relay_client,
                        self.user.is_some(),
                    );
                if !allowed {
                    self.refusal_reason = Some("relay access denied");
                    return self.error(Reply::new(
                        554,
                        code(5, 7, 1),
                        format!("<{mailbox}>: Relay access denied"),
                    ));
                }
                mailbox.to_string()
            }
        };
        if self.front_door {
            let check = self.check(transaction, Some(address.clone()));
            self.pending = Some(Pending::Rcpt {
                address,
                parameters,
            });
            return check;
        }
        self.add_recipient(address, parameters)
    }

    /// Adds an accepted recipient to the transaction.
    fn add_recipient(&mut self, address: String, parameters: RcptParameters) -> Action {
        if let Some(transaction) = self.transaction.as_mut() {
            // A repeated recipient is one recipient: stored twice it would
            // get the message twice (RFC 5321 §3.3 leaves this to us).
            if !transaction.recipients.contains(&address) {
                transaction.recipients.push(address);
                // Kept beside the recipients, one entry each, only once
                // some command carried a DSN parameter.
                if transaction.dsn.is_some() || !parameters.is_empty() {
                    let count = transaction.recipients.len();
                    let dsn = transaction.dsn.get_or_insert_with(EnvelopeDsn::default);
                    dsn.recipients.resize(count - 1, RecipientDsn::default());
                    dsn.recipients.push(RecipientDsn {
                        notify: parameters.notify,
                        orcpt: parameters.orcpt,
                    });
                }
            }
        }
        Action::Reply(Reply::new(250, code(2, 1, 5), "Ok"))
    }

    fn data(&mut self) -> Action {
        match &self.transaction {
            None => self.bad_sequence("Error: need MAIL command"),
            Some(transaction) if transaction.recipients.is_empty() => {
                self.bad_sequence("Error: no valid recipients")
            }
            Some(transaction) if transaction.chunking => {
                self.bad_sequence("Error: DATA after BDAT")
            }
            Some(_) => Action::ReceiveData(Reply::plain(
                354,
                vec!["End data with <CR><LF>.<CR><LF>".into()],
            )),
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Action {
        let refusal = match &self.transaction {
            None => Some("Error: need MAIL command"),
            Some(transaction) if transaction.recipients.is_empty() => {
                Some("Error: no valid recipients")
            }
            Some(_) => None,
        };
        match refusal {
            Some(text) => {
                // RFC 3030 §2: the chunk is read and discarded all the same.
                let refusal = match self.bad_sequence(text) {
                    Action::Reply(reply) => reply,
                    Action::Close(replies) => {
                        return Action::Close(replies);
                    }
                    other => unreachable!("bad_sequence only replies or closes, not {other:?}"),
                };
                Action::ReceiveChunk {
                    size,
                    last,
                    refusal: Some(refusal),
                }
            }
            None => {
                if let Some(transaction) = self.transaction.as_mut() {
                    transaction.chunking = true;
                }
                Action::ReceiveChunk {
                    size,
                    last,
                    refusal: None,
                }
            }
        }
    }

    fn starttls(&mut self) -> Action {
        if self.tls {
            return self.bad_sequence("Error: TLS already active");
        }
        if !self.config.tls_available {
            return self.error(Reply::new(
                502,
                code(5, 5, 1),
                "Error: STARTTLS not available",
            ));
        }
        Action::StartTls(Reply::new(220, code(2, 0, 0), "Ready to start TLS"))
    }

    fn auth(&mut self, mechanism: AuthMechanism, initial_response: Option<String>) -> Action {
        if !self.config.tls_available {
            return self.error(Reply::new(
                502,
                code(5, 5, 1),
                "Error: authentication not enabled",
            ));
        }
        if !self.tls {
            // RFC 4954 §6.
            return self.error(Reply::new(
                538,
                code(5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        // RFC 4954 is a service extension: in effect only after EHLO.
        if !self
            .greeted
            .as_ref()
            .is_some_and(|greeted| greeted.extended)
        {
            return self.bad_sequence("Error: send EHLO first");
        }
        if self.user.is_some() {
            return self.bad_sequence("Error: already authenticated");
        }
        if self.transaction.is_some() {
            return self.bad_sequence("Error: AUTH not allowed in a mail transaction");
        }
        match (mechanism, initial_response) {
            (AuthMechanism::Plain, None) => {
                self.auth = AuthStep::PlainResponse;
                Action::Reply(Reply::plain(334, vec!["".into()]))
            }
            (AuthMechanism::Plain, Some(response)) => self.plain(response.as_bytes()),
            (AuthMechanism::Login, None) => {
                self.auth = AuthStep::LoginUsername;
                Action::Reply(Reply::plain(334, vec!["VXNlcm5hbWU6".into()]))
            }
            (AuthMechanism::Login, Some(response)) => {
                self.auth = AuthStep::LoginUsername;
                self.auth_response(response.as_bytes())
            }
        }
    }

    /// A line sent in answer to a 334 challenge.
    fn auth_response(&mut self, line: &[u8]) -> Action {
        let step = std::mem::replace(&mut self.auth, AuthStep::None);
        if line == b"*" {
            // RFC 4954 §4: the client cancelled.
            return self.error(Reply::new(501, code(5, 7, 0), "Authentication aborted"));
        }
        match step {
            AuthStep::None => unreachable!("auth_response is only called during AUTH"),
            AuthStep::PlainResponse => self.plain(line),
            AuthStep::LoginUsername => match decode_text(line) {
                Some(username) => {
                    self.auth = AuthStep::LoginPassword { username };
                    Action::Reply(Reply::plain(334, vec!["UGFzc3dvcmQ6".into()]))
                }
                None => self.bad_base64(),
            },
            AuthStep::LoginPassword { username } => match decode_text(line) {
                Some(password) => Action::Authenticate(Credentials { username, password }),
                None => self.bad_base64(),
            },
        }
    }

    /// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`.
    fn plain(&mut self, response: &[u8]) -> Action {
        let Some(text) = decode_text(response) else {
            return self.bad_base64();
        };
        let mut parts = text.split('\0');
        let (Some(authzid), Some(username), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.error(Reply::new(
                501,
                code(5, 5, 2),
                "Error: malformed PLAIN response",
            ));
        };
        if !authzid.is_empty() && authzid != username {
            // Acting as another user is not supported: a failed attempt.
            return self.auth_failed();
        }
        Action::Authenticate(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    fn bad_base64(&mut self) -> Action {
        self.auth = AuthStep::None;
        self.error(Reply::new(
            501,
            code(5, 5, 2),
            "Error: invalid base64 response",
        ))
    }

    fn auth_failed(&mut self) -> Action {
        self.auth = AuthStep::None;
        self.auth_failures += 1;
        tracing::info!(client = %self.client, failures = self.auth_failures, "authentication failed");
        let reply = Reply::new(535, code(5, 7, 8), "Authentication credentials invalid");
        if self.auth_failures >= self.config.max_auth_failures {
            return Action::Close(vec![
                reply,
                Reply::new(
                    421,
                    code(4, 7, 0),
                    format!(
                        "{} Error: too many failed authentications",
                        self.config.hostname
                    ),
                ),
            ]);
        }
        Action::Reply(reply)
    }
}

/// A reply as one log field value: in double quotes, with `"`, `\`, `=` and
/// control characters escaped (`=` as `\u{3d}`), so text a client put in
/// the reply (an address) cannot add a `key=value` field to the line.
pub struct LogReply<'a>(pub &'a Reply);

impl fmt::Display for LogReply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaped<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escaped<'_, '_> {
            fn write_str(&mut self, text: &str) -> fmt::Result {
                for c in text.chars() {
                    match c {
                        '"' | '\\' => write!(self.0, "\\{c}")?,
                        '=' => self.0.write_str("\\u{3d}")?,
                        c if c.is_control() => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                        c => fmt::Write::write_char(self.0, c)?,
                    }
                }
                Ok(())
            }
        }
        f.write_str("\"")?;
        fmt::Write::write_fmt(&mut Escaped(f), format_args!("{}", self.0))?;
        f.write_str("\"")
    }
}

/// An address as a log field value: `<>` for the null sender, the address
/// as it is when it is one plain token, else in double quotes with `"` and
/// `\` escaped by a backslash and white space and control characters as
/// `\u{..}`. A field value then never holds white space, so a quoted local
/// part such as `"x client=192.0.2.1"@example.org` cannot add a field of the
/// client's choosing to a text log line.
pub fn log_address(address: &str) -> Cow<'_, str> {
    if address.is_empty() {
        return Cow::Borrowed("<>");
    }
    let plain = |c: char| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\';
    if address.chars().all(plain) {
        return Cow::Borrowed(address);
    }
    let mut quoted = String::with_capacity(address.len() + 8);
    quoted.push('"');
    for c in address.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if c.is_whitespace() || c.is_control() => {
                quoted.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Cow::Owned(quoted)
}

/// The HELO name as shown in a `Received:` field (RFC 5321 §4.4
/// `Extended-Domain`): letters, digits and `-._:[]` as given, any other
/// character as `?`, so a hostile name can neither end the field's tokens
/// early (`;`, quotes, angle brackets) nor put 8-bit octets in the header.
fn trace_name(name: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
    if name.chars().all(safe) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars()
            .map(|c| if safe(c) { c } else { '?' })
            .collect(),
    )
}

fn ok(text: &'static str) -> Action {
    Action::Reply(Reply::new(250, code(2, 0, 0), text))
}

/// Base64 to UTF-8 text; `=` stands for an empty response (RFC 4954 §4).
fn decode_text(line: &[u8]) -> Option<String> {
    if line == b"=" {
        return Some(String::new());
    }
    let bytes = BASE64.decode(line).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    fn config() -> SessionConfig {
        SessionConfig {
            max_junk_commands: 100,
            hostname: "mx.test".into(),
            max_message_size: 1000,
            max_recipients: 3,
            max_errors: 5,
            max_auth_failures: 2,
            tls_available: true,
            auth_required: false,
            policy: Policy::new(&PolicyConfig {
                relay_networks: vec!["127.0.0.0/8".parse().unwrap()],
                accept_domains: vec!["example.org".into()],
            }),
        }
    }

    fn session_from(ip: &str, config: SessionConfig) -> Session {
        Session::new(Arc::new(config), ip.parse().unwrap(), false)
    }

    fn relay_session() -> Session {
        session_from("127.0.0.1", config())
    }

    fn stranger() -> Session {
        session_from("192.0.2.7", config())
    }

    /// The wire form of the first reply of an action.
    fn wire(action: &Action) -> String {
        match action {
            Action::Reply(reply) | Action::ReceiveData(reply) | Action::StartTls(reply) => {
                reply.to_wire()
            }
            Action::Close(replies) => replies.iter().map(Reply::to_wire).collect(),
            other => format!("{other:?}"),
        }
    }

    fn send(session: &mut Session, line: &str) -> String {
        wire(&session.handle_line(line.as_bytes()))
    }

    #[test]
    fn with_a_front_door_mail_and_rcpt_wait_for_its_answer() {
        let mut session = stranger();
        session.set_front_door(true);
        expect(&mut session, "EHLO c.test", "250");
        let Action::Check(check) = session.handle_line(b"MAIL FROM:<a@b.test>") else {
            panic!("MAIL asks the front door");
        };
        assert_eq!((check.sender.as_str(), check.recipient), ("a@b.test", None));
        assert!(!check.trusted);
        assert!(session.transaction().is_none(), "not before the answer");
        let reply = Reply::new(452, code(4, 7, 0), "slow down");
        assert!(matches!(
            session.check_result(Some((reply, "message rate"))),
            Action::Reply(reply) if reply.code() == 452
        ));
        assert!(session.transaction().is_none());
        assert!(matches!(
            session.handle_line(b"MAIL FROM:<a@b.test>"),
            Action::Check(_)
        ));
        assert!(matches!(session.check_result(None), Action::Reply(reply) if reply.code() == 250));
        // Relaying is refused before the front door is asked.
        expect(&mut session, "RCPT TO:<x@elsewhere.test>", "554");
        let Action::Check(check) = session.handle_line(b"RCPT TO:<u@example.org>") else {
            panic!("RCPT asks the front door");
        };
        assert_eq!(check.recipient.as_deref(), Some("u@example.org"));
        let reply = Reply::new(550, code(5, 1, 1), "unknown");
        session.check_result(Some((reply, "unknown recipient")));
        assert!(
            session
                .transaction()
                .is_some_and(|t| t.recipients.is_empty())
        );
        session.handle_line(b"RCPT TO:<v@example.org>");
        session.check_result(None);
        assert_eq!(
            session.transaction().map(|t| t.recipients.clone()),
            Some(vec!["v@example.org".to_string()])
        );
        assert!(
            session.commands().to_string().contains("rcpt=1/3"),
            "{}",
            session.commands()
        );
    }

    fn expect(session: &mut Session, line: &str, start: &str) -> String {
        let reply = send(session, line);
        assert!(
            reply.starts_with(start),
            "{line:?}: expected {start:?}, got {reply:?}"
        );
        reply
    }

    #[test]
    fn greeting_names_host() {
        assert_eq!(
            relay_session().greeting().to_wire(),
            "220 mx.test ESMTP sluice\r\n"
        );
    }

    #[test]
    fn ehlo_advertises_extensions_without_auth_before_tls() {
        let mut session = relay_session();
        let reply = expect(&mut session, "EHLO c.test", "250-mx.test");
        for keyword in [
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
            "STARTTLS",
        ] {
            assert!(
                reply.contains(&format!("250-{keyword}\r\n"))
                    || reply.contains(&format!("250 {keyword}\r\n")),
                "{keyword} in {reply}"
            );
        }
        assert!(!reply.contains("AUTH"), "{reply}");
    }

    #[test]
    fn after_tls_auth_is_offered_and_starttls_is_not() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        assert!(matches!(
            session.handle_line(b"STARTTLS"),
            Action::StartTls(_)
        ));
        session.tls_started();
        // The session starts over: MAIL needs a new EHLO.
        expect(&mut session, "MAIL FROM:<a@b.test>", "503 5.5.1");
        let reply = expect(&mut session, "EHLO c.test", "250");
        assert!(reply.contains("AUTH PLAIN LOGIN"), "{reply}");
        assert!(!reply.contains("STARTTLS"), "{reply}");
        expect(&mut session, "STARTTLS", "503 5.5.1");
        // RFC 3848: the trace names TLS, then TLS and AUTH.
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        let at = DateTime::from_timestamp(0, 0).unwrap();
        assert!(
            session
                .received_header("Q", at)
                .contains(" with ESMTPS id Q")
        );
        expect(&mut session, "RSET", "250");
        session.handle_line(b"AUTH PLAIN AGFwcABzZWNyZXQ=");
        session.auth_result(Some("app".into()));
        assert!(
            session
                .received_header("Q", at)
                .contains(" with ESMTPSA id Q")
        );
    }

    #[test]
    fn received_header_uses_only_registered_protocol_words() {
        // RFC 5321 §4.4: no unregistered WITH names; "SMTPS" is not one
        // (IANA "WITH Protocol Types", RFC 3848). HELO over TLS is ESMTPS,
        // TLS having been negotiated (STARTTLS is itself an extension).
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let mut session = Session::new(Arc::new(config()), "127.0.0.1".parse().unwrap(), true);
        expect(&mut session, "HELO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        assert_eq!(session.protocol(), "ESMTPS");
        assert!(
            session
                .received_header("Q", at)
                .contains(" with ESMTPS id Q")
        );
        let mut session = relay_session();
        expect(&mut session, "HELO c.test", "250");
        assert_eq!(session.protocol(), "SMTP");
    }

    #[test]
    fn a_local_submission_names_the_peer_uid_in_received() {
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let mut session = relay_session();
        session.set_local_peer(1001, "al(ic)e\r\n");
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        let header = session.received_header("Q", at);
        assert!(
            header.starts_with(
                "Received: by mx.test (sluice, from userid 1001 (alice))\r\n\twith ESMTP id Q"
            ),
            "{header}"
        );
    }

    #[test]
    fn no_starttls_without_certificate() {
        let mut session = session_from(
            "127.0.0.1",
            SessionConfig {
                tls_available: false,
                ..config()
            },
        );
        let reply = expect(&mut session, "EHLO c.test", "250");
        assert!(!reply.contains("STARTTLS"));
        expect(&mut session, "STARTTLS", "502 5.5.1");
        expect(&mut session, "AUTH PLAIN AGEAYg==", "502 5.5.1");
    }

    #[test]
    fn full_transaction() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test> SIZE=100", "250 2.1.0");
        expect(&mut session, "RCPT TO:<x@Remote.TEST>", "250 2.1.5");
        assert!(matches!(
            session.handle_line(b"DATA"),
            Action::ReceiveData(_)
        ));
        let envelope = session.envelope().unwrap();
        assert_eq!(envelope.sender, "a@b.test");
        assert_eq!(envelope.recipients, vec!["x@remote.test".to_string()]);
        let header = session.received_header("ABC123", DateTime::from_timestamp(0, 0).unwrap());
        assert_eq!(
            header,
            "Received: from c.test ([127.0.0.1])\r\n\tby mx.test (sluice) with ESMTP id ABC123\r\n\tfor <x@remote.test>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let reply = wire(&session.message_finished(MessageOutcome::Queued("ABC123".into())));
        assert_eq!(reply, "250 2.0.0 Ok: queued as ABC123\r\n");
        assert!(session.is_idle());
        expect(&mut session, "MAIL FROM:<>", "250");
    }

    #[test]
    fn received_header_shows_a_hostile_helo_name_only_in_safe_characters() {
        // The HELO name is the client's to choose: quotes, semicolons and
        // non-ASCII would break the Received field's syntax (RFC 5322 §3.6.7:
        // the date follows the ";") or put 8-bit octets in the header of a
        // message that did not ask for SMTPUTF8.
        for (helo, shown) in [
            ("evil;Thu,1Jan1970", "evil?Thu?1Jan1970"),
            ("\"open", "?open"),
            ("jöran.test", "j?ran.test"),
            ("a<b>@c\\d", "a?b??c?d"),
            ("host_name.example", "host_name.example"),
            ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
        ] {
            let mut session = relay_session();
            expect(&mut session, &format!("EHLO {helo}"), "250");
            let header = session.received_header("ID1", DateTime::from_timestamp(0, 0).unwrap());
            assert!(
                header.starts_with(&format!("Received: from {shown} ([127.0.0.1])\r\n")),
                "{helo:?}: {header:?}"
            );
            assert!(header.is_ascii(), "{header:?}");
            assert_eq!(header.matches(';').count(), 1, "{header:?}");
        }
    }

    #[test]
    fn commands_out_of_sequence_get_503() {
        let mut session = relay_session();
        expect(&mut session, "MAIL FROM:<a@b.test>", "503 5.5.1");
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "RCPT TO:<a@b.test>", "503 5.5.1");
        expect(&mut session, "DATA", "503 5.5.1");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "503 5.5.1");
        expect(&mut session, "DATA", "503 5.5.1");
    }

    #[test]
    fn syntax_errors_and_unknown_commands() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "FROB", "500 5.5.2");
        expect(&mut session, "MAIL FROM:<a@b", "501 5.5.4");
        expect(&mut session, "MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        expect(&mut session, "RCPT TO:<a@b.test> RRVS=x", "555 5.5.4");
    }

    #[test]
    fn dsn_parameters_are_kept_per_recipient_and_malformed_ones_get_501() {
        use sluice_queue::{NotifyOn, Ret};
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(
            &mut session,
            "MAIL FROM:<a@b.test> RET=FULL ENVID=x+",
            "501 5.5.4",
        );
        expect(
            &mut session,
            "MAIL FROM:<a@b.test> RET=HDRS ENVID=e1",
            "250",
        );
        expect(&mut session, "RCPT TO:<r1@b.test>", "250");
        expect(
            &mut session,
            "RCPT TO:<r2@b.test> NOTIFY=SUCCESS,,",
            "501 5.5.4",
        );
        expect(
            &mut session,
            "RCPT TO:<r2@b.test> ORCPT=rfc822",
            "501 5.5.4",
        );
        expect(
            &mut session,
            "RCPT TO:<r2@b.test> NOTIFY=never ORCPT=rfc822;R2+40b.test",
            "250",
        );
        // A repeat is one recipient: its first parameters stand.
        expect(&mut session, "RCPT TO:<r2@b.test> NOTIFY=SUCCESS", "250");
        let envelope = session.envelope().expect("a transaction");
        let dsn = envelope.dsn.expect("DSN parameters kept");
        assert_eq!(dsn.message.ret, Some(Ret::Hdrs));
        assert_eq!(dsn.message.envid.as_deref(), Some("e1"));
        assert_eq!(dsn.recipients.len(), 2);
        assert!(dsn.recipients[0].is_empty());
        assert_eq!(dsn.recipients[1].notify, Some(NotifyOn::NEVER));
        assert_eq!(
            dsn.recipients[1].orcpt.as_ref().map(|o| o.address.as_str()),
            Some("R2@b.test")
        );

        // Without any DSN parameter, nothing is kept.
        expect(&mut session, "RSET", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        expect(&mut session, "RCPT TO:<r1@b.test>", "250");
        assert_eq!(session.envelope().expect("a transaction").dsn, None);
        // Only a later recipient has some: the earlier ones get empty entries.
        expect(&mut session, "RCPT TO:<r3@b.test> NOTIFY=DELAY", "250");
        let dsn = session.envelope().unwrap().dsn.expect("kept");
        assert_eq!(dsn.recipients.len(), 2);
        assert!(dsn.recipients[0].is_empty());
    }

    #[test]
    fn dsn_parameters_after_helo_get_555() {
        let mut session = relay_session();
        expect(&mut session, "HELO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test> RET=HDRS", "555 5.5.4");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        expect(&mut session, "RCPT TO:<r@b.test> NOTIFY=NEVER", "555 5.5.4");
    }

    #[test]
    fn too_many_errors_closes() {
        let mut session = relay_session();
        for _ in 0..4 {
            assert!(matches!(session.handle_line(b"FROB"), Action::Reply(_)));
        }
        let Action::Close(replies) = session.handle_line(b"FROB") else {
            panic!("the fifth error closes");
        };
        assert_eq!(replies.last().unwrap().code(), 421);
    }

    #[test]
    fn junk_commands_past_the_limit_close_with_421_4_7_0() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        for command in ["NOOP", "RSET", "VRFY x", "HELP"].iter().cycle().take(100) {
            assert!(
                matches!(session.handle_line(command.as_bytes()), Action::Reply(_)),
                "{command}"
            );
        }
        // Mail commands are not junk and do not count.
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        let Action::Close(replies) = session.handle_line(b"NOOP") else {
            panic!("the 101st junk command closes");
        };
        assert_eq!(replies.len(), 1);
        assert!(
            replies[0].to_wire().starts_with("421 4.7.0 "),
            "{:?}",
            replies[0].to_wire()
        );
    }

    #[test]
    fn strangers_may_not_relay_but_may_send_to_accepted_domains() {
        let mut session = stranger();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        let reply = expect(&mut session, "RCPT TO:<x@elsewhere.test>", "554 5.7.1");
        assert_eq!(
            reply,
            "554 5.7.1 <x@elsewhere.test>: Relay access denied\r\n"
        );
        expect(&mut session, "RCPT TO:<x@Example.org>", "250");
        expect(
            &mut session,
            "RCPT TO:<x%elsewhere.test@example.org>",
            "554 5.7.1",
        );
        expect(&mut session, "RCPT TO:<postmaster>", "250");
        expect(&mut session, "RCPT TO:<PostMaster@mx.test>", "250");
        assert_eq!(
            session.envelope().unwrap().recipients,
            vec![
                "x@example.org".to_string(),
                "postmaster@mx.test".into(),
                "PostMaster@mx.test".into()
            ]
        );
    }

    #[test]
    fn mail_gets_452_4_3_1_while_storage_is_low_and_250_once_it_is_back() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        session.set_storage_low(true);
        let reply = expect(&mut session, "MAIL FROM:<a@b.test>", "452 4.3.1");
        assert_eq!(reply, "452 4.3.1 Insufficient system storage\r\n");
        assert!(session.transaction().is_none());
        expect(&mut session, "NOOP", "250");
        session.set_storage_low(false);
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        // A transaction already open goes on.
        session.set_storage_low(true);
        expect(&mut session, "RCPT TO:<r@x.test>", "250");
    }

    #[test]
    fn a_declared_size_over_the_headroom_gets_452_4_3_1() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        session.set_storage_headroom(Some(100));
        expect(&mut session, "MAIL FROM:<a@b.test> SIZE=200", "452 4.3.1");
        expect(&mut session, "MAIL FROM:<a@b.test> SIZE=50", "250");
        expect(&mut session, "RSET", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        expect(&mut session, "RSET", "250");
        session.set_storage_headroom(None);
        expect(&mut session, "MAIL FROM:<a@b.test> SIZE=200", "250");
    }

    #[test]
    fn recipient_limit_gives_452() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        for n in 0..3 {
            expect(&mut session, &format!("RCPT TO:<r{n}@x.test>"), "250");
        }
        expect(&mut session, "RCPT TO:<r4@x.test>", "452 4.5.3");
    }

    #[test]
    fn a_repeated_recipient_is_accepted_once() {
        // Two entries would deliver the message twice and use up the
        // recipient limit; `<postmaster>` and `postmaster@<hostname>` are
        // one address.
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        for line in [
            "RCPT TO:<r@x.test>",
            "RCPT TO:<r@X.test>",
            "RCPT TO:<postmaster>",
            "RCPT TO:<PostMaster>",
            "RCPT TO:<postmaster@mx.test>",
            "RCPT TO:<R@x.test>",
        ] {
            expect(&mut session, line, "250 2.1.5");
        }
        assert_eq!(
            session.envelope().unwrap().recipients,
            vec![
                "r@x.test".to_string(),
                "postmaster@mx.test".into(),
                "R@x.test".into()
            ]
        );
        expect(&mut session, "RCPT TO:<s@x.test>", "452 4.5.3");
    }

    #[test]
    fn log_address_keeps_plain_addresses_and_quotes_the_rest_without_white_space() {
        assert_eq!(log_address(""), "<>");
        assert_eq!(log_address("a.b+c@example.org"), "a.b+c@example.org");
        assert_eq!(
            log_address("δοκιμή@παράδειγμα.test"),
            "δοκιμή@παράδειγμα.test"
        );
        assert_eq!(
            log_address("\"a b\\\"c\"@x.test"),
            "\"\\\"a\\u{20}b\\\\\\\"c\\\"@x.test\""
        );
        assert_eq!(
            log_address("\"a\u{85}\"@x.test"),
            "\"\\\"a\\u{85}\\\"@x.test\""
        );
    }

    #[test]
    fn declared_size_over_limit_gives_552() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test> SIZE=1001", "552 5.3.4");
        expect(&mut session, "MAIL FROM:<a@b.test> SIZE=1000", "250");
    }

    #[test]
    fn mail_parameters_after_helo_get_555() {
        // RFC 5321 §4.1.1.11, RFC 1869 §4: after HELO no service extension
        // is in effect, so their MAIL parameters are not accepted.
        let mut session = relay_session();
        expect(&mut session, "HELO c.test", "250");
        for line in [
            "MAIL FROM:<a@b.test> BODY=8BITMIME",
            "MAIL FROM:<a@b.test> BODY=7BIT",
            "MAIL FROM:<jöran@b.test> SMTPUTF8",
            "MAIL FROM:<a@b.test> SIZE=10",
        ] {
            expect(&mut session, line, "555 5.5.4");
            assert!(session.transaction().is_none(), "{line}");
        }
        expect(&mut session, "MAIL FROM:<a@b.test>", "250 2.1.0");
        assert!(!session.envelope().unwrap().body_8bit);
        expect(&mut session, "RSET", "250");
        expect(&mut session, "EHLO c.test", "250");
        expect(
            &mut session,
            "MAIL FROM:<a@b.test> BODY=8BITMIME",
            "250 2.1.0",
        );
        assert!(session.envelope().unwrap().body_8bit);
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<jöran@b.test>", "553 5.6.7");
        expect(&mut session, "MAIL FROM:<jöran@b.test> SMTPUTF8", "250");
        expect(&mut session, "RCPT TO:<δοκιμή@παράδειγμα.test>", "250");
        let envelope = session.envelope().unwrap();
        assert!(envelope.smtputf8);
        assert_eq!(
            envelope.recipients,
            vec!["δοκιμή@παράδειγμα.test".to_string()]
        );
    }

    #[test]
    fn bdat_transaction_and_mixing_with_data() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        assert!(matches!(
            session.handle_line(b"BDAT 5"),
            Action::ReceiveChunk {
                size: 5,
                last: false,
                refusal: Some(_)
            }
        ));
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        expect(&mut session, "RCPT TO:<x@y.test>", "250");
        assert_eq!(
            session.handle_line(b"BDAT 5"),
            Action::ReceiveChunk {
                size: 5,
                last: false,
                refusal: None
            }
        );
        expect(&mut session, "DATA", "503 5.5.1");
        expect(&mut session, "RCPT TO:<z@y.test>", "503 5.5.1");
        assert_eq!(
            session.handle_line(b"BDAT 0 LAST"),
            Action::ReceiveChunk {
                size: 0,
                last: true,
                refusal: None
            }
        );
        assert!(
            wire(&session.message_finished(MessageOutcome::Queued("Q1".into())))
                .starts_with("250 2.0.0")
        );
        assert!(matches!(session.handle_line(b"BDAT x"), Action::Close(_)));
    }

    #[test]
    fn submission_requires_auth_before_mail() {
        let mut session = Session::new(
            Arc::new(SessionConfig {
                auth_required: true,
                ..config()
            }),
            "127.0.0.1".parse().unwrap(),
            true,
        );
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "MAIL FROM:<a@b.test>", "530 5.7.0");
        let Action::Authenticate(credentials) = session.handle_line(b"AUTH PLAIN AGFwcABzZWNyZXQ=")
        else {
            panic!("PLAIN with initial response asks for a check");
        };
        assert_eq!(credentials.username, "app");
        assert_eq!(credentials.password, "secret");
        expect_action(session.auth_result(Some("app".into())), "235 2.7.0");
        assert_eq!(session.protocol(), "ESMTPSA");
        expect(&mut session, "MAIL FROM:<a@b.test>", "250");
        // Authenticated sessions may relay anywhere.
        let mut stranger_authenticated =
            Session::new(Arc::new(config()), "192.0.2.9".parse().unwrap(), true);
        expect(&mut stranger_authenticated, "EHLO c.test", "250");
        assert!(matches!(
            stranger_authenticated.handle_line(b"AUTH PLAIN AGFwcABzZWNyZXQ="),
            Action::Authenticate(_)
        ));
        stranger_authenticated.auth_result(Some("app".into()));
        expect(&mut stranger_authenticated, "MAIL FROM:<a@b.test>", "250");
        expect(
            &mut stranger_authenticated,
            "RCPT TO:<x@anywhere.test>",
            "250",
        );
    }

    #[test]
    fn auth_after_helo_gets_503() {
        // RFC 4954 is a service extension: not in effect after HELO.
        let mut session = Session::new(Arc::new(config()), "192.0.2.9".parse().unwrap(), true);
        expect(&mut session, "HELO c.test", "250");
        expect(&mut session, "AUTH PLAIN AGFwcABzZWNyZXQ=", "503 5.5.1");
        expect(&mut session, "AUTH LOGIN", "503 5.5.1");
        expect(&mut session, "EHLO c.test", "250");
        assert!(matches!(
            session.handle_line(b"AUTH PLAIN AGFwcABzZWNyZXQ="),
            Action::Authenticate(_)
        ));
    }

    fn expect_action(action: Action, start: &str) {
        let reply = wire(&action);
        assert!(
            reply.starts_with(start),
            "expected {start:?}, got {reply:?}"
        );
    }

    #[test]
    fn auth_needs_tls() {
        let mut session = relay_session();
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "AUTH PLAIN AGFwcABzZWNyZXQ=", "538 5.7.11");
    }

    #[test]
    fn auth_login_exchange_and_failures_close() {
        let mut session = Session::new(Arc::new(config()), "127.0.0.1".parse().unwrap(), true);
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "AUTH LOGIN", "334 VXNlcm5hbWU6");
        assert!(!session.is_idle());
        expect(&mut session, "YXBw", "334 UGFzc3dvcmQ6");
        assert_eq!(
            session.handle_line(b"d3Jvbmc="),
            Action::Authenticate(Credentials {
                username: "app".into(),
                password: "wrong".into()
            })
        );
        expect_action(session.auth_result(None), "535 5.7.8");
        // PLAIN without initial response, then a cancel.
        expect(&mut session, "AUTH PLAIN", "334 ");
        expect(&mut session, "*", "501");
        expect(&mut session, "AUTH LOGIN YXBw", "334 UGFzc3dvcmQ6");
        assert!(matches!(
            session.handle_line(b"d3Jvbmc="),
            Action::Authenticate(_)
        ));
        let Action::Close(replies) = session.auth_result(None) else {
            panic!("the second failure closes");
        };
        assert_eq!(replies[0].code(), 535);
        assert_eq!(replies[1].code(), 421);
    }

    #[test]
    fn an_over_long_auth_line_gets_500_5_5_6_and_ends_the_exchange() {
        let mut session = Session::new(Arc::new(config()), "127.0.0.1".parse().unwrap(), true);
        expect(&mut session, "EHLO c.test", "250");
        expect(&mut session, "AUTH LOGIN", "334 VXNlcm5hbWU6");
        assert!(session.in_auth_exchange());
        // RFC 4954 §6.
        expect_action(
            session.line_too_long(LineKind::Auth),
            "500 5.5.6 Authentication Exchange line is too long",
        );
        assert!(!session.in_auth_exchange());
        assert!(session.is_idle());
        expect(&mut session, "NOOP", "250");
        expect_action(
            session.line_too_long(LineKind::Command),
            "500 5.5.2 Error: line too long",
        );
    }

    #[test]
    fn every_reply_but_greeting_ehlo_and_intermediate_has_enhanced_code() {
        let mut session = relay_session();
        expect(&mut session, "HELO c.test", "250 mx.test");
        for line in [
            "NOOP",
            "RSET",
            "VRFY x",
            "HELP",
            "EXPN x",
            "FROB",
            "MAIL FROM:<a@b.test>",
            "RCPT TO:<c@d.test>",
            "QUIT",
        ] {
            let reply = send(&mut session, line);
            let status = reply[4..].split(' ').next().unwrap();
            assert!(
                status.split('.').count() == 3
                    && status.split('.').all(|n| n.parse::<u16>().is_ok()),
                "{line}: {reply}"
            );
        }
    }

    #[test]
    fn data_outcomes_map_to_replies() {
        let mut session = relay_session();
        expect_action(
            session.message_finished(MessageOutcome::Refused(Refusal::TooBig)),
            "552 5.3.4",
        );
        expect_action(
            session.message_finished(MessageOutcome::Refused(Refusal::BareLineEnding)),
            "550 5.5.2",
        );
        expect_action(
            session.message_finished(MessageOutcome::StorageFailed),
            "451 4.3.0",
        );
        expect_action(
            session.message_finished(MessageOutcome::Refused(Refusal::TooManyHops)),
            "554 5.4.6",
        );
    }
}

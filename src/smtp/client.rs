//! The outbound SMTP client as pure state machines: every rule of sending
//! mail to another server, and none of the I/O. A pump (`delivery::client`
//! on tokio, `sluice sendmail` on blocking sockets) writes what a machine
//! appends to its output buffer, reads one reply when told to, and hands it
//! back; the machine says what comes next.
//!
//! - [`Opening`]: greeting, EHLO, and HELO when EHLO is refused.
//! - [`starttls`] / [`Auth`]: STARTTLS and AUTH PLAIN/LOGIN.
//! - [`Transaction`]: MAIL, RCPT, DATA, the body, RSET; at the end a
//!   [`Verdict`] per recipient, or where the session broke off.
//! - [`disposition`]: the one place that decides whether a reply means
//!   sent, deferred or failed.
//!
//! The choices made, with their RFC:
//! - RFC 5321 §3.2: EHLO refused with 500, 501, 502, 504 or 550 means the
//!   server may not know EHLO: HELO follows on the same session, with no
//!   extensions.
//! - RFC 2920: with PIPELINING, MAIL, every RCPT and DATA go out in one
//!   write; the replies are then read in order. Without it, one command at
//!   a time, and DATA only when a recipient was accepted.
//! - RFC 5321 §3.8: a 421 at any point means the server is closing the
//!   session; nothing more is read or sent.
//! - RFC 2920 §3.1: after a refused MAIL the pipelined RCPT and DATA
//!   replies are read and ignored: they say nothing about the recipients.
//! - RFC 5321 §4.3.2: DATA is answered 354, 4xx or 5xx. A 2xx there is a
//!   broken server: the transaction is broken off and nothing counts as
//!   delivered, since no body was sent.
//! - RFC 2920 §3.1: when no recipient was accepted but the server still
//!   answers a pipelined DATA with 354, an empty body (a lone ".") ends it.
//! - RFC 5321 §4.1.1.5: a transaction that ended without a body is reset
//!   with RSET, so the session is clean for the next one.
//! - RFC 5321 §4.5.3.1.10: a 452 to RCPT (with or without an enhanced
//!   code) means too many recipients for one transaction; so does a 552,
//!   which RFC 821 wrongly listed for it and which is therefore treated as
//!   temporary. Those recipients (and, unpipelined, the ones not sent yet)
//!   go in a follow-up transaction on the same session right after this
//!   one, as long as each transaction settles at least one recipient.
//! - A refusal of the session itself (greeting, EHLO, HELO, STARTTLS, AUTH)
//!   says nothing about the recipients: it defers them, so that another
//!   host can be tried.

use std::fmt;
use std::io::Write as _;

use base64::Engine as _;

use sluice_queue::{MessageDsn, RecipientDsn};

use super::dsn_params;
use super::ehlo::Capabilities;
use super::reply::{EnhancedCode, Reply};

/// Where in the session something happened: which command was being sent
/// or answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Waiting for the 220 greeting (RFC 5321 §4.3.1).
    Greeting,
    /// EHLO and its reply.
    Ehlo,
    /// HELO and its reply, after EHLO was refused.
    Helo,
    /// STARTTLS and its reply (RFC 3207).
    StartTls,
    /// AUTH and its exchanges (RFC 4954).
    Auth,
    /// MAIL FROM (pipelined: MAIL, RCPT and DATA in one write).
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command and its 354.
    Data,
    /// Sending the body and the final dot.
    Body,
    /// Waiting for the reply to the final dot (the data timeout).
    EndOfData,
    /// RSET after a transaction that sent no body.
    Rset,
    /// QUIT.
    Quit,
}

impl Stage {
    /// True for the commands that open a session rather than carry mail: a
    /// refusal there is about us, not about any recipient.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Stage::Greeting | Stage::Ehlo | Stage::Helo | Stage::StartTls | Stage::Auth
        )
    }
}

impl fmt::Display for Stage {
    /// The command's name, or what is being exchanged: "MAIL", "the
    /// greeting", "the end of data".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "the greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Body => "the body",
            Stage::EndOfData => "the end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// What a reply means for the recipients it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Accepted by the next hop (2xx at the end of data).
    Sent,
    /// Try again later (4xx, connection, DNS or TLS trouble).
    Deferred,
    /// Permanent failure (5xx, null MX, NXDOMAIN, too big, ...).
    Failed,
}

/// The one place that decides sent, deferred or failed from a reply at
/// `stage`. Only a 2xx to the final dot delivers; 5xx is permanent except a
/// 552 to RCPT (RFC 5321 §4.5.3.1.10) and any refusal of the session
/// itself; everything else (4xx, 421, a reply that makes no sense) defers.
pub fn disposition(stage: Stage, reply: &Reply) -> Disposition {
    if reply.is_positive() && stage == Stage::EndOfData {
        Disposition::Sent
    } else if reply.is_permanent() && !stage.is_session() && !is_too_many(stage, reply) {
        Disposition::Failed
    } else {
        Disposition::Deferred
    }
}

/// RFC 5321 §4.5.3.1.10: 452 (and the 552 of RFC 821) to RCPT means "too
/// many recipients in this transaction".
fn is_too_many(stage: Stage, reply: &Reply) -> bool {
    stage == Stage::Rcpt && matches!(reply.code(), 452 | 552)
}

/// One recipient's verdict from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Sent, deferred or failed.
    pub disposition: Disposition,
    /// Which reply decided it.
    pub stage: Stage,
    /// The reply itself.
    pub reply: Reply,
}

impl Verdict {
    fn new(stage: Stage, reply: Reply) -> Verdict {
        Verdict {
            disposition: disposition(stage, &reply),
            stage,
            reply,
        }
    }

    /// The RFC 3463 status to record: the reply's, in the class of the
    /// disposition (a 552 taken as temporary reports 4.x.y).
    pub fn status(&self) -> EnhancedCode {
        let status = self.reply.status();
        match self.disposition {
            Disposition::Sent => status,
            Disposition::Deferred => status.with_class(4),
            Disposition::Failed => status.with_class(5),
        }
    }
}

/// A reply that ended a session command (greeting, EHLO, STARTTLS, AUTH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Where.
    pub stage: Stage,
    /// What the server said.
    pub reply: Reply,
}

/// What the pump does next while a session opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpeningStep {
    /// Write what was appended to the output (if anything), then read one
    /// reply (command timeout) and pass it to [`Opening::receive`].
    Read(Stage),
    /// The session is open; EHLO (or HELO) offered these extensions.
    Ready(Capabilities),
    /// The server will not talk to us; QUIT and close.
    Refused(Refusal),
}

/// Opening a session: the 220 greeting, EHLO, and HELO when EHLO is refused
/// (RFC 5321 §3.2, §4.1.1.1).
#[derive(Debug, Clone)]
pub struct Opening {
    hostname: String,
    stage: Stage,
    /// LMTP (RFC 2033): LHLO instead of EHLO, and no HELO fallback.
    lmtp: bool,
}

impl Opening {
    /// A session whose greeting has not been read yet: the first step is
    /// [`OpeningStep::Read`] of the greeting.
    pub fn new(hostname: &str) -> (Opening, OpeningStep) {
        let opening = Opening {
            hostname: hostname.to_string(),
            stage: Stage::Greeting,
            lmtp: false,
        };
        (opening, OpeningStep::Read(Stage::Greeting))
    }

    /// Like [`Opening::new`] for an LMTP server (RFC 2033 §4.1): LHLO
    /// follows the greeting, a refused LHLO ends the session (LMTP has no
    /// HELO), and the capabilities say `lmtp`.
    pub fn lmtp(hostname: &str) -> (Opening, OpeningStep) {
        let (mut opening, step) = Opening::new(hostname);
        opening.lmtp = true;
        (opening, step)
    }

    /// EHLO again after the TLS handshake (RFC 3207 §4.2: everything learned
    /// before TLS is forgotten); EHLO is appended to `out`.
    pub fn after_starttls(hostname: &str, out: &mut Vec<u8>) -> (Opening, OpeningStep) {
        Opening::after_starttls_as(hostname, false, out)
    }

    /// [`Opening::after_starttls`], with LHLO when `lmtp`.
    pub fn after_starttls_as(
        hostname: &str,
        lmtp: bool,
        out: &mut Vec<u8>,
    ) -> (Opening, OpeningStep) {
        let opening = Opening {
            hostname: hostname.to_string(),
            stage: Stage::Ehlo,
            lmtp,
        };
        opening.write_hello(out);
        (opening, OpeningStep::Read(Stage::Ehlo))
    }

    /// EHLO, or LHLO for LMTP (RFC 2033 §4.1).
    fn write_hello(&self, out: &mut Vec<u8>) {
        let verb = if self.lmtp { "LHLO" } else { "EHLO" };
        let _ = write!(out, "{verb} {}\r\n", self.hostname);
    }

    /// Where the opening is (for naming an I/O failure).
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Takes the reply the last step asked for; appends the next command.
    pub fn receive(&mut self, reply: Reply, out: &mut Vec<u8>) -> OpeningStep {
        match self.stage {
            Stage::Greeting if reply.code() == 220 => {
                self.stage = Stage::Ehlo;
                self.write_hello(out);
                OpeningStep::Read(Stage::Ehlo)
            }
            Stage::Ehlo if reply.is_positive() => OpeningStep::Ready(Capabilities {
                lmtp: self.lmtp,
                ..Capabilities::from_ehlo(&reply)
            }),
            Stage::Ehlo if !self.lmtp && matches!(reply.code(), 500 | 501 | 502 | 504 | 550) => {
                self.stage = Stage::Helo;
                let _ = write!(out, "HELO {}\r\n", self.hostname);
                OpeningStep::Read(Stage::Helo)
            }
            Stage::Helo if reply.is_positive() => OpeningStep::Ready(Capabilities::default()),
            stage => OpeningStep::Refused(Refusal { stage, reply }),
        }
    }
}

/// Appends STARTTLS (RFC 3207 §4); read its reply with [`Stage::StartTls`]
/// and check it with [`starttls_reply`].
pub fn starttls(out: &mut Vec<u8>) {
    out.extend_from_slice(b"STARTTLS\r\n");
}

/// `Ok` when the server is ready for the handshake (220). The pump must
/// also check that nothing more arrived after the 220 (RFC 3207 §4.2:
/// plaintext there is an injection attempt).
pub fn starttls_reply(reply: Reply) -> Result<(), Refusal> {
    if reply.code() == 220 {
        Ok(())
    } else {
        Err(Refusal {
            stage: Stage::StartTls,
            reply,
        })
    }
}

/// Appends QUIT (RFC 5321 §4.1.1.10); its reply is worth a short wait only.
pub fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

/// What the pump does next during AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Write the output, read one reply, pass it to [`Auth::receive`].
    Read,
    /// Authenticated (235).
    Done,
    /// Refused; the session should not carry mail.
    Refused(Refusal),
}

/// AUTH PLAIN when offered, else AUTH LOGIN (RFC 4954, RFC 4616). Only
/// ever run under TLS: the pump checks that.
#[derive(Debug, Clone)]
pub struct Auth {
    /// For LOGIN, the base64 lines still to send (password last).
    pending: Vec<String>,
}

impl Auth {
    /// Appends the first AUTH command; `None` when the server offers
    /// neither PLAIN nor LOGIN.
    pub fn start(
        capabilities: &Capabilities,
        username: &str,
        password: &str,
        out: &mut Vec<u8>,
    ) -> Option<(Auth, AuthStep)> {
        let base64 = &base64::engine::general_purpose::STANDARD;
        let pending = if capabilities.offers_auth("PLAIN") {
            // RFC 4616: `\0user\0password` as the initial response.
            let mut token = Vec::with_capacity(username.len() + password.len() + 2);
            token.push(0);
            token.extend_from_slice(username.as_bytes());
            token.push(0);
            token.extend_from_slice(password.as_bytes());
            let _ = write!(out, "AUTH PLAIN {}\r\n", base64.encode(token));
            Vec::new()
        } else if capabilities.offers_auth("LOGIN") {
            out.extend_from_slice(b"AUTH LOGIN\r\n");
            vec![base64.encode(password), base64.encode(username)]
        } else {
            return None;
        };
        Some((Auth { pending }, AuthStep::Read))
    }

    /// Takes the reply the last step asked for.
    pub fn receive(&mut self, reply: Reply, out: &mut Vec<u8>) -> AuthStep {
        if reply.code() == 334 {
            if let Some(line) = self.pending.pop() {
                let _ = write!(out, "{line}\r\n");
                return AuthStep::Read;
            }
        } else if reply.code() == 235 && self.pending.is_empty() {
            return AuthStep::Done;
        }
        AuthStep::Refused(Refusal {
            stage: Stage::Auth,
            reply,
        })
    }
}

/// One message's envelope as a transaction sends it.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Reverse path; empty for the null sender.
    pub sender: &'a str,
    /// Forward paths, one RCPT each, in this order.
    pub recipients: &'a [String],
    /// Body size, for the SIZE parameter (RFC 1870); `None` when not
    /// known in advance (a streamed submission), and then none is sent.
    pub size: Option<u64>,
    /// Send BODY=8BITMIME when the server offers it (RFC 6152).
    pub eight_bit: bool,
    /// Send SMTPUTF8 (RFC 6531) when the server offers it; the caller
    /// checked beforehand whether the message can go without it.
    pub smtputf8: bool,
    /// RET and ENVID to carry on when the server offers DSN (RFC 3461
    /// §6.2.1); `None` when the sender gave neither.
    pub message_dsn: Option<&'a MessageDsn>,
    /// NOTIFY and ORCPT to carry on, one entry per recipient in the order
    /// of `recipients`; empty when no recipient has any.
    pub recipient_dsn: &'a [Option<RecipientDsn>],
    /// Send the body with BDAT when the server offers CHUNKING (RFC 3030;
    /// `delivery.chunking`).
    pub chunking: bool,
    /// Send the REQUIRETLS MAIL parameter (RFC 8689 §4.1); the caller
    /// checked that the server offers it and that the session is under
    /// authenticated TLS.
    pub requiretls: bool,
}

/// What the pump does next during a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write what was appended to the output (if anything), then read one
    /// reply and pass it to [`Transaction::receive`]. At
    /// [`Stage::EndOfData`] the data timeout applies, else the command
    /// timeout.
    Read(Stage),
    /// Write the output (if anything), then the body, dot-stuffed, with the
    /// final dot; then call [`Transaction::body_sent`]. A body that cannot
    /// be read must never get its final dot: call
    /// [`Transaction::interrupted`] and close the connection.
    SendBody,
    /// BDAT (RFC 3030): write the output (if anything); then, for the next
    /// chunk of the body as stored, call [`Transaction::chunk`] with its
    /// length and whether it is the last one (an empty last chunk is
    /// fine), write the command it appends followed by the chunk's bytes
    /// as they are, and read the reply of the stage it returns. A body that
    /// cannot be read must never get its LAST chunk: call
    /// [`Transaction::interrupted`] and close the connection.
    SendChunk,
    /// Finished: nothing more to send for this message.
    Done(Outcome),
}

/// How a transaction broke off before every recipient had a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenOff {
    /// Where.
    pub stage: Stage,
    /// The reply that ended it: a 421 (RFC 5321 §3.8) or one that makes no
    /// sense there (a 2xx to DATA). `None` when the pump's I/O failed.
    pub reply: Option<Reply>,
    /// True when the final dot was (being) sent: the server may hold the
    /// message, so the unsettled recipients must not go to another host
    /// in this attempt (RFC 5321 §6.1).
    pub data_sent: bool,
    /// True when the server cannot have accepted anything and no recipient
    /// has a verdict: on a connection taken from the pool this is a stale
    /// session, and the whole transaction may be replayed on a fresh one.
    pub before_transaction: bool,
}

/// The end of a transaction (and its follow-ups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One entry per recipient, in envelope order; `None` when the session
    /// broke off before the server said anything that settles it.
    pub verdicts: Vec<Option<Verdict>>,
    /// Set when the session broke off (then some verdicts may be `None`).
    pub broken: Option<BrokenOff>,
    /// True when the session is clean and may carry another transaction.
    pub reusable: bool,
    /// Transactions that reached the reply to their final dot.
    pub completed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the reply to MAIL.
    Mail,
    /// Waiting for the reply to the RCPT of `round[next]`.
    Rcpt,
    /// Waiting for the reply to DATA.
    Data,
    /// Pipelined MAIL was refused: `left` RCPT/DATA replies still to read
    /// and ignore (RFC 2920 §3.1).
    Draining { left: usize },
    /// DATA got 354 with nobody accepted; "." sent, waiting for its reply.
    EmptyData,
    /// The pump is sending the body.
    Body,
    /// Waiting for the reply to a BDAT chunk that is not the last one.
    Chunk,
    /// Waiting for the reply to the final dot (or the LAST chunk); `got`
    /// replies read so far (LMTP: one per accepted recipient).
    EndOfData { got: usize },
    /// Waiting for the reply to RSET.
    Rset,
    /// Finished.
    Done,
}

/// One message to one server: MAIL, RCPT, DATA, the body, and follow-up
/// transactions for recipients over the server's limit.
#[derive(Debug)]
pub struct Transaction<'a> {
    envelope: Envelope<'a>,
    pipelining: bool,
    size_parameter: bool,
    eight_bit_parameter: bool,
    smtputf8_parameter: bool,
    /// The server offers DSN: RET, ENVID, NOTIFY and ORCPT go on.
    dsn_parameters: bool,
    /// BDAT instead of DATA (RFC 3030).
    chunking: bool,
    /// LMTP (RFC 2033 §4.2): one reply per accepted recipient after the
    /// data.
    lmtp: bool,
    state: State,
    verdicts: Vec<Option<Verdict>>,
    /// The recipients (indices) of the current transaction.
    round: Vec<usize>,
    /// Next position in `round` whose RCPT reply is awaited.
    next: usize,
    /// Accepted in the current transaction.
    accepted: Vec<usize>,
    /// Refused as "too many" in the current transaction, with the reply.
    over: Vec<(usize, Reply)>,
    /// True once the current transaction settled any recipient.
    progress: bool,
    first_round: bool,
    completed: u32,
}

impl<'a> Transaction<'a> {
    /// A transaction for `envelope` on a session offering `capabilities`;
    /// the first commands are appended to `out`.
    pub fn start(
        envelope: Envelope<'a>,
        capabilities: &Capabilities,
        out: &mut Vec<u8>,
    ) -> (Transaction<'a>, Step) {
        let count = envelope.recipients.len();
        let mut transaction = Transaction {
            envelope,
            pipelining: capabilities.pipelining,
            size_parameter: capabilities.size.is_some() && envelope.size.is_some(),
            eight_bit_parameter: envelope.eight_bit && capabilities.eight_bit_mime,
            smtputf8_parameter: envelope.smtputf8 && capabilities.smtputf8,
            dsn_parameters: capabilities.dsn,
            chunking: envelope.chunking && capabilities.chunking,
            lmtp: capabilities.lmtp,
            state: State::Mail,
            verdicts: vec![None; count],
            round: (0..count).collect(),
            next: 0,
            accepted: Vec::with_capacity(count),
            over: Vec::new(),
            progress: false,
            first_round: true,
            completed: 0,
        };
        if count == 0 {
            // Nobody to send to: no transaction at all.
            let outcome = transaction.outcome(None, true);
            return (transaction, Step::Done(outcome));
        }
        let step = transaction.begin(out);
        (transaction, step)
    }

    /// The verdicts so far, in envelope order (a pump that wants all
    /// recipients or none can look at them at [`Step::SendBody`], and
    /// break off instead of sending the body).
    pub fn verdicts(&self) -> &[Option<Verdict>] {
        &self.verdicts
    }

    /// Where the transaction is (for naming an I/O failure).
    pub fn stage(&self) -> Stage {
        match self.state {
            State::Mail => Stage::Mail,
            State::Rcpt => Stage::Rcpt,
            State::Data => Stage::Data,
            State::EmptyData => Stage::EndOfData,
            State::Draining { left, .. } if left > 1 => Stage::Rcpt,
            State::Draining { .. } => Stage::Data,
            State::Body | State::Chunk => Stage::Body,
            State::EndOfData { .. } => Stage::EndOfData,
            State::Rset | State::Done => Stage::Rset,
        }
    }

    /// MAIL for the current round; pipelined, its RCPTs and DATA too.
    fn begin(&mut self, out: &mut Vec<u8>) -> Step {
        self.state = State::Mail;
        self.next = 0;
        self.accepted.clear();
        self.progress = false;
        let _ = write!(out, "MAIL FROM:<{}>", self.envelope.sender);
        if let Some(size) = self.envelope.size.filter(|_| self.size_parameter) {
            let _ = write!(out, " SIZE={size}");
        }
        if self.eight_bit_parameter {
            out.extend_from_slice(b" BODY=8BITMIME");
        }
        if self.smtputf8_parameter {
            out.extend_from_slice(b" SMTPUTF8");
        }
        // RFC 8689 §4.1: the caller decided the session qualifies.
        if self.envelope.requiretls {
            out.extend_from_slice(b" REQUIRETLS");
        }
        // RFC 3461 §6.2.1: to a server that offers DSN, the sender's
        // parameters go on unchanged; to one that does not, none are sent.
        if self.dsn_parameters
            && let Some(dsn) = self.envelope.message_dsn
        {
            out.extend_from_slice(
                dsn_params::mail_parameters(dsn.ret, dsn.envid.as_deref()).as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        if self.pipelining {
            for position in 0..self.round.len() {
                self.write_rcpt(position, out);
            }
            // RFC 3030 §4.2: BDAT needs no 354 and carries the body at
            // once, so it waits for the RCPT replies instead of being
            // pipelined after them (no body goes to a server that took
            // nobody).
            if !self.chunking {
                out.extend_from_slice(b"DATA\r\n");
            }
        }
        Step::Read(Stage::Mail)
    }

    fn write_rcpt(&self, position: usize, out: &mut Vec<u8>) {
        let index = self.round[position];
        let recipient = &self.envelope.recipients[index];
        let _ = write!(out, "RCPT TO:<{recipient}>");
        if self.dsn_parameters
            && let Some(Some(dsn)) = self.envelope.recipient_dsn.get(index)
        {
            out.extend_from_slice(
                dsn_params::rcpt_parameters(dsn.notify, dsn.orcpt.as_ref()).as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Takes the reply the last [`Step::Read`] asked for; appends what is
    /// to be sent next to `out`.
    pub fn receive(&mut self, reply: Reply, out: &mut Vec<u8>) -> Step {
        // RFC 5321 §3.8: the server is closing the session.
        if reply.code() == 421 {
            return match self.state {
                State::EndOfData { got } => {
                    // LMTP: those who got their reply keep it.
                    self.settle_accepted_from(got, Stage::EndOfData, &reply);
                    self.completed += 1;
                    self.finish(false)
                }
                State::Draining { .. } | State::EmptyData | State::Rset | State::Done => {
                    self.finish(false)
                }
                // Every recipient has its RCPT verdict already.
                State::Data if self.accepted.is_empty() => self.finish(false),
                _ => self.broken_off(Some(reply)),
            };
        }
        match self.state {
            State::Mail => self.mail_reply(reply, out),
            State::Rcpt => self.rcpt_reply(reply, out),
            State::Data => self.data_reply(reply, out),
            State::Draining { left, .. } => {
                let left = left - 1;
                if left > 0 {
                    self.state = State::Draining { left };
                    Step::Read(self.stage())
                } else if reply.code() == 354 && !self.chunking {
                    self.empty_data(out)
                } else {
                    self.reset(out)
                }
            }
            State::EmptyData => self.reset(out),
            State::EndOfData { got } => {
                if reply.is_intermediate() {
                    self.settle_accepted_from(got, Stage::EndOfData, &reply);
                    self.completed += 1;
                    return self.finish(false);
                }
                if self.lmtp && got + 1 < self.accepted.len() {
                    // RFC 2033 §4.2: one reply per accepted recipient, in
                    // RCPT order; each settles its own recipient.
                    let index = self.accepted[got];
                    self.verdicts[index] = Some(Verdict::new(Stage::EndOfData, reply));
                    self.state = State::EndOfData { got: got + 1 };
                    return Step::Read(Stage::EndOfData);
                }
                self.settle_accepted_from(got, Stage::EndOfData, &reply);
                self.completed += 1;
                self.next_round(out)
            }
            State::Chunk => {
                if reply.is_positive() {
                    self.state = State::Body;
                    return Step::SendChunk;
                }
                if reply.is_intermediate() {
                    return self.broken_off(Some(reply));
                }
                // RFC 3030 §2: a refused chunk fails the transaction; no
                // more chunks go, and RSET clears it.
                self.settle_accepted(Stage::Data, &reply);
                self.reset(out)
            }
            State::Rset => {
                if reply.is_positive() {
                    self.next_round(out)
                } else {
                    self.finish(false)
                }
            }
            State::Body | State::Done => self.broken_off(Some(reply)),
        }
    }

    fn mail_reply(&mut self, reply: Reply, out: &mut Vec<u8>) -> Step {
        if reply.is_positive() {
            self.state = State::Rcpt;
            if !self.pipelining {
                self.write_rcpt(0, out);
            }
            return Step::Read(Stage::Rcpt);
        }
        if reply.is_intermediate() {
            return self.broken_off(Some(reply));
        }
        // Refused: it is every recipient's verdict.
        for &index in &self.round {
            self.verdicts[index] = Some(Verdict::new(Stage::Mail, reply.clone()));
        }
        // The follow-ups would meet the same refusal.
        self.over.clear();
        if self.pipelining {
            // Every RCPT, and DATA unless BDAT waits for them.
            let data = usize::from(!self.chunking);
            self.state = State::Draining {
                left: self.round.len() + data,
            };
            Step::Read(self.stage())
        } else {
            self.reset(out)
        }
    }

    fn rcpt_reply(&mut self, reply: Reply, out: &mut Vec<u8>) -> Step {
        let index = self.round[self.next];
        self.next += 1;
        if reply.is_positive() {
            self.accepted.push(index);
            self.progress = true;
        } else if reply.is_intermediate() {
            return self.broken_off(Some(reply));
        } else if is_too_many(Stage::Rcpt, &reply) {
            if !self.pipelining {
                // The server will refuse the rest too: they wait for the
                // follow-up instead of being sent now.
                for &later in &self.round[self.next..] {
                    self.over.push((later, reply.clone()));
                }
                self.next = self.round.len();
            }
            self.over.push((index, reply));
            self.over.sort_by_key(|(index, _)| *index);
        } else {
            self.verdicts[index] = Some(Verdict::new(Stage::Rcpt, reply));
            self.progress = true;
        }
        if self.next < self.round.len() {
            if !self.pipelining {
                self.write_rcpt(self.next, out);
            }
            return Step::Read(Stage::Rcpt);
        }
        if self.chunking {
            if self.accepted.is_empty() {
                return self.reset(out);
            }
            self.state = State::Body;
            Step::SendChunk
        } else if self.pipelining {
            self.state = State::Data;
            Step::Read(Stage::Data)
        } else if self.accepted.is_empty() {
            self.reset(out)
        } else {
            self.state = State::Data;
            out.extend_from_slice(b"DATA\r\n");
            Step::Read(Stage::Data)
        }
    }

    fn data_reply(&mut self, reply: Reply, out: &mut Vec<u8>) -> Step {
        if self.accepted.is_empty() {
            // RFC 5321 §4.1.1.4: DATA after no valid recipient should be
            // refused; pipelining made us send it anyway.
            return if reply.code() == 354 {
                self.empty_data(out)
            } else {
                self.reset(out)
            };
        }
        if reply.code() == 354 {
            self.state = State::Body;
            return Step::SendBody;
        }
        if reply.is_transient() || reply.is_permanent() {
            self.settle_accepted(Stage::Data, &reply);
            return self.reset(out);
        }
        // RFC 5321 §4.3.2: a 2xx (or another 3xx) to DATA is no verdict; no
        // body was sent, so nothing was delivered.
        self.broken_off(Some(reply))
    }

    /// Called once the body and its final dot were written.
    pub fn body_sent(&mut self) -> Step {
        self.state = State::EndOfData { got: 0 };
        Step::Read(Stage::EndOfData)
    }

    /// At [`Step::SendChunk`]: appends `BDAT <size>` (with `LAST` for the
    /// last chunk, RFC 3030 §2) for the next `size` bytes of the body; the
    /// pump writes them right after it, unchanged, then reads the reply of
    /// the stage returned: [`Stage::Body`] for a chunk (command timeout),
    /// [`Stage::EndOfData`] for the last (data timeout).
    pub fn chunk(&mut self, size: usize, last: bool, out: &mut Vec<u8>) -> Stage {
        if last {
            let _ = write!(out, "BDAT {size} LAST\r\n");
            self.state = State::EndOfData { got: 0 };
            Stage::EndOfData
        } else {
            let _ = write!(out, "BDAT {size}\r\n");
            self.state = State::Chunk;
            Stage::Body
        }
    }

    /// The pump's I/O failed (connection lost, timeout, unreadable reply,
    /// unreadable body) at [`Transaction::stage`]. The session is in an
    /// unknown state and must be closed.
    pub fn interrupted(&mut self) -> Outcome {
        match self.state {
            // The verdicts are known already; only the session is lost.
            State::Draining { .. } | State::EmptyData | State::Rset | State::Done => {
                self.outcome(None, false)
            }
            _ => match self.broken_off(None) {
                Step::Done(outcome) => outcome,
                _ => unreachable!("broken_off always finishes"),
            },
        }
    }

    fn empty_data(&mut self, out: &mut Vec<u8>) -> Step {
        self.state = State::EmptyData;
        out.extend_from_slice(b".\r\n");
        // The reply to a final dot, empty or not, may take the data timeout.
        Step::Read(Stage::EndOfData)
    }

    fn reset(&mut self, out: &mut Vec<u8>) -> Step {
        self.state = State::Rset;
        out.extend_from_slice(b"RSET\r\n");
        Step::Read(Stage::Rset)
    }

    fn settle_accepted(&mut self, stage: Stage, reply: &Reply) {
        self.settle_accepted_from(0, stage, reply);
    }

    /// Settles the accepted recipients from position `from` on (LMTP: the
    /// ones before it had their own reply).
    fn settle_accepted_from(&mut self, from: usize, stage: Stage, reply: &Reply) {
        for &index in &self.accepted[from.min(self.accepted.len())..] {
            self.verdicts[index] = Some(Verdict::new(stage, reply.clone()));
        }
        self.progress = true;
    }

    /// After a clean end of a transaction: the follow-up for recipients
    /// over the limit, or the end.
    fn next_round(&mut self, out: &mut Vec<u8>) -> Step {
        if self.over.is_empty() {
            return self.finish(true);
        }
        if !self.progress {
            // Nothing got through: the server takes no recipient at all now.
            return self.finish(true);
        }
        self.round.clear();
        for (index, _) in self.over.drain(..) {
            self.round.push(index);
        }
        self.first_round = false;
        self.begin(out)
    }

    /// Ends the transaction; recipients still over the limit are deferred
    /// with the reply that refused them.
    fn finish(&mut self, reusable: bool) -> Step {
        Step::Done(self.outcome(None, reusable))
    }

    fn outcome(&mut self, broken: Option<BrokenOff>, reusable: bool) -> Outcome {
        for (index, reply) in self.over.drain(..) {
            self.verdicts[index] = Some(Verdict::new(Stage::Rcpt, reply));
        }
        self.state = State::Done;
        Outcome {
            verdicts: std::mem::take(&mut self.verdicts),
            broken,
            reusable,
            completed: self.completed,
        }
    }

    fn broken_off(&mut self, reply: Option<Reply>) -> Step {
        let stage = self.stage();
        // A BDAT chunk that is not the last cannot complete a message.
        let data_sent = match self.state {
            State::Body => !self.chunking,
            State::EndOfData { .. } => true,
            _ => false,
        };
        let nothing_settled = self.verdicts.iter().all(Option::is_none)
            && self.over.is_empty()
            && self.completed == 0;
        let before_transaction = self.first_round
            && nothing_settled
            && !data_sent
            && match &reply {
                None => stage == Stage::Mail,
                Some(reply) => reply.code() == 421,
            };
        let broken = BrokenOff {
            stage,
            reply,
            data_sent,
            before_transaction,
        };
        Step::Done(self.outcome(Some(broken), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::parse_reply;

    fn reply(text: &str) -> Reply {
        let wire = format!("{text}\r\n");
        parse_reply(wire.as_bytes())
            .expect("valid reply")
            .expect("complete reply")
            .0
    }

    fn capabilities(pipelining: bool) -> Capabilities {
        Capabilities {
            pipelining,
            size: Some(0),
            eight_bit_mime: true,
            ..Capabilities::default()
        }
    }

    /// Drives a transaction: each scripted reply answers the next read; the
    /// body is "sent" when asked. Returns the wire commands and the outcome.
    fn drive(pipelining: bool, recipients: &[&str], replies: &[&str]) -> (Vec<String>, Outcome) {
        let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
        let envelope = Envelope {
            sender: "s@origin.test",
            recipients: &recipients,
            size: Some(10),
            eight_bit: false,
            smtputf8: false,
            message_dsn: None,
            recipient_dsn: &[],
            chunking: false,
            requiretls: false,
        };
        let mut out = Vec::new();
        let mut wire = Vec::new();
        let (mut transaction, mut step) =
            Transaction::start(envelope, &capabilities(pipelining), &mut out);
        let mut replies = replies.iter();
        loop {
            if !out.is_empty() {
                wire.push(String::from_utf8(std::mem::take(&mut out)).unwrap());
            }
            step = match step {
                Step::Read(_) => match replies.next() {
                    Some(text) => transaction.receive(reply(text), &mut out),
                    None => Step::Done(transaction.interrupted()),
                },
                Step::SendBody => {
                    wire.push("<body>".into());
                    transaction.body_sent()
                }
                Step::SendChunk => unreachable!("chunking is off"),
                Step::Done(outcome) => {
                    assert!(replies.next().is_none(), "replies left over");
                    return (wire, outcome);
                }
            };
        }
    }

    /// Like `drive`, on a session offering `offered`, with BDAT asked for
    /// when `chunking`, the body given as `chunks`: a chunk's command and
    /// bytes show on the wire as one entry, DATA's body as "<body>".
    fn drive_on(
        offered: &Capabilities,
        chunking: bool,
        chunks: &[&[u8]],
        recipients: &[&str],
        replies: &[&str],
    ) -> (Vec<Vec<u8>>, Outcome) {
        let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
        let envelope = Envelope {
            sender: "s@origin.test",
            recipients: &recipients,
            size: Some(10),
            eight_bit: false,
            smtputf8: false,
            message_dsn: None,
            recipient_dsn: &[],
            chunking,
            requiretls: false,
        };
        let mut out = Vec::new();
        let mut wire = Vec::new();
        let (mut transaction, mut step) = Transaction::start(envelope, offered, &mut out);
        let mut replies = replies.iter();
        let mut pending: Vec<&[u8]> = Vec::new();
        loop {
            if !out.is_empty() {
                wire.push(std::mem::take(&mut out));
            }
            step = match step {
                Step::Read(_) => match replies.next() {
                    Some(text) => transaction.receive(reply(text), &mut out),
                    None => Step::Done(transaction.interrupted()),
                },
                Step::SendBody => {
                    wire.push(b"<body>".to_vec());
                    transaction.body_sent()
                }
                Step::SendChunk => {
                    if pending.is_empty() {
                        pending = chunks.iter().rev().copied().collect();
                    }
                    let chunk = pending.pop().unwrap_or_default();
                    let last = pending.is_empty();
                    transaction.chunk(chunk.len(), last, &mut out);
                    out.extend_from_slice(chunk);
                    wire.push(std::mem::take(&mut out));
                    match replies.next() {
                        Some(text) => transaction.receive(reply(text), &mut out),
                        None => Step::Done(transaction.interrupted()),
                    }
                }
                Step::Done(outcome) => {
                    assert!(replies.next().is_none(), "replies left over");
                    return (wire, outcome);
                }
            };
        }
    }

    fn lmtp(pipelining: bool) -> Capabilities {
        Capabilities {
            lmtp: true,
            ..capabilities(pipelining)
        }
    }

    fn chunking(pipelining: bool) -> Capabilities {
        Capabilities {
            chunking: true,
            ..capabilities(pipelining)
        }
    }

    fn text(wire: &[Vec<u8>]) -> Vec<String> {
        wire.iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect()
    }

    #[test]
    fn lmtp_gives_each_accepted_recipient_its_own_reply_after_the_data() {
        for pipelining in [true, false] {
            let (wire, outcome) = drive_on(
                &lmtp(pipelining),
                false,
                &[],
                &["a@d.test", "b@d.test", "c@d.test"],
                &[
                    "250 ok",
                    "250 ok",
                    "550 5.1.1 unknown",
                    "250 ok",
                    "354 go",
                    "250 2.0.0 a saved",
                    "452 4.2.2 c over quota",
                ],
            );
            assert_eq!(
                dispositions(&outcome),
                [Some(Sent), Some(Failed), Some(Deferred)],
                "{:?}",
                text(&wire)
            );
            let verdicts: Vec<_> = outcome.verdicts.iter().flatten().collect();
            assert_eq!(verdicts[0].reply.one_line(), "250 2.0.0 a saved");
            assert_eq!(verdicts[2].stage, Stage::EndOfData);
            assert_eq!(verdicts[2].status(), EnhancedCode(4, 2, 2));
            assert!(outcome.reusable && outcome.broken.is_none());
            assert_eq!(outcome.completed, 1);
        }
    }

    #[test]
    fn lmtp_421_among_the_replies_settles_only_the_rest() {
        let (_, outcome) = drive_on(
            &lmtp(true),
            false,
            &[],
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "250 ok",
                "250 ok",
                "354 go",
                "250 a",
                "421 4.3.0 bye",
            ],
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Deferred)]);
        assert!(!outcome.reusable);
    }

    #[test]
    fn lmtp_opening_says_lhlo_and_never_helo() {
        let (mut opening, _) = Opening::lmtp("me.test");
        let mut out = Vec::new();
        assert_eq!(
            opening.receive(reply("220 lmtp"), &mut out),
            OpeningStep::Read(Stage::Ehlo)
        );
        assert_eq!(out, b"LHLO me.test\r\n");
        let mut ready = opening.clone();
        match ready.receive(reply("250-lmtp\r\n250 CHUNKING"), &mut out) {
            OpeningStep::Ready(offered) => assert!(offered.lmtp && offered.chunking),
            other => panic!("{other:?}"),
        }
        out.clear();
        assert!(matches!(
            opening.receive(reply("500 what"), &mut out),
            OpeningStep::Refused(Refusal {
                stage: Stage::Ehlo,
                ..
            })
        ));
        assert!(out.is_empty(), "no HELO in LMTP");
        let mut out = Vec::new();
        Opening::after_starttls_as("me.test", true, &mut out);
        assert_eq!(out, b"LHLO me.test\r\n");
    }

    #[test]
    fn bdat_waits_for_the_rcpt_replies_and_sends_the_chunks_as_they_are() {
        let (wire, outcome) = drive_on(
            &chunking(true),
            true,
            &[b"a\r\n.b", b"\r\n"],
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "250 ok",
                "550 no",
                "250 2.0.0 chunk",
                "250 2.0.0 queued",
            ],
        );
        assert_eq!(
            text(&wire),
            [
                "MAIL FROM:<s@origin.test> SIZE=10\r\nRCPT TO:<a@d.test>\r\nRCPT TO:<b@d.test>\r\n",
                "BDAT 5\r\na\r\n.b",
                "BDAT 2 LAST\r\n\r\n",
            ]
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Failed)]);
        assert!(outcome.reusable);
    }

    #[test]
    fn a_refused_chunk_fails_the_transaction_and_resets() {
        let (wire, outcome) = drive_on(
            &chunking(false),
            true,
            &[b"one", b"two"],
            &["a@d.test"],
            &["250 ok", "250 ok", "552 5.3.4 too big", "250 reset"],
        );
        assert_eq!(
            text(&wire)[2..],
            ["BDAT 3\r\none".to_string(), "RSET\r\n".to_string()]
        );
        assert_eq!(dispositions(&outcome), [Some(Failed)]);
        assert_eq!(outcome.verdicts[0].as_ref().unwrap().stage, Stage::Data);
    }

    #[test]
    fn bdat_with_nobody_accepted_sends_no_chunk() {
        let (wire, outcome) = drive_on(
            &chunking(true),
            true,
            &[b"x"],
            &["a@d.test"],
            &["250 ok", "550 no", "250 reset"],
        );
        assert_eq!(text(&wire)[1], "RSET\r\n");
        assert_eq!(dispositions(&outcome), [Some(Failed)]);
        // A refused MAIL: only the RCPT replies are drained.
        let (wire, outcome) = drive_on(
            &chunking(true),
            true,
            &[b"x"],
            &["a@d.test"],
            &["451 later", "503 no mail", "250 reset"],
        );
        assert_eq!(text(&wire)[1], "RSET\r\n");
        assert_eq!(dispositions(&outcome), [Some(Deferred)]);
        // An empty body is one empty LAST chunk.
        let (wire, _) = drive_on(
            &chunking(true),
            true,
            &[],
            &["a@d.test"],
            &["250 ok", "250 ok", "250 queued"],
        );
        assert_eq!(text(&wire)[1], "BDAT 0 LAST\r\n");
    }

    #[test]
    fn bdat_is_not_used_unless_asked_for_and_offered() {
        let (wire, _) = drive_on(
            &capabilities(true),
            true,
            &[b"x"],
            &["a@d.test"],
            &["250 ok", "250 ok", "354 go", "250 queued"],
        );
        assert!(text(&wire)[0].ends_with("DATA\r\n"));
        let (wire, _) = drive_on(
            &chunking(true),
            false,
            &[b"x"],
            &["a@d.test"],
            &["250 ok", "250 ok", "354 go", "250 queued"],
        );
        assert_eq!(wire[1], b"<body>");
    }

    #[test]
    fn lmtp_with_bdat_reads_one_reply_per_recipient_after_last() {
        let offered = Capabilities {
            chunking: true,
            ..lmtp(true)
        };
        let (_, outcome) = drive_on(
            &offered,
            true,
            &[b"body\r\n"],
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "250 ok",
                "250 ok",
                "250 a saved",
                "451 4.2.0 b later",
            ],
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Deferred)]);
        assert!(outcome.reusable);
    }

    #[test]
    fn requiretls_goes_on_mail_when_asked() {
        let recipients = vec!["r@d.test".to_string()];
        let envelope = Envelope {
            sender: "s@o.test",
            recipients: &recipients,
            size: None,
            eight_bit: false,
            smtputf8: false,
            message_dsn: None,
            recipient_dsn: &[],
            chunking: false,
            requiretls: true,
        };
        let mut out = Vec::new();
        Transaction::start(envelope, &Capabilities::default(), &mut out);
        assert_eq!(out, b"MAIL FROM:<s@o.test> REQUIRETLS\r\n");
    }

    /// What a server receiving `wire` (BDAT commands and their bytes)
    /// stores: the chunks, concatenated.
    fn bdat_received(wire: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        for entry in wire.iter().filter(|entry| entry.starts_with(b"BDAT ")) {
            let end = entry.windows(2).position(|w| w == b"\r\n").unwrap();
            match crate::smtp::command::Command::parse(&entry[..end]).unwrap() {
                crate::smtp::command::Command::Bdat { size, .. } => {
                    let chunk = &entry[end + 2..];
                    assert_eq!(chunk.len() as u64, size);
                    body.extend_from_slice(chunk);
                }
                other => panic!("{other:?}"),
            }
        }
        body
    }

    proptest::proptest! {
        #[test]
        fn bdat_and_data_deliver_byte_identical_messages(
            lines in proptest::collection::vec("[.a-z \u{e9}]{0,12}", 0..20),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut body = Vec::new();
            for line in &lines {
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(body.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&body[start..cut]);
                start = cut;
            }
            chunks.push(&body[start..]);
            // BDAT: the chunks as they are, reassembled by the receiver.
            let (wire, outcome) = drive_on(
                &chunking(true),
                true,
                &chunks,
                &["a@d.test"],
                &[&["250 ok", "250 ok"][..], &vec!["250 ok"; chunks.len()][..]].concat(),
            );
            proptest::prop_assert_eq!(dispositions(&outcome), [Some(Sent)]);
            let by_bdat = bdat_received(&wire);
            // DATA: dot-stuffed in the same pieces, decoded by the inbound
            // decoder.
            let mut stuffed = Vec::new();
            let mut stuffer = crate::smtp::dot::DotStuffer::new();
            for chunk in &chunks {
                stuffer.encode(chunk, &mut stuffed);
            }
            stuffer.finish(&mut stuffed);
            let mut decoder = crate::smtp::data::DataDecoder::new(u64::MAX);
            let mut by_data = Vec::new();
            let used = decoder.decode(&stuffed, &mut by_data);
            proptest::prop_assert!(decoder.is_done() && decoder.problem().is_none());
            proptest::prop_assert_eq!(used, stuffed.len());
            proptest::prop_assert_eq!(&by_bdat, &body);
            proptest::prop_assert_eq!(&by_data, &body);
        }
    }

    fn dispositions(outcome: &Outcome) -> Vec<Option<Disposition>> {
        outcome
            .verdicts
            .iter()
            .map(|verdict| verdict.as_ref().map(|v| v.disposition))
            .collect()
    }

    use Disposition::{Deferred, Failed, Sent};

    #[test]
    fn pipelined_mail_rcpt_and_data_go_in_one_write() {
        let (wire, outcome) = drive(
            true,
            &["a@d.test", "b@d.test"],
            &[
                "250 2.1.0 ok",
                "250 2.1.5 ok",
                "250 2.1.5 ok",
                "354 go",
                "250 2.0.0 queued",
            ],
        );
        assert_eq!(
            wire,
            [
                "MAIL FROM:<s@origin.test> SIZE=10\r\nRCPT TO:<a@d.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n",
                "<body>"
            ]
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Sent)]);
        assert!(outcome.reusable && outcome.broken.is_none());
        assert_eq!(outcome.completed, 1);
    }

    #[test]
    fn unpipelined_commands_go_one_at_a_time() {
        let (wire, outcome) = drive(
            false,
            &["a@d.test", "b@d.test"],
            &["250 ok", "250 ok", "550 5.1.1 no", "354 go", "250 queued"],
        );
        assert_eq!(
            wire,
            [
                "MAIL FROM:<s@origin.test> SIZE=10\r\n",
                "RCPT TO:<a@d.test>\r\n",
                "RCPT TO:<b@d.test>\r\n",
                "DATA\r\n",
                "<body>"
            ]
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Failed)]);
        assert_eq!(outcome.verdicts[1].as_ref().unwrap().stage, Stage::Rcpt);
    }

    #[test]
    fn mixed_rcpt_verdicts_keep_their_own_replies() {
        let (_, outcome) = drive(
            true,
            &["a@d.test", "b@d.test", "c@d.test"],
            &[
                "250 ok",
                "250 ok",
                "450 4.2.1 later",
                "550 5.1.1 no",
                "354 go",
                "250 queued",
            ],
        );
        assert_eq!(
            dispositions(&outcome),
            [Some(Sent), Some(Deferred), Some(Failed)]
        );
        assert_eq!(
            outcome.verdicts[1].as_ref().unwrap().reply.one_line(),
            "450 4.2.1 later"
        );
    }

    #[test]
    fn refused_mail_drains_pipelined_replies_then_resets() {
        let (wire, outcome) = drive(
            true,
            &["a@d.test", "b@d.test"],
            &["550 5.7.1 no", "503 bad", "503 bad", "503 bad", "250 reset"],
        );
        assert_eq!(wire.last().unwrap(), "RSET\r\n");
        assert_eq!(dispositions(&outcome), [Some(Failed), Some(Failed)]);
        assert!(outcome.reusable);
        let (wire, outcome) = drive(false, &["a@d.test"], &["451 4.3.0 later", "250 reset"]);
        assert_eq!(wire, ["MAIL FROM:<s@origin.test> SIZE=10\r\n", "RSET\r\n"]);
        assert_eq!(dispositions(&outcome), [Some(Deferred)]);
    }

    #[test]
    fn a_354_after_refused_mail_gets_an_empty_body() {
        let (wire, outcome) = drive(
            true,
            &["a@d.test"],
            &["550 no", "250 odd", "354 go", "250 empty", "250 reset"],
        );
        assert_eq!(wire[1..], [".\r\n", "RSET\r\n"]);
        assert_eq!(dispositions(&outcome), [Some(Failed)]);
    }

    #[test]
    fn a_354_with_no_accepted_recipient_gets_an_empty_body() {
        let (wire, outcome) = drive(
            true,
            &["a@d.test"],
            &["250 ok", "550 5.1.1 no", "354 go", "250 ok", "250 reset"],
        );
        assert_eq!(wire[1..], [".\r\n", "RSET\r\n"]);
        assert_eq!(dispositions(&outcome), [Some(Failed)]);
        assert!(outcome.reusable);
    }

    #[test]
    fn no_accepted_recipient_unpipelined_sends_no_data() {
        let (wire, outcome) = drive(false, &["a@d.test"], &["250 ok", "550 no", "250 reset"]);
        assert_eq!(wire.last().unwrap(), "RSET\r\n");
        assert!(!wire.iter().any(|w| w.contains("DATA")));
        assert_eq!(dispositions(&outcome), [Some(Failed)]);
    }

    #[test]
    fn a_refused_data_settles_the_accepted_recipients() {
        let (wire, outcome) = drive(
            true,
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "250 ok",
                "550 5.1.1 no",
                "451 4.3.0 later",
                "250 reset",
            ],
        );
        assert_eq!(wire.last().unwrap(), "RSET\r\n");
        assert_eq!(dispositions(&outcome), [Some(Deferred), Some(Failed)]);
        assert_eq!(outcome.verdicts[0].as_ref().unwrap().stage, Stage::Data);
    }

    #[test]
    fn a_2xx_to_data_breaks_off_and_delivers_nothing() {
        for pipelining in [true, false] {
            let replies = ["250 ok", "250 ok", "250 what"];
            let (wire, outcome) = drive(pipelining, &["a@d.test"], &replies);
            assert!(!wire.contains(&"<body>".to_string()));
            assert_eq!(dispositions(&outcome), [None]);
            let broken = outcome.broken.expect("broken off");
            assert_eq!(broken.stage, Stage::Data);
            assert_eq!(broken.reply.unwrap().code(), 250);
            assert!(!broken.data_sent && !broken.before_transaction);
            assert!(!outcome.reusable);
        }
    }

    #[test]
    fn a_421_at_each_stage_ends_the_session() {
        // (replies before the 421, stage, settled recipients)
        type Case<'a> = (&'a [&'a str], Stage, [Option<Disposition>; 2]);
        let cases: &[Case] = &[
            (&[], Stage::Mail, [None, None]),
            (&["250 ok"], Stage::Rcpt, [None, None]),
            (&["250 ok", "550 no"], Stage::Rcpt, [Some(Failed), None]),
            (&["250 ok", "250 ok", "250 ok"], Stage::Data, [None, None]),
        ];
        for pipelining in [true, false] {
            for (before, stage, settled) in cases {
                let mut replies = before.to_vec();
                replies.push("421 4.3.2 closing");
                let (_, outcome) = drive(pipelining, &["a@d.test", "b@d.test"], &replies);
                assert_eq!(dispositions(&outcome), settled, "{before:?}");
                let broken = outcome.broken.expect("broken off");
                assert_eq!(broken.stage, *stage, "{before:?}");
                assert_eq!(broken.reply.unwrap().code(), 421);
                assert_eq!(broken.before_transaction, settled == &[None, None]);
                assert!(!outcome.reusable);
            }
        }
        // At the end of data, the 421 is the message's (deferred) verdict.
        let (_, outcome) = drive(
            true,
            &["a@d.test"],
            &["250 ok", "250 ok", "354 go", "421 4.3.2 closing"],
        );
        assert_eq!(dispositions(&outcome), [Some(Deferred)]);
        assert!(outcome.broken.is_none() && !outcome.reusable);
        // At RSET, the verdicts stand; the session is gone.
        let (_, outcome) = drive(false, &["a@d.test"], &["550 no", "421 closing"]);
        assert_eq!(dispositions(&outcome), [Some(Failed)]);
        assert!(outcome.broken.is_none() && !outcome.reusable);
    }

    #[test]
    fn a_lost_connection_names_its_stage_and_whether_data_was_sent() {
        let (_, outcome) = drive(true, &["a@d.test"], &[]);
        let broken = outcome.broken.unwrap();
        assert_eq!((broken.stage, broken.data_sent), (Stage::Mail, false));
        assert!(broken.before_transaction && broken.reply.is_none());
        let (_, outcome) = drive(true, &["a@d.test"], &["250 ok", "250 ok", "354 go"]);
        assert_eq!(dispositions(&outcome), [None]);
        let broken = outcome.broken.unwrap();
        assert_eq!((broken.stage, broken.data_sent), (Stage::EndOfData, true));
        assert!(!broken.before_transaction);
        let (_, outcome) = drive(false, &["a@d.test"], &["250 ok"]);
        let broken = outcome.broken.unwrap();
        assert_eq!(broken.stage, Stage::Rcpt);
        assert!(!broken.before_transaction);
    }

    #[test]
    fn too_many_recipients_go_in_a_follow_up_transaction() {
        for too_many in ["452 4.5.3 Too many recipients", "452 Too many recipients"] {
            let (wire, outcome) = drive(
                true,
                &["a@d.test", "b@d.test", "c@d.test"],
                &[
                    "250 ok",
                    "250 ok",
                    "250 ok",
                    too_many,
                    "354 go",
                    "250 queued", // first
                    "250 ok",
                    "250 ok",
                    "354 go",
                    "250 queued", // follow-up
                ],
            );
            assert_eq!(
                wire[2],
                "MAIL FROM:<s@origin.test> SIZE=10\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
            );
            assert_eq!(wire.iter().filter(|w| *w == "<body>").count(), 2);
            assert_eq!(dispositions(&outcome), [Some(Sent), Some(Sent), Some(Sent)]);
            assert_eq!(outcome.completed, 2);
            assert!(outcome.reusable);
        }
    }

    #[test]
    fn unpipelined_too_many_stops_sending_rcpt_and_follows_up() {
        let (wire, outcome) = drive(
            false,
            &["a@d.test", "b@d.test", "c@d.test"],
            &[
                "250 ok",
                "250 ok",
                "452 4.5.3 too many",
                "354 go",
                "250 queued",
                "250 ok",
                "250 ok",
                "250 ok",
                "354 go",
                "250 queued",
            ],
        );
        assert_eq!(wire.iter().filter(|w| w.starts_with("RCPT")).count(), 4);
        assert_eq!(wire[5], "MAIL FROM:<s@origin.test> SIZE=10\r\n");
        assert_eq!(wire[6], "RCPT TO:<b@d.test>\r\n");
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Sent), Some(Sent)]);
    }

    #[test]
    fn a_552_to_rcpt_is_temporary_and_follows_up() {
        let (_, outcome) = drive(
            true,
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "250 ok",
                "552 5.5.3 too many",
                "354 go",
                "250 queued",
                "250 ok",
                "552 5.2.2 full",
                "554 no valid recipients",
                "250 reset",
            ],
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), Some(Deferred)]);
        let verdict = outcome.verdicts[1].as_ref().unwrap();
        assert_eq!(verdict.status(), EnhancedCode(4, 2, 2));
        assert_eq!(outcome.completed, 1);
    }

    #[test]
    fn too_many_with_nothing_accepted_defers_without_looping() {
        let (wire, outcome) = drive(
            true,
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "452 4.5.3 no",
                "452 4.5.3 no",
                "554 no rcpt",
                "250 reset",
            ],
        );
        assert_eq!(wire.len(), 2);
        assert_eq!(dispositions(&outcome), [Some(Deferred), Some(Deferred)]);
        assert!(outcome.reusable);
    }

    #[test]
    fn a_follow_up_that_breaks_off_leaves_only_its_recipients_open() {
        let (_, outcome) = drive(
            true,
            &["a@d.test", "b@d.test"],
            &[
                "250 ok",
                "250 ok",
                "452 too many",
                "354 go",
                "250 queued",
                "421 bye",
            ],
        );
        assert_eq!(dispositions(&outcome), [Some(Sent), None]);
        let broken = outcome.broken.unwrap();
        assert_eq!(broken.stage, Stage::Mail);
        assert!(!broken.before_transaction);
    }

    #[test]
    fn no_recipients_means_no_transaction() {
        let (wire, outcome) = drive(true, &[], &[]);
        assert!(wire.is_empty());
        assert!(outcome.verdicts.is_empty() && outcome.reusable && outcome.broken.is_none());
    }

    #[test]
    fn mail_parameters_follow_the_capabilities() {
        let recipients = vec!["r@d.test".to_string()];
        let envelope = Envelope {
            sender: "",
            recipients: &recipients,
            size: Some(42),
            eight_bit: true,
            smtputf8: true,
            message_dsn: None,
            recipient_dsn: &[],
            chunking: false,
            requiretls: false,
        };
        let mut out = Vec::new();
        let offered = Capabilities {
            size: Some(100),
            eight_bit_mime: true,
            smtputf8: true,
            ..Capabilities::default()
        };
        Transaction::start(envelope, &offered, &mut out);
        assert_eq!(out, b"MAIL FROM:<> SIZE=42 BODY=8BITMIME SMTPUTF8\r\n");
        out.clear();
        Transaction::start(envelope, &Capabilities::default(), &mut out);
        assert_eq!(out, b"MAIL FROM:<>\r\n");
        out.clear();
        let unknown = Envelope {
            size: None,
            ..envelope
        };
        Transaction::start(unknown, &offered, &mut out);
        assert_eq!(out, b"MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\n");
    }

    #[test]
    fn dsn_parameters_go_on_only_to_a_server_offering_dsn() {
        use sluice_queue::{NotifyOn, OriginalRecipient, Ret};
        let recipients = vec!["a@d.test".to_string(), "b@d.test".to_string()];
        let message_dsn = MessageDsn {
            ret: Some(Ret::Hdrs),
            envid: Some("id=1".into()),
        };
        let recipient_dsn = vec![
            Some(RecipientDsn {
                notify: Some(NotifyOn {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(OriginalRecipient {
                    address_type: "rfc822".into(),
                    address: "A@d.test".into(),
                }),
            }),
            None,
        ];
        let envelope = Envelope {
            sender: "s@d.test",
            recipients: &recipients,
            size: None,
            eight_bit: false,
            smtputf8: false,
            message_dsn: Some(&message_dsn),
            recipient_dsn: &recipient_dsn,
            chunking: false,
            requiretls: false,
        };
        let offered = Capabilities {
            pipelining: true,
            dsn: true,
            ..Capabilities::default()
        };
        let mut out = Vec::new();
        Transaction::start(envelope, &offered, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "MAIL FROM:<s@d.test> RET=HDRS ENVID=id+3D1\r\n\
             RCPT TO:<a@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A@d.test\r\n\
             RCPT TO:<b@d.test>\r\n\
             DATA\r\n"
        );
        let mut out = Vec::new();
        Transaction::start(envelope, &capabilities(true), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "MAIL FROM:<s@d.test>\r\nRCPT TO:<a@d.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n"
        );
    }

    #[test]
    fn the_one_disposition_rule() {
        assert_eq!(disposition(Stage::EndOfData, &reply("250 ok")), Sent);
        assert_eq!(disposition(Stage::Rcpt, &reply("550 5.1.1 no")), Failed);
        assert_eq!(disposition(Stage::Rcpt, &reply("552 5.5.3 no")), Deferred);
        assert_eq!(disposition(Stage::Data, &reply("552 5.3.4 big")), Failed);
        assert_eq!(disposition(Stage::Mail, &reply("451 later")), Deferred);
        assert_eq!(
            disposition(Stage::Greeting, &reply("554 go away")),
            Deferred
        );
        assert_eq!(disposition(Stage::Auth, &reply("535 5.7.8 no")), Deferred);
        assert_eq!(disposition(Stage::EndOfData, &reply("354 odd")), Deferred);
    }

    proptest::proptest! {
        #[test]
        fn any_replies_finish_with_a_verdict_or_a_break(
            pipelining in proptest::bool::ANY,
            chunking in proptest::bool::ANY,
            lmtp in proptest::bool::ANY,
            mut chunks_left in 0usize..3,
            count in 1usize..5,
            codes in proptest::collection::vec(
                proptest::sample::select(vec![
                    221u16, 250, 251, 334, 354, 421, 450, 451, 452, 500, 502, 550, 552, 554,
                ]),
                0..40,
            ),
        ) {
            let recipients: Vec<String> = (0..count).map(|i| format!("r{i}@d.test")).collect();
            let envelope = Envelope {
                sender: "s@origin.test",
                recipients: &recipients,
                size: None,
                eight_bit: false,
                smtputf8: false,
                message_dsn: None,
                recipient_dsn: &[],
                chunking,
                requiretls: false,
            };
            let mut out = Vec::new();
            let offered = Capabilities {
                chunking: true,
                lmtp,
                ..capabilities(pipelining)
            };
            let (mut transaction, mut step) = Transaction::start(envelope, &offered, &mut out);
            let mut codes = codes.into_iter();
            let mut bodies = 0;
            let outcome = loop {
                step = match step {
                    Step::Read(_) => match codes.next() {
                        Some(code) => transaction.receive(reply(&format!("{code} x")), &mut out),
                        None => Step::Done(transaction.interrupted()),
                    },
                    Step::SendBody => {
                        bodies += 1;
                        transaction.body_sent()
                    }
                    Step::SendChunk => {
                        // One chunk, or the last of several.
                        if chunks_left > 0 {
                            chunks_left -= 1;
                            Step::Read(transaction.chunk(3, false, &mut out))
                        } else {
                            bodies += 1;
                            Step::Read(transaction.chunk(3, true, &mut out))
                        }
                    }
                    Step::Done(outcome) => break outcome,
                };
            };
            proptest::prop_assert_eq!(outcome.verdicts.len(), count);
            proptest::prop_assert!(
                outcome.broken.is_some() || outcome.verdicts.iter().all(Option::is_some)
            );
            let sent = outcome
                .verdicts
                .iter()
                .flatten()
                .filter(|verdict| verdict.disposition == Sent)
                .count();
            // Nothing is delivered without a body, and no more bodies go out
            // than there are recipients.
            proptest::prop_assert!(sent == 0 || bodies > 0);
            proptest::prop_assert!(bodies <= count);
            proptest::prop_assert_eq!(outcome.completed as usize <= bodies, true);
        }
    }

    fn open(replies: &[&str]) -> (Vec<String>, OpeningStep) {
        let (mut opening, mut step) = Opening::new("me.test");
        let mut out = Vec::new();
        let mut wire = Vec::new();
        for text in replies {
            assert!(matches!(step, OpeningStep::Read(_)), "{step:?}");
            step = opening.receive(reply(text), &mut out);
            if !out.is_empty() {
                wire.push(String::from_utf8(std::mem::take(&mut out)).unwrap());
            }
        }
        (wire, step)
    }

    #[test]
    fn opening_reads_the_greeting_then_ehlo() {
        let (wire, step) = open(&["220 hi", "250-mx\r\n250 PIPELINING"]);
        assert_eq!(wire, ["EHLO me.test\r\n"]);
        match step {
            OpeningStep::Ready(capabilities) => assert!(capabilities.pipelining),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_ehlo_falls_back_to_helo_on_the_same_session() {
        for code in ["500", "501", "502", "504", "550"] {
            let (wire, step) = open(&["220 hi", &format!("{code} what"), "250 hello"]);
            assert_eq!(wire, ["EHLO me.test\r\n", "HELO me.test\r\n"], "{code}");
            assert_eq!(step, OpeningStep::Ready(Capabilities::default()));
        }
        let (_, step) = open(&["220 hi", "502 no", "554 no"]);
        assert!(matches!(
            step,
            OpeningStep::Refused(Refusal {
                stage: Stage::Helo,
                ..
            })
        ));
    }

    #[test]
    fn opening_refusals_name_their_stage() {
        let (wire, step) = open(&["554 go away"]);
        assert!(wire.is_empty());
        assert!(matches!(
            step,
            OpeningStep::Refused(Refusal {
                stage: Stage::Greeting,
                ..
            })
        ));
        let (_, step) = open(&["220 hi", "421 closing"]);
        assert!(matches!(
            step,
            OpeningStep::Refused(Refusal {
                stage: Stage::Ehlo,
                ..
            })
        ));
        let mut out = Vec::new();
        let (mut opening, step) = Opening::after_starttls("me.test", &mut out);
        assert_eq!(
            (out.as_slice(), step),
            (&b"EHLO me.test\r\n"[..], OpeningStep::Read(Stage::Ehlo))
        );
        assert!(matches!(
            opening.receive(reply("250 mx"), &mut out),
            OpeningStep::Ready(_)
        ));
    }

    #[test]
    fn starttls_needs_a_220() {
        let mut out = Vec::new();
        starttls(&mut out);
        assert_eq!(out, b"STARTTLS\r\n");
        assert!(starttls_reply(reply("220 go")).is_ok());
        assert_eq!(
            starttls_reply(reply("454 no")).unwrap_err().stage,
            Stage::StartTls
        );
    }

    #[test]
    fn auth_plain_and_login() {
        let plain = Capabilities {
            auth: vec!["PLAIN".into(), "LOGIN".into()],
            ..Capabilities::default()
        };
        let mut out = Vec::new();
        let (mut auth, _) = Auth::start(&plain, "u", "p", &mut out).unwrap();
        assert_eq!(out, b"AUTH PLAIN AHUAcA==\r\n");
        assert_eq!(auth.receive(reply("235 ok"), &mut out), AuthStep::Done);
        let login = Capabilities {
            auth: vec!["LOGIN".into()],
            ..Capabilities::default()
        };
        out.clear();
        let (mut auth, _) = Auth::start(&login, "u", "p", &mut out).unwrap();
        assert_eq!(out, b"AUTH LOGIN\r\n");
        out.clear();
        assert_eq!(
            auth.receive(reply("334 VXNlcm5hbWU6"), &mut out),
            AuthStep::Read
        );
        assert_eq!(out, b"dQ==\r\n");
        out.clear();
        assert_eq!(
            auth.receive(reply("334 UGFzc3dvcmQ6"), &mut out),
            AuthStep::Read
        );
        assert_eq!(out, b"cA==\r\n");
        assert_eq!(auth.receive(reply("235 ok"), &mut out), AuthStep::Done);
        out.clear();
        let (mut auth, _) = Auth::start(&login, "u", "p", &mut out).unwrap();
        assert!(matches!(
            auth.receive(reply("535 5.7.8 no"), &mut out),
            AuthStep::Refused(Refusal {
                stage: Stage::Auth,
                ..
            })
        ));
        assert!(Auth::start(&Capabilities::default(), "u", "p", &mut out).is_none());
    }
}

//! One milter's conversation about one message, as a pure state machine:
//! [`Conversation::step`] says what to write or that a reply is awaited,
//! [`Conversation::receive`] takes each decoded reply, and the end is a
//! [`Verdict`]. No sockets: the client in [`super::client`] moves the
//! octets.
//!
//! The whole conversation happens once the message is complete (the
//! milter is asked after DATA, before the 250): option negotiation, then
//! connect, HELO, MAIL, each RCPT, DATA, each header, end of headers, the
//! body in chunks and end of message, each step left out when the milter
//! declined it (SMFIP_NO*) and not waited on when it said it will not
//! answer (SMFIP_NR_*). A reject, tempfail or discard at any step decides
//! for the whole message (a recipient refused by the milter refuses the
//! message: nothing is dropped silently). Edits and quarantine are taken
//! only at the end of the message, where libmilter allows them.

use std::borrow::Cow;
use std::net::IpAddr;

use super::codec::{self, Command, Family, Response, action, step};
use super::edit::{self, Edit};
use crate::smtp::reply::{EnhancedCode, Reply, parse_reply};

/// What the milter is told about the message.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    /// Our host name (macro `j`).
    pub hostname: &'a str,
    /// The client's address.
    pub client: IpAddr,
    /// The HELO/EHLO name, when given.
    pub helo: Option<&'a str>,
    /// The reverse path (empty for `<>`).
    pub sender: &'a str,
    /// The forward paths.
    pub recipients: &'a [String],
    /// The AUTH identity (macro `{auth_authen}`), when authenticated.
    pub user: Option<&'a str>,
    /// The queue ID (macro `i`).
    pub queue_id: &'a str,
    /// The message as stored so far, our `Received:` first.
    pub message: &'a [u8],
}

/// The milter's decision about the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the message, changed by `edits` (in order), held in the
    /// queue when `quarantine` gives a reason.
    Accept {
        edits: Vec<Edit>,
        quarantine: Option<String>,
    },
    /// Answer 250 and drop the message.
    Discard,
    /// Refuse the message with this reply (4xx or 5xx, the milter's text
    /// when it gave one).
    Refuse(Reply),
}

/// A milter that broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Decode(#[from] codec::DecodeError),
    #[error("milter speaks protocol version {0}, 2 or later is needed")]
    Version(u32),
    #[error("milter answered {response} to {stage}")]
    Unexpected {
        stage: &'static str,
        response: &'static str,
    },
    #[error("milter reply code {0:?} is not a 4xx or 5xx SMTP reply")]
    BadReplyCode(String),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Write these octets (one or more packets).
    Write(Vec<u8>),
    /// Read a reply and hand it to [`Conversation::receive`].
    Read,
    /// The conversation is over (the QUIT was already given to write).
    Done(Verdict),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Negotiate,
    Connect,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    Header(usize),
    EndOfHeaders,
    /// The body from this offset on.
    Body(usize),
    EndOfMessage,
    /// Verdict reached: QUIT to write.
    Quit,
    Finished,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Negotiate => "option negotiation",
            Stage::Connect => "connect",
            Stage::Helo => "HELO",
            Stage::Mail => "MAIL",
            Stage::Rcpt(_) => "RCPT",
            Stage::Data => "DATA",
            Stage::Header(_) => "a header",
            Stage::EndOfHeaders => "end of headers",
            Stage::Body(_) => "a body chunk",
            Stage::EndOfMessage => "end of message",
            Stage::Quit | Stage::Finished => "quit",
        }
    }
}

/// One milter, one message.
#[derive(Debug)]
pub struct Conversation<'a> {
    transaction: Transaction<'a>,
    fields: Vec<edit::Field>,
    body_start: usize,
    stage: Stage,
    /// The step a reply is awaited for.
    awaiting: Option<Stage>,
    /// What the milter negotiated: its version, actions and declined steps.
    version: u32,
    steps: u32,
    edits: Vec<Edit>,
    new_body: Option<Vec<u8>>,
    quarantine: Option<String>,
    verdict: Option<Verdict>,
}

impl<'a> Conversation<'a> {
    /// A conversation about `transaction`; nothing is written yet.
    pub fn new(transaction: Transaction<'a>) -> Conversation<'a> {
        let (fields, body_start) = edit::split(transaction.message);
        Conversation {
            transaction,
            fields,
            body_start,
            stage: Stage::Negotiate,
            awaiting: None,
            version: 0,
            steps: 0,
            edits: Vec::new(),
            new_body: None,
            quarantine: None,
            verdict: None,
        }
    }

    /// What to do now. After [`Next::Read`], call [`Conversation::receive`]
    /// before asking again.
    pub fn step(&mut self) -> Next {
        if self.awaiting.is_some() {
            return Next::Read;
        }
        let mut out = Vec::new();
        loop {
            let stage = self.stage;
            match stage {
                Stage::Finished => {
                    let verdict = self
                        .verdict
                        .clone()
                        .expect("a finished conversation has a verdict");
                    return if out.is_empty() {
                        Next::Done(verdict)
                    } else {
                        Next::Write(out)
                    };
                }
                Stage::Quit => {
                    Command::Quit.encode(&mut out);
                    self.stage = Stage::Finished;
                    return Next::Write(out);
                }
                _ => {}
            }
            let (expects_reply, following) = self.write_stage(stage, &mut out);
            self.stage = following;
            if expects_reply {
                self.awaiting = Some(stage);
                return Next::Write(out);
            }
            // Replies not awaited: keep batching, but not without bound.
            if out.len() >= codec::CHUNK_SIZE {
                return Next::Write(out);
            }
        }
    }

    fn declined(&self, flag: u32) -> bool {
        self.steps & flag != 0
    }

    /// Writes `stage` (or nothing, when declined); returns whether a reply
    /// is awaited and the stage after it.
    fn write_stage(&self, stage: Stage, out: &mut Vec<u8>) -> (bool, Stage) {
        let t = &self.transaction;
        match stage {
            Stage::Negotiate => {
                Command::OptionNegotiation {
                    version: codec::VERSION,
                    actions: action::OFFERED,
                    steps: step::OFFERED,
                }
                .encode(out);
                (true, Stage::Connect)
            }
            Stage::Connect => {
                if self.declined(step::NO_CONNECT) {
                    return (false, Stage::Helo);
                }
                Command::Macros {
                    stage: b'C',
                    pairs: vec![("j", t.hostname), ("{daemon_name}", "sluice")],
                }
                .encode(out);
                let address = t.client.to_string();
                let hostname = format!("[{address}]");
                Command::Connect {
                    hostname: &hostname,
                    family: if t.client.is_ipv4() {
                        Family::Inet4
                    } else {
                        Family::Inet6
                    },
                    port: 0,
                    address: &address,
                }
                .encode(out);
                (!self.declined(step::NR_CONNECT), Stage::Helo)
            }
            Stage::Helo => match t.helo {
                Some(helo) if !self.declined(step::NO_HELO) => {
                    Command::Helo(helo).encode(out);
                    (!self.declined(step::NR_HELO), Stage::Mail)
                }
                _ => (false, Stage::Mail),
            },
            Stage::Mail => {
                if self.declined(step::NO_MAIL) {
                    return (false, Stage::Rcpt(0));
                }
                let mut pairs = vec![("{mail_addr}", t.sender)];
                if let Some(user) = t.user {
                    pairs.push(("{auth_authen}", user));
                }
                Command::Macros { stage: b'M', pairs }.encode(out);
                let path = format!("<{}>", t.sender);
                Command::Mail(vec![&path]).encode(out);
                (!self.declined(step::NR_MAIL), Stage::Rcpt(0))
            }
            Stage::Rcpt(index) => {
                let Some(recipient) = t.recipients.get(index) else {
                    return (false, Stage::Data);
                };
                if self.declined(step::NO_RCPT) {
                    return (false, Stage::Data);
                }
                Command::Macros {
                    stage: b'R',
                    pairs: vec![("{rcpt_addr}", recipient)],
                }
                .encode(out);
                let path = format!("<{recipient}>");
                Command::Rcpt(vec![&path]).encode(out);
                (!self.declined(step::NR_RCPT), Stage::Rcpt(index + 1))
            }
            Stage::Data => {
                // SMFIC_DATA came with protocol version 4.
                if self.version < 4 || self.declined(step::NO_DATA) {
                    return (false, Stage::Header(0));
                }
                Command::Macros {
                    stage: b'T',
                    pairs: vec![("i", t.queue_id)],
                }
                .encode(out);
                Command::Data.encode(out);
                (!self.declined(step::NR_DATA), Stage::Header(0))
            }
            Stage::Header(index) => {
                let Some(field) = self.fields.get(index) else {
                    return (false, Stage::EndOfHeaders);
                };
                if self.declined(step::NO_HEADERS) {
                    return (false, Stage::EndOfHeaders);
                }
                let value = if self.declined(step::HEADER_LEADING_SPACE) {
                    field.value.as_str()
                } else {
                    field.value.trim_start_matches([' ', '\t'])
                };
                Command::Header {
                    name: &field.name,
                    value,
                }
                .encode(out);
                (!self.declined(step::NR_HEADER), Stage::Header(index + 1))
            }
            Stage::EndOfHeaders => {
                if self.declined(step::NO_EOH) {
                    return (false, Stage::Body(self.body_start));
                }
                Command::Macros {
                    stage: b'N',
                    pairs: vec![("i", t.queue_id)],
                }
                .encode(out);
                Command::EndOfHeaders.encode(out);
                (!self.declined(step::NR_EOH), Stage::Body(self.body_start))
            }
            Stage::Body(offset) => {
                let message = t.message;
                if offset >= message.len() || self.declined(step::NO_BODY) {
                    return (false, Stage::EndOfMessage);
                }
                let end = (offset + codec::CHUNK_SIZE).min(message.len());
                Command::Body(&message[offset..end]).encode(out);
                (!self.declined(step::NR_BODY), Stage::Body(end))
            }
            Stage::EndOfMessage => {
                Command::Macros {
                    stage: b'E',
                    pairs: vec![("i", t.queue_id)],
                }
                .encode(out);
                Command::EndOfMessage.encode(out);
                (true, Stage::Quit)
            }
            Stage::Quit | Stage::Finished => unreachable!("handled by next"),
        }
    }

    /// Takes the milter's reply to the step awaited.
    pub fn receive(&mut self, response: Response) -> Result<(), ProtocolError> {
        let Some(stage) = self.awaiting else {
            return Err(ProtocolError::Unexpected {
                stage: "nothing (no reply was awaited)",
                response: response.name(),
            });
        };
        let unexpected = |response: &Response| ProtocolError::Unexpected {
            stage: stage.name(),
            response: response.name(),
        };
        if stage == Stage::Negotiate {
            let Response::OptionNegotiation { version, steps, .. } = response else {
                return Err(unexpected(&response));
            };
            if version < 2 {
                return Err(ProtocolError::Version(version));
            }
            self.version = version;
            // Only what we offered counts.
            self.steps = steps & step::OFFERED;
            self.awaiting = None;
            return Ok(());
        }
        let at_end = stage == Stage::EndOfMessage;
        match response {
            Response::Continue => self.go_on(at_end),
            Response::Accept => {
                if at_end {
                    self.go_on(true);
                } else {
                    // Accepted without looking further: no edits.
                    self.edits.clear();
                    self.decide(Verdict::Accept {
                        edits: Vec::new(),
                        quarantine: None,
                    });
                }
            }
            Response::Progress => {}
            Response::Skip if matches!(stage, Stage::Body(_)) => {
                self.awaiting = None;
                self.stage = Stage::EndOfMessage;
            }
            Response::Discard => self.decide(Verdict::Discard),
            Response::Reject => self.decide(Verdict::Refuse(Reply::new(
                550,
                EnhancedCode::new(5, 7, 1),
                "Command rejected",
            ))),
            Response::Tempfail => self.decide(Verdict::Refuse(Reply::new(
                451,
                EnhancedCode::new(4, 7, 1),
                "Service unavailable - try again later",
            ))),
            Response::ReplyCode(text) => {
                let reply = milter_reply(&text)?;
                self.decide(Verdict::Refuse(reply));
            }
            Response::Quarantine(reason) if at_end => self.quarantine = Some(reason),
            Response::AddHeader { name, value } if at_end => {
                let value = self.with_space(value);
                self.edits.push(Edit::AddHeader { name, value });
            }
            Response::InsertHeader { index, name, value } if at_end => {
                let value = self.with_space(value);
                self.edits.push(Edit::InsertHeader { index, name, value });
            }
            Response::ChangeHeader { index, name, value } if at_end => {
                let value = if value.is_empty() {
                    value
                } else {
                    self.with_space(value)
                };
                self.edits.push(Edit::ChangeHeader { index, name, value });
            }
            Response::ReplaceBody(chunk) if at_end => {
                self.new_body.get_or_insert_with(Vec::new).extend(chunk);
            }
            // Envelope changes were never offered: ignored.
            Response::Unsupported(_) if at_end => {}
            other => return Err(unexpected(&other)),
        }
        Ok(())
    }

    /// A value as the message will hold it: with the space after the colon
    /// unless the milter negotiated giving it itself.
    fn with_space(&self, value: String) -> String {
        if self.declined(step::HEADER_LEADING_SPACE) {
            value
        } else {
            format!(" {value}")
        }
    }

    fn go_on(&mut self, at_end: bool) {
        self.awaiting = None;
        if at_end {
            let mut edits = std::mem::take(&mut self.edits);
            if let Some(body) = self.new_body.take() {
                edits.push(Edit::ReplaceBody(body));
            }
            let quarantine = self.quarantine.take();
            self.decide(Verdict::Accept { edits, quarantine });
        }
    }

    fn decide(&mut self, verdict: Verdict) {
        self.awaiting = None;
        self.verdict = Some(verdict);
        self.stage = Stage::Quit;
    }
}

/// The SMTP reply in an SMFIR_REPLYCODE: 4xx or 5xx, possibly multi-line;
/// without an enhanced code it gets x.7.1 (a policy refusal).
fn milter_reply(text: &str) -> Result<Reply, ProtocolError> {
    let bad = || ProtocolError::BadReplyCode(text.to_string());
    let mut wire = text.trim_end_matches(['\r', '\n']).replace("\r\n", "\n");
    wire = wire.replace('\n', "\r\n");
    wire.push_str("\r\n");
    let (reply, _) = parse_reply(wire.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(bad)?;
    let class = reply.code() / 100;
    if class != 4 && class != 5 {
        return Err(bad());
    }
    if reply.enhanced().is_some() {
        return Ok(reply);
    }
    let mut lines = reply.lines().iter();
    let first: Cow<'static, str> = lines.next().cloned().unwrap_or_default();
    let mut built = Reply::new(reply.code(), EnhancedCode::new(class as u8, 7, 1), first);
    for line in lines {
        built = built.with_line(line.clone());
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Received: from c by us\r\nSubject: test\r\n\r\nHello\r\n";

    fn transaction(recipients: &[String]) -> Transaction<'_> {
        Transaction {
            hostname: "mx.example",
            client: "192.0.2.7".parse().unwrap(),
            helo: Some("client.example"),
            sender: "a@example.org",
            recipients,
            user: None,
            queue_id: "Q1",
            message: MESSAGE,
        }
    }

    /// The command octets (macros left out) in what was written.
    fn commands(octets: &[u8]) -> String {
        let mut codes = String::new();
        let mut at = 0;
        while at < octets.len() {
            let length = u32::from_be_bytes(octets[at..at + 4].try_into().unwrap()) as usize;
            let code = octets[at + 4];
            if code != b'D' {
                codes.push(char::from(code));
            }
            at += 4 + length;
        }
        codes
    }

    fn optneg(steps: u32) -> Response {
        Response::OptionNegotiation {
            version: 6,
            actions: action::OFFERED,
            steps,
        }
    }

    /// Runs the conversation, answering each awaited step with `answer`
    /// (given the commands written since the last reply); returns every
    /// command written and the verdict.
    fn run(steps: u32, mut answer: impl FnMut(&str) -> Vec<Response>) -> (String, Verdict) {
        let recipients = vec!["b@example.net".to_string(), "c@example.net".to_string()];
        let mut conversation = Conversation::new(transaction(&recipients));
        let mut written = String::new();
        let mut since = String::new();
        let mut first = true;
        loop {
            match conversation.step() {
                Next::Write(octets) => {
                    let codes = commands(&octets);
                    written.push_str(&codes);
                    since.push_str(&codes);
                }
                Next::Read => {
                    let responses = if first {
                        first = false;
                        vec![optneg(steps)]
                    } else {
                        answer(&since)
                    };
                    since.clear();
                    for response in responses {
                        conversation.receive(response).unwrap();
                    }
                }
                Next::Done(verdict) => return (written, verdict),
            }
        }
    }

    fn accepted() -> Verdict {
        Verdict::Accept {
            edits: Vec::new(),
            quarantine: None,
        }
    }

    #[test]
    fn every_step_in_order_when_nothing_is_declined() {
        let (written, verdict) = run(0, |_| vec![Response::Continue]);
        assert_eq!(written, "OCHMRRTLLNBEQ");
        assert_eq!(verdict, accepted());
    }

    #[test]
    fn declined_steps_are_not_sent_and_unanswered_ones_not_awaited() {
        let steps = step::NO_CONNECT
            | step::NO_HELO
            | step::NO_RCPT
            | step::NR_HEADER
            | step::NR_MAIL
            | step::NO_DATA;
        let mut batches = Vec::new();
        let (written, _) = run(steps, |since| {
            batches.push(since.to_string());
            vec![Response::Continue]
        });
        assert_eq!(written, "OMLLNBEQ");
        // MAIL and the headers are not answered: they go out with EOH.
        assert_eq!(batches, ["MLLN", "B", "E"]);
    }

    #[test]
    fn no_body_skips_the_chunks_and_skip_stops_them() {
        let (written, _) = run(step::NO_BODY, |_| vec![Response::Continue]);
        assert_eq!(written, "OCHMRRTLLNEQ");
        let (written, _) = run(step::SKIP, |since| {
            if since.ends_with('B') {
                vec![Response::Skip]
            } else {
                vec![Response::Continue]
            }
        });
        assert_eq!(written, "OCHMRRTLLNBEQ");
    }

    #[test]
    fn progress_keeps_waiting() {
        let (written, verdict) = run(0, |since| {
            if since.ends_with('E') {
                vec![Response::Progress, Response::Progress, Response::Accept]
            } else {
                vec![Response::Continue]
            }
        });
        assert!(written.ends_with("EQ"));
        assert_eq!(verdict, accepted());
    }

    #[test]
    fn a_reject_ends_the_conversation_at_once() {
        let (written, verdict) = run(0, |since| {
            if since.ends_with('R') {
                vec![Response::ReplyCode("550 5.1.1 no such user".into())]
            } else {
                vec![Response::Continue]
            }
        });
        assert_eq!(written, "OCHMRQ");
        let Verdict::Refuse(reply) = verdict else {
            panic!("expected a refusal, got {verdict:?}");
        };
        assert_eq!(reply.to_wire(), "550 5.1.1 no such user\r\n");
    }

    #[test]
    fn reject_tempfail_discard_and_accept_before_the_end() {
        let at_helo = |response: Response| {
            move |since: &str| {
                if since.ends_with('H') {
                    vec![response.clone()]
                } else {
                    vec![Response::Continue]
                }
            }
        };
        let (_, verdict) = run(0, at_helo(Response::Reject));
        assert!(
            matches!(&verdict, Verdict::Refuse(reply) if reply.to_wire() == "550 5.7.1 Command rejected\r\n")
        );
        let (_, verdict) = run(0, at_helo(Response::Tempfail));
        assert!(
            matches!(&verdict, Verdict::Refuse(reply) if reply.code() == 451 && reply.status() == EnhancedCode::new(4, 7, 1))
        );
        let (_, verdict) = run(0, at_helo(Response::Discard));
        assert_eq!(verdict, Verdict::Discard);
        let (written, verdict) = run(0, at_helo(Response::Accept));
        assert_eq!(written, "OCHQ");
        assert_eq!(verdict, accepted());
    }

    #[test]
    fn edits_and_quarantine_at_the_end() {
        let (_, verdict) = run(0, |since| {
            if since.ends_with('E') {
                vec![
                    Response::AddHeader {
                        name: "X-Spam".into(),
                        value: "Yes".into(),
                    },
                    Response::ChangeHeader {
                        index: 1,
                        name: "Subject".into(),
                        value: String::new(),
                    },
                    Response::ReplaceBody(b"new ".to_vec()),
                    Response::ReplaceBody(b"body\r\n".to_vec()),
                    Response::Quarantine("held for review".into()),
                    Response::Continue,
                ]
            } else {
                vec![Response::Continue]
            }
        });
        assert_eq!(
            verdict,
            Verdict::Accept {
                edits: vec![
                    Edit::AddHeader {
                        name: "X-Spam".into(),
                        value: " Yes".into()
                    },
                    Edit::ChangeHeader {
                        index: 1,
                        name: "Subject".into(),
                        value: String::new()
                    },
                    Edit::ReplaceBody(b"new body\r\n".to_vec()),
                ],
                quarantine: Some("held for review".into()),
            }
        );
    }

    #[test]
    fn edits_before_the_end_break_the_protocol() {
        let recipients = vec!["b@example.net".to_string()];
        let mut conversation = Conversation::new(transaction(&recipients));
        assert!(matches!(conversation.step(), Next::Write(_)));
        conversation.receive(optneg(0)).unwrap();
        assert!(matches!(conversation.step(), Next::Write(_)));
        assert_eq!(
            conversation.receive(Response::AddHeader {
                name: "X".into(),
                value: "y".into()
            }),
            Err(ProtocolError::Unexpected {
                stage: "connect",
                response: "addheader"
            })
        );
    }

    #[test]
    fn negotiation_needs_option_negotiation_and_a_version() {
        let recipients = vec![];
        let mut conversation = Conversation::new(transaction(&recipients));
        conversation.step();
        assert!(conversation.receive(Response::Continue).is_err());
        let mut conversation = Conversation::new(transaction(&recipients));
        conversation.step();
        assert_eq!(
            conversation.receive(Response::OptionNegotiation {
                version: 1,
                actions: 0,
                steps: 0
            }),
            Err(ProtocolError::Version(1))
        );
    }

    #[test]
    fn headers_go_without_their_leading_space_unless_negotiated() {
        let recipients = vec![];
        for (steps, expected) in [
            (0, &b"Subject\0test\0"[..]),
            (step::HEADER_LEADING_SPACE, b"Subject\0 test\0"),
        ] {
            let mut conversation = Conversation::new(transaction(&recipients));
            conversation.step();
            conversation
                .receive(optneg(
                    steps
                        | step::NR_HEADER
                        | step::NR_CONNECT
                        | step::NR_HELO
                        | step::NR_MAIL
                        | step::NR_DATA,
                ))
                .unwrap();
            let Next::Write(octets) = conversation.step() else {
                panic!("expected a write");
            };
            let found = octets.windows(expected.len()).any(|w| w == expected);
            assert!(
                found,
                "{:?} not in {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&octets)
            );
        }
    }

    #[test]
    fn reply_codes_are_checked() {
        assert_eq!(
            milter_reply("451 try later").unwrap().to_wire(),
            "451 4.7.1 try later\r\n"
        );
        assert_eq!(
            milter_reply("554-5.7.1 line one\r\n554 5.7.1 line two")
                .unwrap()
                .to_wire(),
            "554-5.7.1 line one\r\n554 5.7.1 line two\r\n"
        );
        assert!(milter_reply("250 fine").is_err());
        assert!(milter_reply("junk").is_err());
    }
}

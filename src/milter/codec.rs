//! The milter wire format (Sendmail's libmilter protocol, version 6): one
//! packet is a 4-octet big-endian length (the command octet included), a
//! command octet and its data. Strings are NUL-terminated. This file only
//! turns [`Command`]s into octets and octets into [`Response`]s; what to
//! send when is [`super::conversation`]'s job.
//!
//! The codes are those of libmilter's `mfdef.h` (SMFIC_* from the MTA,
//! SMFIR_* from the milter, SMFIF_* actions, SMFIP_* protocol steps).

use std::fmt;

/// The protocol version we speak (SMFI_PROT_VERSION).
pub const VERSION: u32 = 6;
/// The largest body chunk sent in one SMFIC_BODY (MILTER_CHUNK_SIZE).
pub const CHUNK_SIZE: usize = 65535;
/// The largest packet accepted from a milter. libmilter's own limit is
/// 64 KiB by default (MILTER_MAX_DATA_SIZE) and 1 MiB at most; anything
/// bigger is not a milter talking.
pub const MAX_PACKET: usize = 1024 * 1024;

/// SMFIF_*: what a milter may do at the end of the message.
pub mod action {
    /// SMFIF_ADDHDRS: add header fields.
    pub const ADD_HEADERS: u32 = 0x01;
    /// SMFIF_CHGBODY: replace the body.
    pub const CHANGE_BODY: u32 = 0x02;
    /// SMFIF_ADDRCPT: add recipients.
    pub const ADD_RECIPIENT: u32 = 0x04;
    /// SMFIF_DELRCPT: remove recipients.
    pub const DELETE_RECIPIENT: u32 = 0x08;
    /// SMFIF_CHGHDRS: change or delete header fields.
    pub const CHANGE_HEADERS: u32 = 0x10;
    /// SMFIF_QUARANTINE: hold the message.
    pub const QUARANTINE: u32 = 0x20;
    /// What sluice applies: header and body edits and quarantine; the
    /// envelope is not the milter's to change here.
    pub const OFFERED: u32 = ADD_HEADERS | CHANGE_BODY | CHANGE_HEADERS | QUARANTINE;
}

/// SMFIP_*: steps the milter does not want (NO*), steps it will not answer
/// (NR_*), and protocol features.
pub mod step {
    pub const NO_CONNECT: u32 = 0x01;
    pub const NO_HELO: u32 = 0x02;
    pub const NO_MAIL: u32 = 0x04;
    pub const NO_RCPT: u32 = 0x08;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADERS: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    /// SMFIP_NR_HDR (also called SMFIP_NOHREPL): no reply to each header.
    pub const NR_HEADER: u32 = 0x80;
    pub const NO_UNKNOWN: u32 = 0x100;
    pub const NO_DATA: u32 = 0x200;
    /// The MTA understands SMFIR_SKIP (stop sending body chunks).
    pub const SKIP: u32 = 0x400;
    /// Rejected recipients are sent too (we never send them).
    pub const RCPT_REJ: u32 = 0x800;
    pub const NR_CONNECT: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKNOWN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    /// Header values are sent with their leading space.
    pub const HEADER_LEADING_SPACE: u32 = 0x100000;
    /// Every step flag sluice honours: the milter may ask for any of them.
    pub const OFFERED: u32 = NO_CONNECT
        | NO_HELO
        | NO_MAIL
        | NO_RCPT
        | NO_BODY
        | NO_HEADERS
        | NO_EOH
        | NR_HEADER
        | NO_UNKNOWN
        | NO_DATA
        | SKIP
        | NR_CONNECT
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKNOWN
        | NR_EOH
        | NR_BODY
        | HEADER_LEADING_SPACE;
}

/// The client's address family in SMFIC_CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SMFIA_INET ('4').
    Inet4,
    /// SMFIA_INET6 ('6').
    Inet6,
    /// SMFIA_UNKNOWN ('U'): no port or address follow.
    Unknown,
}

/// A packet from the MTA (us) to the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// SMFIC_OPTNEG 'O': our version, the actions and steps we offer.
    OptionNegotiation {
        version: u32,
        actions: u32,
        steps: u32,
    },
    /// SMFIC_MACRO 'D': macros for the step `stage` (its command octet).
    Macros {
        stage: u8,
        pairs: Vec<(&'a str, &'a str)>,
    },
    /// SMFIC_CONNECT 'C'.
    Connect {
        hostname: &'a str,
        family: Family,
        port: u16,
        address: &'a str,
    },
    /// SMFIC_HELO 'H'.
    Helo(&'a str),
    /// SMFIC_MAIL 'M': `<sender>` then the ESMTP parameters.
    Mail(Vec<&'a str>),
    /// SMFIC_RCPT 'R': `<recipient>` then the ESMTP parameters.
    Rcpt(Vec<&'a str>),
    /// SMFIC_DATA 'T'.
    Data,
    /// SMFIC_HEADER 'L'.
    Header { name: &'a str, value: &'a str },
    /// SMFIC_EOH 'N'.
    EndOfHeaders,
    /// SMFIC_BODY 'B': at most [`CHUNK_SIZE`] octets.
    Body(&'a [u8]),
    /// SMFIC_BODYEOB 'E'.
    EndOfMessage,
    /// SMFIC_ABORT 'A'.
    Abort,
    /// SMFIC_QUIT 'Q'.
    Quit,
}

impl Command<'_> {
    /// The command octet.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptionNegotiation { .. } => b'O',
            Command::Macros { .. } => b'D',
            Command::Connect { .. } => b'C',
            Command::Helo(_) => b'H',
            Command::Mail(_) => b'M',
            Command::Rcpt(_) => b'R',
            Command::Data => b'T',
            Command::Header { .. } => b'L',
            Command::EndOfHeaders => b'N',
            Command::Body(_) => b'B',
            Command::EndOfMessage => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
        }
    }

    /// Appends the packet to `out`. A NUL inside a string would end it
    /// early on the milter's side, so it is left out.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(self.code());
        match self {
            Command::OptionNegotiation {
                version,
                actions,
                steps,
            } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&actions.to_be_bytes());
                out.extend_from_slice(&steps.to_be_bytes());
            }
            Command::Macros { stage, pairs } => {
                out.push(*stage);
                for (name, value) in pairs {
                    put_string(out, name);
                    put_string(out, value);
                }
            }
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                put_string(out, hostname);
                match family {
                    Family::Unknown => out.push(b'U'),
                    Family::Inet4 | Family::Inet6 => {
                        out.push(if *family == Family::Inet4 { b'4' } else { b'6' });
                        out.extend_from_slice(&port.to_be_bytes());
                        put_string(out, address);
                    }
                }
            }
            Command::Helo(name) => put_string(out, name),
            Command::Mail(arguments) | Command::Rcpt(arguments) => {
                for argument in arguments {
                    put_string(out, argument);
                }
            }
            Command::Header { name, value } => {
                put_string(out, name);
                put_string(out, value);
            }
            Command::Body(chunk) => out.extend_from_slice(chunk),
            Command::Data
            | Command::EndOfHeaders
            | Command::EndOfMessage
            | Command::Abort
            | Command::Quit => {}
        }
        let length = u32::try_from(out.len() - start - 4).expect("a packet we build is small");
        out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// A packet from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// 'O': the milter's version, the actions it wants, the steps it
    /// declines. (v6 may append macro lists; they are ignored.)
    OptionNegotiation {
        version: u32,
        actions: u32,
        steps: u32,
    },
    /// SMFIR_ACCEPT 'a': accept; nothing more from this milter.
    Accept,
    /// SMFIR_CONTINUE 'c'.
    Continue,
    /// SMFIR_DISCARD 'd': accept and drop the message.
    Discard,
    /// SMFIR_REJECT 'r'.
    Reject,
    /// SMFIR_TEMPFAIL 't'.
    Tempfail,
    /// SMFIR_REPLYCODE 'y': a reject or tempfail with this SMTP reply text.
    ReplyCode(String),
    /// SMFIR_PROGRESS 'p': still working.
    Progress,
    /// SMFIR_SKIP 's': send no more body chunks.
    Skip,
    /// SMFIR_QUARANTINE 'q': hold the message, with a reason.
    Quarantine(String),
    /// SMFIR_ADDHEADER 'h': append a header field.
    AddHeader { name: String, value: String },
    /// SMFIR_INSHEADER 'i': insert a header field at `index` (0 = first).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// SMFIR_CHGHEADER 'm': change the `index`th (from 1) field of that
    /// name; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// SMFIR_REPLBODY 'b': a chunk of the new body.
    ReplaceBody(Vec<u8>),
    /// An envelope change ('+', '-', '2', 'e') or a code we do not act on,
    /// with its octet: logged and ignored, as we never offered it.
    Unsupported(u8),
}

impl Response {
    /// The reply octet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Response::OptionNegotiation { .. } => "optneg",
            Response::Accept => "accept",
            Response::Continue => "continue",
            Response::Discard => "discard",
            Response::Reject => "reject",
            Response::Tempfail => "tempfail",
            Response::ReplyCode(_) => "replycode",
            Response::Progress => "progress",
            Response::Skip => "skip",
            Response::Quarantine(_) => "quarantine",
            Response::AddHeader { .. } => "addheader",
            Response::InsertHeader { .. } => "insheader",
            Response::ChangeHeader { .. } => "chgheader",
            Response::ReplaceBody(_) => "replbody",
            Response::Unsupported(_) => "unsupported",
        }
    }
}

/// A packet from the milter that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length field is 0: no command octet.
    Empty,
    /// The length field is over [`MAX_PACKET`].
    TooLong(usize),
    /// The data does not have the shape the command needs.
    Malformed(u8),
    /// An octet that is no SMFIR_* code.
    UnknownCode(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty milter packet"),
            DecodeError::TooLong(length) => {
                write!(f, "milter packet of {length} octets (at most {MAX_PACKET})")
            }
            DecodeError::Malformed(code) => {
                write!(f, "malformed milter reply {:?}", char::from(*code))
            }
            DecodeError::UnknownCode(code) => write!(f, "unknown milter reply code {code:#04x}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one packet from the start of `input`: the response and the
/// octets it used, or `None` when the packet is not complete yet.
pub fn decode(input: &[u8]) -> Result<Option<(Response, usize)>, DecodeError> {
    let Some(header) = input.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if length == 0 {
        return Err(DecodeError::Empty);
    }
    if length > MAX_PACKET {
        return Err(DecodeError::TooLong(length));
    }
    let Some(packet) = input.get(4..4 + length) else {
        return Ok(None);
    };
    let (code, data) = (packet[0], &packet[1..]);
    let malformed = || DecodeError::Malformed(code);
    let response = match code {
        b'O' => {
            let word = |at: usize| {
                data.get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(malformed)
            };
            Response::OptionNegotiation {
                version: word(0)?,
                actions: word(4)?,
                steps: word(8)?,
            }
        }
        b'a' => Response::Accept,
        b'c' => Response::Continue,
        b'd' => Response::Discard,
        b'r' => Response::Reject,
        b't' => Response::Tempfail,
        b'p' => Response::Progress,
        b's' => Response::Skip,
        b'y' => Response::ReplyCode(strings(data, 1).ok_or_else(malformed)?.remove(0)),
        b'q' => Response::Quarantine(strings(data, 1).ok_or_else(malformed)?.remove(0)),
        b'h' => {
            let mut fields = strings(data, 2).ok_or_else(malformed)?;
            let value = fields.pop().expect("two strings");
            let name = fields.pop().expect("two strings");
            Response::AddHeader { name, value }
        }
        b'i' | b'm' => {
            let index = data
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(malformed)?;
            let mut fields = strings(&data[4..], 2).ok_or_else(malformed)?;
            let value = fields.pop().expect("two strings");
            let name = fields.pop().expect("two strings");
            if code == b'i' {
                Response::InsertHeader { index, name, value }
            } else {
                Response::ChangeHeader { index, name, value }
            }
        }
        b'b' => Response::ReplaceBody(data.to_vec()),
        b'+' | b'-' | b'2' | b'e' | b'f' | b'l' => Response::Unsupported(code),
        other => return Err(DecodeError::UnknownCode(other)),
    };
    Ok(Some((response, 4 + length)))
}

/// Exactly `count` NUL-terminated strings (a missing final NUL is
/// tolerated, as libmilter's readers do), lossily decoded as UTF-8.
fn strings(data: &[u8], count: usize) -> Option<Vec<String>> {
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    let fields: Vec<String> = data
        .split(|&b| b == 0)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect();
    (fields.len() == count).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(command: Command) -> Vec<u8> {
        let mut out = Vec::new();
        command.encode(&mut out);
        out
    }

    fn packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(code);
        out.extend_from_slice(data);
        out
    }

    fn decoded(input: &[u8]) -> Response {
        let (response, used) = decode(input).unwrap().unwrap();
        assert_eq!(used, input.len());
        response
    }

    #[test]
    fn option_negotiation_is_three_words() {
        let out = encoded(Command::OptionNegotiation {
            version: 6,
            actions: 0x33,
            steps: 0x1f_ffff,
        });
        assert_eq!(
            out,
            [
                0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0, 0x33, 0, 0x1f, 0xff, 0xff
            ]
        );
        let mut reply = packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 0x11, 0, 0, 0, 0x40]);
        assert_eq!(
            decoded(&reply),
            Response::OptionNegotiation {
                version: 6,
                actions: 0x11,
                steps: 0x40
            }
        );
        // v6 macro lists after the words are ignored.
        reply = packet(
            b'O',
            &[0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'i', 0],
        );
        assert!(matches!(
            decoded(&reply),
            Response::OptionNegotiation { actions: 1, .. }
        ));
        assert_eq!(
            decode(&packet(b'O', &[0, 0, 0, 6])),
            Err(DecodeError::Malformed(b'O'))
        );
    }

    #[test]
    fn connect_carries_family_port_and_address() {
        let out = encoded(Command::Connect {
            hostname: "mx.example",
            family: Family::Inet4,
            port: 25,
            address: "192.0.2.1",
        });
        assert_eq!(out, packet(b'C', b"mx.example\x004\x00\x19192.0.2.1\x00"));
        let out = encoded(Command::Connect {
            hostname: "h",
            family: Family::Inet6,
            port: 587,
            address: "::1",
        });
        assert_eq!(out, packet(b'C', b"h\x006\x02\x4b::1\x00"));
        let out = encoded(Command::Connect {
            hostname: "h",
            family: Family::Unknown,
            port: 0,
            address: "",
        });
        assert_eq!(out, packet(b'C', b"h\x00U"));
    }

    #[test]
    fn envelope_steps_are_nul_terminated_strings() {
        assert_eq!(
            encoded(Command::Helo("client.example")),
            packet(b'H', b"client.example\x00")
        );
        assert_eq!(
            encoded(Command::Mail(vec!["<a@example.org>", "SIZE=10"])),
            packet(b'M', b"<a@example.org>\x00SIZE=10\x00")
        );
        assert_eq!(
            encoded(Command::Rcpt(vec!["<b@example.net>"])),
            packet(b'R', b"<b@example.net>\x00")
        );
        assert_eq!(
            encoded(Command::Macros {
                stage: b'M',
                pairs: vec![("{mail_addr}", "a@example.org")]
            }),
            packet(b'D', b"M{mail_addr}\x00a@example.org\x00")
        );
        // A NUL smuggled into a string cannot split it.
        assert_eq!(encoded(Command::Helo("a\0b")), packet(b'H', b"ab\x00"));
    }

    #[test]
    fn content_steps() {
        assert_eq!(
            encoded(Command::Header {
                name: "Subject",
                value: "hi"
            }),
            packet(b'L', b"Subject\x00hi\x00")
        );
        assert_eq!(encoded(Command::Body(b"x\r\n")), packet(b'B', b"x\r\n"));
        for (command, code) in [
            (Command::Data, b'T'),
            (Command::EndOfHeaders, b'N'),
            (Command::EndOfMessage, b'E'),
            (Command::Abort, b'A'),
            (Command::Quit, b'Q'),
        ] {
            assert_eq!(encoded(command), packet(code, b""));
        }
    }

    #[test]
    fn one_octet_replies() {
        for (code, response) in [
            (b'a', Response::Accept),
            (b'c', Response::Continue),
            (b'd', Response::Discard),
            (b'r', Response::Reject),
            (b't', Response::Tempfail),
            (b'p', Response::Progress),
            (b's', Response::Skip),
        ] {
            assert_eq!(decoded(&packet(code, b"")), response);
        }
    }

    #[test]
    fn reply_code_and_quarantine_keep_their_text() {
        assert_eq!(
            decoded(&packet(b'y', b"554 5.7.1 Gtube pattern\x00")),
            Response::ReplyCode("554 5.7.1 Gtube pattern".into())
        );
        assert_eq!(
            decoded(&packet(b'q', b"virus found\x00")),
            Response::Quarantine("virus found".into())
        );
        assert_eq!(
            decode(&packet(b'y', b"a\x00b\x00")),
            Err(DecodeError::Malformed(b'y'))
        );
    }

    #[test]
    fn header_edits() {
        assert_eq!(
            decoded(&packet(b'h', b"X-Spam\x00Yes\x00")),
            Response::AddHeader {
                name: "X-Spam".into(),
                value: "Yes".into()
            }
        );
        assert_eq!(
            decoded(&packet(b'i', b"\x00\x00\x00\x00X-First\x00 1\x00")),
            Response::InsertHeader {
                index: 0,
                name: "X-First".into(),
                value: " 1".into()
            }
        );
        assert_eq!(
            decoded(&packet(b'm', b"\x00\x00\x00\x02Subject\x00\x00")),
            Response::ChangeHeader {
                index: 2,
                name: "Subject".into(),
                value: String::new()
            }
        );
        assert_eq!(
            decode(&packet(b'm', b"\x00\x00")),
            Err(DecodeError::Malformed(b'm'))
        );
        assert_eq!(
            decode(&packet(b'h', b"only-a-name\x00")),
            Err(DecodeError::Malformed(b'h'))
        );
    }

    #[test]
    fn body_replacement_and_envelope_changes() {
        assert_eq!(
            decoded(&packet(b'b', b"new\r\nbody\r\n")),
            Response::ReplaceBody(b"new\r\nbody\r\n".to_vec())
        );
        assert_eq!(
            decoded(&packet(b'+', b"<x@example>\x00")),
            Response::Unsupported(b'+')
        );
    }

    #[test]
    fn partial_oversized_and_unknown_packets() {
        let whole = packet(b'c', b"");
        for end in 0..whole.len() {
            assert_eq!(decode(&whole[..end]), Ok(None));
        }
        assert_eq!(decode(&[0, 0, 0, 0]), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[0, 0x20, 0, 0, b'b']),
            Err(DecodeError::TooLong(0x20_0000))
        );
        assert_eq!(
            decode(&packet(b'Z', b"")),
            Err(DecodeError::UnknownCode(b'Z'))
        );
        // Two packets back to back: the first is taken alone.
        let mut two = packet(b'p', b"");
        two.extend(packet(b'a', b""));
        assert_eq!(decode(&two), Ok(Some((Response::Progress, 5))));
    }
}

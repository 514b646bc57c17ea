//! Preparing a locally submitted message for SMTP: pure, no I/O beyond the
//! reader and writer it is handed.
//!
//! - Line endings: each line ends at LF; a CR right before that LF is part of
//!   the line ending, so both LF and CRLF input become CRLF on the wire. A CR
//!   elsewhere also ends a line (becomes CRLF), since the server refuses bare
//!   CRs. This does not contradict the server's "bare LF is rejected, never
//!   normalised" rule (the SMTP smuggling defence): that rule is about SMTP
//!   peers, where sender and receiver may disagree on where a message ends.
//!   Here the input is a local, trusted pipe read to end of file, with no
//!   end-of-data marker to disagree on; and what goes to the server is
//!   canonical SMTP (CRLF only, dot-stuffed by the submission), checked by
//!   the server as for any other client.
//! - A leading mbox `From ` line is dropped (as Postfix's sendmail does).
//! - The header section ends at the first empty line, or at the first line
//!   that is neither a header field nor a continuation (then an empty line
//!   is inserted before it). It may be at most 1 MiB, and it is the only part
//!   of the message held in memory: the body is streamed line by line.
//! - `Bcc:` (and `Resent-Bcc:`) headers are always removed, with or without
//!   `-t`: their content is by definition not for the recipients' eyes.
//! - Missing `From:`, `Date:` and `Message-ID:` headers are added at the end
//!   of the header section, as Postfix's cleanup does for local submission.
//!   `From:` is `Full Name <sender>` (or the bare sender; `MAILER-DAEMON@<hostname>`
//!   for the null sender), `Date:` the local time (RFC 5322 §3.3), and
//!   `Message-ID:` `<time.random@hostname>`.
//! - `-t` takes the recipients of the `To:`, `Cc:` and `Bcc:` fields
//!   (RFC 5322 §3.6.3), groups included.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};

use chrono::{DateTime, FixedOffset, Utc};

/// The largest header section read into memory.
pub const MAX_HEADER_SECTION: usize = 1 << 20;

/// Why the message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Reading the input failed.
    #[error("{0}")]
    Read(#[from] io::Error),
    /// The header section is larger than [`MAX_HEADER_SECTION`].
    #[error("the header section is over {} KiB", MAX_HEADER_SECTION / 1024)]
    HeaderTooLarge,
}

/// Why writing the message out stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading the rest of the input failed.
    #[error(transparent)]
    Input(MessageError),
    /// Writing to the destination failed.
    #[error(transparent)]
    Output(io::Error),
}

/// The clock and randomness behind added `Date:` and `Message-ID:` headers,
/// taken once so that everything else here is a pure function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The submission time in the local time zone.
    pub date: DateTime<FixedOffset>,
    /// A random number that makes the Message-ID unique.
    pub unique: u64,
}

impl Stamp {
    /// Now, and a fresh random number.
    pub fn now() -> Stamp {
        Stamp {
            date: chrono::Local::now().fixed_offset(),
            unique: rand::random(),
        }
    }
}

/// One header field: its name and its lines (the first and any
/// continuations), line endings removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name as written.
    pub name: String,
    /// The physical lines, without CRLF.
    pub lines: Vec<Vec<u8>>,
}

impl HeaderField {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The message's header section, read from the input before submission
/// (the only part of the message held in memory).
#[derive(Debug, Default)]
pub struct HeaderSection {
    /// The header fields in order.
    pub fields: Vec<HeaderField>,
    /// Body lines already read: the line that ended the section when it
    /// was not an empty line, and lines split off by bare CRs.
    pub pending_body_lines: Vec<Vec<u8>>,
}

impl HeaderSection {
    /// Reads lines up to the end of the header section (see the module doc);
    /// `input` is left at the first body line not in `pending_body_lines`.
    pub fn read(input: &mut impl BufRead) -> Result<HeaderSection, MessageError> {
        let mut section = HeaderSection::default();
        let mut size = 0;
        let mut first = true;
        let mut reader = LineReader::default();
        while let Some(line) = reader.next_line(input)? {
            if std::mem::take(&mut first) && line.starts_with(b"From ") {
                continue;
            }
            size += line.len() + 2;
            if size > MAX_HEADER_SECTION {
                return Err(MessageError::HeaderTooLarge);
            }
            if line.is_empty() {
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                if let Some(field) = section.fields.last_mut() {
                    field.lines.push(line);
                    continue;
                }
            } else if let Some(name) = field_name(&line) {
                section.fields.push(HeaderField {
                    name,
                    lines: vec![line],
                });
                continue;
            }
            // Neither a field nor a continuation: the body starts here.
            section.pending_body_lines.push(line);
            break;
        }
        // A bare CR may have split the last line read: the rest is body.
        section.pending_body_lines.extend(reader.queued.drain(..));
        Ok(section)
    }

    fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|field| field.is(name))
    }

    /// The addresses in the To:, Cc: and Bcc: fields (RFC 5322 §3.6.3),
    /// groups included.
    pub fn recipients(&self) -> Vec<String> {
        let mut raw = Vec::new();
        for field in self
            .fields
            .iter()
            .filter(|field| field.is("to") || field.is("cc") || field.is("bcc"))
        {
            for line in &field.lines {
                raw.extend_from_slice(line);
                raw.extend_from_slice(b"\r\n");
            }
        }
        if raw.is_empty() {
            return Vec::new();
        }
        raw.extend_from_slice(b"\r\n");
        let Some(message) = mail_parser::MessageParser::default().parse_headers(&raw[..]) else {
            return Vec::new();
        };
        let mut addresses = Vec::new();
        for name in ["To", "Cc", "Bcc"] {
            for value in message.header_values(name) {
                if let mail_parser::HeaderValue::Address(list) = value {
                    addresses.extend(
                        list.iter()
                            .filter_map(|addr| addr.address.as_deref())
                            .map(|address| address.trim().to_string())
                            .filter(|address| !address.is_empty()),
                    );
                }
            }
        }
        addresses
    }

    /// The header lines to add: From:, Date: and Message-ID: when missing.
    pub fn missing(
        &self,
        sender: &str,
        full_name: Option<&str>,
        hostname: &str,
        stamp: &Stamp,
    ) -> Vec<String> {
        let mut added = Vec::new();
        if !self.has("from") {
            let address = if sender.is_empty() {
                format!("MAILER-DAEMON@{hostname}")
            } else {
                sender.to_string()
            };
            added.push(
                match full_name.map(str::trim).filter(|name| !name.is_empty()) {
                    Some(name) => format!("From: {} <{address}>", display_name(name)),
                    None => format!("From: {address}"),
                },
            );
        }
        if !self.has("date") {
            added.push(format!("Date: {}", stamp.date.to_rfc2822()));
        }
        if !self.has("message-id") {
            added.push(format!(
                "Message-ID: <{}.{:016x}@{hostname}>",
                stamp.date.with_timezone(&Utc).format("%Y%m%d%H%M%S"),
                stamp.unique
            ));
        }
        added
    }

    /// Writes the whole message with CRLF line endings, not dot-stuffed: the
    /// header section (Bcc removed, `added` appended, the empty line that
    /// ends it), the pending body lines, then the rest of `input`, streamed
    /// line by line.
    pub fn write_message(
        &self,
        added: &[String],
        input: &mut impl BufRead,
        out: &mut dyn Write,
    ) -> Result<(), WriteError> {
        let mut line = |content: &[u8]| {
            out.write_all(content)
                .and_then(|()| out.write_all(b"\r\n"))
                .map_err(WriteError::Output)
        };
        for field in &self.fields {
            if field.is("bcc") || field.is("resent-bcc") {
                continue;
            }
            for content in &field.lines {
                line(content)?;
            }
        }
        for header in added {
            line(header.as_bytes())?;
        }
        line(b"")?;
        for content in &self.pending_body_lines {
            line(content)?;
        }
        let mut reader = LineReader::default();
        while let Some(content) = reader.next_line(input).map_err(WriteError::Input)? {
            line(&content)?;
        }
        Ok(())
    }
}

/// The field name of a header line, when it is one (RFC 5322 §2.2:
/// printable ASCII but `:`, then `:`).
fn field_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&byte| byte == b':')?;
    let name = &line[..colon];
    let name = name.strip_suffix(b" ").unwrap_or(name); // "Subject :" is seen in the wild
    (!name.is_empty() && name.iter().all(|&byte| (33..=126).contains(&byte)))
        .then(|| String::from_utf8_lossy(name).into_owned())
}

/// A display name as RFC 5322 §3.4 wants it: atoms as they are, else a
/// quoted string; non-ASCII as an RFC 2047 encoded word.
pub fn display_name(name: &str) -> String {
    use base64::Engine as _;
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    if !name.is_ascii() {
        return format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        );
    }
    let atext =
        |c: char| c.is_ascii_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if name.chars().all(atext) {
        name
    } else {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

/// Splits the input into lines (see the module doc on line endings).
#[derive(Default)]
struct LineReader {
    buffer: Vec<u8>,
    /// Lines split off by bare CRs, still to be returned.
    queued: VecDeque<Vec<u8>>,
}

impl LineReader {
    /// The next line without its ending, or `None` at end of input.
    fn next_line(&mut self, input: &mut impl BufRead) -> Result<Option<Vec<u8>>, MessageError> {
        if let Some(line) = self.queued.pop_front() {
            return Ok(Some(line));
        }
        self.buffer.clear();
        if input.read_until(b'\n', &mut self.buffer)? == 0 {
            return Ok(None);
        }
        let mut line = self.buffer.as_slice();
        if let Some(rest) = line.strip_suffix(b"\n") {
            line = rest;
            while let Some(rest) = line.strip_suffix(b"\r") {
                line = rest;
            }
        }
        let mut pieces = line.split(|&byte| byte == b'\r');
        let first = pieces.next().unwrap_or_default().to_vec();
        self.queued.extend(pieces.map(<[u8]>::to_vec));
        Ok(Some(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|item| item.to_string()).collect()
    }

    fn stamp() -> Stamp {
        Stamp {
            date: DateTime::parse_from_rfc3339("2026-03-02T10:00:00+01:00").unwrap(),
            unique: 0xabc,
        }
    }

    /// The whole message as submitted, from `input`.
    fn prepared(input: &[u8], sender: &str, full_name: Option<&str>) -> String {
        let mut input = input;
        let section = HeaderSection::read(&mut input).unwrap();
        let added = section.missing(sender, full_name, "h.test", &stamp());
        let mut out = Vec::new();
        section.write_message(&added, &mut input, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn header_section_ends_at_empty_line_and_keeps_continuations() {
        let mut input =
            &b"From sender Mon Jan 1\nSubject: hi\n there\r\nTo: a@x.test\n\nbody\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(section.fields.len(), 2);
        assert_eq!(
            section.fields[0].lines,
            vec![b"Subject: hi".to_vec(), b" there".to_vec()]
        );
        assert!(section.pending_body_lines.is_empty());
        assert_eq!(input, b"body\n");
    }

    #[test]
    fn a_non_header_line_starts_the_body() {
        let mut input = &b"Subject: x\nthis is body\nmore\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(section.fields.len(), 1);
        assert_eq!(section.pending_body_lines, vec![b"this is body".to_vec()]);
    }

    #[test]
    fn a_non_header_line_gets_an_empty_line_before_it() {
        let message = prepared(
            b"From: a@x.test\nDate: d\nMessage-ID: <m@x>\nnot a header\nmore\n",
            "a@x.test",
            None,
        );
        assert_eq!(
            message,
            "From: a@x.test\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nnot a header\r\nmore\r\n"
        );
    }

    #[test]
    fn only_a_leading_mbox_from_line_is_dropped() {
        let mut input = &b"From a@x Mon Jan 1\nFrom: b@x.test\n\nFrom here\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(section.fields[0].name, "From");
        let mut input = &b"Subject: s\nFrom x\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(section.pending_body_lines, vec![b"From x".to_vec()]);
    }

    #[test]
    fn header_recipients_include_groups_and_display_names() {
        let mut input =
            &b"To: Al <a@x.test>, b@x.test\nCc: team: c@x.test, d@x.test;\nBcc: e@x.test\n\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(
            section.recipients(),
            strings(&["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"])
        );
        let mut input = &b"Subject: none\n\n"[..];
        assert!(
            HeaderSection::read(&mut input)
                .unwrap()
                .recipients()
                .is_empty()
        );
    }

    #[test]
    fn missing_from_date_and_message_id_are_added_from_the_stamp() {
        let mut input = &b"Subject: s\n\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(
            section.missing("me@x.test", Some("Ann Smith"), "h.test", &stamp()),
            strings(&[
                "From: Ann Smith <me@x.test>",
                "Date: Mon, 2 Mar 2026 10:00:00 +0100",
                "Message-ID: <20260302090000.0000000000000abc@h.test>",
            ])
        );
        assert_eq!(
            section.missing("", None, "h.test", &stamp())[0],
            "From: MAILER-DAEMON@h.test"
        );
        assert_eq!(
            section.missing("me@x.test", Some("  "), "h.test", &stamp())[0],
            "From: me@x.test"
        );
    }

    #[test]
    fn present_headers_are_not_added_again_whatever_their_case() {
        let mut input = &b"FROM: a@x.test\ndate: d\nMessage-Id: <m@x>\n\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert!(section.missing("a@x.test", None, "h", &stamp()).is_empty());
    }

    #[test]
    fn bcc_is_removed_and_line_endings_become_crlf() {
        let message = prepared(
            b"From: a@x.test\nBcc: s@x.test,\n  t@x.test\nResent-Bcc: u@x\nDate: d\n\
              Message-ID: <m@x>\nSubject: s\r\n\r\n.dot\nbare\rcr\r\nlast",
            "a@x.test",
            None,
        );
        assert_eq!(
            message,
            "From: a@x.test\r\nDate: d\r\nMessage-ID: <m@x>\r\nSubject: s\r\n\r\n\
             .dot\r\nbare\r\ncr\r\nlast\r\n"
        );
    }

    #[test]
    fn added_headers_end_the_header_section() {
        let message = prepared(b"Subject: s\n\nbody\n", "a@x.test", None);
        assert!(
            message.starts_with("Subject: s\r\nFrom: a@x.test\r\nDate: Mon, 2 Mar 2026"),
            "{message}"
        );
        assert!(message.ends_with("@h.test>\r\n\r\nbody\r\n"), "{message}");
    }

    #[test]
    fn an_oversized_header_section_is_refused() {
        let mut input = Vec::new();
        while input.len() <= MAX_HEADER_SECTION {
            input.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\n");
        }
        let error = HeaderSection::read(&mut &input[..]).unwrap_err();
        assert_eq!(error.to_string(), "the header section is over 1024 KiB");
    }

    #[test]
    fn display_names_are_quoted_or_encoded_when_needed() {
        assert_eq!(display_name("Ann Smith"), "Ann Smith");
        assert_eq!(display_name("Smith, Ann"), "\"Smith, Ann\"");
        assert_eq!(display_name("Zoë"), "=?utf-8?b?Wm/Dqw==?=");
        assert_eq!(display_name("a \"b\""), "\"a \\\"b\\\"\"");
    }

    #[test]
    fn field_names_are_printable_ascii_before_a_colon() {
        assert_eq!(field_name(b"Subject: x").as_deref(), Some("Subject"));
        assert_eq!(field_name(b"Subject : x").as_deref(), Some("Subject"));
        assert_eq!(field_name(b"not a header: x"), None);
        assert_eq!(field_name(b": x"), None);
        assert_eq!(field_name(b"no colon"), None);
    }
}

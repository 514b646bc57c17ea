//! SMTP replies, both ways: the one `Reply` and `EnhancedCode` that the
//! server writes (RFC 5321 §4.2: `code SP text` on the last line, `code "-"
//! text` on the others; RFC 2034 §3: the enhanced code on every line) and
//! that the client parses from a peer (`parse_reply`, [`ReplyBuffer`]),
//! bounded so a hostile server cannot make us buffer without end.

use std::borrow::Cow;
use std::fmt;

/// Longest reply we accept before calling the peer broken (RFC 5321 §4.5.3.1.5
/// allows 512 octets per line; multi-line EHLO replies are a few KiB).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Longest reply text kept for the queue, logs and DSNs: RFC 5321
/// §4.5.3.1.5 allows 512 octets per reply line; this keeps the usual
/// multi-line refusals whole while a DSN's `Diagnostic-Code: smtp; ...` line
/// stays below RFC 5322's 998 octets.
pub const MAX_REPLY_TEXT: usize = 900;

/// An RFC 3463 enhanced status code `class.subject.detail`: class 2
/// (success), 4 (persistent transient) or 5 (permanent); subject 1
/// addressing, 2 mailbox, 3 mail system, 4 network, 5 protocol, 6 content,
/// 7 security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl EnhancedCode {
    /// A code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode(class, subject, detail)
    }

    /// The class: 2, 4 or 5.
    pub const fn class(self) -> u8 {
        self.0
    }

    /// The same subject and detail in another class (e.g. a 5.x.y refusal
    /// we treat as temporary becomes 4.x.y).
    pub const fn with_class(self, class: u8) -> EnhancedCode {
        EnhancedCode(class, self.1, self.2)
    }

    /// Parses `"5.1.1"`; `None` unless it is a well-formed RFC 3463 code.
    pub fn parse(text: &str) -> Option<EnhancedCode> {
        let mut parts = text.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        if parts.next().is_some()
            || !matches!(class, 2 | 4 | 5)
            || !(1..=3).contains(&subject.len())
            || !(1..=3).contains(&detail.len())
        {
            return None;
        }
        Some(EnhancedCode(
            class,
            subject.parse().ok()?,
            detail.parse().ok()?,
        ))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
///
/// A parsed reply keeps its enhanced code apart from the text, as a built
/// one does: the text lines never start with it, so `to_wire` gives the
/// reply back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    /// `None` for the greeting and the EHLO/HELO replies we write, which RFC
    /// 2034 §3 exempts (an enhanced code there would break EHLO keyword
    /// parsing), and for parsed replies that carry none.
    enhanced: Option<EnhancedCode>,
    lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (greeting, EHLO, HELO only).
    pub fn plain(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        debug_assert!(!lines.is_empty(), "a reply has at least one line");
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// The same reply with one more line of text.
    pub fn with_line(mut self, text: impl Into<Cow<'static, str>>) -> Reply {
        self.lines.push(text.into());
        self
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, when the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines, without codes.
    pub fn lines(&self) -> &[Cow<'static, str>] {
        &self.lines
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (354 after DATA, 334 during AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced code, or one derived from the reply class (RFC 3463 §3.1:
    /// `X.0.0` when nothing more specific is known).
    pub fn status(&self) -> EnhancedCode {
        self.enhanced.unwrap_or(match self.code / 100 {
            2 => EnhancedCode(2, 0, 0),
            5 => EnhancedCode(5, 0, 0),
            _ => EnhancedCode(4, 0, 0),
        })
    }

    /// The reply on one line, as stored in the queue and quoted in a DSN:
    /// `"550 5.1.1 text more text"`. A reply longer than [`MAX_REPLY_TEXT`]
    /// is cut there and ends in "...".
    pub fn one_line(&self) -> String {
        let mut text = self.code.to_string();
        if let Some(enhanced) = self.enhanced {
            text.push(' ');
            text.push_str(&enhanced.to_string());
        }
        for line in &self.lines {
            if !line.is_empty() {
                text.push(' ');
                text.push_str(line);
            }
            if text.len() > MAX_REPLY_TEXT {
                break;
            }
        }
        if text.len() > MAX_REPLY_TEXT {
            let mut end = MAX_REPLY_TEXT - 3;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        text
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let last = self.lines.len().saturating_sub(1);
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            // Writing to a Vec cannot fail.
            let _ = match self.enhanced {
                Some(enhanced) => write!(out, "{}{separator}{enhanced} {line}\r\n", self.code),
                None => write!(out, "{}{separator}{line}\r\n", self.code),
            };
        }
    }

    /// The wire form as a string (for logs and tests).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for Reply {
    /// The reply on one line (lines joined by " / "), for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for (index, line) in self.lines.iter().enumerate() {
            f.write_str(if index == 0 { " " } else { " / " })?;
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// A reply the peer sent that is not SMTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line did not start with a three-digit code and a separator.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// The lines of a multi-line reply carried different codes.
    #[error("reply code changed within a multi-line reply ({first} then {then})")]
    CodeChanged { first: u16, then: u16 },
    /// The reply went on past the size limit.
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
}

/// Parses one complete reply from the start of `input`.
///
/// Returns the reply and the number of bytes it used, or `None` when more
/// input is needed. RFC 5321 §4.2.1: continuation lines have a hyphen after
/// the code, the last line a space (or nothing). Lines end with CRLF; a bare
/// LF is tolerated from peers. The enhanced code (RFC 2034 §4) is taken from
/// the first line when its class matches the reply's, and removed from
/// every line that repeats it.
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut offset = 0;
    let mut code: Option<u16> = None;
    let mut enhanced: Option<EnhancedCode> = None;
    let mut lines: Vec<Cow<'static, str>> = Vec::new();
    loop {
        let rest = &input[offset..];
        let Some(end) = memchr::memchr(b'\n', rest) else {
            if input.len() > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let raw = &rest[..end];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        offset += end + 1;
        if offset > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let line = String::from_utf8_lossy(raw);
        let bytes = line.as_bytes();
        // RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39.
        if bytes.len() < 3
            || !(b'2'..=b'5').contains(&bytes[0])
            || !(b'0'..=b'5').contains(&bytes[1])
            || !bytes[2].is_ascii_digit()
        {
            return Err(ReplyError::Malformed(quoted(&line)));
        }
        let this_code: u16 = line[..3]
            .parse()
            .map_err(|_| ReplyError::Malformed(quoted(&line)))?;
        let (last, text) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed(quoted(&line))),
        };
        match code {
            None => {
                code = Some(this_code);
                enhanced = text
                    .split(' ')
                    .next()
                    .and_then(EnhancedCode::parse)
                    .filter(|enhanced| u16::from(enhanced.0) == this_code / 100);
            }
            Some(first) if first != this_code => {
                return Err(ReplyError::CodeChanged {
                    first,
                    then: this_code,
                });
            }
            Some(_) => {}
        }
        let text = enhanced
            .and_then(|enhanced| strip_enhanced(text, enhanced))
            .unwrap_or(text);
        lines.push(Cow::Owned(printable(text)));
        if last {
            return Ok(Some((
                Reply {
                    code: code.expect("set on the first line"),
                    enhanced,
                    lines,
                },
                offset,
            )));
        }
    }
}

/// The line without its leading enhanced code, when it starts with `code`.
fn strip_enhanced(line: &str, code: EnhancedCode) -> Option<&str> {
    match line.split_once(' ') {
        Some((first, rest)) if EnhancedCode::parse(first) == Some(code) => Some(rest),
        None if EnhancedCode::parse(line) == Some(code) => Some(""),
        _ => None,
    }
}

/// Reply text made safe to store, log and put in a DSN header: RFC 5321
/// §4.2 allows only HT, SP and printable characters, so control characters
/// (a bare CR could start a new header line) become spaces; a line is cut
/// to [`MAX_REPLY_TEXT`] characters.
fn printable(text: &str) -> String {
    text.chars()
        .take(MAX_REPLY_TEXT)
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// A malformed line as quoted in an error: printable and short, since the
/// error ends up in logs, the queue and maybe a DSN.
fn quoted(line: &str) -> String {
    printable(&line.chars().take(MAX_QUOTED).collect::<String>())
}

/// Characters of a malformed reply line kept in the error.
const MAX_QUOTED: usize = 128;

/// Bytes received from a peer and not yet parsed into replies: the bounded
/// reading both client pumps (delivery and sendmail) share. Parsing starts
/// over from the first byte only once a new line has arrived, so a peer
/// sending one byte at a time costs linear, not quadratic, work.
#[derive(Debug, Default)]
pub struct ReplyBuffer {
    bytes: Vec<u8>,
    /// Bytes known to hold no complete reply (no LF after this point).
    scanned: usize,
}

impl ReplyBuffer {
    /// An empty buffer.
    pub fn new() -> ReplyBuffer {
        ReplyBuffer {
            bytes: Vec::with_capacity(4096),
            scanned: 0,
        }
    }

    /// The next complete reply, if the bytes so far hold one; its bytes are
    /// consumed. `Err` once the peer sent something that is not SMTP or
    /// more than [`MAX_REPLY_BYTES`] without ending a reply.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if memchr::memchr(b'\n', &self.bytes[self.scanned..]).is_none() {
            self.scanned = self.bytes.len();
            if self.bytes.len() > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        }
        match parse_reply(&self.bytes)? {
            Some((reply, used)) => {
                self.bytes.drain(..used);
                self.scanned = 0;
                Ok(Some(reply))
            }
            None => {
                self.scanned = self.bytes.len();
                Ok(None)
            }
        }
    }

    /// Where the pump appends what it reads (e.g. `read_buf`).
    pub fn input(&mut self) -> &mut Vec<u8> {
        self.bytes.reserve(4096);
        &mut self.bytes
    }

    /// True when nothing unparsed is waiting: bytes nobody asked for would
    /// be read as the next command's reply (and after STARTTLS they came in
    /// plaintext: RFC 3207 §4.2).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads a wire reply back: (code, enhanced code text, lines).
    fn parse_wire(wire: &str) -> (u16, Vec<String>, Vec<String>) {
        let mut code = 0;
        let mut enhanced = Vec::new();
        let mut lines = Vec::new();
        let rows: Vec<&str> = wire.split_terminator("\r\n").collect();
        for (index, row) in rows.iter().enumerate() {
            code = row[..3].parse().unwrap();
            let separator = row.as_bytes()[3];
            assert_eq!(separator == b' ', index == rows.len() - 1, "{wire:?}");
            let (status, text) = row[4..].split_once(' ').unwrap();
            enhanced.push(status.to_string());
            lines.push(text.to_string());
        }
        (code, enhanced, lines)
    }

    #[test]
    fn single_line_reply_has_enhanced_code() {
        let reply = Reply::new(250, EnhancedCode(2, 1, 0), "Ok");
        assert_eq!(reply.to_wire(), "250 2.1.0 Ok\r\n");
    }

    #[test]
    fn multi_line_plain_reply() {
        let reply = Reply::plain(250, vec!["mx.example".into(), "PIPELINING".into()]);
        assert_eq!(reply.to_wire(), "250-mx.example\r\n250 PIPELINING\r\n");
    }

    fn parse_all(text: &str) -> Reply {
        let (reply, used) = parse_reply(text.as_bytes())
            .expect("valid reply")
            .expect("complete reply");
        assert_eq!(used, text.len());
        reply
    }

    #[test]
    fn single_line_reply_with_enhanced_code() {
        let reply = parse_all("550 5.1.1 <a@b>: no such user\r\n");
        assert_eq!(reply.code(), 550);
        assert_eq!(reply.enhanced(), Some(EnhancedCode::new(5, 1, 1)));
        assert!(reply.is_permanent());
        assert_eq!(reply.one_line(), "550 5.1.1 <a@b>: no such user");
    }

    #[test]
    fn multi_line_reply_is_joined_and_repeated_codes_dropped() {
        let reply = parse_all("451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third\r\n");
        assert_eq!(reply.lines().len(), 3);
        assert_eq!(reply.one_line(), "451 4.3.0 first second third");
        assert!(reply.is_transient());
    }

    #[test]
    fn incomplete_reply_asks_for_more() {
        assert_eq!(parse_reply(b"250-first\r\n250 sec").unwrap(), None);
        assert_eq!(parse_reply(b"").unwrap(), None);
    }

    #[test]
    fn parses_only_the_first_of_several_pipelined_replies() {
        let input = b"250 2.1.0 ok\r\n550 5.1.1 no\r\n";
        let (reply, used) = parse_reply(input).unwrap().unwrap();
        assert_eq!(reply.code(), 250);
        let (second, _) = parse_reply(&input[used..]).unwrap().unwrap();
        assert_eq!(second.code(), 550);
    }

    #[test]
    fn bare_code_and_bare_lf_are_tolerated() {
        let reply = parse_all("250\n");
        assert_eq!(reply.code(), 250);
        assert_eq!(reply.enhanced(), None);
        assert_eq!(reply.status(), EnhancedCode::new(2, 0, 0));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_reply(b"hello there\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"250x\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeChanged { .. })
        ));
    }

    #[test]
    fn a_malformed_line_is_quoted_short_and_printable() {
        let line = format!("hello\x1b[2J{}\r\n", "w".repeat(10_000));
        match parse_reply(line.as_bytes()) {
            Err(ReplyError::Malformed(quoted)) => {
                assert_eq!(quoted.chars().count(), MAX_QUOTED);
                assert!(!quoted.chars().any(char::is_control), "{quoted:?}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn endless_reply_is_too_long() {
        let mut input = Vec::new();
        while input.len() <= MAX_REPLY_BYTES {
            input.extend_from_slice(b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        assert_eq!(parse_reply(&input), Err(ReplyError::TooLong));
    }

    #[test]
    fn enhanced_code_must_match_reply_class() {
        let reply = parse_all("250 5.1.1 odd\r\n");
        assert_eq!(reply.enhanced(), None);
        assert_eq!(
            EnhancedCode::parse("5.1.10"),
            Some(EnhancedCode::new(5, 1, 10))
        );
        assert_eq!(EnhancedCode::parse("3.1.1"), None);
        assert_eq!(EnhancedCode::parse("5.1"), None);
    }

    #[test]
    fn reply_codes_outside_the_grammar_are_malformed() {
        // RFC 5321 §4.2: first digit 2-5, second 0-5.
        for bad in [
            "199 x\r\n",
            "600 x\r\n",
            "290 x\r\n",
            "25 x\r\n",
            "2a0 x\r\n",
        ] {
            assert!(
                matches!(parse_reply(bad.as_bytes()), Err(ReplyError::Malformed(_))),
                "{bad:?} must be malformed"
            );
        }
        assert_eq!(parse_all("559 x\r\n").code(), 559);
    }

    #[test]
    fn control_characters_in_reply_text_become_spaces() {
        let reply = parse_all("550 5.1.1 a\rInjected: yes\x1b[31m\x00 end\r\n");
        assert_eq!(reply.one_line(), "550 5.1.1 a Injected: yes [31m  end");
        assert!(!reply.one_line().chars().any(char::is_control));
    }

    #[test]
    fn long_replies_are_cut_for_storage() {
        let long = format!("550 5.1.1 {}\r\n", "y".repeat(4000));
        let reply = parse_all(&long);
        let text = reply.one_line();
        assert_eq!(text.len(), MAX_REPLY_TEXT);
        assert!(text.starts_with("550 5.1.1 yyy") && text.ends_with("..."));
        let mut many = String::new();
        for _ in 0..200 {
            many.push_str("451-4.3.0 more and more text\r\n");
        }
        many.push_str("451 4.3.0 end\r\n");
        assert!(parse_all(&many).one_line().len() <= MAX_REPLY_TEXT);
        // Multi-byte text is cut on a character boundary.
        let wide = format!("550 {}\r\n", "\u{e9}".repeat(2000));
        assert!(parse_all(&wide).one_line().ends_with("..."));
    }

    #[test]
    fn a_parsed_reply_writes_back_the_same_wire_form() {
        let wire = "250-mx.example\r\n250 PIPELINING\r\n";
        assert_eq!(parse_all(wire).to_wire(), wire);
        let wire = "550-5.1.1 first\r\n550 5.1.1 second\r\n";
        let reply = parse_all(wire);
        assert_eq!(reply.lines(), ["first", "second"]);
        assert_eq!(reply.to_wire(), wire);
        assert_eq!(
            reply,
            Reply::new(550, EnhancedCode(5, 1, 1), "first").with_line("second")
        );
    }

    #[test]
    fn the_reply_buffer_yields_pipelined_replies_one_by_one() {
        let mut buffer = ReplyBuffer::new();
        buffer.input().extend_from_slice(b"250 2.1.0 ok\r\n55");
        assert_eq!(buffer.next_reply().unwrap().unwrap().code(), 250);
        assert_eq!(buffer.next_reply().unwrap(), None);
        assert!(!buffer.is_empty());
        buffer.input().extend_from_slice(b"0 5.1.1 no\r\n");
        assert_eq!(buffer.next_reply().unwrap().unwrap().code(), 550);
        assert!(buffer.is_empty());
    }

    #[test]
    fn the_reply_buffer_gives_up_on_an_endless_line() {
        let mut buffer = ReplyBuffer::new();
        buffer
            .input()
            .extend(std::iter::repeat_n(b'2', MAX_REPLY_BYTES + 1));
        assert_eq!(buffer.next_reply(), Err(ReplyError::TooLong));
    }

    proptest! {
        #[test]
        fn any_bytes_from_a_peer_parse_without_panic(
            bytes in "([2-5][0-5][0-9][ -]?[^\n]{0,40}\r?\n){0,12}"
                .prop_map(String::into_bytes)
                .prop_flat_map(|lines| {
                    // Then anything at all: binary noise, bare CR, NUL.
                    proptest::collection::vec(any::<u8>(), 0..64).prop_map(move |noise| {
                        let mut bytes = lines.clone();
                        bytes.extend(noise);
                        bytes
                    })
                }),
        ) {
            if let Ok(Some((reply, used))) = parse_reply(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert!((200..600).contains(&reply.code()));
                let text = reply.one_line();
                prop_assert!(text.len() <= MAX_REPLY_TEXT);
                prop_assert!(!text.chars().any(|c| c.is_control() && c != '\t'));
            }
        }

        #[test]
        fn written_replies_parse_back_equal(
            code in 200u16..560,
            detail in 0u16..20,
            lines in proptest::collection::vec("[!-~][ -~]{0,39}", 1..5),
        ) {
            prop_assume!(code % 100 < 60);
            let reply = Reply {
                code,
                enhanced: matches!(code / 100, 2 | 4 | 5)
                    .then(|| EnhancedCode((code / 100) as u8, 5, detail)),
                lines: lines.iter().cloned().map(Cow::Owned).collect(),
            };
            let wire = reply.to_wire();
            let (parsed, used) = parse_reply(wire.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(parsed.code(), code);
            prop_assert_eq!(parsed.to_wire(), wire);
        }

        #[test]
        fn wire_form_round_trips(
            code in 200u16..600,
            detail in 0u16..20,
            lines in proptest::collection::vec("[ -~]{1,40}", 1..5),
        ) {
            let reply = Reply {
                code,
                enhanced: Some(EnhancedCode((code / 100) as u8, 5, detail)),
                lines: lines.iter().cloned().map(Cow::Owned).collect(),
            };
            let (parsed_code, enhanced, parsed_lines) = parse_wire(&reply.to_wire());
            prop_assert_eq!(parsed_code, code);
            let expected = format!("{}.5.{}", code / 100, detail);
            prop_assert!(enhanced.iter().all(|e| *e == expected));
            prop_assert_eq!(parsed_lines, lines);
        }
    }
}

// RFC 5321 §4.2, the reply grammar `parse_reply` implements:
//
//   Reply-line     = *( Reply-code "-" [ textstring ] CRLF )
//                    Reply-code [ SP textstring ] CRLF
//   Reply-code     = %x32-35 %x30-35 %x30-39
//   textstring     = 1*(%d09 / %d32-126) ; HT, SP, Printable US-ASCII
//
// RFC 3463 §2, the enhanced status code at the start of the text:
//
//   status-code    = class "." subject "." detail
//   class          = "2" / "4" / "5"
//   subject        = 1*3digit
//   detail         = 1*3digit

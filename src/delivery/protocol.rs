//! The client side of SMTP as pure functions: parsing replies, reading EHLO
//! capabilities, formatting commands, and dot-stuffing the body. No sockets:
//! `client` feeds bytes in and writes what these functions produce.

use std::fmt;

use base64::Engine as _;

/// Longest reply we accept before calling the peer broken (RFC 5321 §4.5.3.1.5
/// allows 512 octets per line; multi-line EHLO replies are a few KiB).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Longest reply text kept for the queue, logs and DSNs: RFC 5321
/// §4.5.3.1.5 allows 512 octets per reply line; this keeps the usual
/// multi-line refusals whole while a DSN's `Diagnostic-Code: smtp; ...` line
/// stays below RFC 5322's 998 octets.
pub const MAX_REPLY_TEXT: usize = 900;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u8,
    /// The subject (1 addressing, 2 mailbox, 3 mail system, 4 network, 5
    /// protocol, 6 content, 7 security).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// A code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode {
            class,
            subject,
            detail,
        }
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
        Some(EnhancedCode {
            class,
            subject: subject.parse().ok()?,
            detail: detail.parse().ok()?,
        })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete SMTP reply (all lines of a multi-line reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code at the start of the first line's text, if any.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (e.g. 354 after DATA, 334 during AUTH).
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
            2 => EnhancedCode::new(2, 0, 0),
            5 => EnhancedCode::new(5, 0, 0),
            _ => EnhancedCode::new(4, 0, 0),
        })
    }

    /// The reply on one line: `"550 5.1.1 text more text"`. Repeated enhanced
    /// codes on continuation lines are left out; a reply longer than
    /// [`MAX_REPLY_TEXT`] is cut there and ends in "...".
    pub fn one_line(&self) -> String {
        let mut text = self.code.to_string();
        for (index, line) in self.lines.iter().enumerate() {
            let line = if index > 0 {
                strip_enhanced(line, self.enhanced)
            } else {
                line.as_str()
            };
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
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

fn strip_enhanced(line: &str, enhanced: Option<EnhancedCode>) -> &str {
    match (enhanced, line.split_once(' ')) {
        (Some(code), Some((first, rest))) if EnhancedCode::parse(first) == Some(code) => rest,
        (Some(code), None) if EnhancedCode::parse(line) == Some(code) => "",
        _ => line,
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
/// LF is tolerated from peers.
pub fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut offset = 0;
    let mut code: Option<u16> = None;
    let mut lines = Vec::new();
    loop {
        let rest = &input[offset..];
        let Some(end) = rest.iter().position(|&byte| byte == b'\n') else {
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
            None => code = Some(this_code),
            Some(first) if first != this_code => {
                return Err(ReplyError::CodeChanged {
                    first,
                    then: this_code,
                });
            }
            Some(_) => {}
        }
        lines.push(printable(text));
        if last {
            let code = code.expect("set on the first line");
            let enhanced = lines
                .first()
                .and_then(|first| first.split(' ').next())
                .and_then(EnhancedCode::parse)
                .filter(|enhanced| u16::from(enhanced.class) == code / 100);
            return Ok(Some((
                Reply {
                    code,
                    enhanced,
                    lines,
                },
                offset,
            )));
        }
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

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` means SIZE without a fixed limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 4954: mechanisms offered, upper case.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads the keywords of an EHLO reply (every line but the first, which
    /// is the server's greeting text).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut capabilities = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => capabilities.pipelining = true,
                "SIZE" => {
                    capabilities.size = Some(
                        words
                            .next()
                            .and_then(|limit| limit.parse().ok())
                            .unwrap_or(0),
                    )
                }
                "8BITMIME" => capabilities.eight_bit_mime = true,
                "SMTPUTF8" => capabilities.smtputf8 = true,
                "STARTTLS" => capabilities.starttls = true,
                "ENHANCEDSTATUSCODES" => capabilities.enhanced_status_codes = true,
                "AUTH" => capabilities
                    .auth
                    .extend(words.map(|mechanism| mechanism.to_ascii_uppercase())),
                _ => {}
            }
        }
        capabilities
    }

    /// True when the server's SIZE limit is below `size` (RFC 1870 §4: a
    /// limit of 0 means none is declared).
    pub fn rejects_size(&self, size: u64) -> bool {
        matches!(self.size, Some(limit) if limit > 0 && size > limit)
    }

    /// True when AUTH offers `mechanism`.
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth
            .iter()
            .any(|offered| offered.eq_ignore_ascii_case(mechanism))
    }
}

/// `MAIL FROM:<sender>` with the parameters the transaction needs.
pub fn mail_from(sender: &str, size: Option<u64>, eight_bit: bool, smtputf8: bool) -> String {
    let mut line = format!("MAIL FROM:<{sender}>");
    if let Some(size) = size {
        line.push_str(&format!(" SIZE={size}"));
    }
    if eight_bit {
        line.push_str(" BODY=8BITMIME");
    }
    if smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    line.push_str("\r\n");
    line
}

/// `RCPT TO:<recipient>`.
pub fn rcpt_to(recipient: &str) -> String {
    format!("RCPT TO:<{recipient}>\r\n")
}

/// The initial response of AUTH PLAIN (RFC 4616): `\0user\0password`, base64.
pub fn auth_plain(username: &str, password: &str) -> String {
    let mut token = Vec::with_capacity(username.len() + password.len() + 2);
    token.push(0);
    token.extend_from_slice(username.as_bytes());
    token.push(0);
    token.extend_from_slice(password.as_bytes());
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

/// One base64 line, as AUTH LOGIN sends the user name and then the password.
pub fn base64_line(text: &str) -> String {
    format!(
        "{}\r\n",
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
    )
}

/// Dot-stuffs a body while it streams (RFC 5321 §4.5.2: a line starting with
/// "." gets one more "."), and ends it with `CRLF . CRLF`, adding the CRLF
/// when the body does not end with one.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last two bytes seen; starts as CRLF so an empty body needs none.
    tail: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a body.
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            tail: *b"\r\n",
        }
    }

    /// Appends `input`, stuffed, to `output`.
    pub fn encode(&mut self, input: &[u8], output: &mut Vec<u8>) {
        output.reserve(input.len() + 8);
        if self.at_line_start && input.first() == Some(&b'.') {
            output.push(b'.');
        }
        // Every other line-leading dot follows an LF inside `input`; memmem
        // finds them without a per-octet loop (a 4 KiB body usually has none).
        let mut start = 0;
        for newline in memchr::memmem::find_iter(input, b"\n.") {
            let dot = newline + 1;
            output.extend_from_slice(&input[start..dot]);
            output.push(b'.');
            start = dot;
        }
        output.extend_from_slice(&input[start..]);
        if let Some(&last) = input.last() {
            self.at_line_start = last == b'\n';
        }
        match input {
            [] => {}
            [only] => self.tail = [self.tail[1], *only],
            [.., second_last, last] => self.tail = [*second_last, *last],
        }
    }

    /// Appends the end of data: CRLF if the body did not end with one, then
    /// `.` CRLF, and resets for the next body.
    pub fn finish(&mut self, output: &mut Vec<u8>) {
        if &self.tail != b"\r\n" {
            output.extend_from_slice(b"\r\n");
        }
        output.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert!(reply.is_permanent());
        assert_eq!(reply.one_line(), "550 5.1.1 <a@b>: no such user");
    }

    #[test]
    fn multi_line_reply_is_joined_and_repeated_codes_dropped() {
        let reply = parse_all("451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third\r\n");
        assert_eq!(reply.lines.len(), 3);
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
        assert_eq!(reply.code, 250);
        let (second, _) = parse_reply(&input[used..]).unwrap().unwrap();
        assert_eq!(second.code, 550);
    }

    #[test]
    fn bare_code_and_bare_lf_are_tolerated() {
        let reply = parse_all("250\n");
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced, None);
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
        assert_eq!(reply.enhanced, None);
        assert_eq!(
            EnhancedCode::parse("5.1.10"),
            Some(EnhancedCode::new(5, 1, 10))
        );
        assert_eq!(EnhancedCode::parse("3.1.1"), None);
        assert_eq!(EnhancedCode::parse("5.1"), None);
    }

    #[test]
    fn ehlo_capabilities_are_read() {
        let reply = parse_all(
            "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250-STARTTLS\r\n250-auth plain login\r\n250 SMTPUTF8\r\n",
        );
        let capabilities = Capabilities::from_ehlo(&reply);
        assert!(capabilities.pipelining);
        assert_eq!(capabilities.size, Some(1000));
        assert!(capabilities.rejects_size(1001));
        assert!(!capabilities.rejects_size(1000));
        assert!(capabilities.eight_bit_mime && capabilities.smtputf8 && capabilities.starttls);
        assert!(capabilities.offers_auth("PLAIN") && capabilities.offers_auth("login"));
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
        assert_eq!(parse_all("559 x\r\n").code, 559);
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
    fn garbage_size_limits_mean_no_limit() {
        for size in [
            "SIZE garbage",
            "SIZE -5",
            "SIZE 1e9",
            "SIZE 99999999999999999999999",
        ] {
            let reply = parse_all(&format!("250-mx\r\n250 {size}\r\n"));
            let capabilities = Capabilities::from_ehlo(&reply);
            assert_eq!(capabilities.size, Some(0), "{size}");
            assert!(!capabilities.rejects_size(u64::MAX), "{size}");
        }
    }

    #[test]
    fn size_zero_means_no_limit() {
        let reply = parse_all("250-mx\r\n250 SIZE\r\n");
        let capabilities = Capabilities::from_ehlo(&reply);
        assert_eq!(capabilities.size, Some(0));
        assert!(!capabilities.rejects_size(u64::MAX));
    }

    #[test]
    fn commands_are_formatted() {
        assert_eq!(mail_from("", None, false, false), "MAIL FROM:<>\r\n");
        assert_eq!(
            mail_from("a@b", Some(12), true, true),
            "MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(rcpt_to("c@d"), "RCPT TO:<c@d>\r\n");
        assert_eq!(auth_plain("u", "p"), "AUTH PLAIN AHUAcA==\r\n");
        assert_eq!(base64_line("u"), "dQ==\r\n");
    }

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::new();
        let mut output = Vec::new();
        for chunk in chunks {
            stuffer.encode(chunk, &mut output);
        }
        stuffer.finish(&mut output);
        output
    }

    #[test]
    fn leading_dots_are_doubled_across_chunk_boundaries() {
        assert_eq!(stuff(&[b".a\r\n.", b"b\r\n"]), b"..a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n", b".\r\n"]), b"a\r\n..\r\n.\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(stuff(&[b"a"]), b"a\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r"]), b"a\r\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n"]), b"a\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r", b"\n"]), b"a\r\n.\r\n");
        assert_eq!(stuff(&[]), b".\r\n");
    }

    /// Undoes stuffing the way a server does (RFC 5321 §4.5.2).
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let text = wire
            .strip_suffix(b".\r\n")
            .expect("ends with the terminator");
        let mut output = Vec::new();
        for line in text.split_inclusive(|&byte| byte == b'\n') {
            output.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        output
    }

    /// Stuffing octet by octet, as RFC 5321 §4.5.2 words it: a dot at the
    /// start of the body or after any LF gets another dot.
    fn stuff_bytewise(body: &[u8]) -> Vec<u8> {
        let mut output = Vec::new();
        let mut at_line_start = true;
        for &byte in body {
            if at_line_start && byte == b'.' {
                output.push(b'.');
            }
            output.push(byte);
            at_line_start = byte == b'\n';
        }
        output
    }

    proptest! {
        #[test]
        fn stuffing_any_bytes_in_any_pieces_matches_the_bytewise_rule(
            body in proptest::collection::vec(
                prop_oneof![Just(b'.'), Just(b'\n'), Just(b'\r'), any::<u8>()],
                0..64,
            ),
            first in 0usize..64,
            second in 0usize..64,
        ) {
            let first = first.min(body.len());
            let second = second.clamp(first, body.len());
            let mut stuffer = DotStuffer::new();
            let mut output = Vec::new();
            for piece in [&body[..first], &body[first..second], &body[second..]] {
                stuffer.encode(piece, &mut output);
            }
            prop_assert_eq!(output, stuff_bytewise(&body));
        }

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
                prop_assert!((200..600).contains(&reply.code));
                let text = reply.one_line();
                prop_assert!(text.len() <= MAX_REPLY_TEXT);
                prop_assert!(!text.chars().any(|c| c.is_control() && c != '\t'));
                let _ = Capabilities::from_ehlo(&reply);
            }
        }

        #[test]
        fn stuffing_round_trips_crlf_bodies(
            lines in proptest::collection::vec("[.a-z\u{e9} ]{0,8}", 0..12),
            split in 0usize..200,
        ) {
            let mut body = Vec::new();
            for line in &lines {
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            let split = split.min(body.len());
            let wire = stuff(&[&body[..split], &body[split..]]);
            prop_assert_eq!(unstuff(&wire), body.clone());
            // No line of the wire form is a lone "." except the terminator.
            let terminator = wire.len() - 3;
            prop_assert!(!wire[..terminator].windows(5).any(|w| w == b"\r\n.\r\n"));
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

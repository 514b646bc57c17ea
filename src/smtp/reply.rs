//! SMTP replies: a code, an RFC 3463 enhanced status code and text lines,
//! and their wire form (RFC 5321 §4.2: `code SP text` on the last line,
//! `code "-" text` on the others; RFC 2034 §3: the enhanced code on every line).

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    /// `None` only for the greeting and the EHLO/HELO replies, which RFC 2034
    /// §3 exempts (an enhanced code there would break EHLO keyword parsing).
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

    proptest! {
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

//! Command lines out of the client's byte stream, with their length limits.
//! Pure: the connection appends what it reads to a buffer and takes lines
//! out of it here.
//!
//! Rules:
//! - A line ends at LF; a CR before it is removed too. (A bare LF is taken
//!   as a line end in commands, as most servers do; in message data it is
//!   refused, see `smtp::data`.)
//! - RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its
//!   CRLF.
//! - RFC 4954 §4: the client's responses to `334` challenges, and the
//!   initial response on the AUTH command, may carry up to 12,288 octets of
//!   base64 (SASL responses can be long, e.g. Kerberos tickets); the AUTH
//!   command may have its verb and mechanism name besides.
//! - An over-long line of any kind is read to its end and dropped without
//!   being buffered, then reported as [`Line::TooLong`] so the session can
//!   answer it (RFC 4954 §4: `500 5.5.6` for an AUTH line).

use bytes::BytesMut;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// RFC 4954 §4: the longest SASL response in base64, on a line of its own
/// or on the AUTH command, without the CRLF.
pub const MAX_AUTH_RESPONSE: usize = 12_288;

/// RFC 4422 §3.1: a SASL mechanism name has at most 20 characters.
const MAX_MECHANISM: usize = 20;

/// Which limit a line is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Any command but AUTH: [`MAX_COMMAND_LINE`].
    Command,
    /// An AUTH command, or a response within an AUTH exchange: up to
    /// [`MAX_AUTH_RESPONSE`] octets of response.
    Auth,
}

impl LineKind {
    /// The kind of a line that starts with `start`, and the most octets it
    /// may have with its line end; `auth_exchange` is true while the
    /// session waits for a response to a `334` challenge.
    fn of(start: &[u8], auth_exchange: bool) -> (LineKind, usize) {
        if auth_exchange {
            return (LineKind::Auth, MAX_AUTH_RESPONSE + 2);
        }
        let auth_command = start
            .get(..5)
            .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH "));
        if !auth_command {
            return (LineKind::Command, MAX_COMMAND_LINE);
        }
        // `AUTH mechanism ` comes before the initial response.
        let mechanism = start[5..]
            .iter()
            .take(MAX_MECHANISM + 1)
            .position(|&b| b == b' ')
            .unwrap_or(MAX_MECHANISM);
        (LineKind::Auth, 5 + mechanism + 1 + MAX_AUTH_RESPONSE + 2)
    }
}

/// One line taken from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its CRLF (or LF).
    Complete(BytesMut),
    /// A line longer than its kind allows; it has been dropped.
    TooLong(LineKind),
}

/// Takes lines out of an input buffer, dropping over-long ones as they
/// arrive so that a client cannot make the buffer grow without bound.
#[derive(Debug, Default)]
pub struct CommandLines {
    /// An over-long line of this kind is being dropped up to its end.
    skipping: Option<LineKind>,
}

impl CommandLines {
    /// Lines at the start of a stream.
    pub fn new() -> CommandLines {
        CommandLines::default()
    }

    /// Takes the next line out of `input`, or returns `None` when `input`
    /// holds no complete line (after dropping the start of an over-long
    /// one). `auth_exchange` is true while the session waits for a response
    /// to a `334` challenge.
    pub fn next(&mut self, input: &mut BytesMut, auth_exchange: bool) -> Option<Line> {
        let Some(end) = memchr::memchr(b'\n', input) else {
            if self.skipping.is_some() {
                input.clear();
            } else if input.len() > MAX_COMMAND_LINE {
                let (kind, limit) = LineKind::of(input, auth_exchange);
                if input.len() > limit {
                    input.clear();
                    self.skipping = Some(kind);
                }
            }
            return None;
        };
        let mut line = input.split_to(end + 1);
        if let Some(kind) = self.skipping.take() {
            return Some(Line::TooLong(kind));
        }
        if line.len() > MAX_COMMAND_LINE {
            let (kind, limit) = LineKind::of(&line, auth_exchange);
            if line.len() > limit {
                return Some(Line::TooLong(kind));
            }
        }
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.truncate(end - 1);
        }
        Some(Line::Complete(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after another and collects every line taken.
    fn lines(pieces: &[&[u8]], auth_exchange: bool) -> (Vec<Line>, BytesMut) {
        let mut lines = CommandLines::new();
        let mut input = BytesMut::new();
        let mut taken = Vec::new();
        for piece in pieces {
            input.extend_from_slice(piece);
            while let Some(line) = lines.next(&mut input, auth_exchange) {
                taken.push(line);
            }
        }
        (taken, input)
    }

    fn complete(text: &[u8]) -> Line {
        Line::Complete(BytesMut::from(text))
    }

    #[test]
    fn lines_end_at_crlf_or_lf_and_a_partial_line_waits() {
        let (taken, rest) = lines(&[b"NOOP\r\nRSET\nQU", b"IT\r\nMAIL"], false);
        assert_eq!(
            taken,
            vec![complete(b"NOOP"), complete(b"RSET"), complete(b"QUIT")]
        );
        assert_eq!(&rest[..], b"MAIL");
    }

    #[test]
    fn a_command_line_may_have_512_octets_with_its_crlf() {
        let longest = [b"NOOP ".as_slice(), &[b'x'; 505], b"\r\n"].concat();
        assert_eq!(longest.len(), 512);
        let (taken, _) = lines(&[&longest], false);
        assert!(matches!(taken[..], [Line::Complete(_)]), "{taken:?}");
        let over = [b"NOOP ".as_slice(), &[b'x'; 506], b"\r\n"].concat();
        let (taken, _) = lines(&[&over, b"QUIT\r\n"], false);
        assert_eq!(
            taken,
            vec![Line::TooLong(LineKind::Command), complete(b"QUIT")]
        );
    }

    #[test]
    fn an_over_long_line_is_dropped_as_it_arrives() {
        let chunk = [b'x'; 4096];
        let mut lines = CommandLines::new();
        let mut input = BytesMut::new();
        for _ in 0..100 {
            input.extend_from_slice(&chunk);
            assert_eq!(lines.next(&mut input, false), None);
            assert!(input.len() <= MAX_COMMAND_LINE + chunk.len());
        }
        input.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(
            lines.next(&mut input, false),
            Some(Line::TooLong(LineKind::Command))
        );
        assert_eq!(lines.next(&mut input, false), Some(complete(b"QUIT")));
    }

    #[test]
    fn auth_responses_may_carry_12288_octets() {
        // RFC 4954 §4, on the AUTH line (any case) and in an exchange.
        let mechanism = "X".repeat(20);
        let response = vec![b'A'; MAX_AUTH_RESPONSE];
        let command = [format!("auth {mechanism} ").as_bytes(), &response, b"\r\n"].concat();
        let (taken, _) = lines(&[&command[..600], &command[600..]], false);
        assert!(matches!(taken[..], [Line::Complete(_)]), "{taken:?}");
        let response = [vec![b'A'; MAX_AUTH_RESPONSE], b"\r\n".to_vec()].concat();
        let (taken, _) = lines(&[&response], true);
        assert!(matches!(taken[..], [Line::Complete(_)]), "{taken:?}");
        // The same line outside an exchange is a command line.
        let (taken, _) = lines(&[&response], false);
        assert_eq!(taken, vec![Line::TooLong(LineKind::Command)]);
    }

    #[test]
    fn auth_responses_over_12288_octets_are_too_long() {
        let mechanism = "X".repeat(20);
        let command = [
            format!("AUTH {mechanism} ").as_bytes(),
            &vec![b'A'; MAX_AUTH_RESPONSE + 1],
            b"\r\n",
        ]
        .concat();
        let (taken, rest) = lines(&[&command[..7000], &command[7000..], b"NOOP\r\n"], false);
        assert_eq!(
            taken,
            vec![Line::TooLong(LineKind::Auth), complete(b"NOOP")]
        );
        assert!(rest.is_empty());
        let response = [vec![b'A'; MAX_AUTH_RESPONSE + 1], b"\r\n".to_vec()].concat();
        let (taken, _) = lines(&[&response], true);
        assert_eq!(taken, vec![Line::TooLong(LineKind::Auth)]);
        // The limit counts from the end of the mechanism's name.
        let command = [b"AUTH PLAIN ".as_slice(), &response].concat();
        let (taken, _) = lines(&[&command], false);
        assert_eq!(taken, vec![Line::TooLong(LineKind::Auth)]);
    }
}

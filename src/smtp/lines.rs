//! Breaks lines longer than RFC 5322 §2.1.1 allows (998 octets, CRLF not
//! counted) while a message streams in, before it is signed and stored, so
//! what is stored is what every next hop accepts (RFC 5321 §4.5.3.1.6
//! lets a receiver refuse longer lines) and what DKIM signed. Pure: octets
//! in, octets out.
//!
//! Rules, as Postfix's `smtp_line_length_limit = 998`:
//! - A header field is folded (RFC 5322 §2.2.3): a CRLF goes in front of
//!   the last space or tab that leaves at most 998 octets on the line.
//!   Unfolding (removing that CRLF) gives the field back unchanged.
//! - A header line with no such whitespace, and any body line, is broken
//!   by inserting CRLF and a space after 998 octets (the space makes the
//!   rest a continuation in a header, and keeps a piece from starting with
//!   a dot or a MIME boundary). Removing each inserted CRLF SP gives the
//!   text back. A break never splits a UTF-8 sequence.
//! - Nothing is dropped or reordered; lines of 998 octets or fewer pass
//!   untouched. The header ends at the first empty line.
//! - Only a CRLF ends a line here (a bare CR or LF is refused by the
//!   intake anyway): a CR just before the LF is not counted.

/// The longest line passed on, without its CRLF (RFC 5322 §2.1.1).
pub const MAX_LINE: usize = 998;

/// What goes in where a line without whitespace to fold at is broken.
const BREAK: &[u8] = b"\r\n ";

/// Breaks the long lines of one message as it streams.
#[derive(Debug, Clone)]
pub struct LineBreaker {
    /// Still in the header section.
    in_header: bool,
    /// In the header: the current line, held until it ends or must be
    /// folded (never more than a few octets past [`MAX_LINE`]).
    line: Vec<u8>,
    /// In the body: octets on the current line so far, CRs included.
    length: usize,
    /// Lines broken (a line broken into three pieces counts once).
    broken: u64,
    /// The current line was already counted as broken.
    counted: bool,
}

impl Default for LineBreaker {
    fn default() -> Self {
        LineBreaker::new()
    }
}

impl LineBreaker {
    /// A breaker at the start of a message.
    pub fn new() -> LineBreaker {
        LineBreaker {
            in_header: true,
            line: Vec::new(),
            length: 0,
            broken: 0,
            counted: false,
        }
    }

    /// Takes the next octets of the message and returns those to store
    /// now: `input` itself when nothing in it needs changing, else the
    /// octets written into `scratch`. Octets of an unfinished header line
    /// are held back until [`LineBreaker::finish`] or more input.
    pub fn feed<'b>(&mut self, input: &'b [u8], scratch: &'b mut Vec<u8>) -> &'b [u8] {
        if !self.in_header
            && let Some(length) = self.body_fits(input)
        {
            self.length = length;
            return input;
        }
        scratch.clear();
        let mut rest = input;
        while self.in_header && !rest.is_empty() {
            let (taken, line_ended) = match memchr::memchr(b'\n', rest) {
                Some(at) => (at + 1, true),
                None => (rest.len(), false),
            };
            self.line.extend_from_slice(&rest[..taken]);
            rest = &rest[taken..];
            self.fold_header(scratch, line_ended);
            if line_ended {
                let empty = matches!(self.line.as_slice(), b"\n" | b"\r\n");
                scratch.extend_from_slice(&self.line);
                self.line.clear();
                self.counted = false;
                if empty {
                    self.in_header = false;
                    self.length = 0;
                }
            }
        }
        if !rest.is_empty() {
            self.break_body(rest, scratch);
        }
        scratch
    }

    /// The octets still held (an unfinished last header line), to store
    /// after everything [`LineBreaker::feed`] returned.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.line)
    }

    /// How many lines were broken or folded so far.
    pub fn broken(&self) -> u64 {
        self.broken
    }

    /// The body line length after `input` when no line in it needs
    /// breaking, else `None`.
    fn body_fits(&self, input: &[u8]) -> Option<usize> {
        let mut length = self.length;
        let mut rest = input;
        loop {
            match memchr::memchr(b'\n', rest) {
                Some(at) => {
                    if !fits(length, &rest[..at]) {
                        return None;
                    }
                    length = 0;
                    rest = &rest[at + 1..];
                }
                None => return fits(length, rest).then_some(length + rest.len()),
            }
        }
    }

    /// Folds or breaks the held header line while it is too long. When
    /// `line_ended`, it ends with its LF.
    fn fold_header(&mut self, out: &mut Vec<u8>, line_ended: bool) {
        loop {
            let content = content_length(&self.line, line_ended);
            if content <= MAX_LINE {
                return;
            }
            self.count();
            // The last whitespace that leaves at most MAX_LINE octets in
            // front of it, with some of the field's value there too (not
            // only its name, nor only whitespace).
            let value_start = match self.line.first() {
                Some(b' ' | b'\t') => 0,
                _ => memchr::memchr(b':', &self.line).map_or(0, |colon| colon + 1),
            };
            let fold = self.line[..=MAX_LINE]
                .iter()
                .rposition(|&byte| matches!(byte, b' ' | b'\t'))
                .filter(|&at| {
                    self.line.get(value_start..at).is_some_and(|value| {
                        value.iter().any(|&byte| !matches!(byte, b' ' | b'\t'))
                    })
                });
            match fold {
                Some(at) => {
                    out.extend_from_slice(&self.line[..at]);
                    out.extend_from_slice(b"\r\n");
                    self.line.drain(..at);
                }
                None => {
                    let at = char_boundary(&self.line, MAX_LINE);
                    out.extend_from_slice(&self.line[..at]);
                    out.extend_from_slice(b"\r\n");
                    // The rest stays held, behind the space of the break.
                    self.line.splice(..at, [b' ']);
                }
            }
        }
    }

    /// Passes body octets on, breaking lines past [`MAX_LINE`].
    fn break_body(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            let (segment, line_ended) = match memchr::memchr(b'\n', rest) {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            let mut piece = segment;
            while !fits(self.length, piece) {
                // The first octet past the limit that is not a CR (a CR
                // may be the one of the CRLF and is not counted).
                let mut at = MAX_LINE.saturating_sub(self.length);
                while piece.get(at) == Some(&b'\r') {
                    at += 1;
                }
                if at >= piece.len() {
                    break;
                }
                let at = char_boundary(piece, at);
                self.count();
                out.extend_from_slice(&piece[..at]);
                out.extend_from_slice(BREAK);
                self.length = 1;
                piece = &piece[at..];
            }
            out.extend_from_slice(piece);
            if line_ended {
                out.push(b'\n');
                self.length = 0;
                self.counted = false;
                rest = &rest[segment.len() + 1..];
            } else {
                self.length += piece.len();
                rest = &[];
            }
        }
    }

    fn count(&mut self) {
        if !self.counted {
            self.broken += 1;
            self.counted = true;
        }
    }
}

/// True when `segment` (no LF in it) may follow `length` octets on a line:
/// only CRs come past [`MAX_LINE`].
fn fits(length: usize, segment: &[u8]) -> bool {
    let room = MAX_LINE.saturating_sub(length);
    segment.len() <= room || segment[room..].iter().all(|&byte| byte == b'\r')
}

/// Octets of `line` that count against [`MAX_LINE`]: not its line end, nor
/// a trailing CR whose LF may still come.
fn content_length(line: &[u8], line_ended: bool) -> usize {
    let mut end = line.len();
    if line_ended && line.last() == Some(&b'\n') {
        end -= 1;
    }
    while end > 0 && line[end - 1] == b'\r' {
        end -= 1;
    }
    end
}

/// `at`, moved back to the start of the UTF-8 sequence it falls in (at
/// most 3 octets), so a break never splits a character.
fn char_boundary(text: &[u8], at: usize) -> usize {
    let mut boundary = at;
    while boundary > 0
        && at - boundary < 3
        && text.get(boundary).is_some_and(|&byte| byte & 0xC0 == 0x80)
    {
        boundary -= 1;
    }
    if boundary == 0 { at } else { boundary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Breaks `message` fed in `pieces`: (stored octets, lines broken).
    fn break_pieces(pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut breaker = LineBreaker::new();
        let mut stored = Vec::new();
        let mut scratch = Vec::new();
        for piece in pieces {
            stored.extend_from_slice(breaker.feed(piece, &mut scratch));
        }
        stored.extend_from_slice(&breaker.finish());
        (stored, breaker.broken())
    }

    fn longest_line(message: &[u8]) -> usize {
        message
            .split(|&byte| byte == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line).len())
            .max()
            .unwrap_or(0)
    }

    /// Undoes the breaks: removes each inserted CRLF SP, then unfolds
    /// (a CRLF in front of a space or tab) in the header.
    fn join(stored: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(stored).replace("\r\n ", "");
        text.into_bytes()
    }

    #[test]
    fn short_lines_pass_untouched() {
        let message = b"Subject: hi\r\nTo: a@b\r\n\r\nbody\r\nmore\r\n";
        assert_eq!(break_pieces(&[message]), (message.to_vec(), 0));
        let exact = [
            b"Subject: ".as_slice(),
            &[b'x'; MAX_LINE - 9],
            b"\r\n\r\n",
            &[b'y'; MAX_LINE],
            b"\r\n",
        ]
        .concat();
        assert_eq!(
            break_pieces(&[&exact]),
            (exact.clone(), 0),
            "998 octets is allowed"
        );
    }

    #[test]
    fn a_long_body_line_is_broken_and_joins_back() {
        let line = vec![b'x'; 5000];
        let message = [b"Subject: a\r\n\r\n".as_slice(), &line, b"\r\nend\r\n"].concat();
        let (stored, broken) = break_pieces(&[&message]);
        assert_eq!(broken, 1);
        assert!(longest_line(&stored) <= MAX_LINE);
        assert_eq!(join(&stored), message);
        assert!(stored.ends_with(b"\r\nend\r\n"));
    }

    #[test]
    fn a_long_header_field_is_folded_at_whitespace() {
        let words: Vec<String> = (0..150).map(|n| format!("word{n:05}")).collect();
        let subject = format!("Subject: {}", words.join(" "));
        assert!(subject.len() > 1400);
        let message = format!("{subject}\r\nTo: a@b\r\n\r\nbody\r\n");
        let (stored, broken) = break_pieces(&[message.as_bytes()]);
        assert_eq!(broken, 1);
        assert!(longest_line(&stored) <= MAX_LINE);
        let stored = String::from_utf8(stored).unwrap();
        assert!(
            !stored.contains("\r\n  "),
            "folded in front of a space, none added"
        );
        // RFC 5322 §2.2.3: unfolding is removing the CRLF.
        assert_eq!(stored.replace("\r\n ", " "), message);
        assert!(stored.lines().nth(1).unwrap().starts_with(' '));
    }

    #[test]
    fn a_header_field_without_whitespace_is_broken_as_a_continuation() {
        let value = "a".repeat(2500);
        let message = format!("X-Long: {value}\r\n\r\nbody\r\n");
        let (stored, broken) = break_pieces(&[message.as_bytes()]);
        assert_eq!(broken, 1);
        assert!(longest_line(&stored) <= MAX_LINE);
        assert_eq!(join(&stored), message.as_bytes());
        let stored = String::from_utf8(stored).unwrap();
        assert!(
            stored
                .lines()
                .skip(1)
                .take(2)
                .all(|line| line.starts_with(' '))
        );
    }

    #[test]
    fn a_break_never_splits_a_utf8_character() {
        let line = "é".repeat(1200);
        let message = format!("Subject: x\r\n\r\n{line}\r\n");
        let (stored, _) = break_pieces(&[message.as_bytes()]);
        assert!(String::from_utf8(stored.clone()).is_ok());
        assert!(longest_line(&stored) <= MAX_LINE);
        assert_eq!(join(&stored), message.as_bytes());
    }

    #[test]
    fn a_crlf_right_after_998_octets_is_no_break() {
        let body = [b"\r\n".as_slice(), &[b'x'; MAX_LINE]].concat();
        let (stored, broken) = break_pieces(&[&body, b"\r", b"\n"]);
        assert_eq!(broken, 0);
        assert_eq!(stored, [body.as_slice(), b"\r\n"].concat());
    }

    #[test]
    fn an_unfinished_header_line_is_given_back_at_the_end() {
        assert_eq!(break_pieces(&[b"Subject: no end"]).0, b"Subject: no end");
    }

    proptest! {
        #[test]
        fn arbitrary_octets_never_give_a_line_over_the_limit(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(0xC3), Just(0xA9), any::<u8>()],
                0..64,
            ),
            repeat in 1usize..80,
            at in 0usize..5000,
        ) {
            let message: Vec<u8> = input.iter().copied().cycle().take(input.len() * repeat).collect();
            let at = at % (message.len() + 1);
            let whole = break_pieces(&[&message]).0;
            prop_assert_eq!(&whole, &break_pieces(&[&message[..at], &message[at..]]).0);
            for line in whole.split(|&byte| byte == b'\n') {
                let crs = line.iter().rev().take_while(|&&byte| byte == b'\r').count();
                prop_assert!(line.len() - crs <= MAX_LINE, "a line of {}", line.len() - crs);
            }
            let mut original = message.iter();
            for &byte in &whole {
                if original.as_slice().first() == Some(&byte) {
                    original.next();
                } else {
                    prop_assert!(matches!(byte, b'\r' | b'\n' | b' '), "{byte}");
                }
            }
            prop_assert!(original.as_slice().is_empty());
        }

        #[test]
        fn any_message_in_any_pieces_keeps_every_octet_and_no_line_is_too_long(
            lines in proptest::collection::vec(
                ("[a-z ]{0,3}", 0usize..2600, proptest::bool::ANY),
                0..6,
            ),
            cuts in proptest::collection::vec(0usize..8000, 0..4),
        ) {
            let mut message = Vec::new();
            for (index, (start, length, spaced)) in lines.iter().enumerate() {
                if index == 2 {
                    message.extend_from_slice(b"\r\n");
                }
                message.extend_from_slice(start.as_bytes());
                for n in 0..*length {
                    message.push(if *spaced && n % 7 == 6 { b' ' } else { b'x' });
                }
                message.extend_from_slice(b"\r\n");
            }
            let mut bounds: Vec<usize> = cuts.iter().map(|cut| cut % (message.len() + 1)).collect();
            bounds.extend([0, message.len()]);
            bounds.sort_unstable();
            let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &message[w[0]..w[1]]).collect();
            let (stored, _) = break_pieces(&pieces);
            let (whole, _) = break_pieces(&[&message]);
            prop_assert_eq!(&stored, &whole, "where the input is cut does not matter");
            prop_assert!(longest_line(&stored) <= MAX_LINE);
            // Every octet is there, in order: only CRLF SP and CRLF went in.
            let mut original = message.iter();
            for &byte in &stored {
                if original.as_slice().first() == Some(&byte) {
                    original.next();
                } else {
                    prop_assert!(matches!(byte, b'\r' | b'\n' | b' '), "{byte}");
                }
            }
            prop_assert!(original.as_slice().is_empty());
        }
    }
}

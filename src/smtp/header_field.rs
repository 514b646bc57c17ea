//! Finding a header field by name in a message as it streams by: the part
//! that [`HopCounter`](crate::smtp::hops::HopCounter) (every `Received:`)
//! and [`MessageIdScanner`](crate::smtp::message_id::MessageIdScanner) (the
//! first `Message-ID:`) share.
//!
//! [`FieldFinder`] looks only at the header section (up to the first empty
//! line, RFC 5322 §2.1) and keeps a few bytes of state, never the message.
//! Lines end at LF (a CR before it is part of the line end). Field names are
//! case-insensitive (RFC 5322 §1.2.2), and white space may stand between a
//! name and its colon (the obsolete syntax of RFC 5322 §4.5).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a header line.
    LineStart,
    /// `matched` octets of the name seen at the start of the line.
    Name { matched: usize },
    /// The name followed by white space: waiting for the colon.
    NameSpace,
    /// A CR at the start of a line: an empty line if LF follows.
    EmptyCr,
    /// The rest of a line that does not start the field looked for.
    Skip,
    /// The header section has ended (or the message had no header).
    Ended,
    /// The field's colon was just read (never kept: see `find`).
    Colon,
}

/// Finds the fields named `name` in the header of a message fed to it in
/// pieces of any size.
#[derive(Debug, Clone)]
pub struct FieldFinder {
    /// Lower case.
    name: &'static [u8],
    state: State,
}

impl FieldFinder {
    /// A finder for `name` (lower case, without the colon) at the start of
    /// a message.
    pub const fn new(name: &'static [u8]) -> FieldFinder {
        FieldFinder {
            name,
            state: State::LineStart,
        }
    }

    /// True once the empty line ending the header has been seen.
    pub fn header_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Looks at `bytes`, the next octets of the message, up to the colon of
    /// the next field named as asked: returns how many octets that took
    /// (the field's value starts right after them), or `None` when all of
    /// `bytes` were looked at, or the header ended, without finding one.
    /// After a find, the rest of that line (the value's first line) is
    /// skipped.
    pub fn find(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut index = 0;
        while index < bytes.len() {
            let byte = bytes[index];
            self.state = match self.state {
                State::Ended => return None,
                State::Skip => match memchr::memchr(b'\n', &bytes[index..]) {
                    Some(at) => {
                        index += at + 1;
                        self.state = State::LineStart;
                        continue;
                    }
                    None => return None,
                },
                State::LineStart => match byte {
                    b'\r' => State::EmptyCr,
                    b'\n' => State::Ended,
                    _ => self.name_byte(0, byte),
                },
                State::EmptyCr => match byte {
                    b'\n' => State::Ended,
                    _ => State::Skip,
                },
                State::Name { matched } => self.name_byte(matched, byte),
                State::NameSpace => match byte {
                    b' ' | b'\t' => State::NameSpace,
                    b':' => State::Colon,
                    b'\n' => State::LineStart,
                    _ => State::Skip,
                },
                State::Colon => State::Skip,
            };
            index += 1;
            if self.state == State::Colon {
                self.state = State::Skip;
                return Some(index);
            }
        }
        None
    }

    fn name_byte(&self, matched: usize, byte: u8) -> State {
        if matched == self.name.len() {
            return match byte {
                b':' => State::Colon,
                b' ' | b'\t' => State::NameSpace,
                b'\n' => State::LineStart,
                _ => State::Skip,
            };
        }
        if byte.to_ascii_lowercase() == self.name[matched] {
            State::Name {
                matched: matched + 1,
            }
        } else if byte == b'\n' {
            State::LineStart
        } else {
            State::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every offset `find` returns, fed `message` in one piece.
    fn finds(name: &'static [u8], message: &[u8]) -> Vec<usize> {
        let mut finder = FieldFinder::new(name);
        let mut found = Vec::new();
        let mut at = 0;
        while let Some(taken) = finder.find(&message[at..]) {
            at += taken;
            found.push(at);
        }
        found
    }

    #[test]
    fn returns_the_offset_after_each_colon() {
        let message = b"To: a\r\nSubject: s\r\nsubject : t\r\n\r\nSubject: body\r\n";
        assert_eq!(finds(b"subject", message), [15, 28]);
        assert_eq!(&message[15..17], b" s");
    }

    #[test]
    fn the_header_ends_at_the_first_empty_line() {
        let mut finder = FieldFinder::new(b"to");
        assert_eq!(finder.find(b"X: y\r\n"), None);
        assert!(!finder.header_ended());
        assert_eq!(finder.find(b"\r\nTo: z\r\n"), None);
        assert!(finder.header_ended());
    }
}

//! The `Message-ID:` of a message as it streams by (RFC 5322 §3.6.4), for
//! the log line of an accepted message.
//!
//! [`MessageIdScanner`] is pure and streaming like
//! [`HopCounter`](crate::smtp::hops::HopCounter): it looks only at the
//! header section, keeps a few bytes of state, and holds a copy of the
//! field's value only while it reads that field (at most [`MAX_VALUE`]
//! octets). The first `Message-ID:` field counts; its value is kept only
//! when it is one `<...>` token of printable ASCII, so nothing a client sends
//! can break a log line.

use crate::smtp::header_field::FieldFinder;

/// The most of a field value kept (a header line's limit, RFC 5322 §2.1.1).
const MAX_VALUE: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for the field.
    Looking,
    /// Reading the field's value.
    Value,
    /// After the LF ending a line of the value: a continuation line
    /// follows if it starts with white space.
    ValueEnd,
    /// The header section has ended, or the field was found.
    Done,
}

/// Finds the Message-ID in a message as it streams by.
#[derive(Debug)]
pub struct MessageIdScanner {
    finder: FieldFinder,
    state: State,
    value: Vec<u8>,
    id: Option<String>,
}

impl Default for MessageIdScanner {
    fn default() -> Self {
        MessageIdScanner::new()
    }
}

impl MessageIdScanner {
    /// A scanner at the start of a message.
    pub fn new() -> MessageIdScanner {
        MessageIdScanner {
            finder: FieldFinder::new(b"message-id"),
            state: State::Looking,
            value: Vec::new(),
            id: None,
        }
    }

    /// Looks at the next octets of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if self.state == State::Looking {
            match self.finder.find(rest) {
                Some(taken) => {
                    rest = &rest[taken..];
                    self.state = State::Value;
                }
                None => {
                    if self.finder.header_ended() {
                        self.state = State::Done;
                    }
                    return;
                }
            }
        }
        for &byte in rest {
            self.state = match self.state {
                State::Looking | State::Done => return,
                State::Value => {
                    if byte == b'\n' {
                        State::ValueEnd
                    } else {
                        self.keep(byte);
                        State::Value
                    }
                }
                State::ValueEnd => match byte {
                    b' ' | b'\t' => {
                        self.keep(byte);
                        State::Value
                    }
                    _ => {
                        self.found();
                        return;
                    }
                },
            };
        }
    }

    /// The Message-ID, once the header section (or the field) has ended;
    /// `None` when there is none or it is not one `<...>` token.
    pub fn finish(&mut self) -> Option<&str> {
        if matches!(self.state, State::Value | State::ValueEnd) {
            self.found();
        }
        self.id.as_deref()
    }

    fn keep(&mut self, byte: u8) {
        if self.value.len() < MAX_VALUE {
            self.value.push(byte);
        }
    }

    /// The field's value is complete: keeps it if it is one `<...>` token.
    fn found(&mut self) {
        self.state = State::Done;
        let value = std::mem::take(&mut self.value);
        let token = value.trim_ascii();
        let valid = token.len() > 2
            && token.starts_with(b"<")
            && token.ends_with(b">")
            && token.iter().all(|&b| b.is_ascii_graphic());
        if valid {
            self.id = String::from_utf8(token.to_vec()).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(message: &[u8]) -> Option<String> {
        let mut scanner = MessageIdScanner::new();
        scanner.feed(message);
        scanner.finish().map(str::to_string)
    }

    fn scan_bytewise(message: &[u8]) -> Option<String> {
        let mut scanner = MessageIdScanner::new();
        for byte in message {
            scanner.feed(std::slice::from_ref(byte));
        }
        scanner.finish().map(str::to_string)
    }

    #[test]
    fn finds_the_field_in_any_case_and_split() {
        let message = b"From: a@b\r\nMESSAGE-id: <x.1@origin.test>\r\nSubject: s\r\n\r\nbody\r\n";
        assert_eq!(scan(message).as_deref(), Some("<x.1@origin.test>"));
        assert_eq!(scan_bytewise(message).as_deref(), Some("<x.1@origin.test>"));
    }

    #[test]
    fn reads_a_folded_value_and_the_obsolete_space_before_the_colon() {
        let message = b"Message-ID :\r\n <folded@origin.test>\r\n\r\n";
        assert_eq!(scan(message).as_deref(), Some("<folded@origin.test>"));
        assert_eq!(
            scan_bytewise(message).as_deref(),
            Some("<folded@origin.test>")
        );
    }

    #[test]
    fn ignores_the_body_and_unusable_values() {
        assert_eq!(scan(b"Subject: s\r\n\r\nMessage-ID: <body@x>\r\n"), None);
        assert_eq!(scan(b"Message-ID: not an id\r\n\r\n"), None);
        assert_eq!(scan(b"Message-ID: <a b@x>\r\n\r\n"), None);
        assert_eq!(scan(b"X-Message-ID: <x@y>\r\n\r\n"), None);
        assert_eq!(scan(b"Message-IDs: <x@y>\r\n\r\n"), None);
    }

    #[test]
    fn the_first_field_counts_even_at_the_end_of_the_message() {
        assert_eq!(
            scan(b"Message-ID: <one@x>\r\nMessage-ID: <two@x>\r\n\r\n").as_deref(),
            Some("<one@x>")
        );
        assert_eq!(scan(b"Message-ID: <end@x>").as_deref(), Some("<end@x>"));
    }
}

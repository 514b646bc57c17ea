//! Mail loop detection by hop count (RFC 5321 §6.3): every MTA that handles
//! a message prepends a `Received:` field (RFC 5321 §4.4), so a message whose
//! header carries too many of them is going round in circles.
//!
//! [`HopCounter`] is pure and streaming: it is fed the message octets as they
//! arrive (after dot-unstuffing for DATA, as is for BDAT), looks only at the
//! header section (up to the first empty line, RFC 5322 §2.1) and keeps a few
//! bytes of state, never the message. Once the header has ended every call
//! returns at once.
//!
//! The fields counted are those the message arrived with; the one sluice
//! prepends itself is not, so `limits.max_hops = 50` accepts a message that
//! already passed 50 MTAs.

use crate::smtp::header_field::FieldFinder;

/// Counts `Received:` header fields in a message as it streams by.
#[derive(Debug, Clone)]
pub struct HopCounter {
    /// The `Received:` fields (names are case-insensitive, RFC 5322 §1.2.2).
    finder: FieldFinder,
    hops: usize,
}

impl Default for HopCounter {
    fn default() -> Self {
        HopCounter::new()
    }
}

impl HopCounter {
    /// A counter at the start of a message.
    pub fn new() -> HopCounter {
        HopCounter {
            finder: FieldFinder::new(b"received"),
            hops: 0,
        }
    }

    /// Looks at the next octets of the message. Lines end at LF (a CR
    /// before it is part of the line end); the header ends at the first
    /// empty line.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(taken) = self.finder.find(rest) {
            self.hops = self.hops.saturating_add(1);
            rest = &rest[taken..];
        }
    }

    /// `Received:` fields seen so far.
    pub fn hops(&self) -> usize {
        self.hops
    }

    /// True when more than `max_hops` fields were seen.
    pub fn exceeds(&self, max_hops: usize) -> bool {
        self.hops > max_hops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn count(message: &[u8]) -> usize {
        let mut counter = HopCounter::new();
        counter.feed(message);
        counter.hops()
    }

    #[test]
    fn counts_received_fields_in_the_header() {
        let message = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
            Subject: hi\r\n\
            Received: from c\r\n  by d; continued\r\n\
            \r\n\
            body\r\n";
        assert_eq!(count(message), 2);
    }

    #[test]
    fn field_names_are_case_insensitive_and_may_have_space_before_the_colon() {
        assert_eq!(
            count(b"RECEIVED: x\r\nreceived:y\r\nReCeIvEd \t: z\r\n\r\n"),
            3
        );
    }

    #[test]
    fn similar_names_continuations_and_values_do_not_count() {
        let message = [
            "Received-SPF: pass",
            "X-Received: from a",
            "Receive: x",
            "Subject: Received: nope",
            "\tReceived: folded continuation",
            " Received: folded too",
            "Received",
            "",
            "",
        ]
        .join("\r\n");
        assert_eq!(count(message.as_bytes()), 0);
    }

    #[test]
    fn counting_stops_at_the_first_empty_line() {
        assert_eq!(
            count(b"Received: a\r\n\r\nReceived: in the body\r\nReceived: b\r\n"),
            1
        );
        // A message with no header at all.
        assert_eq!(count(b"\r\nReceived: in the body\r\n"), 0);
        // Bare LF line ends (BDAT does not forbid them) work the same.
        assert_eq!(count(b"Received: a\nReceived: b\n\nReceived: c\n"), 2);
    }

    #[test]
    fn limit_is_exceeded_only_above_max_hops() {
        let header = "Received: x\r\n".repeat(50);
        let mut counter = HopCounter::new();
        counter.feed(header.as_bytes());
        assert!(!counter.exceeds(50));
        counter.feed(b"received: one more\r\n\r\n");
        assert!(counter.exceeds(50));
        assert_eq!(counter.hops(), 51);
    }

    #[test]
    fn body_is_not_scanned_after_the_header() {
        let mut counter = HopCounter::new();
        counter.feed(b"Subject: x\r\n\r\n");
        assert!(counter.finder.header_ended());
        counter.feed("Received: x\r\n".repeat(1000).as_bytes());
        assert_eq!(counter.hops(), 0);
    }

    proptest! {
        #[test]
        fn split_anywhere_gives_the_same_count(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("Received: a".to_string()),
                    Just("received :b".to_string()),
                    Just("Received-SPF: c".to_string()),
                    Just(" Received: d".to_string()),
                    Just(String::new()),
                    "[ -~]{0,12}",
                ],
                0..12,
            ),
            split in 0usize..200,
        ) {
            let message: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let whole = count(&message);
            let split = split.min(message.len());
            let mut counter = HopCounter::new();
            counter.feed(&message[..split]);
            counter.feed(&message[split..]);
            prop_assert_eq!(counter.hops(), whole);
            // And byte by byte.
            let mut counter = HopCounter::new();
            for byte in &message {
                counter.feed(std::slice::from_ref(byte));
            }
            prop_assert_eq!(counter.hops(), whole);
        }
    }
}

//! The DATA decoder: a streaming state machine that removes dot-stuffing,
//! finds the end of the message and refuses anything that could smuggle a
//! second message past a less strict peer. Pure: bytes in, octets out.
//!
//! Rules:
//! - RFC 5321 §4.1.1.4: the message ends only at `CRLF . CRLF` (or `. CRLF`
//!   as the very first line). `LF . LF`, `LF . CRLF`, `CRLF . LF` never end it.
//! - RFC 5321 §4.5.2: a line starting with a dot has that dot removed.
//! - RFC 5321 §2.3.8: CR and LF appear only together as CRLF. A bare CR or
//!   a bare LF is recorded as [`DataProblem::BareLineEnding`]; decoding goes
//!   on to the real end so the command stream stays in sync, and the caller
//!   refuses the message.
//! - RFC 1870 §6.3: past `max_size` decoded octets nothing more is emitted
//!   (the excess is never buffered) and [`DataProblem::TooBig`] is recorded.

/// Why a message read with DATA must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// More octets than the configured maximum message size.
    TooBig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of the data).
    LineStart,
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    Cr,
    /// A line that started with a dot, just after the dot.
    Dot,
    /// A line that is exactly ".", just after its CR.
    DotCr,
}

/// Decodes the octets after a `354` reply until the end-of-data marker.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    size: u64,
    max_size: u64,
    problem: Option<DataProblem>,
    done: bool,
}

impl DataDecoder {
    /// A decoder that emits at most `max_size` octets.
    pub fn new(max_size: u64) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            size: 0,
            max_size,
            problem: None,
            done: false,
        }
    }

    /// Decodes from `input`, appending message octets to `out` (nothing once
    /// a problem is recorded). Returns how many input octets were consumed;
    /// once the end marker is consumed, [`DataDecoder::is_done`] is true and
    /// the octets after it (the next commands) are left unconsumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut index = 0;
        while index < input.len() && !self.done {
            let byte = input[index];
            match self.state {
                State::LineStart => {
                    if byte == b'.' {
                        self.state = State::Dot;
                        index += 1;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Text => {
                    let rest = &input[index..];
                    let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    self.emit(&rest[..run], out);
                    index += run;
                    match input.get(index) {
                        Some(b'\r') => self.state = State::Cr,
                        Some(_) => self.record(DataProblem::BareLineEnding),
                        None => {}
                    }
                    if index < input.len() {
                        index += 1;
                    }
                }
                State::Cr => {
                    if byte == b'\n' {
                        self.emit(b"\r\n", out);
                        self.state = State::LineStart;
                        index += 1;
                    } else {
                        // The CR is bare; `byte` is looked at again as text.
                        self.record(DataProblem::BareLineEnding);
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if byte == b'\r' {
                        self.state = State::DotCr;
                        index += 1;
                    } else {
                        // RFC 5321 §4.5.2: the leading dot is removed.
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if byte == b'\n' {
                        self.done = true;
                        self.state = State::LineStart;
                        index += 1;
                    } else {
                        self.record(DataProblem::BareLineEnding);
                        self.state = State::Text;
                    }
                }
            }
        }
        index
    }

    /// True once the end-of-data marker has been consumed.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Decoded message octets seen so far, including any excess past the limit.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first reason to refuse the message, if any.
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.problem.is_some() {
            return;
        }
        if self.size > self.max_size {
            self.problem = Some(DataProblem::TooBig);
            return;
        }
        out.extend_from_slice(bytes);
    }

    fn record(&mut self, problem: DataProblem) {
        self.problem.get_or_insert(problem);
    }
}

/// Checks octets that come as they are (BDAT chunks, RFC 3030) against
/// the rule [`DataDecoder`] applies to DATA: CR and LF only together, as
/// CRLF (RFC 5321 §2.3.8). A CRLF may be split across two chunks; a CR at
/// the very end of the message is bare.
#[derive(Debug, Clone, Default)]
pub struct LineEndingCheck {
    /// The last octet fed was a CR, whose LF may still come.
    after_cr: bool,
    /// A bare CR or LF was seen.
    bare: bool,
}

impl LineEndingCheck {
    /// A check at the start of a message.
    pub fn new() -> LineEndingCheck {
        LineEndingCheck::default()
    }

    /// Looks at the next octets of the message.
    pub fn feed(&mut self, input: &[u8]) {
        if self.bare {
            return;
        }
        let mut rest = input;
        if self.after_cr {
            match rest.first() {
                None => return,
                Some(b'\n') => rest = &rest[1..],
                Some(_) => {
                    self.bare = true;
                    return;
                }
            }
            self.after_cr = false;
        }
        while let Some(at) = memchr::memchr2(b'\r', b'\n', rest) {
            if rest[at] == b'\n' {
                self.bare = true;
                return;
            }
            match rest.get(at + 1) {
                Some(b'\n') => rest = &rest[at + 2..],
                Some(_) => {
                    self.bare = true;
                    return;
                }
                None => {
                    self.after_cr = true;
                    return;
                }
            }
        }
    }

    /// True once a bare CR or LF was seen, or when `at_end` (the message
    /// is complete) and the last octet was a CR.
    pub fn found_bare(&self, at_end: bool) -> bool {
        self.bare || (at_end && self.after_cr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` in one go: (message, consumed, done, problem).
    fn decode(input: &[u8], max: u64) -> (Vec<u8>, usize, bool, Option<DataProblem>) {
        let mut decoder = DataDecoder::new(max);
        let mut out = Vec::new();
        let consumed = decoder.decode(input, &mut out);
        (out, consumed, decoder.is_done(), decoder.problem())
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_leaves_the_rest() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (out, consumed, done, problem) = decode(input, 1000);
        assert!(done);
        assert_eq!(problem, None);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message_is_a_lone_dot() {
        let (out, consumed, done, problem) = decode(b".\r\n", 1000);
        assert!(done);
        assert_eq!((out.len(), consumed, problem), (0, 3, None));
    }

    #[test]
    fn leading_dot_is_removed() {
        let (out, _, done, _) = decode(b"..hidden\r\n.x\r\n.\r\n", 1000);
        assert!(done);
        assert_eq!(out, b".hidden\r\nx\r\n");
    }

    #[test]
    fn smuggling_payloads_do_not_end_the_message() {
        for marker in [
            &b"\n.\r\n"[..],
            b"\r\n.\n",
            b"\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(marker);
            input.extend_from_slice(
                b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nsmuggled\r\n",
            );
            let (_, consumed, done, problem) = decode(&input, 1_000_000);
            assert!(!done, "{marker:?} must not end the data");
            assert_eq!(consumed, input.len(), "{marker:?}");
            assert_eq!(problem, Some(DataProblem::BareLineEnding), "{marker:?}");
            // The real end still ends it, and the message stays refused.
            let mut decoder = DataDecoder::new(1_000_000);
            let mut out = Vec::new();
            decoder.decode(&input, &mut out);
            let rest = b".\r\nQUIT\r\n";
            let consumed = decoder.decode(rest, &mut out);
            assert!(decoder.is_done());
            assert_eq!(&rest[consumed..], b"QUIT\r\n");
            assert_eq!(decoder.problem(), Some(DataProblem::BareLineEnding));
        }
    }

    #[test]
    fn bare_cr_and_lf_are_problems() {
        assert_eq!(
            decode(b"a\nb\r\n.\r\n", 100).3,
            Some(DataProblem::BareLineEnding)
        );
        assert_eq!(
            decode(b"a\rb\r\n.\r\n", 100).3,
            Some(DataProblem::BareLineEnding)
        );
        assert_eq!(
            decode(b"a\r\r\n.\r\n", 100).3,
            Some(DataProblem::BareLineEnding)
        );
        assert_eq!(decode(b"a\r\n.\r\n", 100).3, None);
    }

    #[test]
    fn line_ending_check_finds_bare_cr_and_lf_across_chunks() {
        let check = |pieces: &[&[u8]]| {
            let mut check = LineEndingCheck::new();
            for piece in pieces {
                check.feed(piece);
            }
            check.found_bare(true)
        };
        assert!(!check(&[b"a\r\nb\r\n"]));
        assert!(!check(&[b"a\r", b"\nb\r\n"]));
        assert!(!check(&[b"a\r", b"", b"\n"]));
        assert!(!check(&[]));
        assert!(check(&[b"A\r.\rMAIL FROM:<x@evil.test>\r\n"]));
        assert!(check(&[b"a\nb\r\n"]));
        assert!(check(&[b"a\r", b"b\r\n"]));
        assert!(check(&[b"a\r\r\n"]));
        assert!(check(&[b"a\r\n\n"]));
        assert!(check(&[b"a\r"]), "a CR at the very end is bare");
        let mut open = LineEndingCheck::new();
        open.feed(b"a\r");
        assert!(!open.found_bare(false), "its LF may still come");
    }

    #[test]
    fn oversize_stops_emitting() {
        let (out, _, done, problem) = decode(b"0123456789\r\n0123456789\r\n.\r\n", 15);
        assert!(done);
        assert_eq!(problem, Some(DataProblem::TooBig));
        assert!(out.len() <= 15);
    }

    #[test]
    fn split_anywhere_gives_the_same_result() {
        let input = b"a\r\n..b\r\n\r\nc\r\n.\r\nNEXT";
        let whole = decode(input, 1000);
        for split in 0..input.len() {
            let mut decoder = DataDecoder::new(1000);
            let mut out = Vec::new();
            let mut consumed = decoder.decode(&input[..split], &mut out);
            if !decoder.is_done() {
                assert_eq!(consumed, split);
                consumed += decoder.decode(&input[split..], &mut out);
            }
            assert_eq!(
                (out.clone(), consumed),
                (whole.0.clone(), whole.1),
                "split at {split}"
            );
        }
    }

    proptest! {
        #[test]
        fn dot_stuffing_round_trips(lines in proptest::collection::vec("[ -~]{0,20}", 0..10)) {
            let body: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let wire = crate::smtp::dot::stuff(&body);
            let (out, consumed, done, problem) = decode(&wire, 1 << 20);
            prop_assert!(done);
            prop_assert_eq!(problem, None);
            prop_assert_eq!(consumed, wire.len());
            prop_assert_eq!(out, body);
        }

        #[test]
        fn arbitrary_input_never_panics_and_consumes_monotonically(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut decoder = DataDecoder::new(50);
            let mut out = Vec::new();
            let consumed = decoder.decode(&input, &mut out);
            prop_assert!(consumed <= input.len());
            prop_assert!(out.len() <= 50);
            if !decoder.is_done() {
                prop_assert_eq!(consumed, input.len());
            }
        }
    }
}

//! Message intake: what the server does with the octets of a message while
//! they arrive, with DATA or in BDAT chunks. Pure: the connection feeds it
//! the bytes it read and stores what it is told to; the intake says when
//! the message is complete and why it must be refused, with the exact
//! reply.
//!
//! Rules:
//! - DATA (RFC 5321 §4.1.1.4, §4.5.2): decoded by [`DataDecoder`], which
//!   removes dot-stuffing, finds `CRLF . CRLF` and refuses a bare CR or LF
//!   (§2.3.8) with `550 5.5.2`, after reading the message to its end so the
//!   command stream stays in sync.
//! - BDAT (RFC 3030 §2): a chunk is exactly the octets its command
//!   announced, stored as they are; [`ChunkIntake`] counts them off and
//!   adds the chunks up into one message. The DATA rule on line endings
//!   holds for them too ([`LineEndingCheck`]): a bare CR or LF anywhere in
//!   the chunks gets `550 5.5.2` after the LAST chunk, as DATA gets it
//!   after the end marker, so a next hop that reads a bare CR or LF as a
//!   line end is never handed a second, smuggled message.
//! - Size (RFC 1870 §6.3): past `max_size` octets of message nothing more
//!   is stored and the message is refused with `552 5.3.4`.
//! - Hops (RFC 5321 §6.3): a header with more than `max_hops` `Received:`
//!   fields ([`HopCounter`]) is a mail loop, refused with `554 5.4.6`.
//! - Once a message is refused nothing more of it is stored: the caller
//!   drops what it stored so far. When several rules are broken, the reply
//!   names the size or the line ending before the hops.

use crate::smtp::data::{DataDecoder, DataProblem, LineEndingCheck};
use crate::smtp::hops::HopCounter;
use crate::smtp::reply::{EnhancedCode, Reply};

/// Why a message is refused; each names its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than `limits.max_message_size`: `552 5.3.4` (RFC 1870 §6.3).
    TooBig,
    /// A bare CR or LF in DATA or BDAT: `550 5.5.2` (RFC 5321 §2.3.8).
    BareLineEnding,
    /// More `Received:` fields than `limits.max_hops`, a mail loop:
    /// `554 5.4.6` (RFC 5321 §6.3, RFC 3463 §3.5).
    TooManyHops,
    /// The From: domain's DMARC policy is `p=reject` and the message fails
    /// it, with `[verify] enforce_dmarc`: `550 5.7.1` (RFC 7489 §10.3).
    /// Decided by `auth::verify`, never by the intake.
    DmarcReject,
}

impl Refusal {
    /// The reply that ends the transaction.
    pub fn reply(self) -> Reply {
        match self {
            Refusal::TooBig => Reply::new(
                552,
                EnhancedCode(5, 3, 4),
                "Error: message exceeds fixed maximum message size",
            ),
            Refusal::BareLineEnding => Reply::new(
                550,
                EnhancedCode(5, 5, 2),
                "Error: bare CR or LF in message data (RFC 5321 section 2.3.8)",
            ),
            Refusal::TooManyHops => Reply::new(
                554,
                EnhancedCode(5, 4, 6),
                "Error: too many hops (mail loop)",
            ),
            Refusal::DmarcReject => Reply::new(
                550,
                EnhancedCode(5, 7, 1),
                "Error: rejected by the DMARC policy of the From: domain",
            ),
        }
    }

    /// The reason, as the `transaction refused` log line gives it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TooBig => "message too big",
            Refusal::BareLineEnding => "bare CR or LF in message data",
            Refusal::TooManyHops => "too many hops",
            Refusal::DmarcReject => "DMARC policy reject",
        }
    }
}

/// Where the message stands after the octets fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// More octets are needed (the rest of the DATA, or of the BDAT chunk).
    NeedMore,
    /// A BDAT chunk that is not the last one was received in full and the
    /// message may go on: `octets` is that chunk's size.
    ChunkAccepted { octets: u64 },
    /// The message is complete and may be queued: `octets` is its size.
    Complete { octets: u64 },
    /// The message is complete, or its last chunk read, and refused.
    Refused(Refusal),
}

/// The limits a message is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeLimits {
    /// `limits.max_message_size`, in octets.
    pub max_size: u64,
    /// `limits.max_hops`: more `Received:` fields than this is a loop.
    pub max_hops: usize,
}

/// A message sent with DATA, from after the `354` to the end marker.
#[derive(Debug, Clone)]
pub struct DataIntake {
    decoder: DataDecoder,
    hops: HopCounter,
    max_hops: usize,
}

impl DataIntake {
    /// The intake of one message.
    pub fn new(limits: IntakeLimits) -> DataIntake {
        DataIntake {
            decoder: DataDecoder::new(limits.max_size),
            hops: HopCounter::new(),
            max_hops: limits.max_hops,
        }
    }

    /// Decodes the next octets from `input`, appending to `out` those to
    /// store (nothing once the message is refused). Returns how many input
    /// octets were consumed: after the end marker, the rest of `input` is
    /// the next commands and is left alone.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let consumed = self.decoder.decode(input, out);
        self.hops.feed(&out[start..]);
        if self.is_refused() {
            out.truncate(start);
        }
        consumed
    }

    /// True once the message is known to be refused: the caller drops
    /// whatever it stored of it.
    pub fn is_refused(&self) -> bool {
        self.decoder.problem().is_some() || self.hops.exceeds(self.max_hops)
    }

    /// [`Outcome::NeedMore`] until the end marker was fed, then whether the
    /// message may be queued.
    pub fn outcome(&self) -> Outcome {
        if !self.decoder.is_done() {
            return Outcome::NeedMore;
        }
        let refusal = match self.decoder.problem() {
            Some(DataProblem::TooBig) => Some(Refusal::TooBig),
            Some(DataProblem::BareLineEnding) => Some(Refusal::BareLineEnding),
            None => self
                .hops
                .exceeds(self.max_hops)
                .then_some(Refusal::TooManyHops),
        };
        match refusal {
            Some(refusal) => Outcome::Refused(refusal),
            None => Outcome::Complete {
                octets: self.decoder.size(),
            },
        }
    }
}

/// A message sent in BDAT chunks (RFC 3030), across its chunks.
#[derive(Debug, Clone)]
pub struct ChunkIntake {
    limits: IntakeLimits,
    hops: HopCounter,
    /// Bare CR or LF anywhere in the chunks.
    line_endings: LineEndingCheck,
    /// Message octets received so far, including any past the limit.
    size: u64,
    /// The size the current chunk's BDAT command announced.
    chunk_size: u64,
    /// Octets of the current chunk still to come.
    remaining: u64,
    /// The current chunk is the last (`BDAT n LAST`).
    last: bool,
}

impl ChunkIntake {
    /// The intake of one message, before its first chunk.
    pub fn new(limits: IntakeLimits) -> ChunkIntake {
        ChunkIntake {
            limits,
            hops: HopCounter::new(),
            line_endings: LineEndingCheck::new(),
            size: 0,
            chunk_size: 0,
            remaining: 0,
            last: false,
        }
    }

    /// A `BDAT size [LAST]` command was accepted: its octets come next.
    pub fn start_chunk(&mut self, size: u64, last: bool) {
        self.chunk_size = size;
        self.remaining = size;
        self.last = last;
    }

    /// Takes the current chunk's octets from the start of `input` and
    /// returns how many belong to it. The caller stores them unless
    /// [`ChunkIntake::is_refused`] now says otherwise.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let take = self.remaining.min(input.len() as u64) as usize;
        self.remaining -= take as u64;
        self.size = self.size.saturating_add(take as u64);
        if self.size <= self.limits.max_size {
            self.hops.feed(&input[..take]);
            self.line_endings.feed(&input[..take]);
        }
        take
    }

    /// Octets of the current chunk still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// True once the message is known to be refused: the caller drops
    /// whatever it stored of it.
    pub fn is_refused(&self) -> bool {
        self.refusal().is_some() || self.line_endings.found_bare(false)
    }

    /// [`Outcome::NeedMore`] until the current chunk is read in full; then
    /// a refusal as soon as there is one, else the next chunk is awaited
    /// or, after the last, the message may be queued.
    pub fn outcome(&self) -> Outcome {
        if self.remaining > 0 {
            return Outcome::NeedMore;
        }
        match self.refusal() {
            Some(refusal) => Outcome::Refused(refusal),
            None if self.last => Outcome::Complete { octets: self.size },
            None => Outcome::ChunkAccepted {
                octets: self.chunk_size,
            },
        }
    }

    fn refusal(&self) -> Option<Refusal> {
        let complete = self.last && self.remaining == 0;
        if self.size > self.limits.max_size {
            Some(Refusal::TooBig)
        } else if self.line_endings.found_bare(complete) {
            // As with DATA, named only once the message is complete (and
            // before the hops, as DATA names it).
            complete.then_some(Refusal::BareLineEnding)
        } else if self.hops.exceeds(self.limits.max_hops) {
            Some(Refusal::TooManyHops)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: IntakeLimits = IntakeLimits {
        max_size: 100,
        max_hops: 2,
    };

    /// Feeds `pieces` to a DATA intake as a connection would: returns the
    /// stored octets (none when refused), the outcome and what is left.
    fn data(pieces: &[&[u8]]) -> (Vec<u8>, Outcome, Vec<u8>) {
        let mut intake = DataIntake::new(LIMITS);
        let mut stored = Vec::new();
        let mut input = Vec::new();
        for piece in pieces {
            input.extend_from_slice(piece);
            let mut decoded = Vec::new();
            let consumed = intake.feed(&input, &mut decoded);
            input.drain(..consumed);
            if intake.is_refused() {
                stored.clear();
            } else {
                stored.extend_from_slice(&decoded);
            }
            if intake.outcome() != Outcome::NeedMore {
                break;
            }
        }
        (stored, intake.outcome(), input)
    }

    #[test]
    fn data_is_complete_at_the_end_marker_and_leaves_the_next_command() {
        let (stored, outcome, rest) = data(&[b"Subject: x\r\n\r\n..dot\r", b"\n.\r\nQUIT\r\n"]);
        assert_eq!(stored, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(outcome, Outcome::Complete { octets: 20 });
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn data_needs_more_until_the_end_marker() {
        let (_, outcome, _) = data(&[b"Subject: x\r\n\r\nbody\r\n"]);
        assert_eq!(outcome, Outcome::NeedMore);
    }

    #[test]
    fn data_with_a_bare_lf_is_refused_with_550_5_5_2() {
        let (stored, outcome, rest) = data(&[b"a\nb\r\n.\r\nNOOP\r\n"]);
        assert!(stored.is_empty());
        assert_eq!(outcome, Outcome::Refused(Refusal::BareLineEnding));
        assert_eq!(rest, b"NOOP\r\n", "read to its end all the same");
        assert_eq!(
            Refusal::BareLineEnding.reply().to_wire(),
            "550 5.5.2 Error: bare CR or LF in message data (RFC 5321 section 2.3.8)\r\n"
        );
    }

    #[test]
    fn data_over_the_size_limit_is_refused_with_552_5_3_4() {
        let line = [b'x'; 60];
        let (stored, outcome, _) = data(&[&line, b"\r\n", &line, b"\r\n.\r\n"]);
        assert!(stored.is_empty());
        assert_eq!(outcome, Outcome::Refused(Refusal::TooBig));
        assert_eq!(
            Refusal::TooBig.reply().to_wire(),
            "552 5.3.4 Error: message exceeds fixed maximum message size\r\n"
        );
    }

    #[test]
    fn data_with_too_many_hops_is_refused_with_554_5_4_6() {
        let header = b"Received: a\r\nReceived: b\r\nreceived : c\r\n\r\nbody\r\n.\r\n";
        let (stored, outcome, _) = data(&[&header[..20], &header[20..]]);
        assert!(stored.is_empty());
        assert_eq!(outcome, Outcome::Refused(Refusal::TooManyHops));
        assert_eq!(
            Refusal::TooManyHops.reply().to_wire(),
            "554 5.4.6 Error: too many hops (mail loop)\r\n"
        );
        let (_, outcome, _) = data(&[b"Received: a\r\nReceived: b\r\n\r\nbody\r\n.\r\n"]);
        assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
    }

    #[test]
    fn data_too_big_is_named_before_too_many_hops() {
        let mut message = b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\n".to_vec();
        message.extend_from_slice(&[b'x'; 100]);
        message.extend_from_slice(b"\r\n.\r\n");
        let (_, outcome, _) = data(&[&message]);
        assert_eq!(outcome, Outcome::Refused(Refusal::TooBig));
    }

    /// Feeds one chunk of `size` octets, in `pieces`, as a connection
    /// would: returns the octets stored and the outcome.
    fn chunk(
        intake: &mut ChunkIntake,
        size: u64,
        last: bool,
        pieces: &[&[u8]],
    ) -> (Vec<u8>, Outcome) {
        intake.start_chunk(size, last);
        let mut stored = Vec::new();
        for piece in pieces {
            let taken = intake.feed(piece);
            if intake.is_refused() {
                stored.clear();
            } else {
                stored.extend_from_slice(&piece[..taken]);
            }
        }
        (stored, intake.outcome())
    }

    #[test]
    fn chunks_are_counted_off_exactly_and_add_up() {
        let mut intake = ChunkIntake::new(LIMITS);
        let (stored, outcome) = chunk(&mut intake, 10, false, &[b"Subj", b"ect: x\r\n"]);
        assert_eq!(stored, b"Subject: x");
        assert_eq!(intake.remaining(), 0);
        assert_eq!(outcome, Outcome::ChunkAccepted { octets: 10 });
        intake.start_chunk(6, true);
        assert_eq!(
            intake.feed(b"\r\n\r\nhiNOOP\r\n"),
            6,
            "the rest is the next command"
        );
        assert_eq!(intake.outcome(), Outcome::Complete { octets: 16 });
    }

    #[test]
    fn a_chunk_needs_more_until_its_size_is_read() {
        let mut intake = ChunkIntake::new(LIMITS);
        let (_, outcome) = chunk(&mut intake, 10, true, &[b"abc"]);
        assert_eq!(outcome, Outcome::NeedMore);
        assert_eq!(intake.remaining(), 7);
    }

    #[test]
    fn an_empty_last_chunk_completes_the_message() {
        let mut intake = ChunkIntake::new(LIMITS);
        chunk(&mut intake, 5, false, &[b"hello"]);
        let (_, outcome) = chunk(&mut intake, 0, true, &[]);
        assert_eq!(outcome, Outcome::Complete { octets: 5 });
    }

    #[test]
    fn chunks_over_the_size_limit_are_refused_at_the_end_of_the_chunk() {
        let mut intake = ChunkIntake::new(LIMITS);
        chunk(&mut intake, 60, false, &[&[b'x'; 60]]);
        let (stored, outcome) = chunk(&mut intake, 60, false, &[&[b'x'; 30], &[b'x'; 30]]);
        assert!(stored.is_empty());
        assert!(intake.is_refused());
        assert_eq!(outcome, Outcome::Refused(Refusal::TooBig));
    }

    #[test]
    fn chunks_with_too_many_hops_are_refused() {
        let mut intake = ChunkIntake::new(LIMITS);
        let header = b"Received: a\r\nReceived: b\r\nReceived: c\r\n";
        let (_, outcome) = chunk(&mut intake, header.len() as u64, false, &[header]);
        assert_eq!(outcome, Outcome::Refused(Refusal::TooManyHops));
    }

    #[test]
    fn bdat_with_a_bare_cr_is_refused_with_550_5_5_2_after_the_last_chunk() {
        let mut intake = ChunkIntake::new(LIMITS);
        let (stored, outcome) = chunk(&mut intake, 4, false, &[b"A\r.\r"]);
        assert!(stored.is_empty(), "nothing of it is stored");
        assert_eq!(outcome, Outcome::ChunkAccepted { octets: 4 });
        let payload = b"MAIL FROM:<x@evil.test>\r\n";
        let (_, outcome) = chunk(&mut intake, payload.len() as u64, true, &[payload]);
        assert_eq!(outcome, Outcome::Refused(Refusal::BareLineEnding));
    }

    #[test]
    fn bdat_crlf_split_across_chunks_is_no_bare_line_ending() {
        let mut intake = ChunkIntake::new(LIMITS);
        chunk(&mut intake, 2, false, &[b"a\r"]);
        let (_, outcome) = chunk(&mut intake, 4, true, &[b"\nb\r\n"]);
        assert_eq!(outcome, Outcome::Complete { octets: 6 });
        let mut intake = ChunkIntake::new(LIMITS);
        let (_, outcome) = chunk(&mut intake, 2, true, &[b"a\r"]);
        assert_eq!(outcome, Outcome::Refused(Refusal::BareLineEnding));
    }

    /// What a whole message comes to over DATA (dot-stuffed, as a client
    /// sends it) and over BDAT cut at `cuts`: (outcome, octets stored).
    fn by_data_and_by_bdat(
        body: &[u8],
        cuts: &[usize],
    ) -> ((Outcome, Vec<u8>), (Outcome, Vec<u8>)) {
        let limits = IntakeLimits {
            max_size: 1 << 20,
            max_hops: 100,
        };
        let wire = crate::smtp::dot::stuff(body);
        let mut intake = DataIntake::new(limits);
        let mut stored = Vec::new();
        intake.feed(&wire, &mut stored);
        let by_data = (intake.outcome(), stored);

        let mut bounds: Vec<usize> = cuts.iter().map(|cut| cut % (body.len() + 1)).collect();
        bounds.push(0);
        bounds.push(body.len());
        bounds.sort_unstable();
        bounds.dedup();
        let mut intake = ChunkIntake::new(limits);
        let mut stored = Vec::new();
        let mut outcome = Outcome::NeedMore;
        let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &body[w[0]..w[1]]).collect();
        let pieces: Vec<&[u8]> = if pieces.is_empty() { vec![&[]] } else { pieces };
        for (index, piece) in pieces.iter().enumerate() {
            let last = index + 1 == pieces.len();
            let (octets, chunk_outcome) = chunk(&mut intake, piece.len() as u64, last, &[piece]);
            if intake.is_refused() {
                stored.clear();
            } else {
                stored.extend_from_slice(&octets);
            }
            outcome = chunk_outcome;
            if !matches!(outcome, Outcome::ChunkAccepted { .. }) {
                break;
            }
        }
        if matches!(outcome, Outcome::Refused(_)) {
            stored.clear();
        }
        (by_data, (outcome, stored))
    }

    #[test]
    fn the_smuggling_payload_gets_the_same_refusal_by_data_and_by_bdat() {
        let (by_data, by_bdat) = by_data_and_by_bdat(b"A\r.\rMAIL FROM:<x@evil.test>\r\n", &[]);
        assert_eq!(by_data.0, Outcome::Refused(Refusal::BareLineEnding));
        assert_eq!(by_bdat.0, Outcome::Refused(Refusal::BareLineEnding));
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_gives_the_outcome_data_gives(
            mut body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'.'),
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(b'\r'),
                    proptest::strategy::Just(b'a'),
                    proptest::strategy::Just(b' '),
                ],
                0..40,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            // DATA always ends with CRLF; the same octets go over BDAT.
            body.extend_from_slice(b"\r\n");
            let (by_data, by_bdat) = by_data_and_by_bdat(&body, &cuts);
            match by_data.0 {
                Outcome::Complete { .. } => {
                    proptest::prop_assert_eq!(&by_bdat.1, &body);
                    proptest::prop_assert_eq!(by_data, by_bdat);
                }
                refused => proptest::prop_assert_eq!(refused, by_bdat.0),
            }
        }
    }
}

//! The one dot-stuffer (RFC 5321 §4.5.2): turns a message body into the
//! wire form of DATA while it streams, for delivery and `sluice sendmail`.
//! Its inverse is `smtp::data::DataDecoder`.

/// Dot-stuffs a body while it streams (a line starting with "." gets one
/// more "."), and ends it with `CRLF . CRLF`, adding the CRLF when the body
/// does not end with one. A lone CR or LF counts as a line end here: a dot
/// after one is doubled too, so a next hop that reads a bare CR or LF as a
/// line end never sees `. CRLF` alone on a line (no smuggling through us).
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
        // Every other line-leading dot follows a CR or LF inside `input`;
        // memchr finds those without a per-octet loop.
        let mut start = 0;
        for end in memchr::memchr2_iter(b'\r', b'\n', input) {
            let dot = end + 1;
            if input.get(dot) == Some(&b'.') {
                output.extend_from_slice(&input[start..dot]);
                output.push(b'.');
                start = dot;
            }
        }
        output.extend_from_slice(&input[start..]);
        if let Some(&last) = input.last() {
            self.at_line_start = matches!(last, b'\r' | b'\n');
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

/// A whole body stuffed and terminated at once (tests, fuzzing, small
/// messages).
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut stuffer = DotStuffer::new();
    let mut output = Vec::with_capacity(body.len() + 5);
    stuffer.encode(body, &mut output);
    stuffer.finish(&mut output);
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::data::DataDecoder;
    use proptest::prelude::*;

    fn stuff_pieces(chunks: &[&[u8]]) -> Vec<u8> {
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
        assert_eq!(
            stuff_pieces(&[b".a\r\n.", b"b\r\n"]),
            b"..a\r\n..b\r\n.\r\n"
        );
        assert_eq!(stuff_pieces(&[b"a\r\n", b".\r\n"]), b"a\r\n..\r\n.\r\n");
    }

    #[test]
    fn a_dot_after_a_lone_cr_or_lf_is_doubled() {
        assert_eq!(
            stuff(b"A\r.\rMAIL FROM:<x@evil.test>\r\n"),
            b"A\r..\rMAIL FROM:<x@evil.test>\r\n.\r\n"
        );
        assert_eq!(stuff(b"a\n.\r\n"), b"a\n..\r\n.\r\n");
        assert_eq!(stuff_pieces(&[b"a\r", b".\r\n"]), b"a\r..\r\n.\r\n");
        assert_eq!(stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(stuff_pieces(&[b"a"]), b"a\r\n.\r\n");
        assert_eq!(stuff_pieces(&[b"a\r"]), b"a\r\r\n.\r\n");
        assert_eq!(stuff_pieces(&[b"a\r\n"]), b"a\r\n.\r\n");
        assert_eq!(stuff_pieces(&[b"a\r", b"\n"]), b"a\r\n.\r\n");
        assert_eq!(stuff_pieces(&[]), b".\r\n");
        assert_eq!(stuff(b""), b".\r\n");
    }

    /// Stuffing octet by octet, as RFC 5321 §4.5.2 words it: a dot at the
    /// start of the body or after any CR or LF gets another dot.
    fn stuff_bytewise(body: &[u8]) -> Vec<u8> {
        let mut output = Vec::new();
        let mut at_line_start = true;
        for &byte in body {
            if at_line_start && byte == b'.' {
                output.push(b'.');
            }
            output.push(byte);
            at_line_start = matches!(byte, b'\r' | b'\n');
        }
        output
    }

    /// What the server's decoder makes of the wire form: (body, consumed, done).
    fn decode(wire: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut decoder = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        let consumed = decoder.decode(wire, &mut out);
        assert_eq!(decoder.problem(), None);
        (out, consumed, decoder.is_done())
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
        fn the_servers_decoder_gives_back_what_was_stuffed(
            lines in proptest::collection::vec("[.a-z\u{e9} ]{0,8}", 0..12),
            split in 0usize..200,
        ) {
            let mut body = Vec::new();
            for line in &lines {
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            let split = split.min(body.len());
            let wire = stuff_pieces(&[&body[..split], &body[split..]]);
            let (decoded, consumed, done) = decode(&wire);
            prop_assert!(done);
            prop_assert_eq!(consumed, wire.len());
            prop_assert_eq!(decoded, body);
        }
    }
}

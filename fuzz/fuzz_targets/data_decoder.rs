//! Fuzzes the DATA decoder: decoding in two pieces gives what decoding at
//! once gives, the output never exceeds the limit, and dot-stuffed clean
//! bodies round-trip exactly. And the BDAT line-ending check: cut anywhere,
//! it finds a bare CR or LF exactly when one is there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::data::{DataDecoder, LineEndingCheck};
use sluice::smtp::dot::stuff;

fn decode_all(
    pieces: &[&[u8]],
    max: u64,
) -> (
    Vec<u8>,
    usize,
    bool,
    Option<sluice::smtp::data::DataProblem>,
) {
    let mut decoder = DataDecoder::new(max);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        if decoder.is_done() {
            break;
        }
        consumed += decoder.decode(piece, &mut out);
    }
    assert!(out.len() as u64 <= max);
    (out, consumed, decoder.is_done(), decoder.problem())
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let max = 64 + u64::from(split) * 4;
    let at = usize::from(split).min(input.len());
    let whole = decode_all(&[input], max);
    let pieces = decode_all(&[&input[..at], &input[at..]], max);
    // Where the input was split must not matter (the octets emitted before
    // a problem is found are discarded with the message, so not compared).
    assert_eq!((whole.1, whole.2, whole.3), (pieces.1, pieces.2, pieces.3));
    if whole.3.is_none() {
        assert_eq!(whole.0, pieces.0);
    }

    // A clean body of CRLF lines survives stuffing and decoding unchanged.
    let mut body = Vec::new();
    for line in input.split(|&b| b == b'\n') {
        body.extend(line.iter().copied().filter(|&b| b != b'\r'));
        body.extend_from_slice(b"\r\n");
    }
    let wire = stuff(&body);
    let (out, consumed, done, problem) = decode_all(&[&wire], u64::MAX);
    assert!(done);
    assert_eq!(problem, None);
    assert_eq!(consumed, wire.len());
    assert_eq!(out, body);

    // BDAT: a bare CR or LF is found wherever the chunks are cut.
    let bare = input.iter().enumerate().any(|(index, &byte)| match byte {
        b'\r' => input.get(index + 1) != Some(&b'\n'),
        b'\n' => index == 0 || input[index - 1] != b'\r',
        _ => false,
    });
    let mut check = LineEndingCheck::new();
    check.feed(&input[..at]);
    check.feed(&input[at..]);
    assert_eq!(check.found_bare(true), bare);
});

//! Fuzzes the long-line breaker: cut anywhere it gives what it gives at
//! once, no line it passes on is over 998 octets, and every octet of the
//! input is there, in order (only CR, LF and space are ever added).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::lines::{LineBreaker, MAX_LINE};

fn break_pieces(pieces: &[&[u8]]) -> Vec<u8> {
    let mut breaker = LineBreaker::new();
    let mut stored = Vec::new();
    let mut scratch = Vec::new();
    for piece in pieces {
        stored.extend_from_slice(breaker.feed(piece, &mut scratch));
    }
    stored.extend_from_slice(&breaker.finish());
    stored
}

fuzz_target!(|data: &[u8]| {
    let Some((&repeat, input)) = data.split_first() else {
        return;
    };
    // Long lines out of short inputs: the input, repeated.
    let message: Vec<u8> = input
        .iter()
        .copied()
        .cycle()
        .take(input.len() * (usize::from(repeat) % 16 + 1))
        .collect();
    let at = usize::from(repeat) * 37 % (message.len() + 1);
    let whole = break_pieces(&[&message]);
    assert_eq!(whole, break_pieces(&[&message[..at], &message[at..]]));
    // No line over the limit: to each LF, CRs at its end not counted (a
    // bare CR or LF is refused before the breaker runs, but it must not
    // make it pass a long line either).
    for line in whole.split(|&byte| byte == b'\n') {
        let crs = line.iter().rev().take_while(|&&byte| byte == b'\r').count();
        assert!(line.len() - crs <= MAX_LINE, "a line of {} octets", line.len() - crs);
    }
    let mut original = message.iter();
    for &byte in &whole {
        if original.as_slice().first() == Some(&byte) {
            original.next();
        } else {
            assert!(matches!(byte, b'\r' | b'\n' | b' '), "added {byte}");
        }
    }
    assert!(original.as_slice().is_empty(), "an octet was lost");
});

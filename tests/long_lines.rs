//! Lines over 998 octets (RFC 5322 §2.1.1) against the real binary: they
//! are broken before the message is stored, so a next hop that refuses
//! long lines (RFC 5321 §4.5.3.1.6, as aiosmtpd does) takes the message,
//! and joining the pieces gives the text back.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use common::destination::{Destination, Options, wait_delivered};
use common::{Sluice, field};

/// The longest line of `text`, CRLF not counted.
fn longest_line(text: &[u8]) -> usize {
    text.split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).len())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_5000_octet_body_line_and_a_1500_octet_subject_reach_a_destination_that_refuses_long_lines() {
    let destination = Destination::start(Options {
        max_line_length: Some(998),
        ..Options::default()
    });
    let sluice = Sluice::start(&format!(
        "[routes]\n\"dest.test\" = \"{}\"\n",
        destination.addr
    ));
    let words: Vec<String> = (0..150).map(|n| format!("word{n:05}")).collect();
    let subject = format!("Subject: {}", words.join(" "));
    assert!(subject.len() >= 1500, "{}", subject.len());
    let long_line: String = (0..5000)
        .map(|n| char::from(b'a' + (n % 26) as u8))
        .collect();
    let body = format!(
        "From: alice@origin.test\r\nTo: bob@dest.test\r\n{subject}\r\n\r\nfirst\r\n{long_line}\r\nlast\r\n"
    );
    let id = sluice
        .connect()
        .send_message("alice@origin.test", &["bob@dest.test"], &body);

    let seen = wait_delivered(&destination, 1);
    assert!(
        seen[0].final_reply.starts_with("250"),
        "the destination took it: {}",
        seen[0].final_reply
    );
    let delivered = &seen[0].body;
    assert!(
        longest_line(delivered) <= 998,
        "every line delivered is at most 998 octets, got {}",
        longest_line(delivered)
    );
    let text = String::from_utf8(delivered.clone()).expect("UTF-8");
    let (header, delivered_body) = text.split_once("\r\n\r\n").expect("an empty line");
    // RFC 5322 §2.2.3: the Subject is folded at its spaces; unfolding gives it back.
    let unfolded = header.replace("\r\n ", " ");
    assert!(
        unfolded.lines().any(|line| line == subject),
        "the Subject unfolds to what was sent:\n{header}"
    );
    // The body line is broken with CRLF SP; removing those gives it back.
    assert_eq!(
        delivered_body.replace("\r\n ", ""),
        format!("first\r\n{long_line}\r\nlast\r\n"),
        "joining the pieces gives the body back"
    );
    let accepted = sluice.wait_log(&[&format!("queue_id={id}"), "message accepted"]);
    assert_eq!(field(&accepted, "broken_lines"), "2", "{accepted}");
    sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
}

#[test]
fn a_998_octet_line_is_stored_untouched_and_logged_as_none_broken() {
    let destination = Destination::start(Options {
        max_line_length: Some(998),
        ..Options::default()
    });
    let sluice = Sluice::start(&format!(
        "[routes]\n\"dest.test\" = \"{}\"\n",
        destination.addr
    ));
    let line = "x".repeat(998);
    let body = format!("Subject: exactly 998\r\n\r\n{line}\r\n");
    let id = sluice
        .connect()
        .send_message("alice@origin.test", &["bob@dest.test"], &body);
    let seen = wait_delivered(&destination, 1);
    let text = String::from_utf8_lossy(&seen[0].body);
    assert!(
        text.ends_with(&body),
        "a 998-octet line is left alone: {text}"
    );
    let accepted = sluice.wait_log(&[&format!("queue_id={id}"), "message accepted"]);
    assert_eq!(field(&accepted, "broken_lines"), "0", "{accepted}");
}

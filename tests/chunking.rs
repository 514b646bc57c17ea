//! Outbound BDAT (RFC 3030): to a next hop that offers CHUNKING the body
//! goes as it is stored, in chunks, without dot-stuffing; to one that does
//! not (or with `delivery.chunking = false`), DATA as before. The
//! destination records the chunks and the bytes it got.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use common::Sluice;
use common::destination::{Destination, Options, wait_delivered};

/// A body with leading dots (stuffed by DATA, never by BDAT) and, when
/// `big`, over the in-memory limit so it is streamed from its file in
/// several chunks.
fn body(big: bool) -> String {
    let mut body = String::from(
        "From: a@origin.test\r\nTo: b@dest.test\r\nSubject: chunks\r\n\r\n.one dot\r\n..two dots\r\n.\r\n",
    );
    if big {
        // Lines stay within 998 octets: longer ones are broken on the way in
        // (DESIGN.md "Faults"), which is not what this test is about.
        let line = format!("{}\r\n", "x".repeat(990));
        for index in 0..600 {
            body.push_str(&format!(".{index}"));
            body.push_str(&line);
        }
    }
    body.push_str("end\r\n");
    body
}

fn deliver(
    options: Options,
    delivery: &str,
    big: bool,
) -> (common::destination::Transaction, String) {
    let destination = Destination::start(options);
    let sluice = Sluice::start(&format!(
        "[delivery]\ntls = \"disabled\"\nretry_initial = \"1h\"\n{delivery}\n\
         [routes]\n\"dest.test\" = \"{}\"\n",
        destination.addr
    ));
    let body = body(big);
    sluice
        .connect()
        .send_message("a@origin.test", &["b@dest.test"], &body);
    let transaction = wait_delivered(&destination, 1).remove(0);
    (transaction, body)
}

fn chunking() -> Options {
    Options {
        chunking: true,
        ..Options::default()
    }
}

#[test]
fn bdat_carries_the_body_as_stored_to_a_hop_offering_chunking() {
    let (transaction, body) = deliver(chunking(), "", false);
    assert_eq!(transaction.chunks.len(), 1, "one chunk for a small body");
    let received = String::from_utf8(transaction.body.clone()).unwrap();
    // Only the Received header is added in front.
    assert!(received.starts_with("Received: "), "{received}");
    assert!(received.ends_with(&body), "the body as sent:\n{received}");
    assert_eq!(transaction.chunks.iter().sum::<usize>(), received.len());
}

#[test]
fn a_large_body_goes_in_several_chunks_byte_for_byte() {
    let (transaction, body) = deliver(chunking(), "", true);
    assert!(
        transaction.chunks.len() > 1,
        "a {} byte body in chunks: {:?}",
        transaction.body.len(),
        transaction.chunks
    );
    let received = String::from_utf8(transaction.body.clone()).unwrap();
    assert!(received.ends_with(&body), "the body as sent");
    assert_eq!(transaction.chunks.iter().sum::<usize>(), received.len());
}

#[test]
fn data_when_chunking_is_not_offered_or_turned_off() {
    let (transaction, body) = deliver(Options::default(), "", false);
    assert!(transaction.chunks.is_empty(), "DATA, not BDAT");
    assert!(String::from_utf8_lossy(&transaction.body).ends_with(&body));
    let (transaction, body) = deliver(chunking(), "chunking = false\n", false);
    assert!(
        transaction.chunks.is_empty(),
        "delivery.chunking = false: DATA"
    );
    assert!(String::from_utf8_lossy(&transaction.body).ends_with(&body));
}

#[test]
fn a_refused_last_chunk_bounces_like_a_refused_data() {
    let destination = Destination::start(chunking());
    destination.on_data(|_, _| Some("554 5.6.0 content refused".into()));
    let sluice = Sluice::start(&format!(
        "[delivery]\ntls = \"disabled\"\nretry_initial = \"1h\"\n\n\
         [routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    sluice
        .connect()
        .send_message("a@origin.test", &["b@dest.test"], &body(false));
    let line = sluice.wait_log(&["recipient=b@dest.test", "status=bounced"]);
    assert!(line.contains("554 5.6.0"), "{line}");
}

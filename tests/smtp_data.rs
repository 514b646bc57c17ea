//! Message data against the real binary: DATA end detection and
//! dot-unstuffing, SMTP smuggling payloads, size limits, BDAT/CHUNKING.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use common::spool::stop_and_read_queue;
use common::{Sluice, queue_id};

#[test]
fn dot_stuffed_lines_are_unstuffed() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n.x\r\n.\r\n");
    assert!(queue_id(&client.read_reply()).is_some());
    let queued = stop_and_read_queue(&mut server);
    assert!(
        queued[0]
            .body
            .ends_with("\r\n\r\n.leading dot\r\n..\r\nx\r\n"),
        "{:?}",
        queued[0].body
    );
}

#[test]
fn bare_lf_in_data_is_rejected_and_the_stream_stays_in_sync() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n");
    let reply = client.read_reply();
    assert!(
        reply.starts_with("550 5.5.2"),
        "expected 550 5.5.2 for a bare LF, got {reply:?}"
    );
    server.wait_log(&["transaction refused", "bare CR or LF"]);
    // The connection is in sync: a clean message goes through.
    client.send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: clean\r\n\r\nok\r\n",
    );
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued.len(), 1);
    assert!(queued[0].body.contains("Subject: clean"));
}

#[test]
fn bare_cr_in_data_is_rejected() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: bare\r\n\r\nline one\rline two\r\n.\r\n");
    let reply = client.read_reply();
    assert!(reply.starts_with("550 5.5.2"), "{reply:?}");
    client.expect("QUIT", "221");
    assert!(stop_and_read_queue(&mut server).is_empty());
}

/// A body hiding an end marker a lenient server would accept, followed by a
/// second transaction. It must never yield a second message.
fn smuggle(marker: &[u8]) {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    let mut payload = b"Subject: innocent\r\n\r\nhello".to_vec();
    payload.extend_from_slice(marker);
    payload.extend_from_slice(
        b"MAIL FROM:<spoofed@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
    );
    client.send_raw(&payload);
    let reply = client.read_reply();
    assert!(
        reply.starts_with("550 5.5.2"),
        "marker {marker:?}: expected the whole payload refused with 550 5.5.2, got {reply:?}"
    );
    client.expect("NOOP", "250");
    client.expect("QUIT", "221");
    let queued = stop_and_read_queue(&mut server);
    assert!(
        queued
            .iter()
            .all(|q| !q.body.contains("smuggled") && q.message.sender != "spoofed@example.org"),
        "marker {marker:?} smuggled a message"
    );
    assert!(
        queued.is_empty(),
        "marker {marker:?}: nothing may be queued"
    );
}

#[test]
fn smuggling_with_lf_dot_crlf_never_yields_a_second_message() {
    smuggle(b"\n.\r\n");
}

#[test]
fn smuggling_with_crlf_dot_lf_never_yields_a_second_message() {
    smuggle(b"\r\n.\n");
}

#[test]
fn smuggling_with_lf_dot_lf_never_yields_a_second_message() {
    smuggle(b"\n.\n");
}

#[test]
fn smuggling_with_cr_dot_cr_never_yields_a_second_message() {
    smuggle(b"\r.\r");
}

#[test]
fn oversize_declared_with_mail_size_gets_552() {
    let server = Sluice::start_no_delivery("[limits]\nmax_message_size = 1000\n");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org> SIZE=1001", "552 5.3.4");
    client.expect("MAIL FROM:<a@example.org> SIZE=1000", "250");
}

#[test]
fn oversize_data_gets_552_and_nothing_is_stored() {
    let mut server = Sluice::start_no_delivery("[limits]\nmax_message_size = 1000\n");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    let line = format!("{}\r\n", "x".repeat(98));
    for _ in 0..200 {
        client.send_raw(line.as_bytes());
    }
    client.send_raw(b".\r\n");
    let reply = client.read_reply();
    assert!(reply.starts_with("552 5.3.4"), "{reply:?}");
    // Still in sync afterwards.
    client.expect("RSET", "250");
    let queued = stop_and_read_queue(&mut server);
    assert!(queued.is_empty());
}

#[test]
fn bdat_with_several_chunks_is_queued_byte_for_byte() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org> BODY=8BITMIME", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    // A lone dot line and CRLF.CRLF are just octets (a bare CR or LF is
    // refused as over DATA: see the smuggling tests below).
    let chunks: [&[u8]; 3] = [
        b"Subject: chunks\r\n\r\n",
        b"one\r\n.\r\n.\r\ntwo",
        b"\r\nthree\r\n",
    ];
    for chunk in &chunks[..2] {
        client.send_raw(format!("BDAT {}\r\n", chunk.len()).as_bytes());
        client.send_raw(chunk);
        let reply = client.read_reply();
        assert_eq!(reply, format!("250 2.0.0 {} octets received", chunk.len()));
    }
    client.send_raw(format!("BDAT {} LAST\r\n", chunks[2].len()).as_bytes());
    client.send_raw(chunks[2]);
    let id = queue_id(&client.read_reply()).expect("queued after BDAT LAST");
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued[0].message.id.as_str(), id);
    assert!(queued[0].message.body_8bit);
    assert!(
        queued[0]
            .body
            .ends_with("Subject: chunks\r\n\r\none\r\n.\r\n.\r\ntwo\r\nthree\r\n"),
        "{:?}",
        queued[0].body
    );
}

#[test]
fn bdat_pipelined_in_one_write() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.send_raw(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 5\r\nabc\r\nBDAT 0 LAST\r\nQUIT\r\n");
    for prefix in [
        "250-",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0 5 octets",
        "250 2.0.0 Ok: queued as",
        "221",
    ] {
        let reply = client.read_reply();
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
    }
    assert!(
        stop_and_read_queue(&mut server)[0]
            .body
            .ends_with("\r\nabc\r\n")
    );
}

#[test]
fn bdat_mixed_with_data_gets_503() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.send_raw(b"BDAT 3\r\nabc");
    assert!(client.read_reply().starts_with("250"));
    client.expect("DATA", "503 5.5.1");
    // BDAT without a transaction: the chunk is read and discarded, then 503.
    client.expect("RSET", "250");
    client.send_raw(b"BDAT 4 LAST\r\nQUIT");
    let reply = client.read_reply();
    assert!(reply.starts_with("503 5.5.1"), "{reply:?}");
    client.expect("NOOP", "250");
}

#[test]
fn bdat_over_the_size_limit_gets_552() {
    let mut server = Sluice::start_no_delivery("[limits]\nmax_message_size = 100\n");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.send_raw(b"BDAT 150 LAST\r\n");
    client.send_raw(&[b'x'; 150]);
    let reply = client.read_reply();
    assert!(reply.starts_with("552 5.3.4"), "{reply:?}");
    client.expect("NOOP", "250");
    assert!(stop_and_read_queue(&mut server).is_empty());
}

#[test]
fn a_thousand_messages_on_one_connection() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    for n in 0..1000 {
        client.send_raw(
            format!("MAIL FROM:<a@example.org>\r\nRCPT TO:<b{n}@example.net>\r\nDATA\r\n")
                .as_bytes(),
        );
        assert!(client.read_reply().starts_with("250"));
        assert!(client.read_reply().starts_with("250"));
        assert!(client.read_reply().starts_with("354"));
        client.send_raw(format!("Subject: {n}\r\n\r\nmessage {n}\r\n.\r\n").as_bytes());
        let reply = client.read_reply();
        assert!(queue_id(&reply).is_some(), "message {n}: {reply:?}");
    }
    client.expect("QUIT", "221");
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued.len(), 1000);
}

/// The `message accepted` line of `id` in the server's log.
fn accepted_line(server: &Sluice, id: &str) -> String {
    let needle = format!("queue_id={id}");
    server.wait_log(&[&needle, "message accepted"]);
    server
        .log_text()
        .lines()
        .find(|line| line.contains(&needle) && line.contains("message accepted"))
        .expect("an accepted line")
        .to_string()
}

/// The size `sluice queue show --json` gives for `id`.
fn queued_size(server: &Sluice, id: &str) -> String {
    let (code, text, stderr) = server.cli(&["queue", "show", id, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    value["size"].to_string()
}

#[test]
fn accepted_line_has_the_message_id_and_the_stored_size() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: id\r\nMessage-ID:\r\n <one.1@example.org>\r\n\r\nHi.\r\n.\r\n");
    let with_id = queue_id(&client.read_reply()).expect("queued");

    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    let data = b"Subject: no id\r\n\r\nMessage-ID: <in.body@example.org>\r\n";
    client.send_raw(format!("BDAT {} LAST\r\n", data.len()).as_bytes());
    client.send_raw(data);
    let without_id = queue_id(&client.read_reply()).expect("queued");
    client.expect("QUIT", "221");

    let line = accepted_line(&server, &with_id);
    assert_eq!(common::field(&line, "message_id"), "<one.1@example.org>");
    assert_eq!(common::field(&line, "size"), queued_size(&server, &with_id));
    let line = accepted_line(&server, &without_id);
    assert_eq!(common::field(&line, "message_id"), "-");
    assert_eq!(
        common::field(&line, "size"),
        queued_size(&server, &without_id)
    );
}

#[test]
fn bdat_smuggling_with_bare_cr_is_refused_with_550_and_nothing_queued() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    let payload = b"A\r.\rMAIL FROM:<x@evil.test>\r\n";
    client.send_raw(format!("BDAT {} LAST\r\n", payload.len()).as_bytes());
    client.send_raw(payload);
    let reply = client.read_reply();
    assert!(
        reply.starts_with("550 5.5.2"),
        "expected 550 5.5.2 for a bare CR over BDAT, got {reply:?}"
    );
    server.wait_log(&["transaction refused", "bare CR or LF"]);
    client.expect("NOOP", "250");
    client.expect("QUIT", "221");
    let queued = stop_and_read_queue(&mut server);
    assert!(
        queued.is_empty(),
        "nothing may be queued, found {}",
        queued.len()
    );
}

#[test]
fn bdat_bare_lf_in_an_early_chunk_is_refused_after_the_last() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    let first = b"X-Foo: a\nAuthentication-Results: x; dkim=pass\r";
    client.send_raw(format!("BDAT {}\r\n", first.len()).as_bytes());
    client.send_raw(first);
    let reply = client.read_reply();
    assert!(
        reply.starts_with("250"),
        "a chunk that is not the last: {reply:?}"
    );
    let last = b"\nSubject: x\r\n\r\nbody\r\n";
    client.send_raw(format!("BDAT {} LAST\r\n", last.len()).as_bytes());
    client.send_raw(last);
    let reply = client.read_reply();
    assert!(reply.starts_with("550 5.5.2"), "{reply:?}");
    // A CRLF split across two chunks is no bare line ending.
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.send_raw(b"BDAT 11\r\nSubject: x\r");
    assert!(client.read_reply().starts_with("250"));
    client.send_raw(b"BDAT 7 LAST\r\n\n\r\nok\r\n");
    let reply = client.read_reply();
    assert!(queue_id(&reply).is_some(), "{reply:?}");
    client.expect("QUIT", "221");
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued.len(), 1, "only the clean message");
    assert!(
        queued[0].body.ends_with("Subject: x\r\n\r\nok\r\n"),
        "{:?}",
        queued[0].body
    );
}

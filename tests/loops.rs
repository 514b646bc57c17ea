//! Mail loop protection, end to end against the real binary:
//! - inbound, a message with more `Received:` fields than `limits.max_hops`
//!   is refused with 554 5.4.6 and not queued (RFC 5321 §6.3);
//! - outbound, a next hop that is sluice itself fails the recipient with
//!   5.4.6 "mail for <domain> loops back to myself" and a DSN, instead of
//!   delivering the message to ourselves (RFC 5321 §5.1).

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::net::{Ipv4Addr, TcpListener};

use common::destination::{Destination, Options, wait_dsn};
use common::dns::DnsServer;
use common::{DEADLINE, Sluice, SmtpClient, config_text, field, queue_id, wait_for};

/// `count` Received fields, then a minimal header and body.
fn message_with_hops(count: usize) -> String {
    let mut message = String::new();
    for hop in 0..count {
        // Vary the case: field names are case-insensitive.
        let name = if hop % 2 == 0 { "Received" } else { "RECEIVED" };
        message.push_str(&format!(
            "{name}: from hop{hop}.test by hop{}.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
            hop + 1
        ));
    }
    message.push_str("From: alice@origin.test\r\nSubject: loop\r\n\r\nbody\r\n");
    message.push_str("Received: in the body, not counted\r\n");
    message
}

/// Sends `body` with DATA and returns the final reply.
fn send_data(client: &mut SmtpClient, body: &str) -> String {
    client.expect("MAIL FROM:<alice@origin.test>", "250");
    client.expect("RCPT TO:<bob@dest.test>", "250");
    client.expect("DATA", "354");
    client.send_raw(body.as_bytes());
    client.send_raw(b".\r\n");
    client.read_reply()
}

/// Sends `body` in two BDAT chunks and returns the final reply.
fn send_bdat(client: &mut SmtpClient, body: &str) -> String {
    client.expect("MAIL FROM:<alice@origin.test>", "250");
    client.expect("RCPT TO:<bob@dest.test>", "250");
    let (first, last) = body.as_bytes().split_at(body.len() / 2);
    client.send_raw(format!("BDAT {}\r\n", first.len()).as_bytes());
    client.send_raw(first);
    let reply = client.read_reply();
    if !reply.starts_with("250 ") {
        return reply;
    }
    client.send_raw(format!("BDAT {} LAST\r\n", last.len()).as_bytes());
    client.send_raw(last);
    client.read_reply()
}

fn accepted_count(sluice: &Sluice) -> usize {
    sluice.log_text().matches("message accepted").count()
}

#[test]
fn too_many_received_fields_are_refused_with_5_4_6_and_not_queued() {
    let destination = Destination::start(Options::default());
    let sluice = Sluice::start(&format!(
        "[limits]\nmax_hops = 3\n\n[routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    for send in [send_data, send_bdat] {
        let reply = send(&mut client, &message_with_hops(4));
        assert!(reply.starts_with("554 5.4.6 "), "{reply}");
        // The session goes on, and exactly max_hops fields are fine.
        let reply = send(&mut client, &message_with_hops(3));
        assert!(queue_id(&reply).is_some(), "{reply}");
    }
    client.expect("QUIT", "221");
    let line = sluice.wait_log(&["transaction refused", "too many hops"]);
    assert_eq!(field(&line, "client"), "127.0.0.1");
    // Only the two messages within the limit were queued and delivered.
    wait_for("two deliveries", DEADLINE, || {
        (destination.delivered().len() == 2).then_some(())
    });
    assert_eq!(accepted_count(&sluice), 2, "{}", sluice.log_text());
    for transaction in destination.delivered() {
        let text = String::from_utf8_lossy(&transaction.body).into_owned();
        // Ours plus the three it came with.
        assert_eq!(
            text.lines()
                .take_while(|line| !line.is_empty())
                .filter(|line| line.to_ascii_lowercase().starts_with("received:"))
                .count(),
            4,
            "{text}"
        );
    }
}

#[test]
fn default_limit_is_50_hops() {
    let sluice = Sluice::start("[routes]\n\"*\" = \"127.0.0.1:9\"\n");
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    let reply = send_data(&mut client, &message_with_hops(51));
    assert!(reply.starts_with("554 5.4.6 "), "{reply}");
    let reply = send_data(&mut client, &message_with_hops(50));
    assert!(queue_id(&reply).is_some(), "{reply}");
}

/// A loopback port free right now (there is a small window before sluice
/// binds it; the listener address must be known before it starts).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

#[test]
fn next_hop_pointing_back_at_ourselves_fails_5_4_6_with_a_dsn() {
    let destination = Destination::start(Options::default());
    let dns = DnsServer::start();
    // MX of loop.test points here; so does an implicit MX.
    dns.mx("loop.test", &[(10, "mx.loop.test")]);
    dns.a("mx.loop.test", &[Ipv4Addr::LOCALHOST]);
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_text(
        dir.path(),
        "",
        &format!(
            "{}\n[delivery]\nport = {port}\n\n[routes]\n\
             \"self.test\" = \"127.0.0.1:{port}\"\n\
             \"origin.test\" = \"{}\"\n",
            dns.config(),
            destination.addr
        ),
    );
    config = config.replace(
        "address = \"127.0.0.1:0\"\nkind = \"relay\"",
        &format!("address = \"127.0.0.1:{port}\"\nkind = \"relay\""),
    );
    let sluice = Sluice::start_with(dir, &config);
    assert_eq!(sluice.smtp.port(), port);
    let mut client = sluice.connect();
    let id = client.send_message(
        "alice@origin.test",
        &["bob@loop.test", "carol@self.test"],
        "From: alice@origin.test\r\nSubject: round and round\r\nMessage-ID: <loop1@origin.test>\r\n\r\nHello.\r\n",
    );
    client.expect("QUIT", "221");

    let (_, dsn) = wait_dsn(&destination, "alice@origin.test");
    for expected in [
        "Final-Recipient: rfc822; bob@loop.test",
        "Final-Recipient: rfc822; carol@self.test",
        "Action: failed",
        "mail for loop.test loops back to myself",
        "mail for self.test loops back to myself",
        "Message-ID: <loop1@origin.test>",
    ] {
        assert!(dsn.contains(expected), "DSN lacks {expected:?}:\n{dsn}");
    }
    assert_eq!(dsn.matches("Status: 5.4.6").count(), 2, "{dsn}");
    for recipient in ["bob@loop.test", "carol@self.test"] {
        let line = sluice.wait_log(&[
            &format!("queue_id={id}"),
            &format!("recipient={recipient}"),
            "status=bounced",
        ]);
        assert_eq!(field(&line, "dsn"), "5.4.6", "{line}");
    }
    // The message never came back in: one SMTP acceptance, ours.
    assert_eq!(accepted_count(&sluice), 1, "{}", sluice.log_text());
    assert!(
        !sluice
            .log_text()
            .contains("client=127.0.0.1 helo=sluice.test"),
        "sluice delivered to itself:\n{}",
        sluice.log_text()
    );
}

#[test]
fn ourselves_as_backup_mx_defers_while_the_better_mx_is_down() {
    // RFC 5321 §5.1: hosts less preferred than ourselves are never used, and
    // a failing better host means "try again later", not a bounce.
    let dns = DnsServer::start();
    dns.mx(
        "backup.test",
        &[(10, "primary.backup.test"), (20, "us.backup.test")],
    );
    // Nothing listens on 127.0.0.2 at our port: the primary is down.
    dns.a("primary.backup.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    dns.a("us.backup.test", &[Ipv4Addr::LOCALHOST]);
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_text(
        dir.path(),
        "",
        &format!("{}\n[delivery]\nport = {port}\n", dns.config()),
    )
    .replace(
        "address = \"127.0.0.1:0\"\nkind = \"relay\"",
        &format!("address = \"127.0.0.1:{port}\"\nkind = \"relay\""),
    );
    let sluice = Sluice::start_with(dir, &config);
    let mut client = sluice.connect();
    let id = client.send_message(
        "alice@origin.test",
        &["bob@backup.test"],
        "Subject: x\r\n\r\nHello.\r\n",
    );
    client.expect("QUIT", "221");
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert!(field(&line, "dsn").starts_with("4."), "{line}");
    assert!(!sluice.log_text().contains("status=bounced"));
    assert_eq!(accepted_count(&sluice), 1, "{}", sluice.log_text());
}

//! The inbound SMTP dialogue against the real binary: greeting, EHLO,
//! replies and their codes, sequencing, relay policy, pipelining.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use common::spool::stop_and_read_queue;
use common::{Sluice, SmtpClient, enhanced_code, queue_id};

#[test]
fn greeting_and_ehlo_advertise_the_documented_extensions() {
    let server = Sluice::start_no_delivery("[limits]\nmax_message_size = \"1MiB\"\n");
    let mut client = SmtpClient::connect(server.smtp);
    assert_eq!(client.read_reply(), "220 sluice.test ESMTP sluice");
    let ehlo = client.expect("EHLO client.test", "250");
    let lines: Vec<&str> = ehlo.lines().map(|line| &line[4..]).collect();
    assert_eq!(lines[0], "sluice.test");
    for keyword in [
        "PIPELINING",
        "SIZE 1048576",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(lines.contains(&keyword), "EHLO lacks {keyword}: {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "no STARTTLS without [tls]: {ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "no AUTH without TLS: {ehlo}");
}

#[test]
fn every_reply_carries_an_enhanced_status_code() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("HELO client.test", "250");
    for line in [
        "EHLO client.test",
        "NOOP",
        "VRFY someone",
        "HELP",
        "FROB",
        "MAIL FROM:<broken",
        "RCPT TO:<x@y.test>",
        "MAIL FROM:<a@b.test> FOO=1",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<x@y.test>",
        "RSET",
        "DATA",
        "QUIT",
    ] {
        let reply = client.command(line);
        if line.starts_with("EHLO") {
            continue; // RFC 2034 §3: EHLO keywords carry no status code.
        }
        for row in reply.lines() {
            assert!(
                enhanced_code(row).is_some(),
                "{line:?} got {row:?} without an enhanced code"
            );
        }
    }
}

#[test]
fn accepted_message_is_queued_with_a_received_header() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    let id = client.send_message(
        "alice@example.org",
        &["bob@Example.NET"],
        "Subject: hi\r\n\r\nhello\r\n",
    );
    client.expect("QUIT", "221 2.0.0");
    server.wait_log(&[
        "message accepted",
        &id,
        "sender=alice@example.org",
        "nrcpt=1",
    ]);
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued.len(), 1);
    let message = &queued[0];
    assert_eq!(message.message.id.as_str(), id);
    assert_eq!(message.message.sender, "alice@example.org");
    assert_eq!(message.message.recipients[0].address, "bob@example.net");
    let body = &message.body;
    assert!(
        body.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby sluice.test (sluice) with ESMTP id "
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "with ESMTP id {id}\r\n\tfor <bob@example.net>;\r\n\t"
        )),
        "{body}"
    );
    assert!(body.ends_with("Subject: hi\r\n\r\nhello\r\n"), "{body:?}");
}

#[test]
fn pipelined_transaction_in_one_write_gets_every_reply_in_order() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.send_raw(
        b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n\
          RCPT TO:<c@example.net>\r\nDATA\r\nSubject: pipelined\r\n\r\nbody\r\n.\r\n\
          MAIL FROM:<a@example.org>\r\nRCPT TO:<d@example.net>\r\nDATA\r\nSubject: second\r\n\r\n.\r\nQUIT\r\n",
    );
    let expected = [
        "250-",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "221",
    ];
    let mut ids = Vec::new();
    for prefix in expected {
        let reply = client.read_reply();
        assert!(
            reply.starts_with(prefix),
            "expected {prefix:?}, got {reply:?}"
        );
        ids.extend(queue_id(&reply));
    }
    assert_eq!(client.read_to_end(), "");
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0].message.recipients.len(), 2);
    assert!(queued[1].body.contains("Subject: second"));
}

#[test]
fn commands_out_of_sequence_get_503() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("MAIL FROM:<a@example.org>", "503 5.5.1");
    client.expect("EHLO client.test", "250");
    client.expect("RCPT TO:<b@example.net>", "503 5.5.1");
    client.expect("DATA", "503 5.5.1");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("MAIL FROM:<a@example.org>", "503 5.5.1");
    client.expect("DATA", "503 5.5.1");
}

#[test]
fn syntax_errors_get_501_and_unknown_commands_500() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO", "501 5.5.4");
    client.expect("EHLO client.test", "250");
    client.expect("FROB nicate", "500 5.5.2");
    client.expect("MAIL FROM:<a@example.org", "501 5.5.4");
    client.expect("MAIL TO:<a@example.org>", "501 5.5.4");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b..c@example.net>", "501 5.5.4");
    client.expect("DATA extra", "501 5.5.4");
}

#[test]
fn unknown_mail_or_rcpt_parameter_gets_555() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    // RET, ENVID, NOTIFY and ORCPT are known since DSN (tests/dsn.rs).
    client.expect("MAIL FROM:<a@example.org> MT-PRIORITY=3", "555 5.5.4");
    client.expect("MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=10", "250");
    client.expect(
        "RCPT TO:<b@example.net> RRVS=2030-01-01T00:00:00Z",
        "555 5.5.4",
    );
}

#[test]
fn command_line_over_512_octets_gets_500_and_the_session_continues() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let long = format!("MAIL FROM:<{}@example.org>", "a".repeat(600));
    client.expect(&long, "500 5.5.2");
    // Exactly 512 octets with CRLF is allowed.
    let fits = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    client.expect(&fits, "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
}

#[test]
fn vrfy_help_noop_rset_and_quit() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("VRFY postmaster", "252 2.1.5");
    client.expect("HELP", "214");
    client.expect("NOOP", "250 2.0.0");
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RSET", "250 2.0.0");
    client.expect("RCPT TO:<b@example.net>", "503 5.5.1");
    client.expect("QUIT", "221 2.0.0");
    assert_eq!(client.read_to_end(), "", "the server closes after QUIT");
}

const STRANGER_POLICY: &str = "[policy]\nrelay_networks = []\naccept_domains = [\"example.org\"]\n";

#[test]
fn relay_is_denied_to_clients_outside_relay_networks() {
    let server = Sluice::start_no_delivery(STRANGER_POLICY);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@elsewhere.test>", "250");
    let reply = client.command("RCPT TO:<victim@elsewhere.test>");
    assert_eq!(
        reply,
        "554 5.7.1 <victim@elsewhere.test>: Relay access denied"
    );
    client.expect("RCPT TO:<local@example.org>", "250 2.1.5");
    // The percent hack would let the next hop relay onwards: refused too.
    client.expect("RCPT TO:<victim%elsewhere.test@example.org>", "554 5.7.1");
    server.wait_log(&[
        "transaction refused",
        "victim@elsewhere.test",
        "relay access denied",
    ]);
}

#[test]
fn quoted_local_parts_cannot_forge_fields_in_log_lines() {
    // A quoted local part may hold spaces (RFC 5321 §4.1.2): written into a
    // text log as it is, it would add a `client=` field of the sender's
    // choosing to the line that tools like fail2ban read.
    let server = Sluice::start_no_delivery(STRANGER_POLICY);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<\"a client=192.0.2.66\"@example.org>", "250");
    client.expect(
        "RCPT TO:<\"b client=192.0.2.66\"@elsewhere.test>",
        "554 5.7.1",
    );
    client.expect("RCPT TO:<c@example.org>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: x\r\n\r\n.\r\n");
    assert!(queue_id(&client.read_reply()).is_some());
    for needles in [&["relay access denied"][..], &["message accepted"][..]] {
        let line = server.wait_log(needles);
        // Fields are read as white-space separated `key=value` tokens.
        let clients: Vec<&str> = line
            .split_whitespace()
            .filter_map(|token| token.strip_prefix("client="))
            .collect();
        assert_eq!(clients, ["127.0.0.1"], "{line}");
    }
}

#[test]
fn postmaster_is_always_accepted() {
    let mut server = Sluice::start_no_delivery(STRANGER_POLICY);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<>", "250");
    client.expect("RCPT TO:<Postmaster>", "250");
    client.expect("RCPT TO:<postmaster@example.org>", "250");
    client.expect("RCPT TO:<postmaster@sluice.test>", "250");
    client.expect("RCPT TO:<postmaster@elsewhere.test>", "554 5.7.1");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: to postmaster\r\n\r\n.\r\n");
    assert!(queue_id(&client.read_reply()).is_some());
    let queued = stop_and_read_queue(&mut server);
    let recipients: Vec<&str> = queued[0]
        .message
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    // <Postmaster> and postmaster@sluice.test are one recipient, stored once.
    assert_eq!(
        recipients,
        ["postmaster@sluice.test", "postmaster@example.org"]
    );
    assert_eq!(queued[0].message.sender, "", "null sender kept");
}

#[test]
fn too_many_recipients_get_452() {
    let server = Sluice::start_no_delivery("[limits]\nmax_recipients = 2\n");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("RCPT TO:<c@example.net>", "250");
    client.expect("RCPT TO:<d@example.net>", "452 4.5.3");
    client.expect("DATA", "354");
}

#[test]
fn smtputf8_addresses_are_accepted_with_the_parameter() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<jöran@example.org>", "553 5.6.7");
    client.expect("MAIL FROM:<jöran@example.org> SMTPUTF8", "250");
    client.expect("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>", "250");
    client.expect("DATA", "354");
    client.send_raw("Subject: ünïcode\r\n\r\n.\r\n".as_bytes());
    assert!(queue_id(&client.read_reply()).is_some());
    let queued = stop_and_read_queue(&mut server);
    assert!(queued[0].message.smtputf8);
    assert_eq!(queued[0].message.sender, "jöran@example.org");
    assert_eq!(
        queued[0].message.recipients[0].address,
        "δοκιμή@παράδειγμα.δοκιμή"
    );
}

#[test]
fn too_many_errors_close_the_connection_with_421() {
    let server = Sluice::start_no_delivery("[limits]\nmax_errors = 3\n");
    let mut client = server.connect();
    client.expect("FROB", "500");
    client.expect("FROB", "500");
    let last = client.command("FROB");
    assert!(last.starts_with("500"), "{last}");
    let rest = client.read_reply();
    assert!(
        rest.starts_with("421 4.7.0"),
        "expected 421 after too many errors, got {rest:?}"
    );
    assert_eq!(client.read_to_end(), "");
}

/// Each connection logs a `connect` line and a `disconnect` line with its
/// commands counted by verb, Postfix style, refusals after the slash.
#[test]
fn connect_and_disconnect_lines_count_the_commands() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("RCPT TO:<broken", "501");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: count\r\n\r\nHi.\r\n.\r\n");
    assert!(queue_id(&client.read_reply()).is_some());
    client.expect("QUIT", "221");
    drop(client);
    server.wait_log(&["disconnect "]);
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|line| line.contains(" connect ") || line.ends_with(" connect client=127.0.0.1")),
        "{log}"
    );
    let line = log
        .lines()
        .find(|line| line.contains("disconnect "))
        .expect("a disconnect line");
    assert!(
        line.contains("disconnect ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6"),
        "{line}"
    );
    assert_eq!(common::field(line, "client"), "127.0.0.1");
}

/// Every refused command leaves one info line with the client and the
/// reply; a policy refusal says `transaction refused` with its reason.
#[test]
fn every_refused_command_logs_one_line_with_its_reply() {
    let server = Sluice::start_no_delivery(STRANGER_POLICY);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@elsewhere.test>", "250");
    client.expect("RCPT TO:<broken", "501 5.5.4");
    client.expect("RCPT TO:<victim@elsewhere.test>", "554 5.7.1");
    client.expect("QUIT", "221");
    drop(client);
    server.wait_log(&["disconnect "]);
    let log = server.log_text();
    let syntax: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("501 5.5.4"))
        .collect();
    assert_eq!(syntax.len(), 1, "{log}");
    assert!(syntax[0].contains("command refused"), "{}", syntax[0]);
    assert_eq!(common::field(syntax[0], "client"), "127.0.0.1");
    assert_eq!(common::field(syntax[0], "command"), "rcpt");
    assert!(common::field(syntax[0], "reply").starts_with("501 5.5.4 Syntax error"));
    let relay: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("victim@elsewhere.test"))
        .collect();
    assert_eq!(relay.len(), 1, "one line per refusal: {log}");
    assert!(relay[0].contains("transaction refused"), "{}", relay[0]);
    assert!(relay[0].contains("relay access denied"), "{}", relay[0]);
    assert!(
        common::field(relay[0], "reply").starts_with("554 5.7.1 <victim@elsewhere.test>"),
        "{}",
        relay[0]
    );
}

/// A message refused at its end (here for a bare LF) logs the reply the
/// client got, as a refused command does.
#[test]
fn a_message_refused_at_its_end_logs_the_reply() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@origin.test>", "250");
    client.expect("RCPT TO:<b@dest.test>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: x\r\n\nbare\r\n.\r\n");
    let reply = client.read_reply();
    assert!(reply.starts_with("550 5.5.2"), "{reply}");
    let line = server.wait_log(&["transaction refused", "bare CR or LF"]);
    assert_eq!(common::field(&line, "command"), "data", "{line}");
    assert!(
        common::field(&line, "reply").starts_with("550 5.5.2 Error: bare CR or LF"),
        "{line}"
    );
}

#[test]
fn the_101st_of_150_noops_gets_421_4_7_0_and_the_connection_closes() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    // One at a time, so the server never closes with NOOPs unread.
    for n in 1..=150 {
        let reply = client.command("NOOP");
        if n <= 100 {
            assert!(reply.starts_with("250 "), "NOOP {n}: {reply:?}");
        } else {
            assert!(
                reply.starts_with("421 4.7.0 "),
                "expected 421 4.7.0 for NOOP {n}, got {reply:?}"
            );
            break;
        }
    }
    assert_eq!(client.read_to_end(), "", "the server closed the connection");
    server.wait_log(&["too many junk commands, closing"]);
}

#[test]
fn max_junk_commands_is_configurable() {
    let server = Sluice::start_no_delivery("[limits]\nmax_junk_commands = 2\n");
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("RSET", "250");
    client.expect("HELP", "214");
    client.expect("VRFY someone", "421 4.7.0");
    assert_eq!(client.read_to_end(), "");
}

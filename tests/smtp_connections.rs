//! Connections against the real binary: concurrency, limits, timeouts,
//! disconnects, crash safety and graceful shutdown.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::time::{Duration, Instant};

use common::admin::http;
use common::spool::{read_spool, stop_and_read_queue};
use common::{Sluice, SmtpClient, queue_id, wait_for};

#[test]
fn three_hundred_simultaneous_connections_are_all_served() {
    let mut server = Sluice::start_no_delivery(
        "[limits]\nmax_connections = 1000\nmax_connections_per_ip = 1000\n",
    );
    // All 300 are connected and greeted before any sends a message.
    let mut clients: Vec<SmtpClient> = (0..300).map(|_| server.connect()).collect();
    let handles: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(n, mut client)| {
            std::thread::spawn(move || {
                client.send_message(
                    "a@example.org",
                    &[&format!("r{n}@example.net")],
                    "Subject: c\r\n\r\nx\r\n",
                )
            })
        })
        .collect();
    let ids: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    assert_eq!(ids.len(), 300);
    assert_eq!(stop_and_read_queue(&mut server).len(), 300);
}

#[test]
fn a_silent_client_does_not_delay_others() {
    let server = Sluice::start_no_delivery("");
    let _silent = SmtpClient::connect(server.smtp);
    let _silent_mid_data = {
        let mut client = server.connect();
        client.expect("EHLO c.test", "250");
        client.expect("MAIL FROM:<a@example.org>", "250");
        client.expect("RCPT TO:<b@example.net>", "250");
        client.expect("DATA", "354");
        client.send_raw(b"Subject: half");
        client
    };
    let start = Instant::now();
    let mut client = server.connect();
    client.send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: quick\r\n\r\nx\r\n",
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn connections_over_the_per_ip_limit_get_421() {
    let server = Sluice::start_no_delivery("[limits]\nmax_connections_per_ip = 2\n");
    let _first = server.connect();
    let _second = server.connect();
    let mut third = SmtpClient::connect(server.smtp);
    let reply = third.read_reply();
    assert!(reply.starts_with("421 4.7.0"), "{reply:?}");
    assert_eq!(third.read_to_end(), "");
    drop(_first);
    // The slot is given back once the first connection is gone.
    wait_for("a free slot", Duration::from_secs(10), || {
        let mut client = SmtpClient::connect(server.smtp);
        client.read_reply().starts_with("220").then_some(())
    });
}

#[test]
fn connections_over_the_global_limit_get_421() {
    let server = Sluice::start_no_delivery("[limits]\nmax_connections = 1\n");
    let _first = server.connect();
    let mut second = SmtpClient::connect(server.smtp);
    let reply = second.read_reply();
    assert!(reply.starts_with("421 4.7.0"), "{reply:?}");
    // A refused connection has its connect and disconnect lines too, and
    // the reason with the reply between them.
    let refused = server.wait_log(&["too many connections, refused"]);
    assert!(refused.contains("reply=\"421 4.7.0 "), "{refused}");
    server.wait_log(&["disconnect commands=0"]);
    let log = server.log_text();
    assert_eq!(
        log.matches(": connect client=").count(),
        2,
        "one connect line per connection, refused or not:\n{log}"
    );
}

#[test]
fn command_timeout_gives_421_and_closes() {
    let server = Sluice::start_no_delivery("[limits]\ncommand_timeout = \"1s\"\n");
    let mut client = server.connect();
    let start = Instant::now();
    let reply = client.read_reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(client.read_to_end(), "");
}

#[test]
fn data_timeout_gives_421_and_closes() {
    let mut server = Sluice::start_no_delivery("[limits]\ndata_timeout = \"1s\"\n");
    let mut client = server.connect();
    client.expect("EHLO c.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: slow\r\n");
    let reply = client.read_reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(stop_and_read_queue(&mut server).is_empty());
}

#[test]
fn a_client_disconnecting_mid_data_leaves_nothing_queued() {
    let mut server = Sluice::start_no_delivery("");
    {
        let mut client = server.connect();
        client.expect("EHLO c.test", "250");
        client.expect("MAIL FROM:<a@example.org>", "250");
        client.expect("RCPT TO:<b@example.net>", "250");
        client.expect("DATA", "354");
        client.send_raw(b"Subject: cut\r\n\r\nhalf a message\r\n");
    }
    server.wait_log(&["transaction abandoned"]);
    assert!(stop_and_read_queue(&mut server).is_empty());
}

#[test]
fn a_message_acknowledged_with_250_survives_sigkill() {
    let mut server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    let id = client.send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: durable\r\n\r\nkeep me\r\n",
    );
    server.kill9();
    let queued = read_spool(&server.dir.path().join("spool"));
    assert_eq!(
        queued.len(),
        1,
        "the acknowledged message is in the spool after SIGKILL"
    );
    assert_eq!(queued[0].message.id.as_str(), id);
    assert!(queued[0].body.contains("keep me"));
    // And a restarted server serves on the same spool.
    let mut server = server.restart();
    let mut client = server.connect();
    client.send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: after\r\n\r\nx\r\n",
    );
    assert_eq!(stop_and_read_queue(&mut server).len(), 2);
}

#[test]
fn sigterm_lets_a_transaction_in_progress_finish_and_exits_0() {
    let mut server = Sluice::start_no_delivery("");
    let mut busy = server.connect();
    busy.expect("EHLO c.test", "250");
    busy.expect("MAIL FROM:<a@example.org>", "250");
    busy.expect("RCPT TO:<b@example.net>", "250");
    busy.expect("DATA", "354");
    busy.send_raw(b"Subject: in flight\r\n\r\n");
    let mut idle = server.connect();
    idle.expect("EHLO c.test", "250");
    common::signal(server.pid(), "TERM");
    // The idle connection is told and closed.
    let reply = idle.read_reply();
    assert!(
        reply.starts_with("421 4.3.2"),
        "idle connection got {reply:?}"
    );
    // New connections are refused with 421.
    let mut late = SmtpClient::connect(server.smtp);
    let reply = late.read_reply();
    assert!(
        reply.is_empty() || reply.starts_with("421"),
        "late connection got {reply:?}"
    );
    // The transaction in progress completes.
    busy.send_raw(b"body\r\n.\r\n");
    let reply = busy.read_reply();
    assert!(
        queue_id(&reply).is_some(),
        "in-flight transaction got {reply:?}"
    );
    busy.send_line("QUIT");
    let queued = stop_and_read_queue(&mut server);
    assert_eq!(queued.len(), 1);
}

#[test]
fn metrics_count_messages_and_open_connections() {
    let server = Sluice::start_no_delivery("");
    let mut client = server.connect();
    client.send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: m\r\n\r\n0123456789\r\n",
    );
    let metrics = http("GET", server.admin, "/metrics", None).body;
    assert!(
        metrics.contains("sluice_messages_received_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_connections_active 1"), "{metrics}");
    assert!(
        metrics.contains("sluice_message_size_bytes_count 1"),
        "{metrics}"
    );
    client.expect("QUIT", "221");
    wait_for(
        "connections_active back to 0",
        Duration::from_secs(10),
        || {
            http("GET", server.admin, "/metrics", None)
                .body
                .contains("sluice_connections_active 0")
                .then_some(())
        },
    );
}

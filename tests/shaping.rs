//! Traffic shaping end to end: the real binary delivers to a counting
//! destination under `[shaping]` rules: concurrent connections, the rate,
//! messages per connection, suspensions (by a reply and by hand, online
//! and offline, kept across a restart) and the release of the backlog at
//! the rule's rate when a suspension ends.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::admin::http;
use common::destination::{Destination, Options, wait_delivered};
use common::dns::DnsServer;
use common::spool::with_queue;
use common::{DEADLINE, Sluice, cli, cli_ok, config_text, wait_for};
use sluice_queue::Envelope;

const BODY: &[u8] = b"From: a@origin.test\r\nSubject: shaped\r\n\r\nHello.\r\n";

/// The config: every domain routed to `destination`, quick retries, and
/// the given `[shaping]` tables.
fn config(dir: &Path, destination: SocketAddr, shaping: &str) -> String {
    config_text(
        dir,
        "",
        &format!(
            "[delivery]\ntls = \"disabled\"\nretry_initial = \"1s\"\nretry_max = \"1s\"\n\
             connect_timeout = \"5s\"\n\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n\n\
             [routes]\n\"*\" = \"{destination}\"\n\n{shaping}\n"
        ),
    )
}

/// Puts `count` messages to `rcptN@domain` into the spool of `dir`.
fn enqueue(dir: &Path, domain: &str, count: usize) -> Vec<String> {
    with_queue(&dir.join("spool"), |queue, runtime| {
        (0..count)
            .map(|n| {
                let envelope = Envelope {
                    sender: "a@origin.test".into(),
                    recipients: vec![format!("rcpt{n}@{domain}")],
                    smtputf8: false,
                    body_8bit: false,
                    requiretls: false,
                    dsn: None,
                };
                runtime
                    .block_on(queue.enqueue(envelope, BODY))
                    .expect("enqueue")
                    .to_string()
            })
            .collect()
    })
}

/// Messages per second after the burst: the transactions at `times`
/// (in order) past the first `burst`.
fn rate_after_burst(times: &[Instant], burst: usize) -> f64 {
    let tail = &times[burst..];
    let span = tail[tail.len() - 1].duration_since(tail[0]).as_secs_f64();
    (tail.len() - 1) as f64 / span
}

/// A destination that takes `delay` over each end of data.
fn slow_destination(delay: Duration) -> Destination {
    let destination = Destination::start(Options::default());
    destination.on_data(move |_, _| {
        std::thread::sleep(delay);
        None
    });
    destination
}

#[test]
fn connections_to_a_destination_are_limited() {
    let destination = slow_destination(Duration::from_millis(100));
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        destination.addr,
        "[shaping.\"dest.test\"]\nconnections = 2\n",
    );
    enqueue(dir.path(), "dest.test", 12);
    let _server = Sluice::start_with(dir, &text);
    wait_delivered(&destination, 12);
    assert_eq!(
        destination.max_open(),
        2,
        "at most (and, with a backlog, exactly) 2 connections at once"
    );
}

#[test]
fn the_rate_is_kept_after_a_burst_of_one_second() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        destination.addr,
        "[shaping.\"dest.test\"]\nrate = \"20/s\"\nconnections = 4\n",
    );
    enqueue(dir.path(), "dest.test", 50);
    let _server = Sluice::start_with(dir, &text);
    wait_delivered(&destination, 50);
    let rate = rate_after_burst(&destination.transaction_times(), 20);
    assert!(
        (16.0..=24.0).contains(&rate),
        "expected 20 messages/s (within 20%) after the burst, got {rate:.1}/s"
    );
}

#[test]
fn connections_carry_at_most_messages_per_connection() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        destination.addr,
        "[shaping.\"*\"]\nconnections = 1\nmessages_per_connection = 3\n",
    );
    enqueue(dir.path(), "dest.test", 9);
    let _server = Sluice::start_with(dir, &text);
    let delivered = wait_delivered(&destination, 9);
    let mut per_connection: BTreeMap<usize, usize> = BTreeMap::new();
    for transaction in &delivered {
        *per_connection.entry(transaction.connection).or_default() += 1;
    }
    assert!(
        per_connection.values().all(|&count| count <= 3),
        "no connection carries more than 3 messages: {per_connection:?}"
    );
    assert_eq!(
        per_connection.values().filter(|&&count| count == 3).count(),
        3,
        "one connection is reused for the next waiting messages, up to 3: {per_connection:?}"
    );
    assert_eq!(
        destination.max_open(),
        1,
        "the spent connection is closed before the next one opens"
    );
}

#[test]
fn a_throttling_reply_suspends_the_destination_without_charging_attempts() {
    let destination = Destination::start(Options::default());
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    destination.on_rcpt(move |_, _| {
        (counter.fetch_add(1, Ordering::SeqCst) == 0)
            .then(|| "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred".into())
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        destination.addr,
        "[shaping.\"dest.test\"]\nconnections = 1\nsuspend_on = [\"TSS04\", \"TS04\"]\n\
         suspend_for = \"3s\"\n",
    );
    let ids = enqueue(dir.path(), "dest.test", 5);
    let server = Sluice::start_with(dir, &text);
    server.wait_log(&["destination suspended by its reply", "dest.test"]);

    let listed = http("GET", server.admin, "/v1/suspensions", None).json();
    let suspensions = listed["suspensions"].as_array().expect("an array");
    assert_eq!(suspensions.len(), 1, "{listed}");
    assert_eq!(suspensions[0]["destination"], "dest.test");
    assert!(
        suspensions[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("TSS04")),
        "{listed}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(suspensions[0]["until"].as_str().unwrap()).is_ok()
    );
    let summary: serde_json::Value = serde_json::from_str(&cli_ok(
        &server.config_path,
        &["queue", "summary", "--json"],
    ))
    .expect("JSON");
    assert_eq!(summary["domains"][0]["suspended"], true, "{summary}");
    let metrics = http("GET", server.admin, "/metrics", None).body;
    assert!(
        metrics.contains("sluice_shaping_suspended{destination=\"dest.test\"} 1"),
        "{metrics}"
    );

    // The waiting mail was not attempted, nor charged.
    assert_eq!(destination.transactions().len(), 0);
    let charged: u64 = ids
        .iter()
        .map(|id| {
            let shown: serde_json::Value = serde_json::from_str(&cli_ok(
                &server.config_path,
                &["queue", "show", id, "--json"],
            ))
            .expect("JSON");
            shown["recipients"][0]["attempts"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(
        charged, 1,
        "only the message that got the reply was charged"
    );

    // When the suspension ends, everything goes.
    wait_delivered(&destination, 5);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        6,
        "one refusal, then five RCPTs"
    );
    let listed = http("GET", server.admin, "/v1/suspensions", None).json();
    assert_eq!(listed["suspensions"].as_array().map(Vec::len), Some(0));
}

#[test]
fn suspension_by_hand_survives_a_restart_and_resume_releases_the_mail() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(dir.path(), destination.addr, "");
    let config_path = common::write_config(dir.path(), &text);
    // Offline: the spool keeps it.
    let (code, out, err) = cli(
        &config_path,
        &["queue", "suspend", "Dest.test", "--for", "1h"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("dest.test: suspended until "), "{out}");
    let ids = enqueue(dir.path(), "dest.test", 3);
    let server = Sluice::start_with(dir, &text);

    let listed = http("GET", server.admin, "/v1/suspensions", None).json();
    assert_eq!(
        listed["suspensions"][0]["destination"], "dest.test",
        "{listed}"
    );
    assert_eq!(
        listed["suspensions"][0]["reason"],
        "suspended by the operator"
    );
    let shown = wait_for("the mail put off", DEADLINE, || {
        let shown: serde_json::Value = serde_json::from_str(&cli_ok(
            &server.config_path,
            &["queue", "show", &ids[2], "--json"],
        ))
        .expect("JSON");
        shown["recipients"][0]["last_reply"]
            .as_str()
            .is_some_and(|reply| reply.contains("suspended"))
            .then_some(shown)
    });
    assert_eq!(shown["recipients"][0]["attempts"], 0, "{shown}");
    assert_eq!(destination.transactions().len(), 0);
    let table = cli_ok(&server.config_path, &["queue", "suspended"]);
    assert!(table.contains("dest.test"), "{table}");

    // Online: another one, with a body ({"for": ...}), then resume both.
    let out = cli_ok(
        &server.config_path,
        &["queue", "suspend", ".mx.test", "--for", "90s"],
    );
    assert!(out.starts_with(".mx.test: suspended until "), "{out}");
    let (code, _, err) = cli(&server.config_path, &["queue", "resume", "other.test"]);
    assert_eq!(code, 1);
    assert!(err.contains("other.test is not suspended"), "{err}");
    let reply = http("DELETE", server.admin, "/v1/suspensions/.mx.test", None);
    assert_eq!(reply.status, 204);
    let out = cli_ok(&server.config_path, &["queue", "resume", "dest.test"]);
    assert_eq!(out.trim(), "dest.test: resumed");
    wait_delivered(&destination, 3);
    let listed = http("GET", server.admin, "/v1/suspensions", None).json();
    assert_eq!(listed["suspensions"].as_array().map(Vec::len), Some(0));
}

#[test]
fn the_backlog_is_released_at_the_rate_when_a_suspension_ends() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(
        dir.path(),
        destination.addr,
        "[shaping.\"dest.test\"]\nrate = \"20/s\"\nconnections = 4\n",
    );
    let config_path = common::write_config(dir.path(), &text);
    let started = Instant::now();
    cli_ok(
        &config_path,
        &["queue", "suspend", "dest.test", "--for", "2s"],
    );
    enqueue(dir.path(), "dest.test", 50);
    let _server = Sluice::start_with(dir, &text);
    wait_delivered(&destination, 50);
    let times = destination.transaction_times();
    assert!(
        times[0].duration_since(started) >= Duration::from_millis(1900),
        "nothing is delivered while suspended"
    );
    let rate = rate_after_burst(&times, 20);
    assert!(
        (16.0..=24.0).contains(&rate),
        "expected the backlog at 20 messages/s (within 20%) after the burst, got {rate:.1}/s"
    );
}

#[test]
fn check_config_prints_shaping_and_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(
        dir.path(),
        "",
        "[shaping.\".Google.com\"]\nconnections = 5\nmessages_per_connection = 50\nrate = \"300/m\"\n\
         suspend_on = [\"4.7.28\"]\n\n[cluster]\nredis = \"redis://:secret@127.0.0.1:6379/0\"\nnode = \"mx1\"\n",
    );
    let path = common::write_config(dir.path(), &text);
    let out = cli_ok(&path, &["check-config"]);
    for expected in [
        "[shaping.\".google.com\"]",
        "connections = 5",
        "messages_per_connection = 50",
        "rate = \"300/m\"",
        "suspend_on = [\"4.7.28\"]",
        "suspend_for = \"30m\"",
        "[cluster]",
        "node = \"mx1\"",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains("secret@"),
        "the Redis password is redacted:\n{out}"
    );
    let bad = config_text(dir.path(), "", "[shaping.\"x.test\"]\nrate = \"lots\"\n");
    let path = common::write_config(dir.path(), &bad);
    let (code, _, err) = cli(&path, &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("shaping.\"x.test\".rate"), "{err}");
}

#[test]
fn an_mx_suffix_rule_limits_every_domain_behind_it_together() {
    let destination = slow_destination(Duration::from_millis(80));
    let dns = DnsServer::start();
    for domain in ["one.test", "two.test", "three.test"] {
        dns.mx(domain, &[(10, &format!("mx.{domain}.hosting.test"))]);
        dns.a(&format!("mx.{domain}.hosting.test"), &[Ipv4Addr::LOCALHOST]);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(
        dir.path(),
        "",
        &format!(
            "[delivery]\ntls = \"disabled\"\nport = {port}\n\n{dns}\n\
             [shaping.\".hosting.test\"]\nconnections = 1\n\n\
             [shaping.\"*\"]\nconnections = 5\n",
            port = destination.addr.port(),
            dns = dns.config(),
        ),
    );
    for domain in ["one.test", "two.test", "three.test"] {
        enqueue(dir.path(), domain, 3);
    }
    let _server = Sluice::start_with(dir, &text);
    wait_delivered(&destination, 9);
    assert_eq!(
        destination.max_open(),
        1,
        "the three domains share the suffix rule's one connection"
    );
}

/// Two destinations on the same free port at 127.0.0.`a` and 127.0.0.`b`
/// (`delivery.port` gives every MX host the same port).
fn two_hosts(a: u8, b: u8) -> (Destination, Destination, u16) {
    for _ in 0..50 {
        let second =
            Destination::start_on(SocketAddr::from(([127, 0, 0, b], 0)), Options::default());
        let port = second.addr.port();
        if let Some(first) = Destination::try_start_at(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, a)),
            port,
            Options::default(),
        ) {
            return (first, second, port);
        }
    }
    panic!("no port free on both 127.0.0.{a} and 127.0.0.{b}");
}

#[test]
fn a_throttle_from_the_first_mx_host_suspends_without_trying_the_second() {
    // Issue 21: the first MX host throttles at RCPT; trying the second one
    // right away is what the throttle asks not to do.
    let (mx1, mx2, port) = two_hosts(41, 42);
    mx1.on_rcpt(|_, _| Some("421 4.7.28 rate limited".into()));
    let dns = DnsServer::start();
    dns.mx("dest.test", &[(10, "mx1.dest.test"), (20, "mx2.dest.test")]);
    dns.a("mx1.dest.test", &[Ipv4Addr::new(127, 0, 0, 41)]);
    dns.a("mx2.dest.test", &[Ipv4Addr::new(127, 0, 0, 42)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(
        dir.path(),
        "",
        &format!(
            "{}[delivery]\ntls = \"disabled\"\nport = {port}\nretry_initial = \"1s\"\n\
             retry_max = \"1s\"\nconnect_timeout = \"5s\"\n\n\
             [shaping.\"dest.test\"]\nsuspend_on = [\"4.7.28\"]\nsuspend_for = \"1h\"\n",
            dns.config()
        ),
    );
    let ids = enqueue(dir.path(), "dest.test", 1);
    let server = Sluice::start_with(dir, &text);
    server.wait_log(&["destination suspended by its reply", "dest.test"]);
    // Due again a second later, the message is put off, not attempted.
    server.wait_log(&["destination suspended; delivery put off", &ids[0]]);

    assert_eq!(mx2.connections(), 0, "the second MX host was contacted");
    assert_eq!(
        mx1.connections(),
        1,
        "the throttling host was contacted again"
    );
    let summary: serde_json::Value = serde_json::from_str(&cli_ok(
        &server.config_path,
        &["queue", "summary", "--json"],
    ))
    .expect("JSON");
    assert_eq!(summary["domains"][0]["suspended"], true, "{summary}");
    let shown: serde_json::Value = serde_json::from_str(&cli_ok(
        &server.config_path,
        &["queue", "show", &ids[0], "--json"],
    ))
    .expect("JSON");
    let log = shown["recipients"][0]["attempts_log"]
        .as_array()
        .expect("an attempts_log");
    assert_eq!(log.len(), 1, "one host tried: {shown}");
    assert_eq!(
        log[0]["relay"],
        format!("mx1.dest.test[127.0.0.41]:{port}"),
        "{shown}"
    );
    assert!(
        log[0]["reply"]
            .as_str()
            .is_some_and(|reply| reply.contains("421 4.7.28 rate limited")),
        "the attempt history shows the throttle: {shown}"
    );
}

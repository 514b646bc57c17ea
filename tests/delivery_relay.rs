//! Delivery end to end: the real binary delivers queued mail to a real SMTP
//! destination found through a real DNS server (or a route / smarthost),
//! retries, and bounces.
//!
//! Mail is put into the spool before the server starts (the queue is locked
//! while it runs), exactly as the SMTP server would have queued it.

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

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::admin::try_http;
use common::destination::{Destination, Options, wait_delivered, wait_dsn};
use common::dns::DnsServer;
use common::spool::{enqueue_offline, with_queue};
use common::{DEADLINE, Sluice, field, wait_for};
use mail_parser::{MessageParser, MimeHeaders};
use sluice_queue::{QueueId, RecipientStatus};

const BODY: &[u8] = b"From: alice@origin.test\r\nTo: bob@dest.test\r\nSubject: test\r\nMessage-ID: <t1@origin.test>\r\n\r\nHello.\r\n";

/// A temp dir with `messages` queued, and the config text to start on it.
struct Setup {
    dir: tempfile::TempDir,
    extra: String,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.to_string(),
        }
    }

    fn enqueue(&self, sender: &str, recipients: &[&str], body: &[u8]) -> String {
        enqueue_offline(&self.dir.path().join("spool"), sender, recipients, body)
    }

    fn start(self) -> Sluice {
        Sluice::start_in(self.dir, &self.extra)
    }
}

fn route_to(destination: &Destination, domain: &str) -> String {
    format!("\"{domain}\" = \"{}\"\n", destination.addr)
}

/// Log lines of delivery outcomes for `id`.
fn outcome_lines(sluice: &Sluice, id: &str) -> Vec<String> {
    sluice
        .log_text()
        .lines()
        .filter(|line| line.contains(&format!("queue_id={id}")) && line.contains(" status="))
        .map(str::to_string)
        .collect()
}

#[test]
fn delivered_with_body_bytes_intact_including_8bit() {
    let destination = Destination::start(Options::default());
    let setup = Setup::new(&format!(
        "[routes]\n{}",
        route_to(&destination, "dest.test")
    ));
    let mut body = BODY.to_vec();
    body.extend_from_slice(b".starts with a dot\r\n\xe2\x82\xac 8-bit \xff\r\n.\r\n..\r\nlast\r\n");
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], &body);
    let sluice = setup.start();
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].body, body, "the body must arrive byte for byte");
    assert_eq!(seen[0].mail_from, "alice@origin.test");
    assert_eq!(seen[0].recipients, ["bob@dest.test"]);
    assert!(seen[0].mail_params.iter().any(|p| p == "BODY=8BITMIME"));
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "recipient"), "bob@dest.test");
    assert_eq!(
        field(&line, "relay"),
        format!(
            "{}[{}]:{}",
            destination.addr.ip(),
            destination.addr.ip(),
            destination.addr.port()
        )
    );
    assert_eq!(field(&line, "attempts"), "1");
    assert_eq!(field(&line, "tls"), "plaintext");
    assert!(field(&line, "reply").starts_with("250"), "{line}");
    assert!(field(&line, "delay").parse::<f64>().is_ok(), "{line}");
}

/// A destination on another loopback address, and its port (DNS gives the
/// address, `delivery.port` the port for every MX host).
fn destination_pair(ip: [u8; 4]) -> (Destination, u16) {
    let destination = Destination::start_on(SocketAddr::from((ip, 0)), Options::default());
    let port = destination.addr.port();
    (destination, port)
}

#[test]
fn mx_preference_is_followed_and_a_down_host_skipped() {
    let (destination, port) = destination_pair([127, 0, 0, 3]);
    let dns = DnsServer::start();
    // The preferred host has nothing listening on the port.
    dns.mx("dest.test", &[(20, "mx2.dest.test"), (10, "mx1.dest.test")]);
    dns.a("mx1.dest.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    dns.a("mx2.dest.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
    let setup = Setup::new(&format!("{}[delivery]\nport = {port}\n", dns.config()));
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let sluice = setup.start();
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].recipients, ["bob@dest.test"]);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(
        field(&line, "relay"),
        format!("mx2.dest.test[127.0.0.3]:{port}")
    );
    let queries = dns.queries();
    let mx1 = queries
        .iter()
        .position(|(name, _)| name == "mx1.dest.test.");
    let mx2 = queries
        .iter()
        .position(|(name, _)| name == "mx2.dest.test.");
    assert!(
        mx1 < mx2 && mx1.is_some(),
        "mx1 must be tried first: {queries:?}"
    );
}

#[test]
fn implicit_mx_delivers_to_the_domains_address() {
    let (destination, port) = destination_pair([127, 0, 0, 4]);
    let dns = DnsServer::start();
    dns.a("plain.test", &[Ipv4Addr::new(127, 0, 0, 4)]);
    let setup = Setup::new(&format!("{}[delivery]\nport = {port}\n", dns.config()));
    let id = setup.enqueue("alice@origin.test", &["carol@plain.test"], BODY);
    let sluice = setup.start();
    wait_delivered(&destination, 1);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(
        field(&line, "relay"),
        format!("plain.test[127.0.0.4]:{port}")
    );
}

#[test]
fn tempfail_is_retried_with_backoff_and_succeeds_on_the_third_attempt() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, attempt| (attempt < 3).then(|| "451 4.3.0 try again later".into()));
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"1s\"\nretry_factor = 2.0\nretry_max = \"1h\"\n[routes]\n{}",
        route_to(&destination, "dest.test")
    ));
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let spool = setup.dir.path().join("spool");
    let mut sluice = setup.start();
    // The queue shows the first deferral and when the next attempt is due.
    sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred", "attempts=1"]);
    let (code, out, err) = sluice.cli(&["queue", "show", &id, "--json"]);
    if code == 0 {
        let shown: serde_json::Value = serde_json::from_str(&out).expect("queue show --json");
        let recipient = &shown["recipients"][0];
        if recipient["attempts"] == 1 {
            assert_eq!(recipient["status"], "deferred", "{shown}");
            assert!(
                recipient["last_reply"]
                    .as_str()
                    .is_some_and(|reply| reply.starts_with("451 4.3.0")),
                "{shown}"
            );
            let next: chrono::DateTime<chrono::Utc> = recipient["next_attempt_at"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| panic!("next_attempt_at in {shown}"));
            let received: chrono::DateTime<chrono::Utc> = shown["received_at"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .expect("received_at");
            let backoff = next - received;
            assert!(
                backoff >= chrono::Duration::milliseconds(900)
                    && backoff <= chrono::Duration::milliseconds(2500),
                "next attempt {backoff} after arrival, expected about 1s: {shown}"
            );
        }
    } else {
        // Already delivered between the log line and the query.
        assert!(err.contains("no such message"), "queue show failed: {err}");
    }
    wait_delivered(&destination, 1);
    sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    let lines = outcome_lines(&sluice, &id);
    let statuses: Vec<(String, String)> = lines
        .iter()
        .map(|line| (field(line, "status"), field(line, "attempts")))
        .collect();
    assert_eq!(
        statuses,
        [
            ("deferred".to_string(), "1".to_string()),
            ("deferred".to_string(), "2".to_string()),
            ("sent".to_string(), "3".to_string())
        ],
        "{lines:#?}"
    );
    assert!(
        field(&lines[0], "reply").starts_with("451 4.3.0"),
        "{}",
        lines[0]
    );
    // Backoff: 1s then 2s (up to +10% jitter), measured at the destination.
    let times = destination.rcpt_times("bob@dest.test");
    assert_eq!(times.len(), 3);
    let first_gap = times[1] - times[0];
    let second_gap = times[2] - times[1];
    assert!(
        first_gap >= Duration::from_millis(950) && first_gap < Duration::from_millis(1900),
        "first retry after {first_gap:?}, expected about 1s"
    );
    assert!(
        second_gap >= Duration::from_millis(1950) && second_gap < Duration::from_millis(3500),
        "second retry after {second_gap:?}, expected about 2s"
    );
    // The queue recorded the deferrals' schedule; the delivered message left.
    sluice.terminate();
    let remaining = with_queue(&spool, |queue, _| {
        queue
            .get(&QueueId::parse(&id).expect("valid id"))
            .expect("read")
    });
    assert!(remaining.is_none(), "a delivered message leaves the queue");
}

#[test]
fn deferred_state_shows_attempts_and_next_attempt_time() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, _| Some("421 4.7.0 try later".into()));
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"1h\"\nretry_max = \"2h\"\n[routes]\n{}",
        route_to(&destination, "dest.test")
    ));
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let spool = setup.dir.path().join("spool");
    let mut sluice = setup.start();
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    let next: chrono::DateTime<chrono::Utc> = field(&line, "next_attempt")
        .parse()
        .expect("next_attempt is RFC 3339");
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::minutes(59) && wait < chrono::Duration::minutes(67),
        "next attempt in {wait}, expected 1h (+10%)"
    );
    sluice.terminate();
    let message = with_queue(&spool, |queue, _| {
        queue
            .get(&QueueId::parse(&id).expect("valid id"))
            .expect("read")
            .expect("deferred mail stays queued")
    });
    let recipient = &message.recipients[0];
    assert_eq!(recipient.status, RecipientStatus::Deferred);
    assert_eq!(recipient.attempts, 1);
    assert_eq!(recipient.last_reply.as_deref(), Some("421 4.7.0 try later"));
    let scheduled = recipient.next_attempt_at.expect("next attempt time");
    assert!((scheduled - next).num_seconds().abs() <= 1);
}

#[test]
fn permanent_failure_sends_a_dsn_to_the_sender() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, _| {
        (rcpt == "nobody@dest.test").then(|| "550 5.1.1 <nobody@dest.test>: no such user".into())
    });
    let setup = Setup::new(&format!(
        "[routes]\n{}{}",
        route_to(&destination, "dest.test"),
        route_to(&destination, "origin.test")
    ));
    let id = setup.enqueue("alice@origin.test", &["nobody@dest.test"], BODY);
    let sluice = setup.start();
    let (_, text) = wait_dsn(&destination, "alice@origin.test");
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=bounced"]);
    assert_eq!(field(&line, "dsn"), "5.1.1");
    let message = MessageParser::default()
        .parse(text.as_bytes())
        .expect("the DSN parses");
    let content_type = message.content_type().expect("content type");
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("multipart", Some("report"))
    );
    assert_eq!(
        content_type.attribute("report-type"),
        Some("delivery-status")
    );
    assert_eq!(
        message
            .from()
            .and_then(|from| from.first())
            .and_then(|address| address.address()),
        Some("MAILER-DAEMON@sluice.test")
    );
    for expected in [
        "Reporting-MTA: dns; sluice.test",
        "Arrival-Date:",
        "Final-Recipient: rfc822; nobody@dest.test",
        "Action: failed",
        "Status: 5.1.1",
        &format!("Remote-MTA: dns; {}", destination.addr.ip()),
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@dest.test>: no such user",
        // DESIGN.md: without RET=HDRS the whole message comes back.
        "Content-Type: message/rfc822",
        "Message-ID: <t1@origin.test>",
        "Hello.",
    ] {
        assert!(text.contains(expected), "DSN lacks {expected:?}:\n{text}");
    }
    // The failed message left the queue and the DSN was delivered.
    sluice.wait_log(&["status=sent", "recipient=alice@origin.test"]);
}

#[test]
fn null_sender_is_never_bounced() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, _| Some("550 5.1.1 no such user".into()));
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let id = setup.enqueue("", &["nobody@dest.test"], BODY);
    let sluice = setup.start();
    sluice.wait_log(&[&format!("queue_id={id}"), "status=bounced"]);
    sluice.wait_log(&[&format!("queue_id={id}"), "null sender"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        destination.transactions().is_empty(),
        "nothing may be sent for a bounced null-sender message"
    );
    assert!(!sluice.log_text().contains("bounce queued"));
}

#[test]
fn one_transaction_carries_all_recipients_of_a_domain() {
    let destination = Destination::start(Options::default());
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    setup.enqueue(
        "alice@origin.test",
        &["a@dest.test", "b@dest.test", "c@dest.test", "d@other.test"],
        BODY,
    );
    let _sluice = setup.start();
    let seen = wait_delivered(&destination, 2);
    let mut groups: Vec<Vec<String>> = seen.iter().map(|t| t.recipients.clone()).collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            vec![
                "a@dest.test".to_string(),
                "b@dest.test".into(),
                "c@dest.test".into()
            ],
            vec!["d@other.test".to_string()],
        ]
    );
}

#[test]
fn mixed_outcomes_in_one_message() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, _| match rcpt {
        "temp@dest.test" => Some("452 4.2.2 mailbox full".into()),
        "gone@dest.test" => Some("550 5.1.1 gone".into()),
        _ => None,
    });
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n[routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    let id = setup.enqueue(
        "alice@origin.test",
        &["ok@dest.test", "temp@dest.test", "gone@dest.test"],
        BODY,
    );
    let spool = setup.dir.path().join("spool");
    let mut sluice = setup.start();
    let (_, dsn) = wait_dsn(&destination, "alice@origin.test");
    assert!(
        dsn.contains("Final-Recipient: rfc822; gone@dest.test"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("temp@dest.test"),
        "only failed recipients are reported"
    );
    assert!(!dsn.contains("Final-Recipient: rfc822; ok@dest.test"));
    let original = destination
        .delivered()
        .into_iter()
        .find(|t| t.mail_from == "alice@origin.test")
        .expect("the original was delivered to ok@");
    assert_eq!(original.recipients, ["ok@dest.test"]);
    assert_eq!(original.rejected.len(), 2);
    sluice.terminate();
    let message = with_queue(&spool, |queue, _| {
        queue
            .get(&QueueId::parse(&id).expect("id"))
            .expect("read")
            .expect("still queued for the deferred recipient")
    });
    let statuses: Vec<RecipientStatus> = message.recipients.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            RecipientStatus::Delivered,
            RecipientStatus::Deferred,
            RecipientStatus::Failed
        ]
    );
}

#[test]
fn routes_beat_mx() {
    let destination = Destination::start(Options::default());
    let dns = DnsServer::start();
    dns.mx("dest.test", &[(10, "mx.elsewhere.test")]);
    dns.a("mx.elsewhere.test", &[Ipv4Addr::new(127, 0, 0, 9)]);
    let setup = Setup::new(&format!(
        "{}[routes]\n{}",
        dns.config(),
        route_to(&destination, "dest.test")
    ));
    setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let _sluice = setup.start();
    wait_delivered(&destination, 1);
    assert!(
        dns.queries()
            .iter()
            .all(|(name, _)| !name.starts_with("dest.test")),
        "no MX lookup for a routed domain: {:?}",
        dns.queries()
    );
}

#[test]
fn smarthost_receives_mail_for_every_domain() {
    let destination = Destination::start(Options::default());
    let dns = DnsServer::start();
    let setup = Setup::new(&format!(
        "{}[delivery]\nrelay_host = \"{}\"\n[routes]\n\"one.test\" = \"127.0.0.1:1\"\n",
        dns.config(),
        destination.addr
    ));
    setup.enqueue("alice@origin.test", &["a@one.test", "b@two.test"], BODY);
    let _sluice = setup.start();
    let seen = wait_delivered(&destination, 2);
    let mut recipients: Vec<String> = seen.iter().flat_map(|t| t.recipients.clone()).collect();
    recipients.sort();
    assert_eq!(recipients, ["a@one.test", "b@two.test"]);
    assert!(
        dns.queries().is_empty(),
        "the smarthost needs no DNS: {:?}",
        dns.queries()
    );
}

#[test]
fn expired_message_bounces_with_4_4_7() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, _| (rcpt == "slow@dest.test").then(|| "451 4.3.0 not today".into()));
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"30s\"\nmax_queue_lifetime = \"3s\"\n[routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    let id = setup.enqueue("alice@origin.test", &["slow@dest.test"], BODY);
    let sluice = setup.start();
    sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    let (_, dsn) = wait_dsn(&destination, "alice@origin.test");
    assert!(dsn.contains("Status: 4.4.7"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; slow@dest.test"),
        "{dsn}"
    );
    assert!(
        dsn.contains("451 4.3.0 not today"),
        "last reply is reported: {dsn}"
    );
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=bounced"]);
    assert_eq!(field(&line, "dsn"), "4.4.7");
}

#[test]
fn unresolvable_domain_is_deferred_not_lost() {
    let (destination, port) = destination_pair([127, 0, 0, 5]);
    let dns = DnsServer::start();
    dns.servfail("flaky.test");
    let setup = Setup::new(&format!(
        "{}[delivery]\nport = {port}\nretry_initial = \"1s\"\n",
        dns.config()
    ));
    let id = setup.enqueue("alice@origin.test", &["bob@flaky.test"], BODY);
    let sluice = setup.start();
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.4.3", "{line}");
    // DNS recovers: the deferred mail goes out on a later attempt.
    dns.remove("flaky.test");
    dns.mx("flaky.test", &[(10, "mx.flaky.test")]);
    dns.a("mx.flaky.test", &[Ipv4Addr::new(127, 0, 0, 5)]);
    wait_delivered(&destination, 1);
    sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
}

#[test]
fn null_mx_and_nxdomain_fail_at_once() {
    let destination = Destination::start(Options::default());
    let dns = DnsServer::start();
    dns.null_mx("nomail.test");
    let setup = Setup::new(&format!(
        "{}[routes]\n{}",
        dns.config(),
        route_to(&destination, "origin.test")
    ));
    let id = setup.enqueue(
        "alice@origin.test",
        &["a@nomail.test", "b@nonexistent.test"],
        BODY,
    );
    let sluice = setup.start();
    let (_, dsn) = wait_dsn(&destination, "alice@origin.test");
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.2"), "{dsn}");
    assert_eq!(
        dsn.matches("Final-Recipient:").count(),
        2,
        "one DSN for both: {dsn}"
    );
    let lines = outcome_lines(&sluice, &id);
    assert!(
        lines.iter().all(|l| field(l, "status") == "bounced"),
        "{lines:#?}"
    );
}

#[test]
fn remote_size_limit_below_the_message_fails_5_3_4() {
    let destination = Destination::start(Options {
        size: Some(100),
        ..Options::default()
    });
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let big = [BODY, &[b'x'; 200][..], b"\r\n"].concat();
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], &big);
    let sluice = setup.start();
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=bounced"]);
    assert_eq!(field(&line, "dsn"), "5.3.4");
    assert!(
        destination
            .transactions()
            .iter()
            .all(|t| t.mail_from != "alice@origin.test"),
        "the oversized message must not be sent"
    );
}

#[test]
fn smtputf8_needed_but_not_offered_fails_5_6_7() {
    let destination = Destination::start(Options {
        smtputf8: false,
        ..Options::default()
    });
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let id = setup.enqueue("alice@origin.test", &["j\u{f6}rg@dest.test"], BODY);
    let sluice = setup.start();
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=bounced"]);
    assert_eq!(field(&line, "dsn"), "5.6.7");
}

#[test]
fn kill_9_during_delivery_then_delivered_after_restart() {
    let destination = Destination::start(Options::default());
    destination
        .stall_data
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let mut sluice = setup.start();
    wait_for("the body to reach the destination", DEADLINE, || {
        (destination
            .stalled
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0)
        .then_some(())
    });
    sluice.kill9();
    destination
        .stall_data
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let sluice = sluice.restart();
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].recipients, ["bob@dest.test"]);
    assert_eq!(seen[0].body, BODY);
    sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
}

#[test]
fn outcomes_are_counted_in_metrics() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, _| match rcpt {
        "temp@dest.test" => Some("451 4.3.0 later".into()),
        "gone@dest.test" => Some("550 5.1.1 gone".into()),
        _ => None,
    });
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n[routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    let id = setup.enqueue(
        "",
        &["ok@dest.test", "temp@dest.test", "gone@dest.test"],
        BODY,
    );
    let sluice = setup.start();
    sluice.wait_log(&[&format!("queue_id={id}"), "recipient=gone@dest.test"]);
    let metrics = wait_for("metrics with the outcomes", DEADLINE, || {
        let text = try_http("GET", sluice.admin, "/metrics", None)
            .ok()
            .filter(|reply| reply.status == 200)?
            .body;
        let value = |name: &str| -> Option<f64> {
            text.lines()
                .find(|line| line.starts_with(name) && !line.starts_with('#'))
                .and_then(|line| line.split_whitespace().last())
                .and_then(|number| number.parse().ok())
        };
        let counts = (
            value("sluice_recipients_delivered_total")?,
            value("sluice_recipients_deferred_total")?,
            value("sluice_recipients_bounced_total")?,
        );
        (counts == (1.0, 1.0, 1.0)).then_some(text)
    });
    assert!(metrics.contains("sluice_deliveries_in_flight"), "{metrics}");
    assert!(
        metrics.contains("sluice_delivery_latency_seconds"),
        "{metrics}"
    );
}

#[test]
fn mail_received_over_smtp_is_relayed_with_a_trace_header() {
    let destination = Destination::start(Options::default());
    let sluice = Sluice::start(&format!(
        "[routes]\n{}",
        route_to(&destination, "dest.test")
    ));
    let body = "Subject: via smtp\r\n\r\n.dot line\r\ncaf\u{e9}\r\n";
    let id = sluice.connect().send_message(
        "alice@origin.test",
        &["bob@dest.test", "carol@dest.test"],
        body,
    );
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].recipients, ["bob@dest.test", "carol@dest.test"]);
    let text = String::from_utf8_lossy(&seen[0].body);
    assert!(text.starts_with("Received: "), "trace header first: {text}");
    assert!(
        text.ends_with(body),
        "original body intact at the end: {text}"
    );
    sluice.wait_log(&[
        &format!("queue_id={id}"),
        "recipient=carol@dest.test",
        "status=sent",
    ]);
}

#[test]
fn a_host_refusing_to_talk_defers_rather_than_bounces() {
    let destination = Destination::start(Options {
        greeting: "554 5.7.1 go away".into(),
        ..Options::default()
    });
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let sluice = setup.start();
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status="]);
    assert_eq!(field(&line, "status"), "deferred", "{line}");
    assert_eq!(field(&line, "dsn"), "4.7.1", "{line}");
    assert!(
        field(&line, "reply").contains("554 5.7.1 go away"),
        "{line}"
    );
}

#[test]
fn large_body_is_streamed_intact() {
    let destination = Destination::start(Options::default());
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let mut line_number = 0u32;
    while body.len() < 3 * 1024 * 1024 {
        line_number += 1;
        // Leading dots and 8-bit bytes all the way through.
        body.extend_from_slice(format!(".{line_number} \u{e9}\u{e8} ").as_bytes());
        body.extend_from_slice(&[b'x'; 90]);
        body.extend_from_slice(b"\r\n");
    }
    setup.enqueue("alice@origin.test", &["bob@dest.test"], &body);
    let _sluice = setup.start();
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].body.len(), body.len());
    assert!(seen[0].body == body, "the 3 MiB body changed in transit");
}

/// CPU time (user + system, in clock ticks) the process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the ")" that ends field 2.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Run by hand (it takes a while to fill the queue):
/// `SLUICE_IDLE_MESSAGES=100000 cargo test --release --test delivery_relay -- --ignored idle`
#[test]
#[ignore]
fn idle_queue_of_deferred_mail_costs_no_cpu() {
    let count: usize = std::env::var("SLUICE_IDLE_MESSAGES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20_000);
    let setup = Setup::new("[routes]\n\"*\" = \"127.0.0.1:1\"\n");
    let spool = setup.dir.path().join("spool");
    with_queue(&spool, |queue, runtime| {
        runtime.block_on(async {
            let later = chrono::Utc::now() + chrono::Duration::hours(1);
            let mut pending = futures::stream::FuturesUnordered::new();
            use futures::StreamExt;
            for index in 0..count {
                let queue = queue.clone();
                pending.push(async move {
                    let envelope = sluice_queue::Envelope {
                        sender: "alice@origin.test".into(),
                        recipients: vec![format!("r{index}@dest.test")],
                        smtputf8: false,
                        body_8bit: false,
                        requiretls: false,
                        dsn: None,
                    };
                    queue.enqueue(envelope, BODY).await.expect("enqueue")
                });
                if pending.len() >= 256 {
                    pending.next().await;
                }
            }
            while pending.next().await.is_some() {}
            // Defer everything by an hour.
            loop {
                let claims = queue
                    .claim_due(chrono::Utc::now() + chrono::Duration::seconds(5), 1024)
                    .expect("claim");
                if claims.is_empty() {
                    break;
                }
                let mut completions = futures::stream::FuturesUnordered::new();
                for claim in claims {
                    let queue = queue.clone();
                    completions.push(async move {
                        let update = sluice_queue::RecipientUpdate {
                            index: 0,
                            outcome: sluice_queue::Outcome::Deferred {
                                reply: "451 4.3.0 later".into(),
                                next_attempt_at: later,
                            },
                        };
                        queue
                            .complete(&claim.message.id, vec![update])
                            .await
                            .expect("defer");
                    });
                }
                while completions.next().await.is_some() {}
            }
        });
    });
    let sluice = setup.start();
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(sluice.pid());
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_ticks(sluice.pid()) - before;
    eprintln!("{count} deferred messages: {used} clock ticks of CPU in 10 s idle");
    assert!(
        used <= 2,
        "an idle queue must cost no CPU: {used} ticks in 10 s"
    );
}

#[test]
fn connection_is_reused_for_the_next_message_to_the_same_host() {
    let destination = Destination::start(Options::default());
    let sluice = Sluice::start(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    for round in 1..=3 {
        sluice.connect().send_message(
            "alice@origin.test",
            &[&format!("r{round}@dest.test")],
            "Subject: again\r\n\r\nhi\r\n",
        );
        wait_delivered(&destination, round);
    }
    let connections: Vec<usize> = destination
        .delivered()
        .iter()
        .map(|t| t.connection)
        .collect();
    assert_eq!(connections, [0, 0, 0], "one connection for all three");
    assert_eq!(destination.connections(), 1);
}

#[test]
fn deferred_mail_resumes_at_its_time_after_a_restart() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, attempt| (attempt == 1).then(|| "450 4.2.0 later".into()));
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"3s\"\n[routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    let id = setup.enqueue("alice@origin.test", &["bob@dest.test"], BODY);
    let mut sluice = setup.start();
    sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    sluice.terminate();
    let sluice = sluice.restart();
    wait_delivered(&destination, 1);
    let times = destination.rcpt_times("bob@dest.test");
    assert_eq!(
        times.len(),
        2,
        "one attempt before and one after the restart"
    );
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(2900),
        "retried after {gap:?}, before its time (3s)"
    );
    sluice.wait_log(&[&format!("queue_id={id}"), "status=sent", "attempts=2"]);
}

#[test]
fn queue_bounce_returns_deferred_mail_to_its_sender_now() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, _| (rcpt == "stuck@dest.test").then(|| "451 4.3.0 later".into()));
    let setup = Setup::new(&format!(
        "[delivery]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n[routes]\n\"*\" = \"{}\"\n",
        destination.addr
    ));
    let id = setup.enqueue("alice@origin.test", &["stuck@dest.test"], BODY);
    let sluice = setup.start();
    sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    let (code, out, err) = sluice.cli(&["queue", "bounce", &id]);
    assert_eq!(code, 0, "queue bounce failed: {out} {err}");
    let (_, dsn) = wait_dsn(&destination, "alice@origin.test");
    assert!(
        dsn.contains("Final-Recipient: rfc822; stuck@dest.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.0.0"), "{dsn}");
    let (code, _, err) = sluice.cli(&["queue", "show", &id]);
    assert_eq!(code, 1, "the bounced message left the queue");
    assert!(err.contains("no such message"), "{err}");
}

/// RFC 5321 §4.5.3.1.10: a server that takes only two recipients per
/// transaction gets the rest in follow-up transactions on the same
/// connection, in the same attempt, whatever its "too many" reply looks like.
fn over_the_limit_go_in_follow_ups(too_many_reply: &str, pipelining: bool) {
    let destination = Destination::start(Options {
        max_recipients: Some(2),
        too_many_reply: too_many_reply.into(),
        pipelining,
        ..Options::default()
    });
    let setup = Setup::new(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    let recipients = [
        "a@dest.test",
        "b@dest.test",
        "c@dest.test",
        "d@dest.test",
        "e@dest.test",
    ];
    let id = setup.enqueue("alice@origin.test", &recipients, BODY);
    let sluice = setup.start();
    let seen = wait_delivered(&destination, 3);
    let groups: Vec<usize> = seen.iter().map(|t| t.recipients.len()).collect();
    assert_eq!(groups, [2, 2, 1], "{too_many_reply:?}");
    for recipient in recipients {
        let line = sluice.wait_log(&[&format!("queue_id={id}"), &format!("recipient={recipient}")]);
        assert_eq!(field(&line, "status"), "sent", "{too_many_reply:?}: {line}");
        assert_eq!(field(&line, "attempts"), "1", "{line}");
    }
    assert_eq!(
        destination.connections(),
        1,
        "the follow-ups reuse the connection"
    );
}

#[test]
fn recipients_over_the_servers_limit_go_in_another_transaction_at_once() {
    over_the_limit_go_in_follow_ups("452 4.5.3 Too many recipients", true);
}

#[test]
fn a_452_without_enhanced_code_also_means_too_many_recipients() {
    over_the_limit_go_in_follow_ups("452 Too many recipients", true);
}

#[test]
fn a_552_to_rcpt_is_temporary_and_the_rest_follow_up() {
    over_the_limit_go_in_follow_ups("552 5.5.3 Too many recipients", true);
}

#[test]
fn too_many_recipients_unpipelined_follow_up_too() {
    over_the_limit_go_in_follow_ups("452 Too many recipients", false);
}

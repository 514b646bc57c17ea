//! What each recipient becomes when a transaction goes wrong part-way, and
//! how delivery stands up to a hostile or broken remote server: the real
//! binary against the scriptable destination (which can drop the connection,
//! never answer, or flood), every byte from the remote treated as hostile.
//!
//! The rule checked throughout: a recipient's own reply at RCPT is its
//! verdict (5xx bounced with that reply in the DSN, 4xx deferred with it),
//! whatever happens to the transaction afterwards; the others are deferred
//! with the transaction's failure as a readable last reply. Never a panic,
//! never a hang.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::destination::{DROP, Destination, FLOOD, HANG, Options, Transaction};
use common::dns::DnsServer;
use common::spool::enqueue_offline;
use common::{DEADLINE, Sluice, config_text, field, wait_for};

const BODY: &[u8] = b"From: alice@origin.test\r\nTo: bob@dest.test\r\nSubject: test\r\nMessage-ID: <o1@origin.test>\r\n\r\nHello.\r\n";

/// Retries far away (one attempt per test) and short RFC 5321 §4.5.3.2
/// timeouts so a silent server costs seconds, not minutes.
const FAST: &str = "[delivery]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n\
                    connect_timeout = \"3s\"\ncommand_timeout = \"3s\"\ndata_timeout = \"3s\"\n";

/// The sender's own mailbox server, where bounces arrive.
fn inbox() -> Destination {
    Destination::start(Options::default())
}

/// Starts sluice with `[delivery]` from [`FAST`] plus `delivery_extra`,
/// `other` tables, and routes sending dest.test to `remote` (when given) and
/// origin.test to `inbox`; one message from alice to `recipients` queued.
fn start(
    remote: Option<&Destination>,
    inbox: &Destination,
    delivery_extra: &str,
    other: &str,
    recipients: &[&str],
) -> (Sluice, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        recipients,
        BODY,
    );
    let mut routes = format!("[routes]\n\"origin.test\" = \"{}\"\n", inbox.addr);
    if let Some(remote) = remote {
        routes.push_str(&format!("\"dest.test\" = \"{}\"\n", remote.addr));
    }
    let extra = format!("{FAST}{delivery_extra}\n{other}\n{routes}");
    let text = config_text(dir.path(), "", &extra);
    (Sluice::start_with(dir, &text), id)
}

/// The outcome line for `recipient` of message `id`.
fn outcome(sluice: &Sluice, id: &str, recipient: &str) -> String {
    sluice.wait_log(&[
        &format!("queue_id={id}"),
        &format!("recipient={recipient} "),
        "status=",
    ])
}

/// Asserts the recipient's outcome: its status and a piece of its reply.
fn assert_outcome(sluice: &Sluice, id: &str, recipient: &str, status: &str, reply: &str) {
    let line = outcome(sluice, id, recipient);
    assert_eq!(field(&line, "status"), status, "{recipient}: {line}");
    assert!(
        field(&line, "reply").contains(reply),
        "{recipient}: expected {reply:?} in the reply: {line}"
    );
}

/// The DSN the inbox received for alice, as text.
fn wait_dsn(inbox: &Destination) -> String {
    wait_for("a DSN to alice@origin.test", DEADLINE, || {
        inbox
            .delivered()
            .into_iter()
            .find(|t| t.mail_from.is_empty())
            .map(|t| String::from_utf8_lossy(&t.body).into_owned())
    })
}

/// Checks the DSN reports exactly `failed` (recipient, diagnostic) pairs.
fn assert_dsn(dsn: &str, failed: &[(&str, &str)], not: &[&str]) {
    for (recipient, diagnostic) in failed {
        assert!(
            dsn.contains(&format!("Final-Recipient: rfc822; {recipient}")),
            "DSN lacks {recipient}:\n{dsn}"
        );
        assert!(
            dsn.contains(&format!("Diagnostic-Code: smtp; {diagnostic}")),
            "DSN lacks the remote reply {diagnostic:?}:\n{dsn}"
        );
    }
    for recipient in not {
        assert!(
            !dsn.contains(&format!("Final-Recipient: rfc822; {recipient}")),
            "{recipient} was not failed but is in the DSN:\n{dsn}"
        );
    }
}

/// Refuses gone@ for good and temp@ for now; accepts everyone else.
fn refuse_some(destination: &Destination) {
    destination.on_rcpt(|rcpt, _| match rcpt {
        "gone@dest.test" => Some("550 5.1.1 <gone@dest.test>: no such user".into()),
        "temp@dest.test" => Some("450 4.2.1 <temp@dest.test>: mailbox busy".into()),
        _ => None,
    });
}

const MIXED: [&str; 3] = ["ok@dest.test", "gone@dest.test", "temp@dest.test"];

/// Asserts the verdicts for [`MIXED`] after a transaction that broke off:
/// ok@ deferred with `ok_reply`, gone@ bounced with its own 550 in the one
/// DSN, temp@ deferred with its own 450.
fn assert_mixed_verdicts(sluice: &Sluice, id: &str, inbox: &Destination, ok_reply: &str) {
    assert_outcome(sluice, id, "ok@dest.test", "deferred", ok_reply);
    assert_outcome(sluice, id, "gone@dest.test", "bounced", "550 5.1.1");
    assert_outcome(
        sluice,
        id,
        "temp@dest.test",
        "deferred",
        "450 4.2.1 <temp@dest.test>: mailbox busy",
    );
    assert_dsn(
        &wait_dsn(inbox),
        &[("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")],
        &["ok@dest.test", "temp@dest.test"],
    );
}

// ---------------------------------------------------------------------------
// Verdicts at RCPT survive a transaction that fails afterwards.

#[test]
fn rcpt_verdicts_survive_a_connection_dropped_after_the_end_of_data() {
    let remote = Destination::start(Options::default());
    refuse_some(&remote);
    remote.on_data(|_, _| Some(DROP.into()));
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &MIXED);
    assert_mixed_verdicts(
        &sluice,
        &id,
        &inbox,
        "connection closed by the server after the end of data",
    );
    let line = outcome(&sluice, &id, "ok@dest.test");
    assert_eq!(field(&line, "dsn"), "4.4.2", "{line}");
}

#[test]
fn rcpt_verdicts_survive_a_timeout_at_data_without_pipelining() {
    let remote = Destination::start(Options {
        pipelining: false,
        ..Options::default()
    });
    refuse_some(&remote);
    remote.on_data_command(|_, _| Some(HANG.into()));
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &MIXED);
    assert_mixed_verdicts(&sluice, &id, &inbox, "timed out after DATA");
}

#[test]
fn rcpt_verdicts_survive_a_silent_server_after_the_end_of_data() {
    let remote = Destination::start(Options::default());
    refuse_some(&remote);
    remote.on_data(|_, _| Some(HANG.into()));
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &MIXED);
    assert_mixed_verdicts(&sluice, &id, &inbox, "timed out after the end of data");
}

#[test]
fn rcpt_verdicts_survive_a_tempfail_at_the_end_of_data() {
    let remote = Destination::start(Options::default());
    refuse_some(&remote);
    remote.on_data(|_, _| Some("451 4.3.0 queue write failed".into()));
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &MIXED);
    assert_mixed_verdicts(&sluice, &id, &inbox, "451 4.3.0 queue write failed");
}

#[test]
fn a_421_in_the_middle_of_the_transaction_keeps_earlier_refusals() {
    // RFC 5321 §3.8: 421 closes the session, whatever the command.
    let remote = Destination::start(Options::default());
    remote.on_rcpt(|rcpt, _| match rcpt {
        "gone@dest.test" => Some("550 5.1.1 <gone@dest.test>: no such user".into()),
        "late@dest.test" => Some("421 4.3.2 shutting down".into()),
        _ => None,
    });
    let inbox = inbox();
    let (sluice, id) = start(
        Some(&remote),
        &inbox,
        "",
        "",
        &["ok@dest.test", "gone@dest.test", "late@dest.test"],
    );
    for recipient in ["ok@dest.test", "late@dest.test"] {
        assert_outcome(
            &sluice,
            &id,
            recipient,
            "deferred",
            "421 4.3.2 shutting down",
        );
    }
    assert_outcome(&sluice, &id, "gone@dest.test", "bounced", "550 5.1.1");
    wait_dsn(&inbox);
    assert!(
        remote.transactions().is_empty(),
        "no body may be sent after a 421"
    );
}

#[test]
fn a_421_answering_data_defers_the_accepted_and_bounces_the_refused() {
    let remote = Destination::start(Options::default());
    refuse_some(&remote);
    remote.on_data_command(|_, _| Some("421 4.3.2 going down now".into()));
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &MIXED);
    assert_outcome(
        &sluice,
        &id,
        "ok@dest.test",
        "deferred",
        "421 4.3.2 going down now",
    );
    assert_outcome(&sluice, &id, "gone@dest.test", "bounced", "550 5.1.1");
    assert_outcome(&sluice, &id, "temp@dest.test", "deferred", "450 4.2.1");
    wait_dsn(&inbox);
}

#[test]
fn all_recipients_refused_sends_no_data_resets_and_bounces_each() {
    let remote = Destination::start(Options {
        pipelining: false,
        ..Options::default()
    });
    remote.on_rcpt(|rcpt, _| Some(format!("550 5.1.1 <{rcpt}>: no such user")));
    let inbox = inbox();
    let (sluice, id) = start(
        Some(&remote),
        &inbox,
        "",
        "",
        &["a@dest.test", "b@dest.test"],
    );
    for recipient in ["a@dest.test", "b@dest.test"] {
        assert_outcome(&sluice, &id, recipient, "bounced", "550 5.1.1");
    }
    let dsn = wait_dsn(&inbox);
    assert_dsn(
        &dsn,
        &[
            ("a@dest.test", "550 5.1.1 <a@dest.test>: no such user"),
            ("b@dest.test", "550 5.1.1 <b@dest.test>: no such user"),
        ],
        &[],
    );
    let commands = wait_for("RSET or QUIT after the refusals", DEADLINE, || {
        let commands = remote.commands();
        commands
            .iter()
            .any(|c| c == "RSET" || c == "QUIT")
            .then_some(commands)
    });
    assert!(
        !commands.iter().any(|c| c.eq_ignore_ascii_case("DATA")),
        "DATA sent with no recipient accepted: {commands:?}"
    );
    assert!(remote.transactions().is_empty());
}

// ---------------------------------------------------------------------------
// Several MX hosts.

/// Two destinations on the same free port at 127.0.0.`a` and 127.0.0.`b`
/// (`delivery.port` gives every MX host the same port).
fn two_hosts(a: u8, b: u8, first: Options, second: Options) -> (Destination, Destination, u16) {
    for _ in 0..50 {
        let second_host =
            Destination::start_on(SocketAddr::from(([127, 0, 0, b], 0)), second.clone());
        let port = second_host.addr.port();
        if let Some(first_host) =
            Destination::try_start_at(IpAddr::V4(Ipv4Addr::new(127, 0, 0, a)), port, first.clone())
        {
            return (first_host, second_host, port);
        }
    }
    panic!("no port free on both 127.0.0.{a} and 127.0.0.{b}");
}

/// DNS with dest.test → mx1 (127.0.0.`a`, preference 10), mx2 (`b`, 20).
fn two_mx(a: u8, b: u8) -> DnsServer {
    let dns = DnsServer::start();
    dns.mx("dest.test", &[(10, "mx1.dest.test"), (20, "mx2.dest.test")]);
    dns.a("mx1.dest.test", &[Ipv4Addr::new(127, 0, 0, a)]);
    dns.a("mx2.dest.test", &[Ipv4Addr::new(127, 0, 0, b)]);
    dns
}

#[test]
fn a_recipient_refused_at_the_first_mx_is_not_offered_to_the_second() {
    let (mx1, mx2, port) = two_hosts(31, 32, Options::default(), Options::default());
    mx1.on_rcpt(|rcpt, _| {
        (rcpt == "gone@dest.test").then(|| "550 5.1.1 <gone@dest.test>: no such user".into())
    });
    // The transaction at mx1 breaks off before the body: the recipient it
    // accepted is still open and goes on to mx2 in the same attempt.
    mx1.on_data_command(|_, _| Some(DROP.into()));
    let dns = two_mx(31, 32);
    let inbox = inbox();
    let (sluice, id) = start(
        None,
        &inbox,
        &format!("port = {port}\n"),
        &dns.config(),
        &["ok@dest.test", "gone@dest.test"],
    );
    let line = outcome(&sluice, &id, "ok@dest.test");
    assert_eq!(field(&line, "status"), "sent", "{line}");
    assert_eq!(
        field(&line, "relay"),
        format!("mx2.dest.test[127.0.0.32]:{port}")
    );
    assert_eq!(field(&line, "attempts"), "1", "{line}");
    assert_outcome(&sluice, &id, "gone@dest.test", "bounced", "550 5.1.1");
    let delivered = mx2.delivered();
    assert_eq!(delivered.len(), 1, "mx2 got the message once");
    assert_eq!(delivered[0].recipients, ["ok@dest.test"]);
    assert_eq!(
        mx2.rcpt_attempts("gone@dest.test"),
        0,
        "a recipient refused with 5xx at mx1 was offered to mx2"
    );
    assert_dsn(
        &wait_dsn(&inbox),
        &[("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")],
        &["ok@dest.test"],
    );
}

#[test]
fn the_attempt_history_shows_each_host_tried_with_its_reply() {
    // Issue 21: `attempts_log` shows every host of the attempt, not only
    // the last, so an operator sees what each one said.
    let (mx1, mx2, port) = two_hosts(43, 44, Options::default(), Options::default());
    mx1.on_data_command(|_, _| Some(DROP.into()));
    mx2.on_rcpt(|_, _| Some("451 4.3.0 try again later".into()));
    let dns = two_mx(43, 44);
    let inbox = inbox();
    let (sluice, id) = start(
        None,
        &inbox,
        &format!("port = {port}\n"),
        &dns.config(),
        &["ok@dest.test"],
    );
    assert_outcome(&sluice, &id, "ok@dest.test", "deferred", "451 4.3.0");
    let shown: serde_json::Value = serde_json::from_str(&common::cli_ok(
        &sluice.config_path,
        &["queue", "show", &id, "--json"],
    ))
    .expect("JSON");
    let log = shown["recipients"][0]["attempts_log"]
        .as_array()
        .unwrap_or_else(|| panic!("an attempts_log: {shown}"));
    let relays: Vec<&str> = log
        .iter()
        .filter_map(|entry| entry["relay"].as_str())
        .collect();
    assert_eq!(
        relays,
        [
            format!("mx1.dest.test[127.0.0.43]:{port}"),
            format!("mx2.dest.test[127.0.0.44]:{port}")
        ],
        "{shown}"
    );
    assert!(
        log[0]["reply"]
            .as_str()
            .is_some_and(|reply| reply.contains("mx1.dest.test")),
        "the first host's failure: {shown}"
    );
    assert!(
        log[1]["reply"]
            .as_str()
            .is_some_and(|reply| reply.contains("451 4.3.0")),
        "the second host's reply: {shown}"
    );
    assert_eq!(
        shown["recipients"][0]["attempts"], 1,
        "one attempt: {shown}"
    );
}

#[test]
fn all_refused_at_the_first_mx_then_a_drop_tries_no_other_host() {
    let (mx1, mx2, port) = two_hosts(37, 38, Options::default(), Options::default());
    mx1.on_rcpt(|rcpt, _| Some(format!("550 5.1.1 <{rcpt}>: no such user")));
    mx1.on_data_command(|_, _| Some(DROP.into()));
    let dns = two_mx(37, 38);
    let inbox = inbox();
    let (sluice, id) = start(
        None,
        &inbox,
        &format!("port = {port}\n"),
        &dns.config(),
        &["a@dest.test", "b@dest.test"],
    );
    for recipient in ["a@dest.test", "b@dest.test"] {
        assert_outcome(&sluice, &id, recipient, "bounced", "550 5.1.1");
    }
    wait_dsn(&inbox);
    assert_eq!(mx2.connections(), 0, "nothing was left for mx2");
}

#[test]
fn a_drop_after_the_end_of_data_is_not_retried_at_the_next_mx() {
    // The first host may have the message: sending it to the second now
    // could deliver it twice (RFC 1047). It waits for the next attempt.
    let (mx1, mx2, port) = two_hosts(33, 34, Options::default(), Options::default());
    mx1.on_data(|_, _| Some(DROP.into()));
    let dns = two_mx(33, 34);
    let inbox = inbox();
    let (sluice, id) = start(
        None,
        &inbox,
        &format!("port = {port}\n"),
        &dns.config(),
        &["ok@dest.test"],
    );
    assert_outcome(
        &sluice,
        &id,
        "ok@dest.test",
        "deferred",
        "after the end of data",
    );
    assert_eq!(mx2.connections(), 0, "mx2 must not be tried");
}

#[test]
fn a_554_greeting_moves_on_to_the_next_mx() {
    let (_mx1, mx2, port) = two_hosts(
        35,
        36,
        Options {
            greeting: "554 5.7.1 no service for you".into(),
            ..Options::default()
        },
        Options::default(),
    );
    let dns = two_mx(35, 36);
    let inbox = inbox();
    let (sluice, id) = start(
        None,
        &inbox,
        &format!("port = {port}\n"),
        &dns.config(),
        &["ok@dest.test"],
    );
    let line = outcome(&sluice, &id, "ok@dest.test");
    assert_eq!(field(&line, "status"), "sent", "{line}");
    assert_eq!(mx2.delivered().len(), 1);
}

// ---------------------------------------------------------------------------
// Hostile servers: every reply ends deferred with a readable reason, in
// bounded time and memory.

/// One recipient to a remote behaving as `options` (plus `script`), and the
/// reply it must end deferred with.
fn assert_deferred_by(options: Options, script: impl FnOnce(&Destination), reason: &str) {
    let remote = Destination::start(options);
    script(&remote);
    let inbox = inbox();
    let started = std::time::Instant::now();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &["ok@dest.test"]);
    assert_outcome(&sluice, &id, "ok@dest.test", "deferred", reason);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(remote.delivered().is_empty());
}

#[test]
fn a_multiline_reply_with_changing_codes_defers() {
    assert_deferred_by(
        Options::default(),
        |remote| remote.on_rcpt(|_, _| Some("250-2.1.5 fine\r\n550 5.1.1 or not".into())),
        "reply code changed within a multi-line reply (250 then 550)",
    );
}

#[test]
fn an_endless_continuation_reply_is_cut_off_and_defers() {
    assert_deferred_by(
        Options::default(),
        |remote| remote.on_rcpt(|_, _| Some(FLOOD.into())),
        "reply longer than 65536 bytes",
    );
}

#[test]
fn an_endless_greeting_is_cut_off_and_defers() {
    assert_deferred_by(
        Options {
            greeting: FLOOD.into(),
            ..Options::default()
        },
        |_| {},
        "reply longer than 65536 bytes",
    );
}

#[test]
fn a_server_that_never_greets_times_out_and_defers() {
    assert_deferred_by(
        Options {
            greeting: HANG.into(),
            ..Options::default()
        },
        |_| {},
        "timed out reading the greeting",
    );
}

#[test]
fn a_server_that_never_answers_rcpt_times_out_and_defers() {
    assert_deferred_by(
        Options::default(),
        |remote| remote.on_rcpt(|_, _| Some(HANG.into())),
        "timed out after RCPT",
    );
}

#[test]
fn a_server_closing_after_the_greeting_defers() {
    assert_deferred_by(
        Options {
            ehlo_reply: Some(DROP.into()),
            ..Options::default()
        },
        |_| {},
        "connection closed by the server after EHLO",
    );
}

#[test]
fn a_2xx_answer_to_data_is_not_taken_as_delivery() {
    assert_deferred_by(
        Options::default(),
        |remote| remote.on_data_command(|_, _| Some("250 2.0.0 sure".into())),
        "unexpected reply after DATA: 250 2.0.0 sure",
    );
}

#[test]
fn a_long_refusal_is_stored_cut_and_bounced() {
    let remote = Destination::start(Options::default());
    let text = "z".repeat(5000);
    remote.on_rcpt(move |_, _| Some(format!("550 5.1.1 {text}")));
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &["ok@dest.test"]);
    let line = outcome(&sluice, &id, "ok@dest.test");
    assert_eq!(field(&line, "status"), "bounced", "{line}");
    let reply = field(&line, "reply");
    assert!(
        reply.len() <= 900 && reply.starts_with("550 5.1.1 zzz") && reply.ends_with("..."),
        "reply not cut: {} bytes",
        reply.len()
    );
    let dsn = wait_dsn(&inbox);
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 zzz"),
        "{dsn}"
    );
    // RFC 5322 §2.1.1: no line of the DSN passes 998 octets.
    assert!(dsn.lines().all(|line| line.len() <= 998), "{dsn}");
}

#[test]
fn garbage_size_in_ehlo_is_ignored_and_mail_delivered() {
    let remote = Destination::start(Options {
        ehlo_reply: Some(
            "250-dest.test hello\r\n250-SIZE garbage\r\n250-SIZE -1\r\n250 PIPELINING".into(),
        ),
        ..Options::default()
    });
    let inbox = inbox();
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &["ok@dest.test"]);
    let line = outcome(&sluice, &id, "ok@dest.test");
    assert_eq!(field(&line, "status"), "sent", "{line}");
    let delivered: Vec<Transaction> = remote.delivered();
    assert_eq!(delivered.len(), 1);
}

#[test]
fn mx_hosts_past_the_address_limit_wait_for_the_next_attempt() {
    // DNS answers are remote input too: past ten addresses an attempt
    // stops (as Postfix's smtp_mx_address_limit) and defers.
    let live = Destination::start_on(SocketAddr::from(([127, 0, 0, 61], 0)), Options::default());
    let port = live.addr.port();
    let dns = DnsServer::start();
    let mut records = Vec::new();
    for number in 1..=11u8 {
        let name = format!("mx{number}.dest.test");
        // mx1..mx10 have nothing listening; mx11 would accept.
        dns.a(&name, &[Ipv4Addr::new(127, 0, 0, 50 + number)]);
        records.push((u16::from(number) * 10, name));
    }
    let records: Vec<(u16, &str)> = records.iter().map(|(p, n)| (*p, n.as_str())).collect();
    dns.mx("dest.test", &records);
    let inbox = inbox();
    let (sluice, id) = start(
        None,
        &inbox,
        &format!("port = {port}\n"),
        &dns.config(),
        &["ok@dest.test"],
    );
    let line = outcome(&sluice, &id, "ok@dest.test");
    assert_eq!(field(&line, "status"), "deferred", "{line}");
    assert!(
        field(&line, "reply").contains("mx10.dest.test[127.0.0.60]"),
        "{line}"
    );
    assert_eq!(live.connections(), 0, "the 11th address was tried");
}

#[test]
fn a_421_answering_starttls_defers_instead_of_going_on_in_plaintext() {
    // Opportunistic TLS goes on in plaintext when STARTTLS is refused, but
    // a 421 closes the session (RFC 5321 §3.8): its reply is the reason.
    assert_deferred_by(
        Options {
            starttls_reply: Some("421 4.3.2 no more sessions".into()),
            ..Options::default()
        },
        |_| {},
        "421 4.3.2 no more sessions",
    );
}

// ---------------------------------------------------------------------------
// Log lines.

#[test]
fn quoted_local_parts_cannot_forge_fields_in_delivery_log_lines() {
    // A quoted local part may hold spaces (RFC 5321 §4.1.2); printed raw,
    // `"x status=sent"@dest.test` would add a second `status=` to the
    // outcome line of a bounced recipient.
    let remote = Destination::start(Options::default());
    remote.on_rcpt(|_, _| Some("550 5.1.1 no such user".into()));
    let inbox = inbox();
    let forged = "\"x status=sent\"@dest.test";
    let (sluice, id) = start(Some(&remote), &inbox, "", "", &[forged]);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=", "550 5.1.1"]);
    let statuses: Vec<&str> = line
        .split_whitespace()
        .filter_map(|token| token.strip_prefix("status="))
        .collect();
    assert_eq!(statuses, ["bounced"], "{line}");
    assert!(
        line.contains(r#"recipient="\"x\u{20}status=sent\"@dest.test""#),
        "the recipient is one quoted token: {line}"
    );
    wait_dsn(&inbox);
}

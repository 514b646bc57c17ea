//! Retries belong to the (message, domain) pair: the deferred recipients of
//! one message at one domain share one next-attempt time (one jitter draw)
//! and are retried together, in one transaction, as DESIGN.md's "one SMTP
//! transaction per domain carries all of that domain's recipients of a
//! message" asks. The real binary against the scriptable destination.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use chrono::{DateTime, Utc};
use common::destination::{Destination, Options};
use common::spool::{enqueue_offline, with_queue};
use common::{DEADLINE, Sluice, config_text, field, wait_for};
use sluice_queue::{Outcome, QueueId, RecipientUpdate};

const BODY: &[u8] = b"From: alice@origin.test\r\nTo: bob@dest.test\r\nSubject: retry\r\nMessage-ID: <r1@origin.test>\r\n\r\nHello.\r\n";

/// Starts sluice on the spool in `dir`, with `dest.test` and `other.test`
/// routed to `destination` and `[delivery]` set by `delivery`.
fn start(dir: tempfile::TempDir, destination: &Destination, delivery: &str) -> Sluice {
    let extra = format!(
        "[delivery]\n{delivery}\n[routes]\n\"dest.test\" = \"{addr}\"\n\"other.test\" = \"{addr}\"\n",
        addr = destination.addr
    );
    let text = config_text(dir.path(), "", &extra);
    Sluice::start_with(dir, &text)
}

/// The message as `sluice queue show --json` prints it.
fn show(sluice: &Sluice, id: &str) -> serde_json::Value {
    let (code, stdout, stderr) = sluice.cli(&["queue", "show", id, "--json"]);
    assert_eq!(code, 0, "queue show {id}: {stderr}");
    serde_json::from_str(&stdout).expect("queue show prints JSON")
}

/// `next_attempt_at` of `address` in a `queue show --json` document.
fn next_attempt_at(shown: &serde_json::Value, address: &str) -> serde_json::Value {
    shown["recipients"]
        .as_array()
        .expect("recipients array")
        .iter()
        .find(|recipient| recipient["address"] == address)
        .unwrap_or_else(|| panic!("{address} not in {shown}"))["next_attempt_at"]
        .clone()
}

/// The MAIL commands the destination received, and for each the RCPT
/// addresses that followed it.
fn transactions_seen(destination: &Destination) -> Vec<Vec<String>> {
    let mut seen: Vec<Vec<String>> = Vec::new();
    for command in destination.commands() {
        let upper = command.to_ascii_uppercase();
        if upper.starts_with("MAIL FROM:") {
            seen.push(Vec::new());
        } else if let Some(rest) = upper.strip_prefix("RCPT TO:")
            && let Some(current) = seen.last_mut()
        {
            current.push(
                rest.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            );
        }
    }
    seen
}

#[test]
fn deferred_recipients_of_one_domain_are_retried_together_in_one_transaction() {
    let destination = Destination::start(Options::default());
    // Both recipients are refused for now at the first attempt only.
    destination.on_rcpt(|_, seen| (seen == 1).then(|| "451 4.3.0 try again later".into()));
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        &["b@dest.test", "c@dest.test"],
        BODY,
    );
    // Jitter is up to 10% of 3 s: per-recipient draws land up to 300 ms
    // apart, far more than the millisecond the due index resolves.
    let sluice = start(
        dir,
        &destination,
        "retry_initial = \"3s\"\nretry_max = \"3s\"\n",
    );

    // The outcome lines give the next attempt to the millisecond.
    let logged: Vec<String> = ["b@dest.test", "c@dest.test"]
        .iter()
        .map(|recipient| {
            let line = sluice.wait_log(&[
                &format!("queue_id={id}"),
                &format!("recipient={recipient} "),
                "status=deferred",
            ]);
            field(&line, "next_attempt")
        })
        .collect();
    assert_ne!(logged[0], "-", "a deferred recipient has a next attempt");
    assert_eq!(
        logged[0], logged[1],
        "one next attempt for the (message, domain) pair in the log"
    );
    let shown = show(&sluice, &id);
    let (b, c) = (
        next_attempt_at(&shown, "b@dest.test"),
        next_attempt_at(&shown, "c@dest.test"),
    );
    assert!(b.is_string(), "b@dest.test has a next attempt: {shown}");
    assert_eq!(
        b, c,
        "one next attempt for the (message, domain) pair, got {b} and {c}"
    );

    wait_for("both recipients delivered", DEADLINE, || {
        (destination.got_mail_for("b@dest.test") && destination.got_mail_for("c@dest.test"))
            .then_some(())
    });
    let seen = transactions_seen(&destination);
    assert_eq!(
        seen,
        vec![
            vec!["b@dest.test".to_string(), "c@dest.test".to_string()],
            vec!["b@dest.test".to_string(), "c@dest.test".to_string()],
        ],
        "the first attempt and the retry each one MAIL with both RCPTs"
    );
    let delivered = destination.delivered();
    assert_eq!(
        delivered.len(),
        1,
        "one delivery transaction: {delivered:?}"
    );
}

#[test]
fn a_due_recipient_brings_the_other_recipients_of_its_domain_along() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let id = enqueue_offline(
        &spool,
        "alice@origin.test",
        &["b@dest.test", "c@dest.test", "d@other.test"],
        BODY,
    );
    // Recipients of one domain whose attempt counts differ (c was tried
    // once more, as after a retry by hand) and whose times differ: b and d
    // are due in an hour, c now.
    let later: DateTime<Utc> = Utc::now() + chrono::Duration::hours(1);
    with_queue(&spool, |queue, runtime| {
        let id = QueueId::parse(&id).expect("queue ID");
        let deferred = |index, next_attempt_at| RecipientUpdate {
            index,
            outcome: Outcome::Deferred {
                reply: "451 4.3.0 try again later".into(),
                next_attempt_at,
            },
        };
        runtime.block_on(async {
            for updates in [
                vec![
                    deferred(0, later),
                    deferred(1, Utc::now()),
                    deferred(2, later),
                ],
                vec![deferred(1, Utc::now())],
            ] {
                let claims = queue.claim_due(Utc::now(), 10).expect("claim");
                assert_eq!(claims.len(), 1, "the test message is due");
                queue.complete(&id, updates).await.expect("complete");
            }
        });
        let message = queue.get(&id).expect("get").expect("queued");
        let attempts: Vec<u32> = message.recipients.iter().map(|r| r.attempts).collect();
        assert_eq!(attempts, vec![1, 2, 1]);
    });
    let sluice = start(
        dir,
        &destination,
        "retry_initial = \"1h\"\nretry_max = \"1h\"\n",
    );

    wait_for("b and c delivered", DEADLINE, || {
        (destination.got_mail_for("b@dest.test") && destination.got_mail_for("c@dest.test"))
            .then_some(())
    });
    assert_eq!(
        transactions_seen(&destination),
        vec![vec!["b@dest.test".to_string(), "c@dest.test".to_string()]],
        "c is due, so b (same domain) comes along in its transaction; d (other domain) waits"
    );
    let shown = show(&sluice, &id);
    let d = &shown["recipients"][2];
    assert_eq!(d["status"], "deferred", "{shown}");
    assert_eq!(d["attempts"], 1, "{shown}");
    let d_next: DateTime<Utc> = d["next_attempt_at"]
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.to_utc())
        .unwrap_or_else(|| panic!("d has a next attempt: {shown}"));
    // `queue show` writes whole seconds.
    assert_eq!(
        d_next.timestamp(),
        later.timestamp(),
        "d's own retry time is untouched"
    );
}

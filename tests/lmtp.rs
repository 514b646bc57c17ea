//! LMTP routes (RFC 2033) against a real Dovecot (`dovecot-lmtpd`), started
//! privately by each test: every recipient gets its own reply after the
//! data, so one that Dovecot defers is retried alone, one it does not know
//! is bounced alone, and the others are delivered once, into their Maildir.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dovecot;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use serde_json::Value;

use common::destination::{Sink, SinkMode};
use common::dovecot::Dovecot;
use common::{DEADLINE, Sluice, wait_for};

const BODY: &str = "From: sender@origin.test\r\nTo: alice@d.test\r\nSubject: lmtp\r\n\r\n\
                    Hello over LMTP.\r\n.leading dot stays\r\n";

/// sluice with `d.test` routed to `route` and everything else (the
/// sender's bounces) to `sink`.
fn sluice(route: &str, sink: &Sink, delivery: &str) -> Sluice {
    Sluice::start(&format!(
        "[delivery]\ntls = \"disabled\"\nretry_initial = \"1h\"\nretry_max = \"1h\"\n\
         command_timeout = \"5s\"\ndata_timeout = \"5s\"\n{delivery}\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\n\n\
         [routes]\n\"d.test\" = \"{route}\"\n\"*\" = \"{}\"\n",
        sink.address
    ))
}

fn show(sluice: &Sluice, id: &str) -> Value {
    let (code, stdout, stderr) = sluice.cli(&["queue", "show", id, "--json"]);
    assert_eq!(code, 0, "queue show: {stderr}");
    serde_json::from_str(&stdout).expect("queue show --json is JSON")
}

fn status_of(message: &Value, address: &str) -> (String, String) {
    let recipient = message["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|recipient| recipient["address"] == address)
        .unwrap_or_else(|| panic!("no {address} in {message}"));
    (
        recipient["status"].as_str().unwrap_or("").to_string(),
        recipient["last_reply"].as_str().unwrap_or("").to_string(),
    )
}

/// One copy each for the known users, the unknown one bounced alone, the
/// deferred one retried alone (and delivered once Dovecot can).
fn each_recipient_on_its_own(dovecot: &mut Dovecot, sluice: &Sluice, sink: &Sink) {
    dovecot.set_home("carol", dovecot.broken_home());
    let id = sluice.connect().send_message(
        "sender@origin.test",
        &[
            "alice@d.test",
            "nobody@d.test",
            "carol@d.test",
            "bob@d.test",
        ],
        BODY,
    );
    wait_for("alice and bob in their Maildirs", DEADLINE, || {
        (dovecot.messages("alice").len() == 1 && dovecot.messages("bob").len() == 1).then_some(())
    });
    let message = wait_for("carol deferred and nobody bounced", DEADLINE, || {
        let message = show(sluice, &id);
        let carol = status_of(&message, "carol@d.test");
        (carol.0 == "deferred").then_some(message)
    });
    let carol = status_of(&message, "carol@d.test");
    assert!(carol.1.starts_with("451 4.2.0"), "carol's reply: {carol:?}");
    assert_eq!(status_of(&message, "alice@d.test").0, "delivered");
    assert_eq!(status_of(&message, "bob@d.test").0, "delivered");
    // The bounce names nobody alone.
    let bounce = wait_for("the bounce for nobody@d.test", DEADLINE, || {
        sink.messages()
            .into_iter()
            .find(|received| received.from.is_empty())
    });
    assert!(bounce.data.contains("nobody@d.test"), "{}", bounce.data);
    assert!(bounce.data.contains("5.1.1"), "{}", bounce.data);
    for delivered in ["alice@d.test", "bob@d.test", "carol@d.test"] {
        assert!(
            !bounce
                .data
                .contains(&format!("Final-Recipient: rfc822; {delivered}")),
            "{delivered} must not be in the bounce:\n{}",
            bounce.data
        );
    }
    let body = String::from_utf8_lossy(&dovecot.messages("alice")[0]).into_owned();
    assert!(
        body.contains("Hello over LMTP.\r\n.leading dot stays\r\n")
            || body.contains("Hello over LMTP.\n.leading dot stays\n"),
        "alice's copy: {body:?}"
    );

    // Carol's mailbox works again: the retry goes to her alone.
    let home = dovecot.home("carol");
    dovecot.set_home("carol", home);
    // Dovecot looks at its passwd-file at most once a second: retry until
    // it has seen the change.
    let start = std::time::Instant::now();
    let mut retried = std::time::Instant::now() - std::time::Duration::from_secs(1);
    while dovecot.messages("carol").len() != 1 {
        if retried.elapsed() > std::time::Duration::from_millis(500) {
            // (It may just have left the queue: the copy decides.)
            let _ = sluice.cli(&["queue", "retry", &id]);
            retried = std::time::Instant::now();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "carol's copy never came\nsluice:\n{}\ndovecot:\n{}",
            sluice.log_text(),
            dovecot.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    wait_for("the message to leave the queue", DEADLINE, || {
        let (code, _, _) = sluice.cli(&["queue", "show", &id]);
        (code != 0).then_some(())
    });
    assert_eq!(dovecot.messages("alice").len(), 1, "alice got one copy");
    assert_eq!(dovecot.messages("bob").len(), 1, "bob got one copy");
    assert_eq!(
        sink.messages().len(),
        1,
        "one bounce, nothing else, went to the sender"
    );
}

#[test]
fn lmtp_over_tcp_settles_each_recipient_on_its_own() {
    let mut dovecot = Dovecot::start(&["alice", "bob", "carol"]);
    let sink = Sink::start(SinkMode::Accept);
    let sluice = sluice(&format!("lmtp:{}", dovecot.address), &sink, "");
    each_recipient_on_its_own(&mut dovecot, &sluice, &sink);
}

#[test]
fn lmtp_over_a_unix_socket_settles_each_recipient_on_its_own() {
    let mut dovecot = Dovecot::start(&["alice", "bob", "carol"]);
    let sink = Sink::start(SinkMode::Accept);
    let route = format!("lmtp:unix:{}", dovecot.socket.display());
    let sluice = sluice(&route, &sink, "");
    each_recipient_on_its_own(&mut dovecot, &sluice, &sink);
}

#[test]
fn lmtp_with_data_instead_of_bdat() {
    let mut dovecot = Dovecot::start(&["alice", "bob", "carol"]);
    let sink = Sink::start(SinkMode::Accept);
    let sluice = sluice(
        &format!("lmtp:{}", dovecot.address),
        &sink,
        "chunking = false\n",
    );
    each_recipient_on_its_own(&mut dovecot, &sluice, &sink);
}

//! DNS answers and DNS time against the real binary: which resolver answers
//! defer a recipient and which fail it, and how long a silent nameserver may
//! hold a delivery attempt (`dns.timeout`).

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::time::{Duration, Instant};

use common::destination::{Destination, Options};
use common::dns::{DnsServer, SilentNameserver};
use common::spool::{enqueue_offline, stop_and_read_queue};
use common::{DEADLINE, Sluice, field, wait_for};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use sluice_queue::RecipientStatus;

const BODY: &[u8] =
    b"From: alice@origin.test\r\nTo: bob@dest.test\r\nSubject: dns\r\n\r\nHello.\r\n";

/// Starts sluice on a spool holding one message from alice@origin.test to
/// `recipients`; bounces for origin.test go to `inbox`.
fn start(dns_config: &str, inbox: &Destination, recipients: &[&str]) -> (Sluice, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        recipients,
        BODY,
    );
    let extra = format!(
        "{dns_config}[delivery]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n\
         [routes]\n\"origin.test\" = \"{}\"\n",
        inbox.addr
    );
    (Sluice::start_in(dir, &extra), id)
}

/// A resolver that answers REFUSED (or NOTIMP, FORMERR, SERVFAIL) has told
/// us nothing about the domain: the recipient waits for the next attempt,
/// with a 4.x.x status, and no bounce is sent. Only NXDOMAIN, or NOERROR
/// with neither MX nor A/AAAA records, fails it. That holds for the MX
/// query and for the address queries of a domain without MX (its A query
/// refused, its AAAA query empty: that is no proof it has no address).
#[test]
fn error_rcodes_other_than_nxdomain_defer_and_send_no_bounce() {
    let inbox = Destination::start(Options::default());
    let dns = DnsServer::start();
    let cases = [
        ("refused.test", ResponseCode::Refused),
        ("notimp.test", ResponseCode::NotImp),
        ("formerr.test", ResponseCode::FormErr),
        ("servfail.test", ResponseCode::ServFail),
    ];
    for (domain, code) in cases {
        dns.error(domain, code);
    }
    dns.empty("a-refused.test");
    dns.error_for("a-refused.test", RecordType::A, ResponseCode::Refused);
    let recipients: Vec<String> = cases
        .iter()
        .map(|(domain, _)| format!("bob@{domain}"))
        .chain(["bob@a-refused.test".to_string()])
        .collect();
    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let (mut sluice, id) = start(&dns.config(), &inbox, &recipients);
    for recipient in &recipients {
        let line = sluice.wait_log(&[
            &format!("queue_id={id}"),
            &format!("recipient={recipient} "),
            " status=",
        ]);
        assert_eq!(
            field(&line, "status"),
            "deferred",
            "{recipient}: expected a deferral, got {line}"
        );
        assert!(
            field(&line, "dsn").starts_with("4."),
            "{recipient}: expected a 4.x.x status, got {line}"
        );
    }
    let queue = stop_and_read_queue(&mut sluice);
    assert_eq!(queue.len(), 1, "the message stays queued");
    for recipient in &queue[0].message.recipients {
        assert_eq!(
            recipient.status,
            RecipientStatus::Deferred,
            "{}: {recipient:?}",
            recipient.address
        );
        let reply = recipient.last_reply.as_deref().unwrap_or("");
        assert!(
            reply.starts_with('4'),
            "{}: expected a 4xx reply, got {reply:?}",
            recipient.address
        );
        assert!(
            !reply.contains("NXDOMAIN"),
            "{}: {reply:?}",
            recipient.address
        );
    }
    assert!(
        inbox.transactions().is_empty(),
        "no bounce may be sent: {:?}",
        inbox.transactions()
    );
}

/// `dns.timeout` bounds one attempt's whole DNS wait for a domain: with a
/// nameserver that never answers and `timeout = "1s"`, the recipient is
/// deferred about a second after the first query, not after the resolver's
/// retries and the MX and address lookups have added up (3 s and more).
#[test]
fn a_silent_nameserver_defers_within_the_dns_timeout() {
    let inbox = Destination::start(Options::default());
    let silent = SilentNameserver::start();
    let (mut sluice, id) = start(&silent.config("1s"), &inbox, &["bob@silent.test"]);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), " status="]);
    let deferred_at = Instant::now();
    assert_eq!(field(&line, "status"), "deferred", "{line}");
    let first_query = wait_for("the first DNS query", DEADLINE, || silent.first_query());
    let waited = deferred_at.duration_since(first_query);
    eprintln!("deferred {waited:?} after the first DNS query");
    // One second of budget; the margin is for a loaded machine and for the
    // log line's trip to the test.
    assert!(
        waited < Duration::from_millis(2500),
        "deferred {waited:?} after the first DNS query; dns.timeout is 1s"
    );
    // Well under the second, in case the query's arrival was noted late.
    assert!(
        waited >= Duration::from_millis(500),
        "deferred after only {waited:?}: the timeout was not waited out"
    );
    let queue = stop_and_read_queue(&mut sluice);
    let recipient = &queue[0].message.recipients[0];
    assert_eq!(recipient.status, RecipientStatus::Deferred, "{recipient:?}");
}

//! Delivery events end to end: the real binary sends `[[events]]` to a
//! webhook (a small HTTP server here that checks each signature and can
//! refuse for a while) and to a real `redis-server` stream; events survive
//! the subscriber's outage and a kill -9 during a burst, arrive at least
//! once with equal IDs for duplicates, and `types` filters them.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod redis;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::destination::{Destination, Options};
use common::redis::Redis;
use common::{DEADLINE, Sluice, routed_config_text, wait_for};
use serde_json::Value;

const SECRET: &str = "webhook-s3cret";

/// An HTTP receiver: answers 500 while `failing`, else 200, and keeps every
/// event of every accepted POST with whether its signature was right.
struct Receiver {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<Value>>>,
    bad_signatures: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("address");
        let receiver = Receiver {
            addr,
            failing: Arc::new(AtomicBool::new(false)),
            refused: Arc::new(AtomicUsize::new(0)),
            events: Arc::new(Mutex::new(Vec::new())),
            bad_signatures: Arc::new(AtomicUsize::new(0)),
        };
        let (failing, refused, events, bad) = (
            receiver.failing.clone(),
            receiver.refused.clone(),
            receiver.events.clone(),
            receiver.bad_signatures.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (failing, refused, events, bad) = (
                    failing.clone(),
                    refused.clone(),
                    events.clone(),
                    bad.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(stream, &failing, &refused, &events, &bad);
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/sluice", self.addr)
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    failing: &AtomicBool,
    refused: &AtomicUsize,
    events: &Mutex<Vec<Value>>,
    bad: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut signature = String::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-sluice-signature" => signature = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if failing.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            writer.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let expected: String = ring::hmac::sign(&key, &body)
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        if signature != format!("sha256={expected}") {
            bad.fetch_add(1, Ordering::SeqCst);
        }
        let batch: Value = serde_json::from_slice(&body).expect("a JSON body");
        let batch = batch.as_array().expect("a JSON array").clone();
        events.lock().unwrap().extend(batch);
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}

/// A destination that refuses `bad@…` with 550 5.1.1 and takes the rest.
fn destination() -> Destination {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|recipient, _| {
        recipient
            .starts_with("bad@")
            .then(|| "550 5.1.1 no such user".to_string())
    });
    destination
}

fn subscriber(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[events]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nbatch = 10\n{extra}\n"
    )
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

#[test]
fn events_reach_a_signed_webhook_after_its_outage() {
    let destination = destination();
    let receiver = Receiver::start();
    receiver.failing.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = routed_config_text(
        dir.path(),
        destination.addr,
        "",
        &format!(
            "{}\n[limits]\nmax_recipients = 2\n",
            subscriber("app", &receiver.url(), "")
        ),
    );
    let sluice = Sluice::start_with(dir, &config);
    let mut client = sluice.connect();
    let id = client.send_message(
        "alice@example.org",
        &["ok@dest.test", "bad@dest.test"],
        "From: alice@example.org\r\nMessage-ID: <events-1@example.org>\r\nSubject: hi\r\n\r\nHello.\r\n",
    );
    // Refused while the receiver fails, then retried and taken.
    wait_for("a refused POST", DEADLINE, || {
        (receiver.refused.load(Ordering::SeqCst) > 0).then_some(())
    });
    receiver.failing.store(false, Ordering::SeqCst);
    let events = wait_for("received, delivered and bounced events", DEADLINE, || {
        // The bounce to alice is a message of its own, with its own events.
        let events: Vec<Value> = receiver
            .events()
            .into_iter()
            .filter(|event| event["queue_id"] == id.as_str())
            .collect();
        (of_type(&events, "received").len() == 2
            && of_type(&events, "delivered").len() == 1
            && of_type(&events, "bounced").len() == 1)
            .then_some(events)
    });
    assert_eq!(
        receiver.bad_signatures.load(Ordering::SeqCst),
        0,
        "every signature checks"
    );
    let delivered = of_type(&events, "delivered")[0];
    assert_eq!(delivered["queue_id"], id.as_str());
    assert_eq!(delivered["recipient"], "ok@dest.test");
    assert_eq!(delivered["sender"], "alice@example.org");
    assert_eq!(delivered["message_id"], "<events-1@example.org>");
    assert_eq!(delivered["attempt"], 1);
    assert_eq!(delivered["reply"]["code"], 250, "{delivered}");
    assert!(
        delivered["relay"]
            .as_str()
            .unwrap_or("")
            .contains(&destination.addr.port().to_string()),
        "{delivered}"
    );
    assert_eq!(delivered["node"].as_str().map(str::is_empty), Some(false));
    let bounced = of_type(&events, "bounced")[0];
    assert_eq!(bounced["recipient"], "bad@dest.test");
    assert_eq!(bounced["class"], "invalid_recipient", "{bounced}");
    assert_eq!(bounced["reply"]["enhanced"], "5.1.1", "{bounced}");
    // Each recipient's received comes before its outcome; IDs are unique.
    for recipient in ["ok@dest.test", "bad@dest.test"] {
        let kinds: Vec<&str> = events
            .iter()
            .filter(|event| event["recipient"] == recipient)
            .map(|event| event["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds[0], "received", "{recipient}: {kinds:?}");
    }
    let mut ids: Vec<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "no duplicate without a restart");
    // The bounce (a DSN to alice) is a message of its own: its events come too.
    // A refused RCPT is a `rejected` event; suspending and resuming a
    // destination by hand are events too.
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<alice@example.org>", "250");
    client.expect("RCPT TO:<one@dest.test>", "250");
    client.expect("RCPT TO:<two@dest.test>", "250");
    client.expect("RCPT TO:<three@dest.test>", "452");
    let (code, _, stderr) = sluice.cli(&["queue", "suspend", "dest.test", "--for", "1h"]);
    assert_eq!(code, 0, "suspend: {stderr}");
    let (code, _, stderr) = sluice.cli(&["queue", "resume", "dest.test"]);
    assert_eq!(code, 0, "resume: {stderr}");
    let events = wait_for("rejected, suspended and resumed events", DEADLINE, || {
        let events = receiver.events();
        (!of_type(&events, "rejected").is_empty()
            && !of_type(&events, "suspended").is_empty()
            && !of_type(&events, "resumed").is_empty())
        .then_some(events)
    });
    let rejected = of_type(&events, "rejected")[0];
    assert_eq!(rejected["recipient"], "three@dest.test", "{rejected}");
    assert_eq!(rejected["reply"]["code"], 452, "{rejected}");
    assert_eq!(rejected["client"], "127.0.0.1", "{rejected}");
    assert_eq!(of_type(&events, "suspended")[0]["destination"], "dest.test");
    let status = sluice.cli(&["events", "status", "--json"]);
    assert_eq!(status.0, 0, "events status: {status:?}");
    let statuses: Value = serde_json::from_str(&status.1).expect("JSON");
    assert_eq!(statuses[0]["name"], "app", "{statuses}");
    assert!(
        statuses[0]["failed"].as_u64().unwrap_or(0) >= 1,
        "{statuses}"
    );
}

#[test]
fn events_survive_kill_9_during_a_burst_while_the_subscriber_is_down() {
    let destination = destination();
    let receiver = Receiver::start();
    receiver.failing.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = routed_config_text(
        dir.path(),
        destination.addr,
        "",
        &subscriber(
            "app",
            &receiver.url(),
            "types = [\"received\", \"delivered\"]",
        ),
    );
    let mut sluice = Sluice::start_with(dir, &config);
    let mut ids = Vec::new();
    for n in 0..20 {
        let mut client = sluice.connect();
        ids.push(client.send_message(
            "alice@example.org",
            &[&format!("user{n}@dest.test")],
            &format!(
                "From: alice@example.org\r\nMessage-ID: <burst-{n}@example.org>\r\n\r\nHi.\r\n"
            ),
        ));
    }
    sluice.kill9();
    let sluice = sluice.restart();
    receiver.failing.store(false, Ordering::SeqCst);
    let events = wait_for("an event of each kind for every message", DEADLINE, || {
        let events = receiver.events();
        let complete = ids.iter().all(|id| {
            ["received", "delivered"].iter().all(|kind| {
                events
                    .iter()
                    .any(|event| event["queue_id"] == id.as_str() && event["type"] == *kind)
            })
        });
        complete.then_some(events)
    });
    // Duplicates only with equal IDs: one ID per (message, recipient, type).
    let mut by_change: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for event in &events {
        assert!(
            ["received", "delivered"].contains(&event["type"].as_str().unwrap_or("")),
            "types filters: {event}"
        );
        by_change
            .entry((
                event["queue_id"].to_string(),
                event["recipient"].to_string(),
                event["type"].to_string(),
            ))
            .or_default()
            .push(event["id"].to_string());
    }
    for (change, ids) in &by_change {
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "a change sent twice must keep its ID: {change:?} {ids:?}"
        );
    }
    drop(sluice);
}

#[test]
fn events_go_to_a_redis_stream() {
    let destination = destination();
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = routed_config_text(
        dir.path(),
        destination.addr,
        "",
        &format!(
            "[[events]]\nname = \"stream\"\nredis = \"redis://127.0.0.1:{}/0\"\nstream = \"sluice:test\"\n\
             types = [\"delivered\", \"bounced\"]\n",
            redis.port
        ),
    );
    let sluice = Sluice::start_with(dir, &config);
    let mut client = sluice.connect();
    client.send_message(
        "alice@example.org",
        &["ok@dest.test", "bad@dest.test"],
        "From: alice@example.org\r\n\r\nHi.\r\n",
    );
    let connection =
        redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).expect("redis client");
    let mut connection = connection.get_connection().expect("redis connection");
    // Two for dest.test; the bounce to alice (a message of its own, to the
    // same route) is delivered too.
    let entries = wait_for("three entries in the stream", DEADLINE, || {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg("sluice:test")
            .arg("-")
            .arg("+")
            .query(&mut connection)
            .ok()?;
        (entries.len() >= 3).then_some(entries)
    });
    let mut kinds: Vec<String> = entries
        .iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 2, "one field: {fields:?}");
            assert_eq!(fields[0], "event");
            let event: Value = serde_json::from_str(&fields[1]).expect("JSON");
            format!(
                "{} {}",
                event["type"].as_str().unwrap_or(""),
                event["recipient"].as_str().unwrap_or("")
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "bounced bad@dest.test",
            "delivered alice@example.org",
            "delivered ok@dest.test"
        ],
        "only the types asked for"
    );
    drop(sluice);
}

//! Shared limits across nodes: two real sluice nodes share one real
//! `redis-server` (started here on a free loopback port) and keep a
//! combined rate and connection limit, see each other's suspensions, and
//! go on with their local limits, losing nothing, when Redis is killed.

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

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::admin::http;
use common::destination::{Destination, Options, wait_delivered};
use common::redis::Redis;
use common::spool::with_queue;
use common::{DEADLINE, Sluice, config_text, wait_for};
use sluice_queue::Envelope;

const BODY: &[u8] = b"From: a@origin.test\r\nSubject: shared\r\n\r\nHello.\r\n";

/// A node's config: routed to `destination`, the `[shaping]` tables, and
/// `[cluster]` on `redis` as `node`.
fn config(dir: &Path, destination: SocketAddr, shaping: &str, redis: &str, node: &str) -> String {
    config_text(
        dir,
        "",
        &format!(
            "[delivery]\ntls = \"disabled\"\nretry_initial = \"1s\"\nretry_max = \"1s\"\n\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n\n\
             [routes]\n\"*\" = \"{destination}\"\n\n{shaping}\n\n\
             [cluster]\nredis = \"{redis}\"\nnode = \"{node}\"\n"
        ),
    )
}

fn enqueue(dir: &Path, prefix: &str, count: usize) {
    with_queue(&dir.join("spool"), |queue, runtime| {
        for n in 0..count {
            let envelope = Envelope {
                sender: "a@origin.test".into(),
                recipients: vec![format!("{prefix}{n}@dest.test")],
                smtputf8: false,
                body_8bit: false,
                requiretls: false,
                dsn: None,
            };
            runtime
                .block_on(queue.enqueue(envelope, BODY))
                .expect("enqueue");
        }
    });
}

/// A node with `count` messages queued, started.
fn node(destination: &Destination, redis: &str, name: &str, shaping: &str, count: usize) -> Sluice {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config(dir.path(), destination.addr, shaping, redis, name);
    enqueue(dir.path(), name, count);
    Sluice::start_with(dir, &text)
}

fn rate_after_burst(times: &[Instant], burst: usize) -> f64 {
    let tail = &times[burst..];
    let span = tail[tail.len() - 1].duration_since(tail[0]).as_secs_f64();
    (tail.len() - 1) as f64 / span
}

#[test]
fn two_nodes_keep_a_combined_rate() {
    let redis = Redis::start();
    let destination = Destination::start(Options::default());
    let rule = "[shaping.\"dest.test\"]\nrate = \"20/s\"\nconnections = 4\n";
    let first = node(&destination, &redis.url(), "mx1", rule, 40);
    let second = node(&destination, &redis.url(), "mx2", rule, 40);
    wait_delivered(&destination, 80);
    let rate = rate_after_burst(&destination.transaction_times(), 20);
    assert!(
        (16.0..=24.0).contains(&rate),
        "expected 20 messages/s together (within 20%), got {rate:.1}/s"
    );
    for server in [&first, &second] {
        assert!(server.log_text().contains("limits shared through Redis"));
        assert!(!server.log_text().contains("using local limits"));
    }
}

#[test]
fn two_nodes_share_the_connection_limit_and_suspensions() {
    let redis = Redis::start();
    let destination = Destination::start(Options::default());
    // How many transactions are in their end of data at once, over both nodes.
    let busy = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (busy.clone(), most.clone());
    destination.on_data(move |_, _| {
        let current = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(current, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        now.fetch_sub(1, Ordering::SeqCst);
        None
    });
    let rule = "[shaping.\"dest.test\"]\nconnections = 2\n";
    let first = node(&destination, &redis.url(), "mx1", rule, 10);
    let second = node(&destination, &redis.url(), "mx2", rule, 10);
    wait_delivered(&destination, 20);
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "2 transactions at once over both nodes, not 2 each"
    );

    // A suspension set on one node holds for the other.
    let reply = http("POST", first.admin, "/v1/suspensions/dest.test", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = wait_for("the other node to see the suspension", DEADLINE, || {
        let listed = http("GET", second.admin, "/v1/suspensions", None).json();
        (listed["suspensions"][0]["destination"] == "dest.test").then_some(listed)
    });
    assert_eq!(
        seen["suspensions"][0]["reason"],
        "suspended by the operator"
    );
    // And its end, set on the other node, too.
    assert_eq!(
        http("DELETE", second.admin, "/v1/suspensions/dest.test", None).status,
        204
    );
    wait_for("the first node to see the resumption", DEADLINE, || {
        let listed = http("GET", first.admin, "/v1/suspensions", None).json();
        listed["suspensions"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    });
}

#[test]
fn redis_killed_mid_run_loses_no_mail_and_delivery_goes_on() {
    let mut redis = Redis::start();
    let port = redis.port;
    let destination = Destination::start(Options::default());
    let rule = "[shaping.\"dest.test\"]\nrate = \"40/s\"\nconnections = 4\n";
    let server = node(&destination, &redis.url(), "mx1", rule, 150);
    server.wait_log(&["limits shared through Redis"]);
    wait_for("some deliveries", DEADLINE, || {
        (destination.delivered().len() >= 50).then_some(())
    });
    redis.kill();
    server.wait_log(&["using local limits"]);
    let delivered = wait_delivered(&destination, 150);
    let mut recipients: Vec<&String> = delivered.iter().flat_map(|t| &t.recipients).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 150, "every message delivered");
    let metrics = http("GET", server.admin, "/metrics", None).body;
    assert!(
        metrics.contains("sluice_shaping_redis_fallback 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_shaping_redis_errors_total"),
        "{metrics}"
    );
    // Back: shared again.
    let _redis = Redis::start_on(port);
    server.wait_log(&["Redis for shared limits reachable again"]);
    let metrics = http("GET", server.admin, "/metrics", None).body;
    assert!(
        metrics.contains("sluice_shaping_redis_fallback 0"),
        "{metrics}"
    );
    let fallbacks = server.log_text().matches("using local limits").count();
    assert_eq!(fallbacks, 1, "the fallback is logged once");
}

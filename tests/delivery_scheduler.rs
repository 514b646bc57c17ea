//! The scheduler in-process, driven by a manual clock: backoff is checked
//! without waiting for it, and `delivery::bounce` (used by `sluice queue
//! bounce`) is checked against a real queue.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::DEADLINE;
use common::destination::{Destination, Options};
use sluice::config::Config;
use sluice::context::Context;
use sluice::delivery::retry::{Clock, ManualClock};
use sluice::delivery::{Scheduler, bounce};
use sluice::metrics::Metrics;
use sluice_queue::{Envelope, Queue, QueueId, QueueOptions, RecipientStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn context(dir: &Path, extra: &str) -> Context {
    let config = Config::parse(
        &format!("hostname = \"sluice.test\"\n{extra}"),
        Path::new("test.toml"),
    )
    .expect("valid config");
    let queue = Queue::open(&dir.join("spool"), QueueOptions::default()).expect("open queue");
    Context {
        config: Arc::new(config),
        queue,
        metrics: Arc::new(Metrics::new()),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    }
}

fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        smtputf8: false,
        body_8bit: false,
    }
}

async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_follows_the_clock_without_real_waiting() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, attempt| (attempt < 3).then(|| "450 4.2.1 busy".into()));
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nretry_initial = \"10m\"\nretry_factor = 3.0\nretry_max = \"1h\"\n\
             [routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    // A second ahead of real time, so mail queued now is due on this clock.
    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::seconds(1));
    let scheduler = Scheduler::with_clock(&ctx, Arc::new(clock.clone())).expect("scheduler");
    let running = tokio::spawn(scheduler.run());
    let id = ctx
        .queue
        .enqueue(
            envelope("a@origin.test", &["b@dest.test"]),
            b"Subject: x\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");

    let deferred = |attempts: u32| {
        let queue = ctx.queue.clone();
        let id = id.clone();
        move || {
            let message = queue.get(&id).ok()??;
            let recipient = message.recipients[0].clone();
            (recipient.attempts == attempts && recipient.status == RecipientStatus::Deferred)
                .then_some(recipient)
        }
    };
    // Attempt 1 fails: next try 10 minutes (+ up to 10%) later on the clock.
    let first = wait_until("the first deferral", deferred(1)).await;
    let delay = first.next_attempt_at.expect("scheduled") - clock.now();
    assert!(
        delay >= chrono::Duration::minutes(10) && delay <= chrono::Duration::minutes(11),
        "first backoff {delay}"
    );
    // Nothing happens until the clock gets there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(destination.rcpt_attempts("b@dest.test"), 1);
    clock.advance(Duration::from_secs(11 * 60));
    // Attempt 2 fails: 10m * 3 = 30 minutes.
    let second = wait_until("the second deferral", deferred(2)).await;
    let delay = second.next_attempt_at.expect("scheduled") - clock.now();
    assert!(
        delay >= chrono::Duration::minutes(30) && delay <= chrono::Duration::minutes(33),
        "second backoff {delay}"
    );
    clock.advance(Duration::from_secs(33 * 60));
    wait_until("delivery on the third attempt", || {
        ctx.queue
            .get(&id)
            .ok()
            .and_then(|m| m.is_none().then_some(()))
    })
    .await;
    assert_eq!(destination.delivered().len(), 1);
    ctx.shutdown.cancel();
    running.await.expect("scheduler ends at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bounce_fails_open_recipients_and_queues_one_dsn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(dir.path(), "");
    let id = ctx
        .queue
        .enqueue(
            envelope("alice@origin.test", &["b@dest.test", "c@dest.test"]),
            b"Subject: stuck\r\nMessage-ID: <stuck@origin.test>\r\n\r\nbody\r\n",
        )
        .await
        .expect("enqueue");
    let message = bounce(&ctx, &id, "removed by the operator")
        .await
        .expect("bounce");
    assert!(
        message
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Failed)
    );
    assert!(
        ctx.queue.get(&id).expect("read").is_none(),
        "bounced mail leaves the queue"
    );
    let dsns: Vec<_> = ctx
        .queue
        .iter(None)
        .filter_map(Result::ok)
        .filter(|m| m.sender.is_empty())
        .collect();
    assert_eq!(dsns.len(), 1, "exactly one DSN");
    assert_eq!(dsns[0].recipients[0].address, "alice@origin.test");
    let mut body = Vec::new();
    std::io::Read::read_to_end(
        &mut ctx.queue.open_body(&dsns[0].id).expect("DSN body"),
        &mut body,
    )
    .expect("read DSN");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("Final-Recipient:").count(), 2, "{text}");
    assert!(text.contains("removed by the operator"), "{text}");
    assert!(text.contains("Message-ID: <stuck@origin.test>"), "{text}");

    // A bounce of a null-sender message queues nothing.
    let null = ctx
        .queue
        .enqueue(envelope("", &["x@dest.test"]), b"Subject: dsn\r\n\r\n")
        .await
        .expect("enqueue");
    bounce(&ctx, &null, "").await.expect("bounce");
    let count = ctx.queue.iter(None).filter_map(Result::ok).count();
    assert_eq!(count, 1, "only the first DSN is queued");
    assert!(
        bounce(&ctx, &QueueId::parse("nosuch").unwrap(), "x")
            .await
            .is_err()
    );
}

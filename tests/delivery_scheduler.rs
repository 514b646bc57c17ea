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
use sluice_queue::{Envelope, Queue, QueueId, QueueOptions, RecipientStatus};

fn context(dir: &Path, extra: &str) -> Context {
    let config = Config::parse(
        &format!("hostname = \"sluice.test\"\n{extra}"),
        Path::new("test.toml"),
    )
    .expect("valid config");
    let queue = Queue::open(&dir.join("spool"), QueueOptions::default()).expect("open queue");
    Context::new(Arc::new(config), queue)
}

fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        smtputf8: false,
        body_8bit: false,
        requiretls: false,
        dsn: None,
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

/// Messages deleted by the operator while their delivery is in flight must
/// not keep their delivery slots: the scheduler has nothing to record or give
/// back for them, and new mail must go out at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_mail_in_flight_frees_its_slot_for_new_mail_at_once() {
    use std::sync::atomic::Ordering;
    let destination = Destination::start(Options::default());
    destination.stall_data.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    // One transaction at a time, so two claimed messages fill every slot.
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nconcurrency = 1\nretry_initial = \"1h\"\nretry_max = \"2h\"\n\
             [routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let scheduler = Scheduler::new(&ctx).expect("scheduler");
    let running = tokio::spawn(scheduler.run());
    let mut doomed = Vec::new();
    for n in 0..2 {
        let id = ctx
            .queue
            .enqueue(
                envelope("a@origin.test", &[&format!("doomed{n}@dest.test")]),
                b"Subject: x\r\n\r\nhi\r\n",
            )
            .await
            .expect("enqueue");
        doomed.push(id);
    }
    wait_until("the first body to stall at the destination", || {
        (destination.stalled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    for id in &doomed {
        ctx.queue.delete(id).await.expect("delete");
    }
    destination.stall_data.store(false, Ordering::SeqCst);
    let fresh = ctx
        .queue
        .enqueue(
            envelope("a@origin.test", &["fresh@dest.test"]),
            b"Subject: y\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");
    wait_until("the new message to be delivered", || {
        destination.got_mail_for("fresh@dest.test").then_some(())
    })
    .await;
    // The destination has the message once it read the final dot; sluice
    // records the delivery after reading the 250 that follows.
    wait_until("the delivered message to leave the queue", || {
        ctx.queue.get(&fresh).expect("read").is_none().then_some(())
    })
    .await;
    assert_eq!(ctx.queue.stats().expect("stats").messages, 0);
    ctx.shutdown.cancel();
    running.await.expect("scheduler ends at shutdown");
}

/// A backlog to one slow domain waits for that domain's
/// `per_domain_concurrency` without taking every delivery slot: mail to
/// other domains still goes out while the total `concurrency` has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_to_one_slow_domain_does_not_starve_other_domains() {
    use std::sync::atomic::Ordering;
    let slow = Destination::start(Options::default());
    slow.stall_data.store(true, Ordering::SeqCst);
    let fast = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nconcurrency = 2\nper_domain_concurrency = 1\n\
             [routes]\n\"slow.test\" = \"{}\"\n\"fast.test\" = \"{}\"\n",
            slow.addr, fast.addr
        ),
    );
    let scheduler = Scheduler::new(&ctx).expect("scheduler");
    let running = tokio::spawn(scheduler.run());
    for n in 0..8 {
        ctx.queue
            .enqueue(
                envelope("a@origin.test", &[&format!("r{n}@slow.test")]),
                b"Subject: x\r\n\r\nhi\r\n",
            )
            .await
            .expect("enqueue");
    }
    wait_until("a body to stall at the slow domain", || {
        (slow.stalled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    ctx.queue
        .enqueue(
            envelope("a@origin.test", &["someone@fast.test"]),
            b"Subject: y\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");
    wait_until("the fast domain's mail to be delivered", || {
        fast.got_mail_for("someone@fast.test").then_some(())
    })
    .await;
    assert_eq!(
        slow.stalled.load(Ordering::SeqCst),
        1,
        "one transaction at a time to the slow domain"
    );
    // The stalled transaction ends without a reply (deferred); the rest of
    // the backlog follows one at a time.
    slow.stall_data.store(false, Ordering::SeqCst);
    wait_until("the slow backlog to drain", || {
        (slow.delivered().len() == 7).then_some(())
    })
    .await;
    wait_until("only the stalled message to be left, deferred", || {
        let stats = ctx.queue.stats().ok()?;
        (stats.messages == 1 && stats.deferred == 1).then_some(())
    })
    .await;
    ctx.shutdown.cancel();
    running.await.expect("scheduler ends at shutdown");
}

/// Mail already claimed, waiting for its domain's turn or in flight, honours an
/// operator's hold given meanwhile: waiting mail is not delivered, and all of
/// it stays held after the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_given_while_mail_waits_or_is_in_flight_is_honoured() {
    use std::sync::atomic::Ordering;
    let slow = Destination::start(Options::default());
    slow.stall_data.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nconcurrency = 4\nper_domain_concurrency = 1\n\
             [routes]\n\"slow.test\" = \"{}\"\n",
            slow.addr
        ),
    );
    let scheduler = Scheduler::new(&ctx).expect("scheduler");
    let running = tokio::spawn(scheduler.run());
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = ctx
            .queue
            .enqueue(
                envelope("a@origin.test", &[&format!("r{n}@slow.test")]),
                b"Subject: x\r\n\r\nhi\r\n",
            )
            .await
            .expect("enqueue");
        ids.push(id);
    }
    wait_until("a body to stall at the slow domain", || {
        (slow.stalled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The other two are claimed and waiting for the domain.
    let in_flight = (0..3)
        .find(|n| slow.rcpt_attempts(&format!("r{n}@slow.test")) == 1)
        .expect("the stalled one was offered");
    let held: Vec<usize> = (0..3).filter(|n| *n != in_flight).collect();
    for &n in &held {
        ctx.queue.hold(&ids[n]).await.expect("hold");
    }
    // And the one in flight: its outcome is recorded, the hold stays.
    ctx.queue.hold(&ids[in_flight]).await.expect("hold");
    slow.stall_data.store(false, Ordering::SeqCst);
    let last = ctx
        .queue
        .enqueue(
            envelope("a@origin.test", &["last@slow.test"]),
            b"Subject: y\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");
    wait_until(
        "the mail queued after the held ones to be delivered",
        || slow.got_mail_for("last@slow.test").then_some(()),
    )
    .await;
    // The destination has it before sluice records it: wait for the record.
    wait_until("the delivered mail to leave the queue", || {
        ctx.queue.get(&last).expect("read").is_none().then_some(())
    })
    .await;
    for &n in &held {
        let recipient = format!("r{n}@slow.test");
        assert_eq!(slow.rcpt_attempts(&recipient), 0, "{recipient} was held");
        let message = ctx.queue.get(&ids[n]).expect("read").expect("still queued");
        assert!(message.held);
        assert_eq!(message.recipients[0].status, RecipientStatus::Pending);
    }
    let attempted = wait_until("the outcome of the transaction in flight", || {
        let message = ctx.queue.get(&ids[in_flight]).ok()??;
        (message.recipients[0].status == RecipientStatus::Deferred).then_some(message)
    })
    .await;
    assert!(attempted.held, "held during its attempt, held after it");
    assert_eq!(attempted.recipients[0].attempts, 1);
    assert_eq!(ctx.queue.next_due().expect("next due"), None);
    ctx.shutdown.cancel();
    running.await.expect("scheduler ends at shutdown");
}

/// One message to four domains: delivered, deferred, and failed at two
/// domains. One DSN names both failures (not one per domain); the retry goes
/// only to the deferred recipient, never again to the delivered one; each
/// recipient counts its own attempts; no second DSN follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_outcomes_across_domains_give_one_dsn_and_retry_only_the_deferred() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, attempt| match rcpt {
        "t@temp.test" if attempt == 1 => Some("451 4.3.0 later".into()),
        "g@gone.test" => Some("550 5.1.1 gone".into()),
        "h@gone2.test" => Some("554 5.7.1 refused".into()),
        _ => None,
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nretry_initial = \"10m\"\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::seconds(1));
    let scheduler = Scheduler::with_clock(&ctx, Arc::new(clock.clone())).expect("scheduler");
    let running = tokio::spawn(scheduler.run());
    let id = ctx
        .queue
        .enqueue(
            envelope(
                "alice@origin.test",
                &["o@ok.test", "t@temp.test", "g@gone.test", "h@gone2.test"],
            ),
            b"Subject: mixed\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");
    // DSNs are delivered to the same destination.
    let dsns = || -> Vec<common::destination::Transaction> {
        destination
            .delivered()
            .into_iter()
            .filter(|t| t.mail_from.is_empty())
            .collect()
    };
    let first = wait_until("the first round to be recorded", || {
        let message = ctx.queue.get(&id).ok()??;
        (message.recipients[1].status == RecipientStatus::Deferred).then_some(message)
    })
    .await;
    let statuses: Vec<RecipientStatus> = first.recipients.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            RecipientStatus::Delivered,
            RecipientStatus::Deferred,
            RecipientStatus::Failed,
            RecipientStatus::Failed
        ]
    );
    assert!(first.recipients.iter().all(|r| r.attempts == 1));
    let due = first.recipients[1].next_attempt_at.expect("deferred");
    assert!(due - clock.now() >= chrono::Duration::minutes(10));
    let bounces = wait_until("the DSN", || {
        let bounces = dsns();
        (!bounces.is_empty()).then_some(bounces)
    })
    .await;
    assert_eq!(bounces.len(), 1, "one DSN for both failed domains");
    assert_eq!(bounces[0].recipients, ["alice@origin.test"]);
    let text = String::from_utf8_lossy(&bounces[0].body);
    assert_eq!(text.matches("Final-Recipient:").count(), 2, "{text}");
    assert!(text.contains("rfc822; g@gone.test") && text.contains("rfc822; h@gone2.test"));
    assert!(
        !text.contains("o@ok.test") && !text.contains("t@temp.test"),
        "{text}"
    );

    clock.advance(Duration::from_secs(11 * 60));
    wait_until("the retry to deliver the deferred recipient", || {
        ctx.queue.get(&id).ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(destination.rcpt_attempts("o@ok.test"), 1, "never re-sent");
    assert_eq!(destination.rcpt_attempts("t@temp.test"), 2);
    assert_eq!(destination.rcpt_attempts("g@gone.test"), 1);
    assert_eq!(dsns().len(), 1, "no second DSN");
    ctx.shutdown.cancel();
    running.await.expect("scheduler ends at shutdown");
}

/// Shutdown with a delivery in flight and more mail waiting for it: the
/// scheduler stops, the transaction in flight ends and is recorded, and
/// every message is still in the queue, due after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_deliveries_in_flight_loses_nothing() {
    use std::sync::atomic::Ordering;
    let destination = Destination::start(Options::default());
    destination.stall_data.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nper_domain_concurrency = 1\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let scheduler = Scheduler::new(&ctx).expect("scheduler");
    let running = ctx.tasks.spawn(scheduler.run());
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = ctx
            .queue
            .enqueue(
                envelope("a@origin.test", &[&format!("r{n}@dest.test")]),
                b"Subject: x\r\n\r\nhi\r\n",
            )
            .await
            .expect("enqueue");
        ids.push(id);
    }
    wait_until("a body to stall at the destination", || {
        (destination.stalled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    ctx.shutdown.cancel();
    ctx.tasks.close();
    running.await.expect("scheduler ends at shutdown");
    // The transaction in flight ends (without a reply: deferred).
    destination.stall_data.store(false, Ordering::SeqCst);
    tokio::time::timeout(DEADLINE, ctx.tasks.wait())
        .await
        .expect("delivery tasks end");
    assert!(destination.delivered().is_empty());
    ctx.queue.close().await.expect("close");
    drop(ctx);
    let queue = Queue::open(&dir.path().join("spool"), QueueOptions::default()).expect("reopen");
    for id in &ids {
        let message = queue.get(id).expect("read").expect("still queued");
        assert!(matches!(
            message.recipients[0].status,
            RecipientStatus::Pending | RecipientStatus::Deferred
        ));
    }
    let far = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(queue.claim_due(far, 10).expect("claim").len(), 3);
}

/// `sluice queue bounce` of a message whose delivery is in flight: one DSN,
/// the message stays gone when the attempt ends, and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_during_an_attempt_sends_one_dsn_and_does_not_resurrect_the_message() {
    use std::sync::atomic::Ordering;
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|rcpt, _| (rcpt == "r@dest.test").then(|| "550 5.1.1 gone".into()));
    destination.stall_data.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(
        dir.path(),
        &format!(
            "[delivery]\nconcurrency = 1\nretry_initial = \"1h\"\nretry_max = \"1h\"\n\
             [routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let scheduler = Scheduler::new(&ctx).expect("scheduler");
    let running = tokio::spawn(scheduler.run());
    // One recipient refused at RCPT (a failure this attempt will report
    // too), one whose body stalls.
    let id = ctx
        .queue
        .enqueue(
            envelope("alice@origin.test", &["r@dest.test", "s@dest.test"]),
            b"Subject: x\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");
    wait_until("the body to stall", || {
        (destination.stalled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    bounce(&ctx, &id, "").await.expect("bounce");
    destination.stall_data.store(false, Ordering::SeqCst);
    let next = ctx
        .queue
        .enqueue(
            envelope("alice@origin.test", &["next@dest.test"]),
            b"Subject: y\r\n\r\nhi\r\n",
        )
        .await
        .expect("enqueue");
    wait_until("later mail and the DSN to be delivered", || {
        (destination.got_mail_for("next@dest.test")
            && destination.got_mail_for("alice@origin.test"))
        .then_some(())
    })
    .await;
    wait_until("the queue to be empty", || {
        (ctx.queue.stats().ok()?.messages == 0).then_some(())
    })
    .await;
    assert!(ctx.queue.get(&id).expect("read").is_none());
    assert!(ctx.queue.get(&next).expect("read").is_none());
    let dsns: Vec<_> = destination
        .delivered()
        .into_iter()
        .filter(|t| t.mail_from.is_empty())
        .collect();
    assert_eq!(dsns.len(), 1, "one DSN");
    let text = String::from_utf8_lossy(&dsns[0].body);
    assert_eq!(text.matches("Final-Recipient:").count(), 2, "{text}");
    ctx.shutdown.cancel();
    running.await.expect("scheduler ends at shutdown");
}

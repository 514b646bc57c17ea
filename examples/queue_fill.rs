//! Fills a spool with N messages through the queue API, for measuring the
//! queue at scale (see bench/queue_list.sh and bench/queue_scale.sh).
//!
//! Usage: `cargo run --release --example queue_fill -- SPOOL COUNT [--held|--deferred]`
//! (`--held` holds every message; `--deferred` records a refused delivery
//! attempt for every recipient, due again in 12 hours (a run over three
//! builds at a million messages takes more than an hour), as a server relaying
//! to a closed port would have; either way a server started on the spool
//! leaves them alone for a while).

use std::path::PathBuf;

use chrono::Utc;
use sluice_queue::{
    AttemptRecord, Envelope, LoggedAttempt, Outcome, Queue, QueueOptions, RecipientUpdate,
};

/// Enqueues kept in flight, so they share fsyncs (group commit).
const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(spool), Some(count)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: queue_fill SPOOL COUNT [--held|--deferred]");
    };
    let mode = args.next();
    let held = mode.as_deref() == Some("--held");
    let deferred = mode.as_deref() == Some("--deferred");
    let spool = PathBuf::from(spool);
    let count: usize = count.parse()?;
    let queue = Queue::open(&spool, QueueOptions::default())?;
    let body = format!(
        "From: <sender@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: bench\r\n\r\n{}\r\n",
        "x".repeat(if deferred { 4000 } else { 1000 })
    );
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        if tasks.len() >= IN_FLIGHT
            && let Some(result) = tasks.join_next().await
        {
            result??;
        }
        let queue = queue.clone();
        let body = body.clone();
        tasks.spawn(async move {
            let envelope = Envelope {
                sender: format!("sender{}@example.org", index % 100),
                recipients: vec![
                    format!("rcpt{index}@example.net"),
                    format!("other{index}@example.com"),
                ],
                smtputf8: false,
                body_8bit: false,
                requiretls: false,
                dsn: None,
            };
            let id = queue.enqueue(envelope, body.as_bytes()).await?;
            if held {
                queue.hold(&id).await?;
            }
            Ok::<(), sluice_queue::QueueError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    if deferred {
        defer_all(&queue).await?;
    }
    queue.close().await?;
    eprintln!(
        "queued {count} messages in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Claims every due message and records a refused connection for each
/// recipient, due again in 12 hours.
async fn defer_all(queue: &Queue) -> anyhow::Result<()> {
    let reply = "connect to 127.0.0.1:9: Connection refused";
    loop {
        let now = Utc::now();
        let claims = queue.claim_due(now, IN_FLIGHT)?;
        if claims.is_empty() {
            return Ok(());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for claim in claims {
            let queue = queue.clone();
            tasks.spawn(async move {
                let message = claim.message;
                let count = message.recipients.len();
                let updates = (0..count)
                    .map(|index| RecipientUpdate {
                        index,
                        outcome: Outcome::Deferred {
                            reply: reply.into(),
                            next_attempt_at: now + chrono::Duration::hours(12),
                        },
                    })
                    .collect();
                let attempts = (0..count)
                    .map(|index| LoggedAttempt {
                        index,
                        attempt: AttemptRecord {
                            at: now,
                            relay: "none".into(),
                            tls: "none".into(),
                            reply: reply.into(),
                        },
                    })
                    .collect();
                queue.complete_logged(&message.id, updates, attempts).await
            });
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
    }
}

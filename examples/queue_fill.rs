//! Fills a spool with N messages through the queue API, for measuring
//! `sluice queue list` on a big queue (see bench/queue_list.sh).
//!
//! Usage: `cargo run --release --example queue_fill -- SPOOL COUNT [--held]`
//! (`--held` holds every message, so a server started on the spool leaves
//! them alone).

use std::path::PathBuf;

use sluice_queue::{Envelope, Queue, QueueOptions};

/// Enqueues kept in flight, so they share fsyncs (group commit).
const IN_FLIGHT: usize = 256;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(spool), Some(count)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: queue_fill SPOOL COUNT [--held]");
    };
    let held = args.next().as_deref() == Some("--held");
    let spool = PathBuf::from(spool);
    let count: usize = count.parse()?;
    let queue = Queue::open(&spool, QueueOptions::default())?;
    let body = format!(
        "From: <sender@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: bench\r\n\r\n{}\r\n",
        "x".repeat(1000)
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
    queue.close().await?;
    eprintln!(
        "queued {count} messages in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

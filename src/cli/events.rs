//! `sluice events status`: each `[[events]]` subscriber's backlog (pending
//! entries, the oldest), counters and last error, from the running server's
//! admin API, or from the spool alone when no server runs.

use std::io::Write;

use clap::Subcommand;
use sluice_queue::{Queue, QueueError, QueueOptions};

use crate::config::Loaded;
use crate::events::{SubscriberStatus, status_offline};

/// `sluice events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Per subscriber: events pending, the oldest, sent, failed, dropped, last error.
    Status {
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `command`; the exit status.
pub fn run(command: EventsCommand, loaded: &Loaded) -> anyhow::Result<u8> {
    let EventsCommand::Status { json } = command;
    let config = &loaded.config;
    let statuses: Vec<SubscriberStatus> = match Queue::open_admin(
        &config.spool.path,
        QueueOptions {
            cache_capacity: config.spool.cache_capacity,
        },
    ) {
        Ok(queue) => status_offline(config, &queue),
        Err(QueueError::Locked { .. }) => {
            let remote = crate::cli::queue::remote::Remote::new(
                config.admin.socket_path(&config.spool.path),
            );
            serde_json::from_value(remote.get_json("/v1/events")?)?
        }
        Err(error) => return Err(error.into()),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &statuses)?;
        writeln!(out)?;
        return Ok(0);
    }
    if statuses.is_empty() {
        writeln!(out, "no [[events]] subscriber is configured")?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<16} {:<6} {:>9} {:>9} {:>7} {:>8}  {:<24}  last error",
        "subscriber", "sink", "pending", "sent", "failed", "dropped", "oldest pending"
    )?;
    for status in &statuses {
        writeln!(
            out,
            "{:<16} {:<6} {:>9} {:>9} {:>7} {:>8}  {:<24}  {}",
            status.name,
            status.sink,
            status.pending,
            status.sent,
            status.failed,
            status.dropped,
            status.oldest.as_deref().unwrap_or("-"),
            status.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(0)
}

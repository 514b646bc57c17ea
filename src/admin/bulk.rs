//! Bulk queue actions (`sluice queue hold --domain D`, `retry --all`,
//! `delete ID ID …`), shared by the HTTP API and the offline command.
//!
//! They stream: a blocking task walks the queue in ID order and hands the
//! IDs it selects through a bounded channel to at most [`BULK_CONCURRENCY`]
//! actions in flight, which share fsyncs (group commit). Memory stays flat
//! whatever the queue's size, and 100,000 messages take seconds.
//!
//! What a selection skips, because the action would change nothing there:
//! `retry` takes unheld messages with a deferred recipient, `hold` unheld
//! ones, `release` held ones; `delete` and `bounce` take every match. The
//! count returned is the number of messages the action changed.

use std::time::Duration;

use futures::StreamExt;
use sluice_queue::{Message, QueueId, RecipientStatus};

use super::error::AdminError;
use super::ops;
use super::view::ListFilter;
use crate::context::Context;

/// Actions in flight at once, so they share fsyncs instead of paying one
/// each.
const BULK_CONCURRENCY: usize = 256;

/// IDs buffered between the queue scan and the actions.
const IDS_IN_FLIGHT: usize = 1024;

/// A per-message action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deferred recipients become due now.
    Retry,
    /// Park the message.
    Hold,
    /// Un-park the message.
    Release,
    /// Remove it without notice.
    Delete,
    /// Fail what remains and notify the sender.
    Bounce,
}

impl Action {
    /// Every action, for routes and tests.
    pub const ALL: [Action; 5] = [
        Action::Retry,
        Action::Hold,
        Action::Release,
        Action::Delete,
        Action::Bounce,
    ];

    /// The name in paths and logs: `retry`, `hold`, ….
    pub fn name(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Delete => "delete",
            Action::Bounce => "bounce",
        }
    }

    /// The key of the count in the API's answer: `retried`, `held`, ….
    pub fn done_key(self) -> &'static str {
        match self {
            Action::Retry => "retried",
            Action::Hold => "held",
            Action::Release => "released",
            Action::Delete => "deleted",
            Action::Bounce => "bounced",
        }
    }

    /// Whether a selection includes `message` (see the module doc).
    fn changes(self, message: &Message) -> bool {
        match self {
            Action::Retry => {
                !message.held
                    && message
                        .recipients
                        .iter()
                        .any(|r| r.status == RecipientStatus::Deferred)
            }
            Action::Hold => !message.held,
            Action::Release => message.held,
            Action::Delete | Action::Bounce => true,
        }
    }
}

/// Performs `action` on one message, as the single-message endpoints do.
pub async fn apply(ctx: &Context, action: Action, id: &QueueId) -> Result<(), AdminError> {
    match action {
        Action::Retry => ops::retry(ctx, id).await.map(drop),
        Action::Hold => ops::hold(ctx, id).await.map(drop),
        Action::Release => ops::release(ctx, id).await.map(drop),
        Action::Delete => ops::delete(ctx, id).await,
        Action::Bounce => ops::bounce(ctx, id).await.map(drop),
    }
}

/// Performs `action` on a message the scan selected: the queue's own
/// operation, without the lookup that [`apply`] makes first (the scan just
/// read the message), logged like the single-message actions.
async fn apply_selected(ctx: &Context, action: Action, id: &QueueId) -> Result<(), AdminError> {
    let queue = &ctx.queue;
    match action {
        Action::Retry => queue.retry_now(id).await.map(drop)?,
        Action::Hold => queue.hold(id).await.map(drop)?,
        Action::Release => queue.release(id).await.map(drop)?,
        Action::Delete => queue.delete(id).await?,
        // A bounce queues a DSN too: the whole single-message path.
        Action::Bounce => return apply(ctx, action, id).await,
    }
    let done = match action {
        Action::Retry => "message due now",
        Action::Hold => "message held",
        Action::Release => "message released",
        Action::Delete | Action::Bounce => "message deleted",
    };
    tracing::info!(queue_id = %id, action = %action.name(), "{done}");
    Ok(())
}

/// Performs `action` on every queued message that passes `filter` and that
/// the action would change; returns how many it changed. Messages that left
/// the queue (or were held) meanwhile are skipped.
pub async fn select(ctx: &Context, action: Action, filter: ListFilter) -> Result<u64, AdminError> {
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<QueueId, AdminError>>(IDS_IN_FLIGHT);
    let queue = ctx.queue.clone();
    let scan = tokio::task::spawn_blocking(move || {
        let cutoff = filter.cutoff(chrono::Utc::now());
        for message in queue.iter(None) {
            let selected = match message {
                Ok(message) => (filter.matches_at(&message, cutoff) && action.changes(&message))
                    .then_some(Ok(message.id)),
                Err(error) => Some(Err(AdminError::from(error))),
            };
            if let Some(item) = selected {
                let failed = item.is_err();
                if sender.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        }
    });
    let ids = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let mut results = Box::pin(
        ids.map(|item| async move {
            let id = item?;
            match apply_selected(ctx, action, &id).await {
                Ok(()) => Ok(1),
                Err(AdminError::NotFound(_) | AdminError::Held(_)) => Ok(0),
                Err(error) => Err(error),
            }
        })
        .buffer_unordered(BULK_CONCURRENCY),
    );
    let mut count = 0;
    let outcome = loop {
        match results.next().await {
            None => break Ok(()),
            Some(Ok(done)) => count += done,
            Some(Err(error)) => break Err(error),
        }
    };
    // Closes the channel, so a scan that is still feeding stops.
    drop(results);
    scan.await
        .map_err(|error| AdminError::Internal(format!("queue scan failed: {error}")))?;
    outcome?;
    tracing::info!(action = %action.name(), messages = count, "bulk action done");
    Ok(count)
}

/// Performs `action` on each of `ids`, [`BULK_CONCURRENCY`] at a time, as
/// the single-message endpoints would; returns how many succeeded, and
/// calls `refused` with each ID's error (no such message, held, …).
pub async fn each_id<I, F>(ctx: &Context, action: Action, ids: I, refused: &mut F) -> u64
where
    I: IntoIterator<Item = Result<QueueId, AdminError>>,
    F: FnMut(AdminError),
{
    let results = futures::stream::iter(ids)
        .map(|item| async move {
            let id = item?;
            apply(ctx, action, &id).await
        })
        .buffer_unordered(BULK_CONCURRENCY);
    tokio::pin!(results);
    let mut count = 0;
    while let Some(result) = results.next().await {
        match result {
            Ok(()) => count += 1,
            Err(error) => refused(error),
        }
    }
    count
}

/// Parses an `--older-than` / `older_than=` value (`90s`, `1h`, `2d`).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("bad age {text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_done_keys() {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names, ["retry", "hold", "release", "delete", "bounce"]);
        assert_eq!(Action::Retry.done_key(), "retried");
        assert_eq!(Action::Hold.done_key(), "held");
    }

    #[test]
    fn ages_parse_like_config_durations() {
        assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_age("soon").is_err());
    }
}

//! Taking the spool back after a storage failure, in the running process
//! (DESIGN.md "Faults"). sled refuses every write after an I/O error on its
//! log (a full disk: `ENOSPC`; a failing one: `EIO`) until the database is
//! opened again. The server does not stop for it: sessions go on (each
//! message gets `452 4.3.1` when the disk was full, else `451 4.3.0`, and
//! nothing is queued), delivery goes on (an outcome that cannot be recorded
//! leaves its message queued, to be tried again), and this task reopens the
//! database ([`sluice_queue::Queue::recover`]) once the free space is back
//! above the notice floor of `spool.min_free`, trying every
//! [`RETRY_INTERVAL`]. The reopened database holds everything acknowledged.
//!
//! Why a reopen rather than a ballast file (CockroachDB's way): a ballast
//! only helps before sled's write fails, which the reserve already makes
//! rare; once it failed, sled must be reopened whatever the free space,
//! and an `EIO` is no matter of space at all. Reopening takes what opening
//! at start takes (tests/disk_space.rs measures it).

use std::time::Duration;

use crate::context::Context;

/// How often a reopening is tried while the spool stays unwritable.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The free space the spool's filesystem must have, whatever
/// `spool.min_free` says, before the database is reopened: opening sled
/// writes (its snapshot, the head of a new log segment), and an open that
/// meets a full disk half way leaves files that the next open must repair.
pub const ROOM_TO_REOPEN: u64 = 4 << 20;

/// Waits for storage failures and takes the spool back after each, until
/// shutdown.
pub async fn run(ctx: Context) {
    loop {
        let reason = tokio::select! {
            reason = ctx.queue.failed() => reason,
            () = ctx.shutdown.cancelled() => return,
        };
        let spool = ctx.config().spool.path.clone();
        tracing::error!(
            spool = %spool.display(),
            %reason,
            "the spool cannot be written (disk full or I/O error): new messages get 452 4.3.1 \
             or 451 4.3.0 and delivery outcomes wait; the server stays up and reopens the \
             database once writes can succeed; acknowledged mail is safe on disk"
        );
        let mut tries: u64 = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(RETRY_INTERVAL) => {}
                () = ctx.shutdown.cancelled() => return,
            }
            let spool_free = crate::disk::Space::of(&spool).map_or(0, |space| space.free);
            if spool_free < ROOM_TO_REOPEN
                || !ctx.disk.notice_allowed(ctx.config().spool.min_free, 0)
            {
                continue;
            }
            tries += 1;
            let queue = ctx.queue.clone();
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || queue.recover()).await {
                Ok(Ok(_)) => {
                    tracing::info!(
                        spool = %spool.display(),
                        tries,
                        took_ms = started.elapsed().as_millis() as u64,
                        "spool writable again: accepting and recording deliveries"
                    );
                    break;
                }
                Ok(Err(error)) => {
                    // Logged at the first try, then once a minute.
                    if tries % 60 == 1 {
                        tracing::warn!(spool = %spool.display(), %error, tries, "reopening the spool failed; trying again");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reopening the spool panicked; trying again");
                }
            }
        }
    }
}

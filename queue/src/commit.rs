//! Group commit: one flusher thread makes every waiting writer durable with
//! a single fsync.
//!
//! A writer first applies its change to sled (in memory), then calls
//! [`GroupCommit::durable`]. That takes a ticket: the number of the next
//! flush to *start*, which is certain to cover the change. The flusher thread
//! sleeps until some ticket is outstanding, starts that flush, and when it
//! finishes publishes its number; every writer whose ticket is at or below it
//! wakes up. Writers arriving while a flush runs all share the next one, so the
//! fsync rate stays near the disk's while throughput grows with concurrency.
//!
//! A writer that can wait a little ([`GroupCommit::durable_within`]: a
//! delivery result) does not start a flush of its own at once: it rides on
//! the next one that a writer who cannot wait (a message being accepted)
//! starts, or on one of its own once its delay runs out. At one SMTP session
//! that halves the fsyncs per relayed message, and the acceptance of the
//! next message no longer queues behind the flush of the previous one's
//! delivery result. Either way the writer returns only once its change is on
//! disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::QueueError;

/// The result of the latest completed flush.
#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Number of the flush (1, 2, ...); 0 before the first.
    number: u64,
    /// Why it failed, if it did.
    error: Option<Arc<str>>,
}

/// What the flusher and the writers agree on, under one mutex.
#[derive(Debug, Default)]
struct Tickets {
    /// Number of flushes started so far.
    started: u64,
    /// Highest ticket handed out: the flusher runs until `started` reaches it.
    requested: u64,
    /// The time by which a flush must start for the writers that can wait
    /// and are waiting (the earliest of their deadlines); `None` when there
    /// are none. Every flush serves them all, so starting one clears it.
    deferred_until: Option<Instant>,
    /// Set by [`GroupCommit::shutdown`]: no new tickets; the flusher serves the
    /// outstanding ones, flushes once more and exits.
    shutdown: bool,
}

struct Shared {
    tickets: Mutex<Tickets>,
    /// Wakes the flusher when a ticket is outstanding or on shutdown.
    wake: Condvar,
    /// Publishes each completed flush to the waiting writers.
    flushed: watch::Sender<Flushed>,
    /// Flushes performed, for metrics and the benchmark.
    count: AtomicU64,
}

impl Shared {
    fn tickets(&self) -> MutexGuard<'_, Tickets> {
        // A panic while holding this lock leaves the counters consistent
        // (every update is a single assignment), so poisoning is ignored.
        self.tickets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The group-commit flusher: a dedicated thread calling the flush function.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the flusher thread; `flush` must make every write applied
    /// before the call durable.
    pub(crate) fn start<F>(flush: F) -> Result<GroupCommit, std::io::Error>
    where
        F: FnMut() -> Result<(), String> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            tickets: Mutex::new(Tickets::default()),
            wake: Condvar::new(),
            flushed: watch::Sender::new(Flushed::default()),
            count: AtomicU64::new(0),
        });
        let thread = std::thread::Builder::new()
            .name("sluice-queue-flusher".into())
            .spawn({
                let shared = shared.clone();
                move || run_flusher(&shared, flush)
            })?;
        Ok(GroupCommit {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Returns once every write the caller applied before calling this is
    /// durable. Fails with [`QueueError::Closed`] after shutdown.
    pub(crate) async fn durable(&self) -> Result<(), QueueError> {
        self.durable_within(Duration::ZERO).await
    }

    /// Like [`GroupCommit::durable`], but the flush that covers the caller's
    /// writes may start up to `delay` from now, so that it can be one that
    /// another writer starts meanwhile. Durable on return, as `durable`.
    pub(crate) async fn durable_within(&self, delay: Duration) -> Result<(), QueueError> {
        let ticket = {
            let mut tickets = self.shared.tickets();
            if tickets.shutdown {
                return Err(QueueError::Closed);
            }
            let ticket = tickets.started + 1;
            if delay.is_zero() {
                tickets.requested = tickets.requested.max(ticket);
            } else {
                let until = Instant::now() + delay;
                tickets.deferred_until = Some(
                    tickets
                        .deferred_until
                        .map_or(until, |earlier| earlier.min(until)),
                );
            }
            ticket
        };
        self.shared.wake.notify_one();
        let mut receiver = self.shared.flushed.subscribe();
        let flushed = receiver
            .wait_for(|flushed| flushed.number >= ticket)
            .await
            .map_err(|_| QueueError::Closed)?;
        match &flushed.error {
            None => Ok(()),
            Some(error) => Err(QueueError::Storage(format!("flushing to disk: {error}"))),
        }
    }

    /// True once [`GroupCommit::shutdown`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.tickets().shutdown
    }

    /// Why the latest flush failed, if it did.
    pub(crate) fn last_error(&self) -> Option<Arc<str>> {
        self.shared.flushed.borrow().error.clone()
    }

    /// Number of flushes (fsyncs) performed so far.
    pub(crate) fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Stops accepting writers; the flusher serves those already waiting,
    /// flushes a final time and exits. Returns its thread to join, the first
    /// time only.
    pub(crate) fn shutdown(&self) -> Option<JoinHandle<()>> {
        self.shared.tickets().shutdown = true;
        self.shared.wake.notify_one();
        self.thread
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }
}

fn run_flusher<F>(shared: &Shared, mut flush: F)
where
    F: FnMut() -> Result<(), String>,
{
    loop {
        let (number, last) = {
            let mut tickets = shared.tickets();
            loop {
                if tickets.requested > tickets.started || tickets.shutdown {
                    break;
                }
                let Some(deferred) = tickets.deferred_until else {
                    tickets = shared
                        .wake
                        .wait(tickets)
                        .unwrap_or_else(|poison| poison.into_inner());
                    continue;
                };
                let now = Instant::now();
                if deferred <= now {
                    break;
                }
                tickets = shared
                    .wake
                    .wait_timeout(tickets, deferred - now)
                    .unwrap_or_else(|poison| poison.into_inner())
                    .0;
            }
            tickets.started += 1;
            // This flush covers every ticket handed out so far, deferred
            // ones included.
            tickets.deferred_until = None;
            // After shutdown no ticket can be handed out any more, so this
            // flush covers everything: it is the last one.
            (tickets.started, tickets.shutdown)
        };
        // A panic inside the storage engine must not leave writers waiting
        // forever: it fails this flush like an I/O error would.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut flush))
            .unwrap_or_else(|_| Err("the storage engine panicked while flushing".into()));
        let error = result.err().map(Arc::from);
        if let Some(error) = &error {
            tracing::error!(flush = number, %error, "queue flush failed");
        }
        shared.count.fetch_add(1, Ordering::Relaxed);
        shared.flushed.send_replace(Flushed { number, error });
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_flushes() {
        let group = Arc::new(
            GroupCommit::start(|| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            })
            .expect("flusher thread starts"),
        );
        let writers: Vec<_> = (0..50)
            .map(|_| {
                let group = group.clone();
                tokio::spawn(async move { group.durable().await })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer task").expect("durable");
        }
        let flushes = group.count();
        assert!(flushes < 10, "50 concurrent writers took {flushes} flushes");
        let thread = group.shutdown().expect("first shutdown returns the thread");
        thread.join().expect("flusher exits cleanly");
        assert!(matches!(group.durable().await, Err(QueueError::Closed)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deferred_writer_rides_on_the_next_flush_or_its_own_at_the_deadline() {
        let group = Arc::new(GroupCommit::start(|| Ok(())).expect("starts"));
        // Alone, it waits out its delay, then gets a flush of its own.
        let started = Instant::now();
        group
            .durable_within(Duration::from_millis(200))
            .await
            .expect("durable");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(190), "took {waited:?}");
        assert_eq!(group.count(), 1);

        // A writer who cannot wait flushes at once, for both of them.
        let deferred = tokio::spawn({
            let group = group.clone();
            async move {
                let started = Instant::now();
                group
                    .durable_within(Duration::from_secs(30))
                    .await
                    .map(|()| started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!deferred.is_finished(), "a deferred writer flushed at once");
        assert_eq!(group.count(), 1);
        group.durable().await.expect("durable");
        let waited = tokio::time::timeout(Duration::from_secs(5), deferred)
            .await
            .expect("the deferred writer rode on that flush")
            .expect("task")
            .expect("durable");
        assert!(waited < Duration::from_secs(5), "took {waited:?}");
        assert_eq!(group.count(), 2, "one flush served both writers");
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_writers() {
        let group = GroupCommit::start(|| Err("disk on fire".into())).expect("starts");
        let result = group.durable().await;
        assert!(
            matches!(&result, Err(QueueError::Storage(text)) if text.contains("disk on fire")),
            "got {result:?}"
        );
    }

    #[tokio::test]
    async fn a_panicking_flush_fails_its_writers_instead_of_hanging() {
        let group = GroupCommit::start(|| panic!("engine bug")).expect("starts");
        let result = tokio::time::timeout(Duration::from_secs(10), group.durable())
            .await
            .expect("writer is not left waiting");
        assert!(
            matches!(result, Err(QueueError::Storage(_))),
            "got {result:?}"
        );
    }
}

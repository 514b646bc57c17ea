//! The dashboard's history: queue size and delivery outcomes per minute over
//! the last 24 hours, sampled by the server itself.
//!
//! A sampler task reads the delivery counters ([`crate::metrics::Metrics`])
//! and the queue's stats every [`SAMPLE_INTERVAL`], and each read of the
//! history samples once more, so the current minute is always up to date.
//! Each sample adds the counters' growth since the previous one to the
//! minute it falls in and sets that minute's queue size. At most
//! [`MINUTES`] minutes are kept, in a ring allocated once: 1,440 ×
//! 64 bytes = 90 KiB, whatever the traffic and however long the server runs.
//! The history starts empty at each start (it is not stored).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::context::Context;

/// How often the sampler reads the counters and the queue size.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Minutes kept: 24 hours.
pub const MINUTES: usize = 24 * 60;

/// One minute of history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// The minute's start, seconds since the Unix epoch (a multiple of 60).
    pub at: i64,
    /// Messages in the queue at the minute's last sample (held included).
    pub queued: u64,
    /// Of those, held messages.
    pub held: u64,
    /// Recipients waiting for a retry at the minute's last sample.
    pub deferred_recipients: u64,
    /// Messages accepted during the minute.
    pub received: u64,
    /// Recipients delivered during the minute.
    pub sent: u64,
    /// Delivery attempts deferred during the minute.
    pub deferred: u64,
    /// Recipients failed permanently during the minute.
    pub bounced: u64,
}

/// What one sample reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Cumulative counters since the start.
    pub received: u64,
    pub sent: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// Gauges now.
    pub queued: u64,
    pub held: u64,
    pub deferred_recipients: u64,
}

/// The shared, bounded history; cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Ring>>,
}

struct Ring {
    minutes: VecDeque<Minute>,
    /// The previous sample's counters, to compute growth.
    last: Option<Sample>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history with its whole ring allocated.
    pub fn new() -> History {
        History {
            inner: Arc::new(Mutex::new(Ring {
                minutes: VecDeque::with_capacity(MINUTES),
                last: None,
            })),
        }
    }

    /// Adds `sample`, taken at `now` (seconds since the epoch). The first
    /// sample only sets the baseline of the counters (they count from the
    /// server's start, which may be long before).
    pub fn record(&self, now: i64, sample: Sample) {
        let mut ring = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let grown = |now: u64, before: u64| now.saturating_sub(before);
        let (received, sent, deferred, bounced) = match ring.last {
            Some(last) => (
                grown(sample.received, last.received),
                grown(sample.sent, last.sent),
                grown(sample.deferred, last.deferred),
                grown(sample.bounced, last.bounced),
            ),
            None => (0, 0, 0, 0),
        };
        ring.last = Some(sample);
        let at = now.div_euclid(60) * 60;
        let minute = match ring.minutes.back_mut() {
            Some(minute) if minute.at == at => minute,
            // A clock stepped back: count into the latest minute.
            Some(minute) if minute.at > at => minute,
            _ => {
                if ring.minutes.len() == MINUTES {
                    ring.minutes.pop_front();
                }
                ring.minutes.push_back(Minute {
                    at,
                    ..Minute::default()
                });
                ring.minutes.back_mut().expect("just pushed")
            }
        };
        minute.queued = sample.queued;
        minute.held = sample.held;
        minute.deferred_recipients = sample.deferred_recipients;
        minute.received += received;
        minute.sent += sent;
        minute.deferred += deferred;
        minute.bounced += bounced;
        // Minutes older than a day go, even across a gap in sampling.
        let oldest = at - (MINUTES as i64 - 1) * 60;
        while ring
            .minutes
            .front()
            .is_some_and(|minute| minute.at < oldest)
        {
            ring.minutes.pop_front();
        }
    }

    /// The minutes kept, oldest first.
    pub fn minutes(&self) -> Vec<Minute> {
        let ring = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        ring.minutes.iter().copied().collect()
    }

    /// Reads the counters and the queue's stats and records them now.
    pub async fn sample(&self, ctx: &Context) {
        let queue = ctx.queue.clone();
        let stats = match tokio::task::spawn_blocking(move || queue.stats()).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(error)) => {
                tracing::debug!(%error, "dashboard history: no queue stats");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "dashboard history: queue stats task failed");
                return;
            }
        };
        let metrics = &ctx.metrics;
        self.record(
            chrono::Utc::now().timestamp(),
            Sample {
                received: metrics.messages_received.get(),
                sent: metrics.recipients_delivered.get(),
                deferred: metrics.recipients_deferred.get(),
                bounced: metrics.recipients_bounced.get(),
                queued: stats.messages,
                held: stats.held,
                deferred_recipients: stats.deferred,
            },
        );
    }

    /// Samples every [`SAMPLE_INTERVAL`] until shutdown.
    pub async fn run_sampler(self, ctx: Context) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = ticks.tick() => self.sample(&ctx).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: u64, queued: u64) -> Sample {
        Sample {
            sent,
            queued,
            ..Sample::default()
        }
    }

    #[test]
    fn growth_is_summed_per_minute_and_the_first_sample_is_the_baseline() {
        let history = History::new();
        history.record(600, sample(1000, 5));
        history.record(610, sample(1003, 6));
        history.record(659, sample(1004, 7));
        history.record(660, sample(1010, 2));
        let minutes = history.minutes();
        assert_eq!(minutes.len(), 2);
        assert_eq!(
            (minutes[0].at, minutes[0].sent, minutes[0].queued),
            (600, 4, 7)
        );
        assert_eq!(
            (minutes[1].at, minutes[1].sent, minutes[1].queued),
            (660, 6, 2)
        );
    }

    #[test]
    fn the_ring_never_holds_more_than_a_day() {
        let history = History::new();
        for step in 0..(MINUTES as i64 * 3) {
            history.record(step * 30, sample(step as u64, 1));
        }
        let minutes = history.minutes();
        assert_eq!(minutes.len(), MINUTES);
        let capacity = history.inner.lock().unwrap().minutes.capacity();
        assert!(capacity < MINUTES * 2, "capacity {capacity}");
        // After a gap, only the last day is kept.
        history.record(MINUTES as i64 * 1000, sample(0, 0));
        assert_eq!(history.minutes().len(), 1);
    }

    #[test]
    fn counters_that_go_back_do_not_underflow() {
        let history = History::new();
        history.record(0, sample(10, 0));
        history.record(10, sample(3, 0));
        assert_eq!(history.minutes()[0].sent, 0);
    }

    #[test]
    fn a_minute_costs_64_bytes() {
        assert_eq!(std::mem::size_of::<Minute>(), 64);
    }
}

//! The local rate limiter: GCRA (the generic cell rate algorithm), a token
//! bucket kept as one "theoretical arrival time". A rate of N per period
//! lets one message through every period/N, with a burst of one second's
//! worth ([`Rate::burst`]). The shared limiter runs the same arithmetic in
//! Redis (see `shared.rs`).

use std::time::{Duration, Instant};

use crate::config::Rate;

/// The state of one bucket.
#[derive(Debug, Default)]
pub struct Gcra {
    /// When the bucket is next "empty": each message pushes it one
    /// interval later; `None` before the first message.
    tat: Option<Instant>,
}

impl Gcra {
    /// Takes one token at `now` and returns zero, or returns how long to
    /// wait before one is available (and takes nothing).
    pub fn take(&mut self, rate: Rate, now: Instant) -> Duration {
        let interval = rate.interval();
        let tolerance = interval * (rate.burst() - 1);
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let allowed_from = tat.checked_sub(tolerance).unwrap_or(now);
        if now >= allowed_from {
            self.tat = Some(tat + interval);
            Duration::ZERO
        } else {
            allowed_from - now
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let rate = Rate::parse("10/s").unwrap();
        let mut bucket = Gcra::default();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(bucket.take(rate, start), Duration::ZERO);
        }
        let wait = bucket.take(rate, start);
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(bucket.take(rate, start + wait), Duration::ZERO);
        // Idle for a while: the burst is back, but not more than one.
        let later = start + Duration::from_secs(10);
        for _ in 0..10 {
            assert_eq!(bucket.take(rate, later), Duration::ZERO);
        }
        assert!(bucket.take(rate, later) > Duration::ZERO);
    }

    #[test]
    fn slow_rates_allow_one_at_a_time() {
        let rate = Rate::parse("60/m").unwrap();
        let mut bucket = Gcra::default();
        let start = Instant::now();
        assert_eq!(bucket.take(rate, start), Duration::ZERO);
        assert_eq!(bucket.take(rate, start), Duration::from_secs(1));
    }
}

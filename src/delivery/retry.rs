//! When to try again: the backoff policy and the clock the scheduler reads.
//!
//! Both are plain values so that backoff and expiry are unit-tested without
//! sleeping: tests hand the scheduler a [`ManualClock`] and ask the policy
//! for the next attempt time directly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::Notify;

use crate::config::DeliveryConfig;

/// Where the scheduler gets "now" from.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Signalled when the clock jumps (a [`ManualClock`] being advanced), so
    /// a scheduler waiting for a due time looks again. `None` for real time.
    fn jumped(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    jumped: Arc<Notify>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            jumped: Arc::new(Notify::new()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        drop(now);
        self.jumped.notify_waiters();
        self.jumped.notify_one();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn jumped(&self) -> Option<Arc<Notify>> {
        Some(self.jumped.clone())
    }
}

/// Exponential backoff: attempt `n` (1-based) that failed temporarily is
/// retried after `initial * factor^(n-1)`, capped at `max`, plus up to
/// `jitter` of that delay at random, so deferred mail to one destination does
/// not come back in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Upper bound of the delay (before jitter).
    pub max: Duration,
    /// Growth per attempt (>= 1.0).
    pub factor: f64,
    /// Extra random delay as a fraction of the delay (0.0 to 0.1).
    pub jitter: f64,
    /// After this long in the queue the remaining recipients fail (4.4.7).
    pub max_queue_lifetime: Duration,
}

impl RetryPolicy {
    /// The policy from `[delivery]`, with 10% jitter.
    pub fn from_config(config: &DeliveryConfig) -> RetryPolicy {
        RetryPolicy {
            initial: config.retry_initial,
            max: config.retry_max,
            factor: config.retry_factor,
            jitter: 0.1,
            max_queue_lifetime: config.max_queue_lifetime,
        }
    }

    /// The delay after `attempts` failed attempts (attempts >= 1), without
    /// jitter: `initial * factor^(attempts-1)`, capped at `max`.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(1024) as i32;
        let seconds = self.initial.as_secs_f64() * self.factor.powi(exponent);
        if !seconds.is_finite() || seconds >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay after `attempts` failed attempts, with jitter drawn from `rng`.
    pub fn delay(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(attempts);
        let jitter = if self.jitter > 0.0 {
            rng.gen_range(0.0..=self.jitter)
        } else {
            0.0
        };
        base.saturating_add(
            Duration::try_from_secs_f64(base.as_secs_f64() * jitter).unwrap_or_default(),
        )
    }

    /// When a message received at `received_at` expires.
    pub fn expires_at(&self, received_at: DateTime<Utc>) -> DateTime<Utc> {
        add_saturating(received_at, self.max_queue_lifetime)
    }

    /// When to try again after `attempts` failed attempts at `now`. Never
    /// later than the message's expiry (plus a moment), so expired mail is
    /// returned to its sender on time rather than at the next backoff step.
    pub fn next_attempt(
        &self,
        attempts: u32,
        now: DateTime<Utc>,
        received_at: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> DateTime<Utc> {
        let next = add_saturating(now, self.delay(attempts, rng));
        let expiry = add_saturating(self.expires_at(received_at), Duration::from_millis(1));
        next.min(expiry.max(now))
    }

    /// One next-attempt time per destination domain, for the recipients of
    /// one message deferred in one delivery round: `deferred` holds each
    /// one's domain and the attempts it had before this round.
    ///
    /// Retries belong to the (message, domain) pair, not to the recipient:
    /// a domain's deferred recipients all get the same time, from a single
    /// jitter draw, so they become due at the same instant and go out
    /// together in one transaction (DESIGN.md: one transaction per domain
    /// carries all of that domain's recipients of a message). Jitter drawn
    /// per recipient would spread them up to 10% of the delay apart, and
    /// the first one due would be sent alone.
    ///
    /// When their attempt counts differ (one was deferred in a round more
    /// than the others), the fewest counts: the pair is tried no later than
    /// its least-tried recipient's backoff says, and the others ride along
    /// in that transaction, which happens anyway, instead of waiting longer.
    pub fn next_attempts_by_domain<'a>(
        &self,
        deferred: impl IntoIterator<Item = (&'a str, u32)>,
        now: DateTime<Utc>,
        received_at: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> BTreeMap<&'a str, DateTime<Utc>> {
        let mut fewest: BTreeMap<&'a str, u32> = BTreeMap::new();
        for (domain, attempts) in deferred {
            fewest
                .entry(domain)
                .and_modify(|least| *least = (*least).min(attempts))
                .or_insert(attempts);
        }
        fewest
            .into_iter()
            .map(|(domain, attempts)| {
                let failed = attempts.saturating_add(1);
                (domain, self.next_attempt(failed, now, received_at, rng))
            })
            .collect()
    }

    /// True once a message received at `received_at` is past its lifetime.
    pub fn is_expired(&self, received_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now > self.expires_at(received_at)
    }
}

/// The latest time the scheduler deals in: 9999-12-31T23:59:59Z, the last
/// second RFC 3339 (the queue's JSON) can write.
const FAR_FUTURE_SECONDS: i64 = 253_402_300_799;

/// `time + duration`, saturating at [`FAR_FUTURE_SECONDS`] (a lifetime of a
/// million years means "never", not a panic past chrono's calendar).
fn add_saturating(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    let far_future =
        DateTime::from_timestamp(FAR_FUTURE_SECONDS, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    time.checked_add_signed(to_chrono(duration))
        .map_or(far_future, |sum| sum.min(far_future))
}

/// A std duration as a chrono one, saturating.
pub fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            factor: 2.0,
            jitter: 0.1,
            max_queue_lifetime: Duration::from_secs(5 * 86400),
        }
    }

    #[test]
    fn delay_doubles_per_attempt_from_initial() {
        let policy = policy();
        assert_eq!(policy.base_delay(1), Duration::from_secs(60));
        assert_eq!(policy.base_delay(2), Duration::from_secs(120));
        assert_eq!(policy.base_delay(3), Duration::from_secs(240));
        assert_eq!(policy.base_delay(6), Duration::from_secs(1920));
    }

    #[test]
    fn a_fractional_factor_grows_the_delay_by_that_factor() {
        let policy = RetryPolicy {
            factor: 1.5,
            ..policy()
        };
        assert_eq!(policy.base_delay(1), Duration::from_secs(60));
        assert_eq!(policy.base_delay(2), Duration::from_secs(90));
        assert_eq!(policy.base_delay(3), Duration::from_secs(135));
        assert_eq!(policy.base_delay(4), Duration::from_millis(202_500));
        // 60 * 1.5^10 = 3459.96s, just under the cap; one more step is over.
        assert!(policy.base_delay(11) < Duration::from_secs(3600));
        assert_eq!(policy.base_delay(12), Duration::from_secs(3600));
    }

    #[test]
    fn delay_is_capped_at_retry_max_even_for_huge_attempt_counts() {
        let policy = policy();
        assert_eq!(policy.base_delay(7), Duration::from_secs(3600));
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_adds_at_most_ten_percent() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempts in 1..20 {
            let base = policy.base_delay(attempts);
            let delay = policy.delay(attempts, &mut rng);
            assert!(delay >= base, "{delay:?} < {base:?}");
            assert!(delay <= base + base / 10, "{delay:?} > {base:?} + 10%");
        }
    }

    #[test]
    fn next_attempt_never_goes_past_expiry() {
        let policy = RetryPolicy {
            max_queue_lifetime: Duration::from_secs(90),
            jitter: 0.0,
            ..policy()
        };
        let received = DateTime::from_timestamp(1_000_000, 0).expect("valid time");
        let clock = ManualClock::new(received);
        clock.advance(Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(1);
        let next = policy.next_attempt(3, clock.now(), received, &mut rng);
        assert_eq!(
            next,
            received + chrono::Duration::seconds(90) + chrono::Duration::milliseconds(1)
        );
        assert!(!policy.is_expired(received, clock.now()));
        clock.advance(Duration::from_secs(31));
        assert!(policy.is_expired(received, clock.now()));
    }

    #[test]
    fn lifetimes_and_delays_past_the_calendar_do_not_panic() {
        // An operator's "never expire": a million years is past chrono's
        // last representable date.
        let config = crate::config::Config::parse(
            "hostname = \"sluice.test\"\n[delivery]\nmax_queue_lifetime = \"1000000y\"\n",
            std::path::Path::new("test.toml"),
        )
        .expect("a valid config");
        let forever = config.delivery.max_queue_lifetime;
        let policy = RetryPolicy {
            max: forever,
            ..RetryPolicy::from_config(&config.delivery)
        };
        let now = Utc::now();
        let mut rng = StdRng::seed_from_u64(3);
        assert!(!policy.is_expired(now, now));
        assert!(policy.expires_at(now) > now + chrono::Duration::days(365 * 1000));
        let next = policy.next_attempt(u32::MAX, now, now, &mut rng);
        assert!(next > now + chrono::Duration::days(365 * 1000), "{next}");
        let huge = RetryPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            ..policy
        };
        assert_eq!(huge.base_delay(1), Duration::MAX);
        assert!(huge.delay(5, &mut rng) >= huge.base_delay(5));
        let far = huge.next_attempt(5, now, now, &mut rng);
        assert!(far > now);
        // Still a time the queue's JSON can write and read back.
        let text = far.to_rfc3339();
        assert_eq!(
            DateTime::parse_from_rfc3339(&text).map(|t| t.to_utc()),
            Ok(far)
        );
    }

    #[test]
    fn recipients_of_one_domain_share_one_next_attempt_from_one_draw() {
        let policy = policy();
        let start = DateTime::from_timestamp(1_000_000, 0).expect("valid time");
        let clock = ManualClock::new(start);
        clock.advance(Duration::from_secs(5));
        // Several seeds: per-recipient draws would differ for almost all.
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let deferred = [
                ("dest.test", 0),
                ("other.test", 0),
                ("dest.test", 0),
                ("dest.test", 0),
            ];
            let times = policy.next_attempts_by_domain(deferred, clock.now(), start, &mut rng);
            assert_eq!(
                times.keys().copied().collect::<Vec<_>>(),
                ["dest.test", "other.test"]
            );
            for (domain, at) in &times {
                let delay = *at - clock.now();
                assert!(
                    delay >= chrono::Duration::seconds(60)
                        && delay <= chrono::Duration::seconds(66),
                    "{domain}: first backoff {delay} outside 60 s + 10%"
                );
            }
        }
    }

    #[test]
    fn one_jitter_draw_per_domain_and_none_per_recipient() {
        // Ten recipients of one domain use up exactly one draw: the next
        // domain gets the value an rng with one draw taken would give.
        let policy = policy();
        let now = DateTime::from_timestamp(1_000_000, 0).expect("valid time");
        let many = std::iter::repeat_n(("a.test", 0), 10).chain([("b.test", 0)]);
        let grouped = policy.next_attempts_by_domain(many, now, now, &mut StdRng::seed_from_u64(9));
        let mut rng = StdRng::seed_from_u64(9);
        let a = policy.next_attempt(1, now, now, &mut rng);
        let b = policy.next_attempt(1, now, now, &mut rng);
        assert_eq!(grouped["a.test"], a);
        assert_eq!(grouped["b.test"], b);
    }

    #[test]
    fn differing_attempt_counts_in_one_domain_follow_the_least_tried() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..policy()
        };
        let start = DateTime::from_timestamp(1_000_000, 0).expect("valid time");
        let clock = ManualClock::new(start);
        clock.advance(Duration::from_secs(600));
        let mut rng = StdRng::seed_from_u64(2);
        // Tried 3 times and once before this round: the once-tried one's
        // second backoff (120 s), not the third's fourth (480 s).
        let times = policy.next_attempts_by_domain(
            [("dest.test", 3), ("dest.test", 1), ("other.test", 3)],
            clock.now(),
            start,
            &mut rng,
        );
        assert_eq!(
            times["dest.test"] - clock.now(),
            chrono::Duration::seconds(120)
        );
        assert_eq!(
            times["other.test"] - clock.now(),
            chrono::Duration::seconds(480)
        );
    }

    #[test]
    fn a_domain_next_attempt_never_goes_past_expiry() {
        let policy = RetryPolicy {
            max_queue_lifetime: Duration::from_secs(90),
            ..policy()
        };
        let received = DateTime::from_timestamp(1_000_000, 0).expect("valid time");
        let clock = ManualClock::new(received);
        clock.advance(Duration::from_secs(60));
        let times = policy.next_attempts_by_domain(
            [("dest.test", 2), ("dest.test", 2)],
            clock.now(),
            received,
            &mut StdRng::seed_from_u64(4),
        );
        assert_eq!(
            times["dest.test"],
            received + chrono::Duration::seconds(90) + chrono::Duration::milliseconds(1)
        );
    }

    #[test]
    fn next_attempt_follows_backoff_on_a_manual_clock() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..policy()
        };
        let start = DateTime::from_timestamp(1_000_000, 0).expect("valid time");
        let clock = ManualClock::new(start);
        let mut rng = StdRng::seed_from_u64(1);
        let first = policy.next_attempt(1, clock.now(), start, &mut rng);
        assert_eq!(first - start, chrono::Duration::seconds(60));
        clock.advance(Duration::from_secs(60));
        let second = policy.next_attempt(2, clock.now(), start, &mut rng);
        assert_eq!(second - clock.now(), chrono::Duration::seconds(120));
    }
}

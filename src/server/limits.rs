//! Limits on clients, kept per client address: how many connections one may
//! hold (`max_connections`, `max_connections_per_ip`, answered `421 4.7.0` at
//! connect) and how long a client waits after failed AUTH attempts. An IPv6
//! client counts by its /64 ([`client_key`]). No I/O; shared by the listener
//! and the connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection counts, in total and per client address. The maxima can be
/// changed while connections are open (a reload): the counts carry over, so
/// a lower maximum refuses new connections until enough old ones closed.
pub struct ConnectionLimits {
    counts: Arc<Mutex<Counts>>,
    max: AtomicUsize,
    max_per_ip: AtomicUsize,
}

/// The connections open now.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Held for as long as a connection is open; gives its slots back on drop.
pub struct ConnectionSlot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionLimits {
    /// Limits of `max` connections in total and `max_per_ip` per address.
    pub fn new(max: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            counts: Arc::new(Mutex::new(Counts::default())),
            max: AtomicUsize::new(max),
            max_per_ip: AtomicUsize::new(max_per_ip),
        }
    }

    /// Puts new maxima in force for the connections that come next.
    pub fn set_limits(&self, max: usize, max_per_ip: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    /// A slot for a connection from `ip`, or `None` when a limit is reached.
    /// The per-client count is by [`client_key`].
    pub fn try_acquire(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let ip = client_key(ip);
        let mut counts = self.counts.lock().ok()?;
        if counts.total >= self.max.load(Ordering::Relaxed) {
            return None;
        }
        let max_per_ip = self.max_per_ip.load(Ordering::Relaxed);
        let count = counts.per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            if *count == 0 {
                counts.per_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        counts.total += 1;
        Some(ConnectionSlot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

/// The client a per-client limit counts: an IPv4 address as it is (also when
/// it arrives IPv4-mapped on an IPv6 socket), an IPv6 address by its /64
/// network, since one IPv6 host usually holds a whole /64 (RFC 7421) and
/// could otherwise take a fresh address for every connection.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Failures older than this no longer slow a client down.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// The delay before the first `535`; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The delay never grows beyond this.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Clients remembered at most (oldest forgotten first beyond this).
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Recent AUTH failures per client, and the growing delay they earn.
#[derive(Default)]
pub struct AuthFailures {
    /// Client key → (recent failures, time of the last one).
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthFailures {
    /// No failures remembered yet.
    pub fn new() -> AuthFailures {
        AuthFailures::default()
    }

    /// How long `client` must wait before its next AUTH is even checked:
    /// the delay its recent failures earned (none without any), so the
    /// back-off comes before the argon2 work, not after it.
    pub fn pending_delay(&self, client: IpAddr) -> Duration {
        let client = client_key(client);
        let Ok(failures) = self.failures.lock() else {
            return MAX_DELAY;
        };
        match failures.get(&client) {
            Some((count, last)) if last.elapsed() < FAILURE_MEMORY => {
                let doublings = count.saturating_sub(1).min(16);
                FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Records a failure from `client` and returns how long to wait before
    /// answering it: 200 ms, doubling per recent failure, at most 8 s. An
    /// IPv6 client counts by its /64 ([`client_key`]).
    pub fn failure_delay(&self, client: IpAddr) -> Duration {
        let client = client_key(client);
        let now = Instant::now();
        let Ok(mut failures) = self.failures.lock() else {
            return MAX_DELAY;
        };
        if failures.len() >= MAX_TRACKED_CLIENTS {
            failures.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
            if failures.len() >= MAX_TRACKED_CLIENTS {
                failures.clear();
            }
        }
        let entry = failures.entry(client).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_releases() {
        let limits = ConnectionLimits::new(10, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limits.try_acquire(ip).expect("first");
        let _second = limits.try_acquire(ip).expect("second");
        assert!(limits.try_acquire(ip).is_none());
        assert!(limits.try_acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(limits.try_acquire(ip).is_some());
    }

    #[test]
    fn per_ip_limit_counts_an_ipv6_client_by_its_64_network() {
        // One IPv6 host usually holds a whole /64: counted per address, a
        // single client could open unlimited connections from new addresses.
        let limits = ConnectionLimits::new(10, 2);
        let _first = limits.try_acquire("2001:db8:1:2::1".parse().unwrap());
        let _second = limits.try_acquire("2001:db8:1:2::ffff:3".parse().unwrap());
        assert!(
            limits
                .try_acquire("2001:db8:1:2:abcd::9".parse().unwrap())
                .is_none()
        );
        assert!(
            limits
                .try_acquire("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn per_ip_limit_counts_an_ipv4_mapped_client_as_its_ipv4_address() {
        let limits = ConnectionLimits::new(10, 1);
        let _v4 = limits
            .try_acquire("192.0.2.1".parse().unwrap())
            .expect("first");
        assert!(
            limits
                .try_acquire("::ffff:192.0.2.1".parse().unwrap())
                .is_none()
        );
        assert!(
            limits
                .try_acquire("::ffff:192.0.2.2".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn global_limit_counts() {
        let limits = ConnectionLimits::new(1, 5);
        let _only = limits
            .try_acquire("192.0.2.1".parse().unwrap())
            .expect("first");
        assert!(limits.try_acquire("192.0.2.2".parse().unwrap()).is_none());
    }

    #[test]
    fn new_maxima_apply_to_the_next_connections_and_counts_carry_over() {
        let limits = ConnectionLimits::new(3, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limits.try_acquire(ip).expect("first");
        let _second = limits.try_acquire(ip).expect("second");
        limits.set_limits(3, 1);
        assert!(limits.try_acquire(ip).is_none(), "per-IP maximum lowered");
        limits.set_limits(2, 5);
        assert!(limits.try_acquire("192.0.2.2".parse().unwrap()).is_none());
        drop(first);
        assert!(
            limits.try_acquire(ip).is_some(),
            "a closed slot is free again"
        );
    }

    #[test]
    fn failure_delay_counts_an_ipv6_client_by_its_64_network() {
        let failures = AuthFailures::new();
        let first = failures.failure_delay("2001:db8:0:1::1".parse().unwrap());
        let second = failures.failure_delay("2001:db8:0:1::2".parse().unwrap());
        assert!(second > first, "{first:?} then {second:?}");
        assert_eq!(
            failures.failure_delay("2001:db8:0:2::1".parse().unwrap()),
            first
        );
    }

    #[test]
    fn the_pending_delay_follows_recorded_failures() {
        let failures = AuthFailures::new();
        let client = "192.0.2.7".parse().unwrap();
        assert_eq!(failures.pending_delay(client), Duration::ZERO);
        failures.failure_delay(client);
        assert_eq!(failures.pending_delay(client), FIRST_DELAY);
        failures.failure_delay(client);
        assert_eq!(failures.pending_delay(client), FIRST_DELAY * 2);
    }

    #[test]
    fn failure_delay_grows_per_client() {
        let failures = AuthFailures::new();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let first = failures.failure_delay(client);
        let second = failures.failure_delay(client);
        assert!(second > first, "{first:?} then {second:?}");
        assert_eq!(failures.failure_delay("192.0.2.2".parse().unwrap()), first);
        for _ in 0..20 {
            assert!(failures.failure_delay(client) <= MAX_DELAY);
        }
    }
}

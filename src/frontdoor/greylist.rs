//! Greylisting (`[greylisting]`): the first time a (client network, sender,
//! recipient) triplet is seen it gets `451 4.7.1` for `delay`; a real MTA
//! retries and passes, most spamware does not. The network is the
//! client's /24 (IPv6: /64), so a sender retrying from another address of
//! its pool still matches. A client network that passed once is not
//! greylisted again while it is remembered (`expiry`), as postgrey's
//! auto-allowlist. Pure: time is given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The most triplets kept; past it, expired ones are swept, and if that
/// is not enough the oldest pending ones go.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    first_seen: Instant,
    last_seen: Instant,
    passed: bool,
}

/// The triplets and client networks seen.
#[derive(Debug, Default)]
pub struct Greylist {
    triplets: HashMap<(String, String, String), Entry>,
    /// Networks with a triplet that passed, and when one last did.
    passed: HashMap<String, Instant>,
}

/// The network a client is greylisted by: its /24 or /64.
pub fn network(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Greylist {
    /// Whether the triplet may pass at `now`; `None` lets it through, else
    /// how long it still has to wait.
    pub fn check(
        &mut self,
        client: IpAddr,
        sender: &str,
        recipient: &str,
        delay: Duration,
        expiry: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let net = network(client);
        if self
            .passed
            .get(&net)
            .is_some_and(|last| now.duration_since(*last) < expiry)
        {
            self.passed.insert(net, now);
            return None;
        }
        let key = (net.clone(), sender.to_lowercase(), recipient.to_lowercase());
        if self.triplets.len() >= MAX_ENTRIES && !self.triplets.contains_key(&key) {
            self.sweep(expiry, now);
        }
        let entry = self.triplets.entry(key).or_insert(Entry {
            first_seen: now,
            last_seen: now,
            passed: false,
        });
        let age = now.duration_since(entry.first_seen);
        let idle = now.duration_since(entry.last_seen);
        if (entry.passed && idle >= expiry) || (!entry.passed && age >= expiry) {
            *entry = Entry {
                first_seen: now,
                last_seen: now,
                passed: false,
            };
        }
        entry.last_seen = now;
        if entry.passed || now.duration_since(entry.first_seen) >= delay {
            entry.passed = true;
            self.passed.insert(net, now);
            return None;
        }
        Some(delay - now.duration_since(entry.first_seen))
    }

    /// Drops what has expired; if the table is still full, every pending
    /// triplet.
    fn sweep(&mut self, expiry: Duration, now: Instant) {
        self.triplets
            .retain(|_, entry| now.duration_since(entry.last_seen) < expiry);
        self.passed
            .retain(|_, last| now.duration_since(*last) < expiry);
        if self.triplets.len() >= MAX_ENTRIES {
            self.triplets.retain(|_, entry| entry.passed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(300);
    const EXPIRY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_new_triplet_waits_the_delay_then_passes_and_its_network_is_allowed() {
        let mut list = Greylist::default();
        let start = Instant::now();
        let client: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(
            list.check(client, "a@s.test", "u@example.org", DELAY, EXPIRY, start),
            Some(DELAY)
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(
            list.check(client, "a@s.test", "u@example.org", DELAY, EXPIRY, later),
            Some(Duration::from_secs(240))
        );
        // Another address of the same /24 retries after the delay.
        let retry = start + DELAY;
        let sibling: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(
            list.check(sibling, "A@s.test", "u@example.org", DELAY, EXPIRY, retry),
            None
        );
        // The network passed: another triplet from it is not delayed.
        assert_eq!(
            list.check(client, "b@s.test", "v@example.org", DELAY, EXPIRY, retry),
            None
        );
        // Another network is.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(
            list.check(other, "a@s.test", "u@example.org", DELAY, EXPIRY, retry)
                .is_some()
        );
    }

    #[test]
    fn a_triplet_never_retried_expires() {
        let mut list = Greylist::default();
        let start = Instant::now();
        let client: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        assert!(
            list.check(client, "a@s.test", "u@example.org", DELAY, EXPIRY, start)
                .is_some()
        );
        let late = start + EXPIRY;
        assert_eq!(
            list.check(client, "a@s.test", "u@example.org", DELAY, EXPIRY, late),
            Some(DELAY),
            "starts over"
        );
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(network("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            network("::ffff:192.0.2.77".parse().unwrap()),
            "192.0.2.0/24"
        );
        assert_eq!(
            network("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }
}

//! `[client_limits]`: connection, message and recipient rates per client
//! (an IPv4 address, or an IPv6 /64, which one host usually holds whole).
//! The same GCRA as traffic shaping: a rate of N per period lets one
//! through every period/N, with a burst of one second's worth. With
//! `[cluster] redis` the buckets are shared through the shaper's Redis
//! side (`delivery::shaping::shared`), with its local fallback: while Redis
//! cannot be reached, each node goes by its own buckets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Rate;
use crate::delivery::shaping::gcra::Gcra;
use crate::delivery::shaping::shared::Shared;

/// The most buckets kept; past it, idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

/// What a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counted {
    Connections,
    Messages,
    Recipients,
}

impl Counted {
    /// The name in keys, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Counted::Connections => "connections",
            Counted::Messages => "messages",
            Counted::Recipients => "recipients",
        }
    }
}

/// The key a client's rates are kept under: the address, or its /64.
pub fn client_key(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The local buckets, kept across reloads.
#[derive(Debug, Default)]
pub struct ClientRates {
    buckets: Mutex<HashMap<(Counted, String), (Gcra, Instant)>>,
}

impl ClientRates {
    /// Takes one of `client`'s `counted` under `rate`; false when over it.
    pub async fn take(
        &self,
        counted: Counted,
        rate: Rate,
        client: IpAddr,
        shared: Option<&Arc<Shared>>,
    ) -> bool {
        let key = client_key(client);
        if let Some(shared) = shared {
            let destination = format!("client:{}:{key}", counted.name());
            if let Some(wait) = shared.rate_wait(&destination, "client_limits", rate).await {
                return wait.is_zero();
            }
        }
        self.take_local(counted, rate, key, Instant::now())
    }

    fn take_local(&self, counted: Counted, rate: Rate, key: String, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            // A bucket untouched for a whole period is back to full.
            buckets.retain(|_, (_, used)| now.duration_since(*used) < rate.per);
        }
        let (bucket, used) = buckets
            .entry((counted, key))
            .or_insert_with(|| (Gcra::default(), now));
        *used = now;
        bucket.take(rate, now).is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_or_slash_64() {
        assert_eq!(client_key("192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(client_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(
            client_key("2001:db8:0:1:aa::1".parse().unwrap()),
            "2001:db8:0:1::/64"
        );
    }

    #[test]
    fn each_client_and_each_count_has_its_bucket() {
        let rates = ClientRates::default();
        let rate = Rate::parse("1/m").unwrap();
        let now = Instant::now();
        let a = || "192.0.2.1".to_string();
        assert!(rates.take_local(Counted::Messages, rate, a(), now));
        assert!(!rates.take_local(Counted::Messages, rate, a(), now));
        assert!(rates.take_local(Counted::Recipients, rate, a(), now));
        assert!(rates.take_local(Counted::Messages, rate, "192.0.2.2".into(), now));
        let later = now + std::time::Duration::from_secs(60);
        assert!(rates.take_local(Counted::Messages, rate, a(), later));
    }
}

//! Screening at connect, on relay listeners (`[screen]`), as Postfix's
//! postscreen: before the 220,
//! - the pregreet test: the greeting is held back for `pregreet`; an SMTP
//!   client must wait for it (RFC 5321 §3.1), so one that talks first is a
//!   bot and gets `554 5.7.1`;
//! - DNS lists, looked up meanwhile: the client's reversed address under
//!   each zone (A records, within `dns.timeout`); a listed client adds the
//!   list's weight (negative for allow lists). A list that fails counts 0
//!   and is logged. A score at or over `threshold` gets `554 5.7.1`.
//!
//! A client that passed is remembered for `allowlist_ttl` and not screened
//! again meanwhile (no delay, no lookups).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use tokio::net::TcpStream;

use crate::config::{DnsList, ScreenConfig};

/// The most clients remembered as passed; past it, expired ones go, then
/// all of them.
const MAX_ALLOWED: usize = 100_000;

/// Why a client was refused at connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It talked before the greeting.
    Pregreet,
    /// Its DNS list score reached the threshold: the lists that listed it,
    /// with their weights.
    Listed { score: i32, lists: Vec<String> },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Pregreet => "pregreet",
            Refusal::Listed { .. } => "dnsbl",
        }
    }

    /// The reasons, for the log line.
    pub fn detail(&self) -> String {
        match self {
            Refusal::Pregreet => "talked before the greeting".into(),
            Refusal::Listed { score, lists } => format!("score {score}: {}", lists.join(" ")),
        }
    }

    /// The reply text (after `554 5.7.1`).
    pub fn text(&self, client: IpAddr) -> String {
        match self {
            Refusal::Pregreet => "Protocol error: talked before the greeting".into(),
            Refusal::Listed { lists, .. } => {
                let zones: Vec<&str> = lists
                    .iter()
                    .map(|list| list.split('=').next().unwrap_or(list))
                    .collect();
                format!("Client {client} refused: listed by {}", zones.join(", "))
            }
        }
    }
}

/// How a screen ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the client.
    Pass,
    /// Refuse it.
    Refuse(Refusal),
    /// The client left during the pregreet wait.
    Gone,
}

/// The clients that passed, kept across reloads.
#[derive(Debug, Default)]
pub struct Allowlist {
    until: Mutex<HashMap<IpAddr, Instant>>,
}

impl Allowlist {
    /// True when `client` passed less than its TTL ago.
    pub fn contains(&self, client: IpAddr, now: Instant) -> bool {
        self.lock().get(&client).is_some_and(|until| *until > now)
    }

    /// Remembers `client` as passed until `until`.
    pub fn insert(&self, client: IpAddr, until: Instant, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_ALLOWED {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_ALLOWED {
                map.clear();
            }
        }
        map.insert(client, until);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Screens `client` on `stream` before the greeting.
pub async fn screen(
    settings: &ScreenConfig,
    resolver: &TokioResolver,
    dns_timeout: Duration,
    stream: &TcpStream,
    client: IpAddr,
) -> Verdict {
    let pregreet = async {
        let Some(delay) = settings.pregreet else {
            return Verdict::Pass;
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(delay, stream.peek(&mut byte)).await {
            Err(_) => Verdict::Pass,
            Ok(Ok(0)) | Ok(Err(_)) => Verdict::Gone,
            Ok(Ok(_)) => Verdict::Refuse(Refusal::Pregreet),
        }
    };
    let lists = score(&settings.dnsbl, resolver, dns_timeout, client);
    let (pregreet, (score, listed)) = tokio::join!(pregreet, lists);
    if pregreet != Verdict::Pass {
        return pregreet;
    }
    if score >= settings.threshold {
        return Verdict::Refuse(Refusal::Listed {
            score,
            lists: listed,
        });
    }
    Verdict::Pass
}

/// The summed weight of the lists that list `client`, and those lists as
/// `zone=weight`. Looked up together.
async fn score(
    lists: &[DnsList],
    resolver: &TokioResolver,
    timeout: Duration,
    client: IpAddr,
) -> (i32, Vec<String>) {
    let lookups = lists.iter().map(|list| async move {
        let name = format!("{}.{}.", reversed(client), list.zone.trim_matches('.'));
        let listed = match tokio::time::timeout(timeout, resolver.ipv4_lookup(name.as_str())).await
        {
            // RFC 5782 §2.1: listed entries are A records in 127.0.0.0/8.
            Ok(Ok(lookup)) => lookup
                .answers()
                .iter()
                .any(|record| matches!(&record.data, RData::A(a) if a.0.octets()[0] == 127)),
            // NXDOMAIN or NOERROR without an A record: not listed.
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(no_records))))
                if matches!(
                    no_records.response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                false
            }
            Ok(Err(error)) => {
                tracing::warn!(zone = %list.zone, client = %client, %error,
                    "DNS list lookup failed; it counts 0");
                false
            }
            Err(_) => {
                tracing::warn!(zone = %list.zone, client = %client, ?timeout,
                    "DNS list lookup timed out; it counts 0");
                false
            }
        };
        listed.then(|| (list.weight, format!("{}={}", list.zone, list.weight)))
    });
    let found: Vec<(i32, String)> = futures::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect();
    let score = found.iter().map(|(weight, _)| weight).sum();
    (score, found.into_iter().map(|(_, name)| name).collect())
}

/// The address as DNS lists want it (RFC 5782 §2.1, §2.4): IPv4 octets
/// reversed, IPv6 nibbles reversed.
pub fn reversed(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => reversed(IpAddr::V4(v4)),
            None => {
                let mut nibbles = Vec::with_capacity(32);
                for byte in v6.octets().iter().rev() {
                    nibbles.push(format!("{:x}", byte & 0x0f));
                    nibbles.push(format!("{:x}", byte >> 4));
                }
                nibbles.join(".")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_addresses_follow_rfc_5782() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(reversed("::ffff:192.0.2.99".parse().unwrap()), "99.2.0.192");
        // RFC 5782 §2.4's example.
        assert_eq!(
            reversed("2001:db8:1:2:3:4:567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn the_allowlist_forgets_after_its_ttl() {
        let list = Allowlist::default();
        let now = Instant::now();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!list.contains(client, now));
        list.insert(client, now + Duration::from_secs(60), now);
        assert!(list.contains(client, now + Duration::from_secs(59)));
        assert!(!list.contains(client, now + Duration::from_secs(60)));
    }
}

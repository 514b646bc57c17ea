//! MTA-STS (RFC 8461): discovery, the policy fetch, its parser, the durable
//! cache, and which MX hosts a policy allows.
//!
//! Choices:
//! - Discovery: exactly one `_mta-sts.<domain>` TXT record beginning with
//!   `v=STSv1` (§3.1), asked uncached so that an id change is seen at once.
//! - Fetch: `https://mta-sts.<domain>/.well-known/mta-sts.txt` on port 443
//!   (§3.3), the certificate checked for that name against the webpki roots
//!   plus `delivery.tls_ca`; HTTP/1.1 through hyper; no redirect is followed
//!   (a 3xx is a failure); the media type must be `text/plain`; at most
//!   [`MAX_BODY`] bytes; all within [`FETCH_TIMEOUT`].
//! - Cache: the spool's `mta-sts` side tree, one JSON entry per domain, kept
//!   until `max_age` after the fetch (§5.1). A cached policy whose id equals
//!   the TXT id is used without a fetch; a new id triggers one. When the TXT
//!   record is gone or the fetch fails, an unexpired cached policy stays in
//!   force (§5.1); without one, delivery goes on as before. A failed fetch
//!   is not tried again for the same id within [`FAILED_FETCH_BACKOFF`]
//!   (in memory; a reload or restart forgets it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use sluice_queue::SideTree;
use tokio_rustls::TlsConnector;

use super::dane::Dane;

/// RFC 8461 §3.3: policy bodies are small; 64 KiB is generous.
pub const MAX_BODY: usize = 64 * 1024;
/// The whole fetch: DNS, connect, TLS, request and body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// RFC 8461 §3.2: max_age is at most 31557600 seconds (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The policy mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only matching MX hosts, only authenticated TLS; else defer.
    Enforce,
    /// Deliver as before; report what would have failed.
    Testing,
    /// No policy.
    None,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        })
    }
}

/// A parsed policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `mx` patterns, lower case; `*.example.net` matches one label.
    pub mx: Vec<String>,
    /// `max_age` in seconds, capped at [`MAX_AGE_LIMIT`].
    pub max_age: u64,
}

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `version` missing or not `STSv1`.
    #[error("version is not STSv1")]
    Version,
    /// `mode` missing or unknown.
    #[error("mode missing or not enforce, testing or none")]
    Mode,
    /// `max_age` missing or not a number.
    #[error("max_age missing or not a number")]
    MaxAge,
    /// enforce or testing without an `mx` line.
    #[error("no mx line")]
    NoMx,
}

impl Policy {
    /// Parses a policy body (RFC 8461 §3.2): `key: value` lines ending in
    /// CRLF or LF; unknown keys are ignored; the first `version`, `mode`
    /// and `max_age` count.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim_matches([' ', '\t']);
            match key.trim_matches([' ', '\t']) {
                "version" if version.is_none() => version = Some(value.to_string()),
                "mode" if mode.is_none() => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        _ => return Err(PolicyError::Mode),
                    })
                }
                "max_age" if max_age.is_none() => {
                    // RFC 8461 §3.2: 1*10DIGIT.
                    if value.is_empty()
                        || value.len() > 10
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(PolicyError::MaxAge);
                    }
                    let seconds: u64 = value.parse().map_err(|_| PolicyError::MaxAge)?;
                    max_age = Some(seconds.min(MAX_AGE_LIMIT));
                }
                "mx" if !value.is_empty() => {
                    mx.push(value.trim_end_matches('.').to_ascii_lowercase());
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err(PolicyError::Version);
        }
        let mode = mode.ok_or(PolicyError::Mode)?;
        let max_age = max_age.ok_or(PolicyError::MaxAge)?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx);
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// RFC 8461 §4.1: `host` matches an `mx` pattern exactly, or a
    /// `*.suffix` pattern with exactly one more label on the left.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => *pattern == host,
            })
    }
}

/// The `id` of the single `v=STSv1` TXT record among `records`, or `None`
/// when there is none or more than one, or it has no valid id (§3.1).
pub fn discovery_id(records: &[String]) -> Option<String> {
    let mut found = records
        .iter()
        // "records that do not begin with "v=STSv1;" are discarded"
        .filter(|record| record.as_str() == "v=STSv1" || record.starts_with("v=STSv1;"))
        .collect::<Vec<_>>();
    if found.len() != 1 {
        return None;
    }
    let record = found.pop()?;
    let mut fields = record.split(';').map(|field| field.trim());
    if fields.next() != Some("v=STSv1") {
        return None;
    }
    fields.find_map(|field| {
        let id = field.strip_prefix("id=")?;
        // sts-id = 1*32(ALPHA / DIGIT)
        (!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| id.to_string())
    })
}

/// A policy as cached: with the TXT id it was fetched under and when it
/// expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    /// The `_mta-sts` TXT id at the fetch.
    pub id: String,
    /// The policy.
    pub policy: Policy,
    /// When it was fetched.
    pub fetched_at: DateTime<Utc>,
    /// `fetched_at + max_age`.
    pub expires_at: DateTime<Utc>,
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fetched in this attempt.
    Fetched,
    /// From the cache, the TXT id unchanged.
    Cached,
    /// From the cache although the TXT record is gone or the fetch failed.
    CachedAfterFailure,
}

/// The policy in force for a domain.
#[derive(Debug, Clone)]
pub struct ActivePolicy {
    /// The policy and its expiry.
    pub cached: CachedPolicy,
    /// Where it came from.
    pub source: Source,
}

/// Why a policy could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No address for `mta-sts.<domain>`.
    #[error("{host}: no address ({reason})")]
    Resolve { host: String, reason: String },
    /// TCP, TLS or HTTP failed.
    #[error("{host}: {reason}")]
    Transport { host: String, reason: String },
    /// A status other than 200 (redirects are not followed).
    #[error("{host}: HTTP status {status} (RFC 8461 §3.3: only 200, no redirects)")]
    Status { host: String, status: u16 },
    /// Not `text/plain`.
    #[error("{host}: media type {media_type:?} is not text/plain")]
    MediaType { host: String, media_type: String },
    /// The body is over [`MAX_BODY`].
    #[error("{host}: policy body over {MAX_BODY} bytes")]
    TooLarge { host: String },
    /// The body is not a valid policy.
    #[error("{host}: invalid policy: {error}")]
    Invalid { host: String, error: PolicyError },
    /// Over [`FETCH_TIMEOUT`].
    #[error("{host}: no policy within {FETCH_TIMEOUT:?}")]
    Timeout { host: String },
}

/// How long a failed policy fetch is not tried again for the same TXT id
/// (a new id is fetched at once). Without it, every attempt to a domain
/// whose policy server is down would wait for the fetch's timeout.
pub const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(300);

/// The most domains whose failed fetches are remembered.
const MAX_FAILED_FETCHES: usize = 10_000;

/// MTA-STS for delivery: the switch, and the cache when a spool is open.
#[derive(Clone)]
pub struct MtaSts {
    enabled: bool,
    cache: Option<SideTree>,
    /// HTTPS port; 443 except in unit tests.
    port: u16,
    /// Domain → the TXT id whose policy could not be fetched, and when.
    failed: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl MtaSts {
    /// From `delivery.mta_sts`, caching in `cache` (the spool's `mta-sts`
    /// side tree) when given.
    pub fn new(enabled: bool, cache: Option<SideTree>) -> MtaSts {
        MtaSts {
            enabled,
            cache,
            port: 443,
            failed: Arc::default(),
        }
    }

    /// True when policies are looked up.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The cached policy of `domain`, if unexpired.
    pub fn cached(&self, domain: &str, now: DateTime<Utc>) -> Option<CachedPolicy> {
        let bytes = self.cache.as_ref()?.get(domain).ok()??;
        let cached: CachedPolicy = serde_json::from_slice(&bytes).ok()?;
        (cached.expires_at > now).then_some(cached)
    }

    /// The policy in force for `domain` (lower case), looking up the TXT
    /// record through `dns` and fetching over `connector` as needed.
    /// `None`: no policy, deliver as before.
    pub async fn policy_for(
        &self,
        domain: &str,
        dns: &Dane,
        resolver: &TokioResolver,
        connector: &TlsConnector,
    ) -> Option<ActivePolicy> {
        if !self.enabled || domain.parse::<IpAddr>().is_ok() {
            return None;
        }
        let now = Utc::now();
        let cached = self.cached(domain, now);
        let id = match dns
            .query(&format!("_mta-sts.{domain}"), RecordType::TXT)
            .await
        {
            Ok(answer) => discovery_id(
                &answer
                    .records
                    .iter()
                    .filter_map(|data| match data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(error) => {
                tracing::debug!(domain, %error, "MTA-STS TXT lookup failed");
                None
            }
        };
        let Some(id) = id else {
            return cached.map(|cached| ActivePolicy {
                cached,
                source: Source::CachedAfterFailure,
            });
        };
        if let Some(cached) = cached.as_ref().filter(|cached| cached.id == id) {
            return Some(ActivePolicy {
                cached: cached.clone(),
                source: Source::Cached,
            });
        }
        if self.failed_recently(domain, &id) {
            tracing::debug!(
                domain,
                id,
                "MTA-STS policy fetch failed recently, not tried again yet"
            );
            return cached.map(|cached| ActivePolicy {
                cached,
                source: Source::CachedAfterFailure,
            });
        }
        match fetch(domain, self.port, resolver, connector).await {
            Ok(policy) => {
                lock(&self.failed).remove(domain);
                let max_age = i64::try_from(policy.max_age).unwrap_or(i64::MAX);
                let fresh = CachedPolicy {
                    id,
                    policy,
                    fetched_at: now,
                    expires_at: now + chrono::Duration::seconds(max_age),
                };
                if let Some(tree) = &self.cache {
                    let stored = serde_json::to_vec(&fresh).expect("a policy serialises");
                    if let Err(error) = tree.insert(domain, &stored).await {
                        tracing::warn!(domain, %error, "cannot cache the MTA-STS policy");
                    }
                }
                tracing::info!(
                    domain,
                    id = %fresh.id,
                    mode = %fresh.policy.mode,
                    max_age = fresh.policy.max_age,
                    "MTA-STS policy fetched"
                );
                Some(ActivePolicy {
                    cached: fresh,
                    source: Source::Fetched,
                })
            }
            Err(error) => {
                self.remember_failure(domain, id);
                tracing::warn!(domain, %error, cached = cached.is_some(), "MTA-STS policy fetch failed");
                cached.map(|cached| ActivePolicy {
                    cached,
                    source: Source::CachedAfterFailure,
                })
            }
        }
    }

    /// True when the policy of `domain` under `id` failed to be fetched
    /// less than [`FAILED_FETCH_BACKOFF`] ago.
    fn failed_recently(&self, domain: &str, id: &str) -> bool {
        lock(&self.failed)
            .get(domain)
            .is_some_and(|(failed_id, at)| failed_id == id && at.elapsed() < FAILED_FETCH_BACKOFF)
    }

    fn remember_failure(&self, domain: &str, id: String) {
        let mut failed = lock(&self.failed);
        if failed.len() >= MAX_FAILED_FETCHES {
            failed.retain(|_, (_, at)| at.elapsed() < FAILED_FETCH_BACKOFF);
            if failed.len() >= MAX_FAILED_FETCHES {
                failed.clear();
            }
        }
        failed.insert(domain.to_string(), (id, Instant::now()));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fetches and parses the policy of `domain` (RFC 8461 §3.3).
pub async fn fetch(
    domain: &str,
    port: u16,
    resolver: &TokioResolver,
    connector: &TlsConnector,
) -> Result<Policy, FetchError> {
    let host = format!("mta-sts.{domain}");
    match tokio::time::timeout(FETCH_TIMEOUT, fetch_from(&host, port, resolver, connector)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout { host }),
    }
}

async fn fetch_from(
    host: &str,
    port: u16,
    resolver: &TokioResolver,
    connector: &TlsConnector,
) -> Result<Policy, FetchError> {
    let transport = |reason: String| FetchError::Transport {
        host: host.to_string(),
        reason,
    };
    let addresses: Vec<IpAddr> = resolver
        .lookup_ip(format!("{host}."))
        .await
        .map_err(|error| FetchError::Resolve {
            host: host.to_string(),
            reason: error.to_string(),
        })?
        .iter()
        .collect();
    let Some(address) = addresses.first() else {
        return Err(FetchError::Resolve {
            host: host.to_string(),
            reason: "no A or AAAA record".into(),
        });
    };
    let stream = tokio::net::TcpStream::connect((*address, port))
        .await
        .map_err(|error| transport(format!("connect to {address}:{port}: {error}")))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|error| transport(format!("not a valid TLS name: {error}")))?;
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|error| transport(format!("TLS: {error}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|error| transport(format!("HTTP: {error}")))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "sluice")
            .body(Empty::<Bytes>::new())
            .map_err(|error| transport(format!("HTTP request: {error}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| transport(format!("HTTP: {error}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status {
                host: host.to_string(),
                status,
            });
        }
        let media_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        let essence = media_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/plain") {
            return Err(FetchError::MediaType {
                host: host.to_string(),
                media_type,
            });
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge {
                        host: host.to_string(),
                    }
                } else {
                    transport(format!("HTTP body: {error}"))
                }
            })?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        Policy::parse(&text).map_err(|error| FetchError::Invalid {
            host: host.to_string(),
            error,
        })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_parses_with_crlf_or_lf() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";
        let policy = Policy::parse(text).expect("valid");
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(policy.max_age, 604800);
        let lf = Policy::parse(
            "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 86400\nextension: x\n",
        )
        .expect("valid");
        assert_eq!(lf.mode, Mode::Testing);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert_eq!(
            Policy::parse("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n"),
            Err(PolicyError::Version)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n"),
            Err(PolicyError::Mode)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n"),
            Err(PolicyError::MaxAge)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: enforce\nmax_age: 10\n"),
            Err(PolicyError::NoMx)
        );
        assert!(Policy::parse("version: STSv1\nmode: none\nmax_age: 10\n").is_ok());
        let capped = Policy::parse("version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn wildcards_match_one_label_only() {
        let policy = Policy {
            mode: Mode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: 1,
        };
        assert!(policy.allows("mail.example.com"));
        assert!(policy.allows("MAIL.example.com."));
        assert!(policy.allows("mx1.example.net"));
        assert!(
            !policy.allows("a.b.example.net"),
            "RFC 8461 §4.1: one label"
        );
        assert!(!policy.allows("example.net"));
        assert!(!policy.allows("other.example.com"));
    }

    #[test]
    fn discovery_needs_exactly_one_sts_record_with_an_id() {
        let id = |records: &[&str]| {
            discovery_id(&records.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            id(&["v=STSv1; id=20160831085700Z;"]),
            Some("20160831085700Z".into())
        );
        assert_eq!(id(&["v=STSv1;id=abc", "v=spf1 -all"]), Some("abc".into()));
        assert_eq!(id(&["v=STSv1; id=a", "v=STSv1; id=b"]), None);
        assert_eq!(id(&["v=STSv1; id=bad-id"]), None);
        assert_eq!(id(&["v=spf1 -all"]), None);
        assert_eq!(id(&["v=STSv10; id=a"]), None);
        assert_eq!(id(&["v=STSv1; id=a", "v=STSv10; id=b"]), Some("a".into()));
    }
}

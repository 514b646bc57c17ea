//! Next-hop resolution: where mail for a domain goes.
//!
//! In order: `delivery.relay_host` (the smarthost takes everything), a
//! `[routes]` entry (the exact domain, then `"*"`), the domain's MX records by
//! preference (RFC 5321 §5.1; equal preferences shuffled), and else the
//! domain's own addresses (the implicit MX). A null MX (RFC 7505) means the
//! domain accepts no mail.
//!
//! What DNS answers mean: only NXDOMAIN, or NOERROR with neither MX nor
//! A/AAAA records, fails a recipient. Any other RCODE (SERVFAIL, REFUSED,
//! NOTIMP, FORMERR…), a timeout or an unreachable nameserver tells us nothing
//! about the domain, and defers it.
//!
//! `dns.timeout` bounds the DNS wait of one delivery attempt for one domain:
//! the MX lookup and the address lookups of its hosts together draw on one
//! [`DnsBudget`]; once it is spent, the attempt defers.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::config::{Config, NextHopAddress, Route};

use crate::smtp::reply::EnhancedCode;

/// How the next hop was chosen; decides TLS and AUTH rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHopKind {
    /// `delivery.relay_host`.
    Smarthost,
    /// A `[routes]` entry.
    Route,
    /// MX records.
    Mx,
    /// No MX: the domain's own A/AAAA records (RFC 5321 §5.1).
    ImplicitMx,
}

/// One host to try, with the port to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name (or IP literal) as configured or found in DNS, without a
    /// trailing dot; TLS certificates are checked against it.
    pub name: String,
    /// The TCP port to connect to.
    pub port: u16,
}

impl Host {
    /// The host's address when its name is an IP literal.
    pub fn literal(&self) -> Option<IpAddr> {
        self.name.parse().ok()
    }
}

/// The protocol a next hop speaks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Transport {
    /// SMTP (RFC 5321).
    #[default]
    Smtp,
    /// LMTP (RFC 2033) over TCP: LHLO, one reply per recipient.
    Lmtp,
    /// LMTP on a UNIX socket: no DNS, no TLS.
    LmtpUnix(std::path::PathBuf),
}

impl Transport {
    /// True for LMTP, on TCP or a UNIX socket.
    pub fn is_lmtp(&self) -> bool {
        !matches!(self, Transport::Smtp)
    }
}

/// Where to deliver mail for one domain: hosts in the order to try them.
#[derive(Debug, Clone)]
pub struct NextHop {
    /// How the hop was chosen.
    pub kind: NextHopKind,
    /// SMTP, or LMTP for a `[routes]` entry that says so.
    pub transport: Transport,
    /// Hosts in the order to try them (at least one).
    pub hosts: Vec<Host>,
    /// What is left of this attempt's DNS time for the domain; the address
    /// lookups of `hosts` ([`Router::addresses`]) draw on it.
    dns: DnsBudget,
}

/// One delivery attempt's DNS time for one domain (`dns.timeout`): every
/// lookup made for the attempt (MX, then A/AAAA of each host) spends from
/// it, and a lookup that would outlast it is cut off as a temporary
/// failure. Time spent connecting to hosts between lookups is not counted.
/// Clones share the same budget.
#[derive(Debug, Clone)]
pub struct DnsBudget {
    remaining: Arc<Mutex<Duration>>,
}

impl DnsBudget {
    /// A budget of `total`.
    pub fn new(total: Duration) -> DnsBudget {
        DnsBudget {
            remaining: Arc::new(Mutex::new(total)),
        }
    }

    /// The time left.
    pub fn remaining(&self) -> Duration {
        *self
            .remaining
            .lock()
            .expect("DNS budget lock is never poisoned")
    }

    /// Runs `lookup` (about `name`) for at most the time left, and spends
    /// the time it took.
    async fn spend<T>(
        &self,
        name: &str,
        lookup: impl Future<Output = Result<T, NetError>>,
    ) -> Result<T, Lookup> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(Lookup::Failed(format!(
                "{name}: not looked up, this attempt's DNS time (dns.timeout) is spent"
            )));
        }
        let started = Instant::now();
        let result = tokio::time::timeout(remaining, lookup).await;
        {
            let mut left = self
                .remaining
                .lock()
                .expect("DNS budget lock is never poisoned");
            *left = left.saturating_sub(started.elapsed());
        }
        match result {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(error)) => Err(classify(name, &error)),
            Err(_) => Err(Lookup::Failed(format!(
                "{name}: no answer within this attempt's DNS time (dns.timeout)"
            ))),
        }
    }
}

/// Why no next hop could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// RFC 7505: the domain publishes a null MX and accepts no mail.
    #[error("domain {domain} does not accept mail (null MX)")]
    NullMx { domain: String },
    /// NXDOMAIN for the domain.
    #[error("domain {domain} not found (NXDOMAIN)")]
    NoSuchDomain { domain: String },
    /// The host exists in DNS but has no address record.
    #[error("host {host} has no address record")]
    NoAddress { host: String },
    /// SERVFAIL, timeout or another failure worth trying again.
    #[error("DNS lookup of {name} failed temporarily: {reason}")]
    Temporary { name: String, reason: String },
}

impl RouteError {
    /// True when retrying cannot help (null MX, NXDOMAIN, no address).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RouteError::NullMx { .. }
                | RouteError::NoSuchDomain { .. }
                | RouteError::NoAddress { .. }
        )
    }

    /// The RFC 3463 status to report: 5.1.10 null MX (RFC 7505 §4.2), 5.1.2
    /// bad destination system, 5.4.4 unable to route, 4.4.3 directory
    /// server failure.
    pub fn status(&self) -> EnhancedCode {
        match self {
            RouteError::NullMx { .. } => EnhancedCode::new(5, 1, 10),
            RouteError::NoSuchDomain { .. } => EnhancedCode::new(5, 1, 2),
            RouteError::NoAddress { .. } => EnhancedCode::new(5, 4, 4),
            RouteError::Temporary { .. } => EnhancedCode::new(4, 4, 3),
        }
    }
}

/// The static part of routing: smarthost and `[routes]`, from the config.
#[derive(Debug, Clone)]
pub struct StaticRoutes {
    relay_host: Option<Host>,
    /// Lower-case domain (or "*") to host and protocol.
    routes: BTreeMap<String, (Host, Transport)>,
    /// Port for MX and implicit-MX hosts.
    port: u16,
    /// `dns.timeout`: each attempt's DNS time for a domain.
    dns_timeout: Duration,
}

impl StaticRoutes {
    /// Reads `delivery.relay_host` (port 25 unless given), `delivery.port`,
    /// `[routes]` (port `delivery.port` unless given) and `dns.timeout`.
    pub fn from_config(config: &Config) -> StaticRoutes {
        let port = config.delivery.port;
        let to_host = |address: &NextHopAddress, default_port: u16| Host {
            name: address.host.to_string(),
            port: address.port.unwrap_or(default_port),
        };
        StaticRoutes {
            relay_host: config
                .delivery
                .relay_host
                .as_ref()
                .map(|address| to_host(address, 25)),
            routes: config
                .routes
                .iter()
                .map(|(domain, route)| {
                    let target = match route {
                        Route::Smtp(address) => (to_host(address, port), Transport::Smtp),
                        Route::LmtpTcp(address) => (to_host(address, port), Transport::Lmtp),
                        Route::LmtpUnix(path) => (
                            Host {
                                name: format!("unix:{}", path.display()),
                                port: 0,
                            },
                            Transport::LmtpUnix(path.clone()),
                        ),
                    };
                    (domain.to_ascii_lowercase(), target)
                })
                .collect(),
            port,
            dns_timeout: config.dns.timeout,
        }
    }

    /// The smarthost or `[routes]` entry for `domain`: exact domain first,
    /// then `"*"`. `None` means "look up MX".
    pub fn lookup(&self, domain: &str) -> Option<NextHop> {
        if let Some(host) = &self.relay_host {
            return Some(self.hop(NextHopKind::Smarthost, vec![host.clone()]));
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.routes
            .get(&domain)
            .or_else(|| self.routes.get("*"))
            .map(|(host, transport)| NextHop {
                transport: transport.clone(),
                ..self.hop(NextHopKind::Route, vec![host.clone()])
            })
    }

    /// The port used for MX hosts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh budget of `dns.timeout` for one attempt.
    fn budget(&self) -> DnsBudget {
        DnsBudget::new(self.dns_timeout)
    }

    fn hop(&self, kind: NextHopKind, hosts: Vec<Host>) -> NextHop {
        NextHop {
            kind,
            transport: Transport::Smtp,
            hosts,
            dns: self.budget(),
        }
    }
}

/// Orders MX records (preference, exchange) for delivery: lowest preference
/// first, equal preferences in random order (RFC 5321 §5.1). Fails with
/// `NullMx` when the set holds a null MX (RFC 7505 §3: a single record with
/// exchange "." ; any record with an empty exchange is treated the same).
pub fn order_mx(
    domain: &str,
    mut records: Vec<(u16, String)>,
    rng: &mut impl Rng,
) -> Result<Vec<String>, RouteError> {
    if records
        .iter()
        .any(|(_, exchange)| exchange.trim_end_matches('.').is_empty())
    {
        return Err(RouteError::NullMx {
            domain: domain.to_string(),
        });
    }
    records.shuffle(rng);
    // A stable sort keeps the shuffled order within each preference.
    records.sort_by_key(|(preference, _)| *preference);
    let mut hosts: Vec<String> = Vec::with_capacity(records.len());
    for (_, exchange) in records {
        let name = exchange.trim_end_matches('.').to_ascii_lowercase();
        if !hosts.contains(&name) {
            hosts.push(name);
        }
    }
    Ok(hosts)
}

/// Resolves next hops and host addresses, through hickory-resolver.
pub struct Router {
    statics: StaticRoutes,
    resolver: TokioResolver,
}

impl Router {
    /// A router over a new [`resolver`] for `config`.
    pub fn new(config: &Config) -> Router {
        Router::with_resolver(config, resolver(config))
    }

    /// A router asking `resolver` (the process's shared one).
    pub fn with_resolver(config: &Config, resolver: TokioResolver) -> Router {
        Router {
            statics: StaticRoutes::from_config(config),
            resolver,
        }
    }

    /// The resolver, shared with inbound authentication (SPF, DKIM, DMARC)
    /// so the process has one DNS cache.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// Where mail for `domain` goes. The hop carries this attempt's DNS
    /// budget, which the MX lookup has already drawn on.
    pub async fn next_hop(&self, domain: &str) -> Result<NextHop, RouteError> {
        if let Some(hop) = self.statics.lookup(domain) {
            return Ok(hop);
        }
        let port = self.statics.port();
        let dns = self.statics.budget();
        if domain.parse::<IpAddr>().is_ok() {
            // An address literal recipient ("user@[192.0.2.1]") arrives here
            // without brackets: deliver to it directly.
            return Ok(NextHop {
                kind: NextHopKind::ImplicitMx,
                transport: Transport::Smtp,
                hosts: vec![Host {
                    name: domain.to_string(),
                    port,
                }],
                dns,
            });
        }
        let fqdn = fully_qualified(domain);
        match dns
            .spend(domain, self.resolver.mx_lookup(fqdn.as_str()))
            .await
        {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    return Ok(implicit_mx(domain, port, dns));
                }
                let names = order_mx(domain, records, &mut rand::thread_rng())?;
                Ok(NextHop {
                    kind: NextHopKind::Mx,
                    transport: Transport::Smtp,
                    hosts: names.into_iter().map(|name| Host { name, port }).collect(),
                    dns,
                })
            }
            Err(Lookup::NoRecords) => Ok(implicit_mx(domain, port, dns)),
            Err(Lookup::NxDomain) => Err(RouteError::NoSuchDomain {
                domain: domain.to_string(),
            }),
            Err(Lookup::Failed(reason)) => Err(RouteError::Temporary {
                name: domain.to_string(),
                reason,
            }),
        }
    }

    /// The addresses of `host` (one of `hop`'s hosts), A before AAAA, within
    /// what is left of the hop's DNS budget. An IP literal is returned as is.
    ///
    /// AAAA is asked only when A gives no address. The host has no address
    /// (a permanent answer) only when both queries said so: NXDOMAIN, or
    /// NOERROR without records. A failed query (REFUSED, SERVFAIL, timeout)
    /// makes the answer temporary, whatever the other one said.
    pub async fn addresses(&self, hop: &NextHop, host: &Host) -> Result<Vec<IpAddr>, RouteError> {
        if let Some(address) = host.literal() {
            return Ok(vec![address]);
        }
        let fqdn = fully_qualified(&host.name);
        let v4 = hop
            .dns
            .spend(&host.name, self.resolver.ipv4_lookup(fqdn.as_str()))
            .await
            .map(|lookup| addresses_in(&lookup));
        let v4 = match v4 {
            Ok(addresses) if !addresses.is_empty() => return Ok(addresses),
            Ok(_) => Lookup::NoRecords,
            Err(verdict) => verdict,
        };
        let v6 = hop
            .dns
            .spend(&host.name, self.resolver.ipv6_lookup(fqdn.as_str()))
            .await
            .map(|lookup| addresses_in(&lookup));
        let v6 = match v6 {
            Ok(addresses) if !addresses.is_empty() => return Ok(addresses),
            Ok(_) => Lookup::NoRecords,
            Err(verdict) => verdict,
        };
        match (v4, v6) {
            (Lookup::Failed(reason), _) | (_, Lookup::Failed(reason)) => {
                Err(RouteError::Temporary {
                    name: host.name.clone(),
                    reason,
                })
            }
            (Lookup::NxDomain, _) | (_, Lookup::NxDomain) => Err(RouteError::NoSuchDomain {
                domain: host.name.clone(),
            }),
            (Lookup::NoRecords, Lookup::NoRecords) => Err(RouteError::NoAddress {
                host: host.name.clone(),
            }),
        }
    }
}

/// A resolver using `[dns] nameservers` (UDP and TCP each), else the
/// system resolver configuration (else 127.0.0.1:53, with a warning).
///
/// One query may use the whole of `dns.timeout` and is not repeated: the
/// resolver's own retries would only multiply the wait, and the callers
/// bound their lookups together ([`DnsBudget`]).
pub fn resolver(config: &Config) -> TokioResolver {
    let tune = |options: &mut ResolverOpts| {
        options.timeout = config.dns.timeout;
        options.attempts = 1;
        options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    };
    let mut options = ResolverOpts::default();
    tune(&mut options);
    options.use_hosts_file = ResolveHosts::Never;
    options.negative_max_ttl = Some(Duration::from_secs(60));
    let build = |resolver_config: ResolverConfig, options: ResolverOpts| {
        TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
    };
    let from_nameservers = |nameservers: &[std::net::SocketAddr]| {
        let servers = nameservers
            .iter()
            .map(|address| {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                server
            })
            .collect();
        ResolverConfig::from_name_servers(servers)
    };
    let configured = if config.dns.nameservers.is_empty() {
        match hickory_resolver::system_conf::read_system_conf() {
            Ok((system, mut system_options)) => {
                tune(&mut system_options);
                build(system, system_options)
            }
            Err(error) => Err(NetError::Msg(error.to_string())),
        }
    } else {
        build(from_nameservers(&config.dns.nameservers), options.clone())
    };
    configured.unwrap_or_else(|error| {
        // Routes and a smarthost work without DNS, so this is no reason to
        // refuse to start: MX lookups will defer.
        tracing::warn!(
            %error,
            "cannot set up the configured resolver; using 127.0.0.1:53"
        );
        build(
            from_nameservers(&[std::net::SocketAddr::from(([127, 0, 0, 1], 53))]),
            options,
        )
        .expect("a resolver for one plain UDP/TCP nameserver always builds")
    })
}

fn implicit_mx(domain: &str, port: u16, dns: DnsBudget) -> NextHop {
    NextHop {
        kind: NextHopKind::ImplicitMx,
        transport: Transport::Smtp,
        hosts: vec![Host {
            name: domain.trim_end_matches('.').to_ascii_lowercase(),
            port,
        }],
        dns,
    }
}

/// The A and AAAA records of a lookup's answer.
fn addresses_in(lookup: &hickory_resolver::lookup::Lookup) -> Vec<IpAddr> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

/// A trailing dot, so no search domain is ever appended.
fn fully_qualified(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// What a failed lookup says about the name.
#[derive(Debug)]
enum Lookup {
    /// NOERROR without records of the asked type: final.
    NoRecords,
    /// NXDOMAIN: the name does not exist, final.
    NxDomain,
    /// Any other RCODE, a timeout, no nameserver reachable: try again later.
    Failed(String),
}

/// Only NOERROR and NXDOMAIN are answers about the name; every other RCODE
/// (SERVFAIL, REFUSED, NOTIMP, FORMERR…) is the resolver's problem.
fn classify(name: &str, error: &NetError) -> Lookup {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => match no_records.response_code {
            ResponseCode::NoError => Lookup::NoRecords,
            ResponseCode::NXDomain => Lookup::NxDomain,
            code => Lookup::Failed(format!("{name}: {code}")),
        },
        NetError::Dns(DnsError::ResponseCode(code)) => Lookup::Failed(format!("{name}: {code}")),
        NetError::Timeout => Lookup::Failed(format!("{name}: timed out")),
        _ => Lookup::Failed(format!("{name}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("test.toml")).expect("valid test config")
    }

    #[test]
    fn exact_route_beats_wildcard() {
        let routes = StaticRoutes::from_config(&config(
            "[routes]\n\"example.test\" = \"127.0.0.1:2526\"\n\"*\" = \"relay.test:26\"\n",
        ));
        let exact = routes.lookup("Example.TEST").expect("exact route");
        assert_eq!(exact.kind, NextHopKind::Route);
        assert_eq!(exact.hosts[0].name, "127.0.0.1");
        assert_eq!(exact.hosts[0].port, 2526);
        let wildcard = routes.lookup("other.test").expect("wildcard route");
        assert_eq!(wildcard.hosts[0].name, "relay.test");
        assert_eq!(wildcard.hosts[0].port, 26);
    }

    #[test]
    fn no_route_means_mx_lookup() {
        let routes = StaticRoutes::from_config(&config(
            "[delivery]\nport = 2600\n[routes]\n\"example.test\" = \"mx.test\"\n",
        ));
        assert!(routes.lookup("other.test").is_none());
        assert_eq!(routes.port(), 2600);
        // A route without a port uses delivery.port.
        assert_eq!(routes.lookup("example.test").unwrap().hosts[0].port, 2600);
    }

    #[test]
    fn smarthost_takes_everything() {
        let routes = StaticRoutes::from_config(&config(
            "[delivery]\nrelay_host = \"smart.test:587\"\n[routes]\n\"example.test\" = \"x:1\"\n",
        ));
        let hop = routes.lookup("example.test").expect("smarthost");
        assert_eq!(hop.kind, NextHopKind::Smarthost);
        assert_eq!(
            hop.hosts,
            vec![Host {
                name: "smart.test".into(),
                port: 587
            }]
        );
    }

    #[test]
    fn mx_records_are_ordered_by_preference() {
        let mut rng = StdRng::seed_from_u64(3);
        let hosts = order_mx(
            "example.test",
            vec![
                (20, "b.example.test.".into()),
                (10, "A.example.test.".into()),
                (30, "c.example.test.".into()),
            ],
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            hosts,
            ["a.example.test", "b.example.test", "c.example.test"]
        );
    }

    #[test]
    fn equal_preferences_come_in_random_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut first_seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let hosts = order_mx(
                "example.test",
                vec![
                    (10, "a.test.".into()),
                    (10, "b.test.".into()),
                    (5, "first.test.".into()),
                ],
                &mut rng,
            )
            .unwrap();
            assert_eq!(hosts[0], "first.test");
            first_seen.insert(hosts[1].clone());
        }
        assert_eq!(first_seen.len(), 2, "both orders of the equal pair occur");
    }

    #[test]
    fn null_mx_is_detected() {
        let mut rng = StdRng::seed_from_u64(1);
        let error = order_mx("example.test", vec![(0, ".".into())], &mut rng).unwrap_err();
        assert_eq!(
            error,
            RouteError::NullMx {
                domain: "example.test".into()
            }
        );
        assert!(error.is_permanent());
        assert_eq!(error.status().to_string(), "5.1.10");
    }

    #[tokio::test]
    async fn a_dns_budget_cuts_off_a_slow_lookup_and_refuses_once_spent() {
        let budget = DnsBudget::new(Duration::from_millis(50));
        let hang = std::future::pending::<Result<(), NetError>>();
        let started = Instant::now();
        let verdict = budget.spend("slow.test", hang).await.unwrap_err();
        assert!(matches!(verdict, Lookup::Failed(_)), "{verdict:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(budget.remaining().is_zero());
        // A clone is the same budget: the next lookup is not even started.
        let again = budget.clone();
        let verdict = again
            .spend("next.test", async { Ok::<_, NetError>(()) })
            .await
            .unwrap_err();
        assert!(
            matches!(&verdict, Lookup::Failed(reason) if reason.contains("spent")),
            "{verdict:?}"
        );
    }

    #[test]
    fn route_errors_know_if_they_are_permanent() {
        let temporary = RouteError::Temporary {
            name: "x".into(),
            reason: "SERVFAIL".into(),
        };
        assert!(!temporary.is_permanent());
        assert_eq!(temporary.status().class(), 4);
        let nxdomain = RouteError::NoSuchDomain { domain: "x".into() };
        assert!(nxdomain.is_permanent());
        assert_eq!(nxdomain.status().to_string(), "5.1.2");
    }
}

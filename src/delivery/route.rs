//! Next-hop resolution: where mail for a domain goes.
//!
//! In order: `delivery.relay_host` (the smarthost takes everything), a
//! `[routes]` entry (the exact domain, then `"*"`), the domain's MX records by
//! preference (RFC 5321 §5.1; equal preferences shuffled), and else the
//! domain's own addresses (the implicit MX). A null MX (RFC 7505) means the
//! domain accepts no mail.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioAsyncResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, Protocol, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::proto::op::ResponseCode;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::config::{Config, parse_host_port};

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

/// Where to deliver mail for one domain: hosts in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// How the hop was chosen.
    pub kind: NextHopKind,
    /// Hosts in the order to try them (at least one).
    pub hosts: Vec<Host>,
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
#[derive(Debug, Clone, Default)]
pub struct StaticRoutes {
    relay_host: Option<Host>,
    /// Lower-case domain (or "*") to host.
    routes: BTreeMap<String, Host>,
    /// Port for MX and implicit-MX hosts.
    port: u16,
}

impl StaticRoutes {
    /// Reads `delivery.relay_host`, `delivery.port` and `[routes]`. The
    /// config was validated at load, so parse errors cannot happen here; an
    /// entry that somehow does not parse is ignored with a warning.
    pub fn from_config(config: &Config) -> StaticRoutes {
        let port = config.delivery.port;
        let to_host = |text: &str, default_port: u16| match parse_host_port(text, default_port) {
            Ok((name, port)) => Some(Host { name, port }),
            Err(error) => {
                tracing::warn!(%error, "ignoring an unparsable next hop");
                None
            }
        };
        StaticRoutes {
            relay_host: config
                .delivery
                .relay_host
                .as_deref()
                .and_then(|text| to_host(text, 25)),
            routes: config
                .routes
                .iter()
                .filter_map(|(domain, hop)| {
                    Some((domain.to_ascii_lowercase(), to_host(hop, port)?))
                })
                .collect(),
            port,
        }
    }

    /// The smarthost or `[routes]` entry for `domain`: exact domain first,
    /// then `"*"`. `None` means "look up MX".
    pub fn lookup(&self, domain: &str) -> Option<NextHop> {
        if let Some(host) = &self.relay_host {
            return Some(NextHop {
                kind: NextHopKind::Smarthost,
                hosts: vec![host.clone()],
            });
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.routes
            .get(&domain)
            .or_else(|| self.routes.get("*"))
            .map(|host| NextHop {
                kind: NextHopKind::Route,
                hosts: vec![host.clone()],
            })
    }

    /// The port used for MX hosts.
    pub fn port(&self) -> u16 {
        self.port
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
    resolver: TokioAsyncResolver,
}

impl Router {
    /// A router using `[dns] nameservers` (UDP and TCP each), else the
    /// system resolver configuration (else 127.0.0.1:53, with a warning).
    pub fn new(config: &Config) -> Router {
        let mut options = ResolverOpts::default();
        options.timeout = config.dns.timeout;
        options.attempts = 2;
        options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        options.use_hosts_file = false;
        options.negative_max_ttl = Some(Duration::from_secs(60));
        let resolver = if config.dns.nameservers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok((system, mut system_options)) => {
                    system_options.timeout = config.dns.timeout;
                    system_options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
                    TokioAsyncResolver::tokio(system, system_options)
                }
                Err(error) => {
                    // Routes and a smarthost work without DNS, so this is no
                    // reason to refuse to start: MX lookups will defer.
                    tracing::warn!(
                        %error,
                        "cannot read the system resolver configuration; using 127.0.0.1:53"
                    );
                    let group = NameServerConfigGroup::from_ips_clear(
                        &[std::net::IpAddr::from([127, 0, 0, 1])],
                        53,
                        true,
                    );
                    TokioAsyncResolver::tokio(
                        ResolverConfig::from_parts(None, vec![], group),
                        options,
                    )
                }
            }
        } else {
            let mut group = NameServerConfigGroup::with_capacity(config.dns.nameservers.len() * 2);
            for address in &config.dns.nameservers {
                for protocol in [Protocol::Udp, Protocol::Tcp] {
                    let mut server = NameServerConfig::new(*address, protocol);
                    server.trust_negative_responses = true;
                    group.push(server);
                }
            }
            TokioAsyncResolver::tokio(ResolverConfig::from_parts(None, vec![], group), options)
        };
        Router {
            statics: StaticRoutes::from_config(config),
            resolver,
        }
    }

    /// Where mail for `domain` goes.
    pub async fn next_hop(&self, domain: &str) -> Result<NextHop, RouteError> {
        if let Some(hop) = self.statics.lookup(domain) {
            return Ok(hop);
        }
        let port = self.statics.port();
        if domain.parse::<IpAddr>().is_ok() {
            // An address literal recipient ("user@[192.0.2.1]") arrives here
            // without brackets: deliver to it directly.
            return Ok(NextHop {
                kind: NextHopKind::ImplicitMx,
                hosts: vec![Host {
                    name: domain.to_string(),
                    port,
                }],
            });
        }
        let fqdn = fully_qualified(domain);
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .iter()
                    .map(|mx| (mx.preference(), mx.exchange().to_ascii()))
                    .collect();
                if records.is_empty() {
                    return Ok(implicit_mx(domain, port));
                }
                let names = order_mx(domain, records, &mut rand::thread_rng())?;
                Ok(NextHop {
                    kind: NextHopKind::Mx,
                    hosts: names.into_iter().map(|name| Host { name, port }).collect(),
                })
            }
            Err(error) => match classify(domain, &error) {
                Lookup::NoRecords => Ok(implicit_mx(domain, port)),
                Lookup::NxDomain => Err(RouteError::NoSuchDomain {
                    domain: domain.to_string(),
                }),
                Lookup::Failed(reason) => Err(RouteError::Temporary {
                    name: domain.to_string(),
                    reason,
                }),
            },
        }
    }

    /// The addresses of `host`, A before AAAA. An IP literal is returned as is.
    pub async fn addresses(&self, host: &Host) -> Result<Vec<IpAddr>, RouteError> {
        if let Some(address) = host.literal() {
            return Ok(vec![address]);
        }
        let fqdn = fully_qualified(&host.name);
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let addresses: Vec<IpAddr> = lookup.iter().collect();
                if addresses.is_empty() {
                    Err(RouteError::NoAddress {
                        host: host.name.clone(),
                    })
                } else {
                    Ok(addresses)
                }
            }
            Err(error) => match classify(&host.name, &error) {
                Lookup::NoRecords => Err(RouteError::NoAddress {
                    host: host.name.clone(),
                }),
                Lookup::NxDomain => Err(RouteError::NoSuchDomain {
                    domain: host.name.clone(),
                }),
                Lookup::Failed(reason) => Err(RouteError::Temporary {
                    name: host.name.clone(),
                    reason,
                }),
            },
        }
    }
}

fn implicit_mx(domain: &str, port: u16) -> NextHop {
    NextHop {
        kind: NextHopKind::ImplicitMx,
        hosts: vec![Host {
            name: domain.trim_end_matches('.').to_ascii_lowercase(),
            port,
        }],
    }
}

/// A trailing dot, so no search domain is ever appended.
fn fully_qualified(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

enum Lookup {
    NoRecords,
    NxDomain,
    Failed(String),
}

fn classify(name: &str, error: &ResolveError) -> Lookup {
    match error.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NoError => Lookup::NoRecords,
            ResponseCode::NXDomain => Lookup::NxDomain,
            code => Lookup::Failed(format!("{name}: {code}")),
        },
        ResolveErrorKind::Timeout => Lookup::Failed(format!("{name}: timed out")),
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
        assert_eq!(routes.lookup("other.test"), None);
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

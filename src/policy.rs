//! Who may send mail where: the relay decision (RFC 5321 §3.6, §7.1).
//!
//! It lives at the crate's top level, beside the configuration it is built
//! from, because the pure session (`smtp::session`) asks it for every RCPT
//! and the protocol core must not depend on the I/O shell in `server`; the
//! decision itself is a pure function of the client and the address, so it
//! needs no round trip through the shell either.
//!
//! A recipient is accepted when its domain is one we accept mail for
//! (`accept_domains`), or when the client may relay: it connects from one of
//! `relay_networks`, or it has authenticated. Everyone else is refused, so
//! sluice is never an open relay. Pure: no I/O.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::PolicyConfig;

/// The relay policy, built once from `[policy]`.
#[derive(Debug, Clone)]
pub struct Policy {
    relay_networks: Vec<IpNet>,
    /// Lowercased, without a trailing dot.
    accept_domains: Vec<String>,
}

impl Policy {
    /// Builds the policy from the configuration.
    pub fn new(config: &PolicyConfig) -> Policy {
        Policy {
            relay_networks: config.relay_networks.clone(),
            accept_domains: config
                .accept_domains
                .iter()
                .map(|domain| domain.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// True when `client` is in `relay_networks` (IPv4-mapped IPv6 addresses
    /// count as their IPv4 address).
    pub fn is_relay_client(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.relay_networks.iter().any(|net| net.contains(&client))
    }

    /// True when anyone may send to `domain` (it is in `accept_domains`).
    pub fn accepts_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.accept_domains
            .iter()
            .any(|accepted| accepted.eq_ignore_ascii_case(domain))
    }

    /// The relay decision for one recipient domain.
    pub fn may_send_to(&self, domain: &str, relay_client: bool, authenticated: bool) -> bool {
        relay_client || authenticated || self.accepts_domain(domain)
    }

    /// The relay decision for one recipient. A local part that carries its
    /// own routing (`user%elsewhere`, `host!user`, `"user@elsewhere"`) is
    /// refused to strangers even for an accepted domain: the next hop might
    /// honour it and relay onwards (the "percent hack", RFC 5321 §3.6.1 and
    /// Appendix C), as Postfix refuses with `allow_untrusted_routing = no`.
    pub fn may_send_to_mailbox(
        &self,
        local_part: &str,
        domain: &str,
        relay_client: bool,
        authenticated: bool,
    ) -> bool {
        if relay_client || authenticated {
            return true;
        }
        let routed = local_part.contains(['%', '!', '@']);
        !routed && self.accepts_domain(domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&PolicyConfig {
            relay_networks: vec![
                "127.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            accept_domains: vec!["Example.ORG.".into()],
        })
    }

    #[test]
    fn relay_networks_match_v4_v6_and_mapped() {
        let policy = policy();
        assert!(policy.is_relay_client("127.0.0.1".parse().unwrap()));
        assert!(policy.is_relay_client("::ffff:127.0.0.1".parse().unwrap()));
        assert!(policy.is_relay_client("2001:db8::5".parse().unwrap()));
        assert!(!policy.is_relay_client("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn accept_domains_are_case_insensitive() {
        let policy = policy();
        assert!(policy.accepts_domain("example.org"));
        assert!(policy.accepts_domain("EXAMPLE.org."));
        assert!(!policy.accepts_domain("sub.example.org"));
    }

    #[test]
    fn strangers_may_not_relay() {
        let policy = policy();
        assert!(!policy.may_send_to("elsewhere.example", false, false));
        assert!(policy.may_send_to("elsewhere.example", true, false));
        assert!(policy.may_send_to("elsewhere.example", false, true));
        assert!(policy.may_send_to("example.org", false, false));
    }

    #[test]
    fn routing_in_the_local_part_is_refused_to_strangers() {
        let policy = policy();
        assert!(policy.may_send_to_mailbox("user", "example.org", false, false));
        for local in [
            "user%elsewhere.example",
            "elsewhere!user",
            "\"user@elsewhere.example\"",
        ] {
            assert!(
                !policy.may_send_to_mailbox(local, "example.org", false, false),
                "{local}"
            );
            assert!(
                policy.may_send_to_mailbox(local, "example.org", true, false),
                "{local}"
            );
            assert!(
                policy.may_send_to_mailbox(local, "example.org", false, true),
                "{local}"
            );
        }
    }
}

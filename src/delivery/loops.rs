//! Delivery loop protection: never deliver to ourselves.
//!
//! RFC 5321 §5.1: an SMTP client that finds itself in the MX list must not
//! deliver to itself (nor to hosts less preferred than itself). Without a
//! check, mail for a domain whose MX points back here (a misconfigured
//! `accept_domains`, or a stale DNS record) would go round until the hop
//! count stops it, making a copy on every turn. As Postfix, the recipient
//! fails instead: `5.4.6 mail for <domain> loops back to myself`.
//!
//! Which addresses are "ourselves" is decided from the configured
//! `[[listener]]` sockets, pure and cheap (no interface enumeration):
//! - any next hop: the exact listener socket address (IP and port);
//! - MX and implicit MX hosts also: a loopback address (127.0.0.0/8, ::1)
//!   or an unspecified one (0.0.0.0, ::, which connect to this host) on the
//!   port of a listener bound to a wildcard address. A listener on `[::]`
//!   takes IPv4 too (dual stack), one on `0.0.0.0` only IPv4.
//!
//! `[routes]` and `relay_host` are the operator's choice and are trusted
//! beyond the exact match (for instance a content filter on another local
//! port). A wildcard listener's non-loopback local addresses are not known
//! here; such an MX is caught by the hop count (RFC 5321 §6.3) instead.

use std::net::SocketAddr;

use crate::config::ListenerConfig;

use super::route::NextHopKind;

/// True when connecting to `address`, chosen as a `kind` next hop, would
/// reach one of our own `listeners`.
pub fn loops_back(listeners: &[ListenerConfig], kind: NextHopKind, address: SocketAddr) -> bool {
    let ip = address.ip().to_canonical();
    listeners.iter().any(|listener| {
        let own = listener.address.ip().to_canonical();
        if listener.address.port() != address.port() {
            return false;
        }
        if own == ip {
            return true;
        }
        match kind {
            NextHopKind::Smarthost | NextHopKind::Route => false,
            NextHopKind::Mx | NextHopKind::ImplicitMx => {
                own.is_unspecified()
                    && (ip.is_loopback() || ip.is_unspecified())
                    && (own.is_ipv6() || ip.is_ipv4())
            }
        }
    })
}

/// The reason a looping recipient fails with (Postfix's wording).
pub fn reason(domain: &str) -> String {
    format!("mail for {domain} loops back to myself")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenerKind;

    fn listeners(addresses: &[&str]) -> Vec<ListenerConfig> {
        addresses
            .iter()
            .map(|address| ListenerConfig {
                address: address.parse().expect("socket address"),
                kind: ListenerKind::Relay,
                proxy_protocol: false,
            })
            .collect()
    }

    fn check(own: &[&str], kind: NextHopKind, to: &str) -> bool {
        loops_back(&listeners(own), kind, to.parse().expect("socket address"))
    }

    const ALL: [NextHopKind; 4] = [
        NextHopKind::Mx,
        NextHopKind::ImplicitMx,
        NextHopKind::Route,
        NextHopKind::Smarthost,
    ];

    #[test]
    fn exact_listener_address_loops_for_every_kind_of_next_hop() {
        for kind in ALL {
            assert!(
                check(&["127.0.0.1:2525"], kind, "127.0.0.1:2525"),
                "{kind:?}"
            );
            assert!(check(&["[::1]:25", "192.0.2.7:25"], kind, "192.0.2.7:25"));
            assert!(check(&["[::1]:25"], kind, "[::1]:25"), "{kind:?}");
            // IPv4-mapped IPv6 is the same socket.
            assert!(check(&["127.0.0.1:25"], kind, "[::ffff:127.0.0.1]:25"));
        }
    }

    #[test]
    fn another_port_or_address_is_not_ourselves() {
        for kind in ALL {
            assert!(
                !check(&["127.0.0.1:2525"], kind, "127.0.0.1:25"),
                "{kind:?}"
            );
            assert!(!check(&["127.0.0.1:25"], kind, "127.0.0.2:25"), "{kind:?}");
            assert!(!check(&["0.0.0.0:25"], kind, "192.0.2.1:25"), "{kind:?}");
            assert!(!check(&[], kind, "127.0.0.1:25"), "{kind:?}");
        }
    }

    #[test]
    fn mx_on_loopback_loops_when_a_wildcard_listener_has_the_port() {
        for kind in [NextHopKind::Mx, NextHopKind::ImplicitMx] {
            assert!(check(&["0.0.0.0:25"], kind, "127.0.0.1:25"));
            assert!(check(&["0.0.0.0:25"], kind, "127.9.8.7:25"));
            assert!(check(&["0.0.0.0:25"], kind, "0.0.0.0:25"));
            assert!(check(&["[::]:25"], kind, "[::1]:25"));
            assert!(check(&["[::]:25"], kind, "127.0.0.1:25"), "dual stack");
            assert!(!check(&["0.0.0.0:25"], kind, "[::1]:25"), "IPv4 only");
            assert!(!check(&["0.0.0.0:587"], kind, "127.0.0.1:25"));
        }
    }

    #[test]
    fn routes_and_smarthost_are_trusted_unless_exact() {
        for kind in [NextHopKind::Route, NextHopKind::Smarthost] {
            assert!(!check(&["0.0.0.0:25"], kind, "127.0.0.1:25"), "{kind:?}");
            assert!(!check(&["[::]:25"], kind, "[::1]:25"), "{kind:?}");
        }
    }

    #[test]
    fn reason_uses_postfix_wording() {
        assert_eq!(
            reason("example.org"),
            "mail for example.org loops back to myself"
        );
    }
}

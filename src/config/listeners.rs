//! `[[listener]]` and `[tls]`: where the server listens, how, and the
//! certificate the TLS listeners need.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// What a listener is for: decides STARTTLS and AUTH rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port-25 style: STARTTLS offered when configured, AUTH optional.
    Relay,
    /// Port 587: STARTTLS and AUTH required before MAIL.
    Submission,
    /// Port 465: implicit TLS, AUTH required before MAIL.
    Submissions,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address to bind; port 0 picks a free port (tests).
    pub address: SocketAddr,
    /// Relay unless given.
    #[serde(default = "default_listener_kind")]
    pub kind: ListenerKind,
    /// Every connection starts with a PROXY protocol v1 or v2 header (a
    /// load balancer in front): its address is the client's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_protocol: bool,
}

/// `proxy_protocol = false` is not printed: it is what no key means.
fn is_false(value: &bool) -> bool {
    !value
}

fn default_listener_kind() -> ListenerKind {
    ListenerKind::Relay
}

/// `[tls]`: the inbound certificate; STARTTLS is offered when present.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
}

/// At least one listener; TLS listeners only with a certificate; no two
/// listeners on one address (port 0 excepted: each gets its own port).
pub(super) fn check(
    listeners: &[ListenerConfig],
    tls: Option<&TlsConfig>,
    invalid: Invalid,
) -> Result<(), ConfigError> {
    if listeners.is_empty() {
        return Err(invalid.at("listener", "at least one listener is needed"));
    }
    for (index, listener) in listeners.iter().enumerate() {
        if listener.kind != ListenerKind::Relay && tls.is_none() {
            return Err(invalid.at(
                format!("listener[{index}].kind"),
                format!("a {:?} listener needs a [tls] certificate", listener.kind).to_lowercase(),
            ));
        }
    }
    for (index, listener) in listeners.iter().enumerate() {
        let earlier = &listeners[..index];
        if listener.address.port() != 0
            && earlier
                .iter()
                .any(|other| other.address == listener.address)
        {
            return Err(invalid.at(
                format!("listener[{index}].address"),
                format!("{} is already used by another listener", listener.address),
            ));
        }
    }
    Ok(())
}

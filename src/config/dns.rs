//! `[dns]`: the nameservers delivery asks, and how long it may wait.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::duration;
use super::{ConfigError, Invalid, positive};

/// `[dns]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Empty: the system resolver configuration (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// The most one delivery attempt waits on DNS for one recipient domain,
    /// all its lookups together (MX, then A/AAAA of the hosts tried). One
    /// query may take all of it and is not repeated; when it is spent, the
    /// domain's recipients are deferred (4.4.3). Time spent connecting to
    /// hosts between lookups does not count.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl DnsConfig {
    /// A zero timeout would defer every MX delivery.
    pub(super) fn check(&self, invalid: Invalid) -> Result<(), ConfigError> {
        positive(invalid, "dns.timeout", self.timeout).map(|_| ())
    }
}

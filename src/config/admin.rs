//! `[admin]`: the HTTP API's address and token, and the UNIX socket the
//! command-line tools use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// `[admin]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the HTTP API listens.
    pub address: SocketAddr,
    /// Bearer token; when unset, one is generated into
    /// `<spool.path>/admin.token` at first start (`admin::token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The UNIX socket serving the same API to `sluice queue` (peers with
    /// uid 0 or the server's own); default `<spool.path>/admin.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl AdminConfig {
    /// Where the admin socket is, for the spool at `spool`.
    pub fn socket_path(&self, spool: &Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| spool.join(crate::admin::socket::SOCKET_FILE))
    }

    /// Off loopback, the API needs a token.
    pub(super) fn check(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if !self.address.ip().is_loopback() && self.token.is_none() {
            return Err(invalid.at(
                "admin.token",
                format!(
                    "required because admin.address {} is not a loopback address",
                    self.address
                ),
            ));
        }
        Ok(())
    }
}

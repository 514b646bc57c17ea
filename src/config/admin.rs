//! `[admin]`: the HTTP API's address and token.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// `[admin]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the HTTP API listens.
    pub address: SocketAddr,
    /// Bearer token; required when `address` is not loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl AdminConfig {
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

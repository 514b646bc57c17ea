//! `[local]` and `[server]`: local submission (the submit socket, the
//! maildrop) and the user `serve` runs as (DESIGN.md "Local access and
//! privileges").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// `[local]`, as written and as used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The UNIX socket `sluice sendmail` submits over (mode 0666); unset:
    /// `<spool.path>/submit.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_socket: Option<PathBuf>,
    /// The directory the setgid `sluice-maildrop` helper writes into while
    /// the server is down; unset: `<spool.path>.maildrop` (beside the spool,
    /// since the spool itself is 0700).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maildrop: Option<PathBuf>,
}

impl LocalConfig {
    /// The submit socket for a spool at `spool`.
    pub fn submit_socket(&self, spool: &Path) -> PathBuf {
        self.submit_socket
            .clone()
            .unwrap_or_else(|| spool.join("submit.sock"))
    }

    /// The maildrop directory for a spool at `spool`.
    pub fn maildrop(&self, spool: &Path) -> PathBuf {
        self.maildrop.clone().unwrap_or_else(|| {
            let mut name = spool.as_os_str().to_os_string();
            name.push(".maildrop");
            PathBuf::from(name)
        })
    }
}

/// `[server]`, as written and as used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Started as root, `serve` binds its listeners, then becomes this user
    /// (and its groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ServerConfig {
    pub(super) fn check(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if let Some(user) = &self.user
            && (user.is_empty() || user.contains(|c: char| c.is_whitespace() || c == ':'))
        {
            return Err(invalid.at("server.user", "must be a user name"));
        }
        Ok(())
    }
}

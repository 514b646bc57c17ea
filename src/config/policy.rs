//! `[policy]` and `[[user]]`: who may relay, to which domains anyone may
//! send, and the accounts AUTH accepts.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// `[policy]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Clients in these networks may relay to any domain without AUTH.
    pub relay_networks: Vec<IpNet>,
    /// Anyone may send to these domains (we are their MX).
    pub accept_domains: Vec<String>,
}

/// One `[[user]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The AUTH user name.
    pub name: String,
    /// An argon2id PHC string, from `sluice hash-password`.
    pub password_hash: String,
}

impl PolicyConfig {
    /// DESIGN.md: sluice is never an open relay. A network holding every
    /// address would make it one.
    pub(super) fn check(&self, invalid: Invalid) -> Result<(), ConfigError> {
        if let Some(network) = self.relay_networks.iter().find(|n| n.prefix_len() == 0) {
            return Err(invalid.at(
                "policy.relay_networks",
                format!("{network} holds every address and would make sluice an open relay"),
            ));
        }
        Ok(())
    }
}

/// Every user has a name and a password hash AUTH can check.
pub(super) fn check_users(users: &[UserConfig], invalid: Invalid) -> Result<(), ConfigError> {
    for (index, user) in users.iter().enumerate() {
        if user.name.is_empty() {
            return Err(invalid.at(format!("user[{index}].name"), "must not be empty"));
        }
        argon2::PasswordHash::new(&user.password_hash).map_err(|error| {
            invalid.at(
                format!("user[{index}].password_hash"),
                format!("not a PHC hash ({error}); make one with `sluice hash-password`"),
            )
        })?;
    }
    Ok(())
}

//! What `sluice check-config` prints: the effective configuration as TOML,
//! in the file's own forms ("5d", "35MiB", "host:port"), with secrets
//! redacted, and the rule that a redacted copy cannot be loaded.

use super::file::ConfigFile;
use super::{Config, ConfigError, Invalid};

/// What `sluice check-config` prints in place of a secret; refused as a
/// value, so a saved copy of that output cannot run with it.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// The effective configuration as TOML, defaults included, secrets too.
    /// Read back by [`Config::parse`], it gives the same settings.
    pub fn to_toml(&self) -> String {
        toml::to_string(&ConfigFile::from(self)).expect("the config tree always serializes")
    }

    /// A copy with every secret replaced by [`REDACTED`]: `[admin] token`,
    /// the `delivery.relay_auth` password and each `[[user]]`
    /// `password_hash` (a hash is not the password, but it allows offline
    /// guessing). What `sluice check-config` prints, so its output can be
    /// pasted into a ticket; a saved copy is refused by [`Config::parse`]
    /// until the real secrets are put back.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        if let Some(token) = &mut copy.admin.token {
            *token = REDACTED.to_string();
        }
        if let Some(auth) = &mut copy.delivery.relay_auth {
            auth.password = REDACTED.to_string();
        }
        for user in &mut copy.users {
            user.password_hash = REDACTED.to_string();
        }
        for subscriber in &mut copy.events {
            if let Some(secret) = &mut subscriber.secret {
                *secret = REDACTED.to_string();
            }
        }
        // redis://user:password@host: the password part.
        if let Some(url) = &mut copy.cluster.redis
            && let Some((scheme, rest)) = url.split_once("://")
            && let Some((credentials, host)) = rest.rsplit_once('@')
            && let Some((user, _)) = credentials.split_once(':')
        {
            *url = format!("{scheme}://{user}:{REDACTED}@{host}");
        }
        copy
    }
}

/// Refuses a file where a secret is still [`REDACTED`], naming its key.
pub(super) fn refuse_placeholders(file: &ConfigFile, invalid: Invalid) -> Result<(), ConfigError> {
    let mut secrets: Vec<(String, &str)> = Vec::new();
    if let Some(token) = &file.admin.token {
        secrets.push(("admin.token".into(), token));
    }
    if let Some(auth) = &file.delivery.relay_auth {
        secrets.push(("delivery.relay_auth.password".into(), &auth.password));
    }
    for (index, user) in file.users.iter().enumerate() {
        secrets.push((format!("user[{index}].password_hash"), &user.password_hash));
    }
    for (index, subscriber) in file.events.iter().enumerate() {
        if let Some(secret) = &subscriber.secret {
            secrets.push((format!("events[{index}].secret"), secret));
        }
    }
    match secrets.into_iter().find(|(_, value)| *value == REDACTED) {
        Some((key, _)) => Err(invalid.at(
            key,
            format!(
                "{REDACTED:?} is the placeholder `sluice check-config` prints for a secret; \
                 put the real value back"
            ),
        )),
        None => Ok(()),
    }
}

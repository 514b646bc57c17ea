//! Reload (SIGHUP): the configuration file is read again and, when all of
//! it loads, put in force for new connections and new delivery attempts.
//!
//! - `files`: every file a configuration names (certificates, keys, CA
//!   file, DKIM keys), loaded the one way start, reload and `check-config`
//!   share;
//! - `changes`: which keys differ, for the log line.
//!
//! A reload is all or nothing: the file is parsed, every file it names is
//! loaded and every new listener is bound before anything changes. Then the
//! configuration snapshot, the inbound settings ([`crate::server::Inbound`])
//! and the delivery engine are swapped, listeners no longer configured are
//! closed, and `smtp.address` is rewritten. Connections and attempts in
//! progress keep the settings they started with; nothing queued is touched.

pub mod changes;
pub mod files;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::context::Context;
use crate::delivery;
use crate::runfile::RunFile;
use crate::server::Server;

/// What a reload swaps, and where the configuration comes from.
pub struct Reloader {
    /// The file `serve` was started with; `None` for the embedded defaults,
    /// which a reload keeps.
    pub path: Option<PathBuf>,
    pub ctx: Context,
    pub server: Arc<Server>,
    pub delivery: delivery::Reloader,
    /// `<spool>/smtp.address`, rewritten when the listeners change.
    pub smtp_address_file: Option<RunFile>,
}

impl Reloader {
    /// Reads the configuration file again and puts it in force, or refuses
    /// it whole (the old settings stay). Logs one line either way and counts
    /// the result in `sluice_config_reloads_total`.
    pub async fn reload(&mut self) {
        let old = self.ctx.config();
        match self.try_reload(&old).await {
            Ok(new) => {
                let changed = changes::changed_keys(&old, &new);
                let restart = changes::needing_restart(&changed);
                let file = self.file_name();
                if changed.is_empty() {
                    tracing::info!(file = %file, "configuration reloaded: nothing changed");
                } else if restart.is_empty() {
                    tracing::info!(file = %file, changed = %changed.join(","), "configuration reloaded");
                } else {
                    tracing::info!(
                        file = %file,
                        changed = %changed.join(","),
                        restart_needed = %restart.join(","),
                        "configuration reloaded; some changes take effect only after a restart"
                    );
                }
                self.ctx.metrics.config_reloaded("ok");
            }
            Err(error) => {
                tracing::error!(
                    "configuration reload refused, the old settings stay: {}",
                    one_line(&error.to_string())
                );
                self.ctx.metrics.config_reloaded("failed");
            }
        }
    }

    async fn try_reload(&mut self, old: &Config) -> Result<Arc<Config>, ConfigError> {
        let path = self.path.clone();
        let (new, files) = tokio::task::spawn_blocking(move || {
            let config = match &path {
                Some(path) => Config::load(Some(path))?.config,
                None => Config::default(),
            };
            let files = files::load(&config, path.as_deref())?;
            Ok::<_, ConfigError>((config, files))
        })
        .await
        .map_err(|error| self.invalid("", format!("loading stopped: {error}")))??;
        if new.spool.path != old.spool.path {
            return Err(self.invalid(
                "spool.path",
                format!(
                    "cannot change while the server runs (it uses {}); restart to use another spool",
                    old.spool.path.display()
                ),
            ));
        }
        let files::Files {
            server_tls,
            tls_clients,
            dkim,
            recipients,
        } = files;
        let prepared = self
            .server
            .prepare(&new, server_tls, dkim, recipients)
            .await
            .map_err(|(index, error)| {
                let address = new.listeners[index].address;
                self.invalid(
                    &format!("listener[{index}].address"),
                    format!("cannot listen on {address}: {error}"),
                )
            })?;
        let new = Arc::new(new);
        self.ctx.replace_config(new.clone());
        self.server.commit(prepared);
        self.delivery.reload(old, &new, tls_clients);
        if new.log.level != old.log.level {
            crate::logging::set_level(&new.log.level);
        }
        if new.listeners.len() != old.listeners.len()
            || new
                .listeners
                .iter()
                .zip(&old.listeners)
                .any(|(new, old)| new.address != old.address || new.kind != old.kind)
        {
            self.record_listeners();
        }
        Ok(new)
    }

    /// Rewrites `smtp.address` with the listeners bound now.
    fn record_listeners(&mut self) {
        let text = crate::runfile::format_listeners(&self.server.local_addrs());
        let result = match &self.smtp_address_file {
            Some(file) => file.rewrite(&text),
            None => {
                let path = crate::runfile::smtp_address_file(&self.ctx.config().spool.path);
                RunFile::write(path, &text).map(|file| self.smtp_address_file = Some(file))
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "cannot record the SMTP listener addresses");
        }
    }

    fn file_name(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "<embedded defaults>".to_string(),
        }
    }

    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: PathBuf::from(self.file_name()),
            key: key.to_string(),
            message,
        }
    }
}

/// `text` on one line: a TOML parse error comes with a snippet of the file
/// (`31 | [limits`, `   |        ^`), left out here since the message
/// already gives the line and column.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| {
            let snippet = line
                .split_once('|')
                .is_some_and(|(number, _)| number.trim().chars().all(|c| c.is_ascii_digit()));
            !line.is_empty() && !snippet
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_toml_error_is_told_on_one_line_without_the_snippet() {
        let error = "config file /etc/sluice.toml: TOML parse error at line 31, column 8\n   |\n\
                     31 | [limits\n   |        ^\ninvalid table header\nexpected `.`, `]`\n";
        assert_eq!(
            super::one_line(error),
            "config file /etc/sluice.toml: TOML parse error at line 31, column 8; \
             invalid table header; expected `.`, `]`"
        );
    }
}

//! Every file the configuration names, loaded the one way `serve`, a reload
//! and `check-config` all use: the `[tls]` certificate and key, the
//! `delivery.tls_ca` file, the `[[dkim]]` keys, the `[recipients]` files. A file that cannot be used
//! is a [`ConfigError::Invalid`] naming the config file and the key that
//! names it, so all three fail in the same place with the same words.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::auth::dkim::Signer;
use crate::config::{Config, ConfigError};
use crate::delivery::tls::{TlsClients, TlsSetupError};
use crate::frontdoor::recipients::RecipientList;
use crate::server::tls::{self, TlsError};

/// What the files named by one configuration hold, ready to use.
pub struct Files {
    /// The inbound certificate and key (`[tls]`), when configured.
    pub server_tls: Option<Arc<ServerConfig>>,
    /// The outbound TLS client configurations (webpki roots plus
    /// `delivery.tls_ca`).
    pub tls_clients: TlsClients,
    /// The `[[dkim]]` signing keys.
    pub dkim: Signer,
    /// The `[recipients] files`.
    pub recipients: Arc<RecipientList>,
}

/// Loads every file `config` names; `path` is the config file (for the
/// message), `None` for the embedded defaults.
pub fn load(config: &Config, path: Option<&Path>) -> Result<Files, ConfigError> {
    let path = path.unwrap_or(Path::new("<embedded defaults>"));
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let server_tls = match &config.tls {
        Some(settings) => Some(tls::server_config(settings).map_err(|error| {
            let key = match &error {
                TlsError::Read { path, .. } if *path == settings.certificate => "tls.certificate",
                TlsError::NoCertificate { .. } => "tls.certificate",
                TlsError::Read { .. }
                | TlsError::NoKey { .. }
                | TlsError::KeyTooOpen(_)
                | TlsError::Rejected { .. } => "tls.private_key",
            };
            invalid(key, error.to_string())
        })?),
        None => None,
    };
    let tls_clients = TlsClients::from_config(config).map_err(|error| {
        let key = match &error {
            TlsSetupError::CaFile { .. } => "delivery.tls_ca",
            TlsSetupError::Rustls(_) => "delivery.tls",
        };
        invalid(key, error.to_string())
    })?;
    let dkim = Signer::load(&config.dkim).map_err(|error| invalid(&error.key(), error.message))?;
    let recipients = RecipientList::load(&config.front_door.recipients.files)
        .map_err(|error| invalid("recipients.files", error.to_string()))?;
    Ok(Files {
        server_tls,
        tls_clients,
        dkim,
        recipients: Arc::new(recipients),
    })
}

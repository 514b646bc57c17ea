//! The inbound TLS configuration: the `[tls]` certificate chain and key,
//! TLS 1.2 and 1.3 only (rustls with the ring provider).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be opened or read.
    #[error("tls: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("tls: {path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    /// The key file holds no PEM private key.
    #[error("tls: {path} contains no PEM private key")]
    NoKey { path: PathBuf },
    /// The key file is readable by others.
    #[error("tls: {0}")]
    KeyTooOpen(#[from] crate::keyfile::KeyFileError),
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("tls: certificate {certificate} / key {key}: {source}")]
    Rejected {
        certificate: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Loads `[tls]` into a rustls server configuration offering TLS 1.2 and 1.3.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certificates = load_certificates(&tls.certificate)?;
    let key = load_key(&tls.private_key)?;
    let rejected = |source| TlsError::Rejected {
        certificate: tls.certificate.clone(),
        key: tls.private_key.clone(),
        source,
    };
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .map_err(rejected)?;
    Ok(Arc::new(config))
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    crate::keyfile::check_private(path)?;
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

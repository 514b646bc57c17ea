//! Outbound TLS: the two client configurations and how a destination's
//! policy picks between them.
//!
//! `required` (and the authenticated smarthost) verifies the certificate
//! against the next-hop host name with the webpki roots plus
//! `delivery.tls_ca`; `opportunistic` encrypts without verifying, because
//! an unverified TLS session is still better than plaintext (RFC 7435).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::{Config, TlsPolicy};

use super::route::NextHopKind;

/// Problems building the TLS client configuration (reported at startup).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The extra CA file is missing, unreadable or holds no certificate.
    #[error("delivery.tls_ca {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How to use TLS with one next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Never.
    Disabled,
    /// STARTTLS when offered, certificate not checked, plaintext fallback
    /// on this host when the handshake fails.
    Opportunistic,
    /// STARTTLS with a certificate valid for the host name, or defer.
    Required,
    /// TLS from the first byte (port 465, RFC 8314), certificate checked.
    Implicit,
    /// STARTTLS authenticated by DANE TLSA records (RFC 7672), or defer.
    Dane,
}

impl TlsMode {
    /// The mode for a next hop: an authenticated smarthost always uses TLS
    /// (implicit on port 465, else required STARTTLS), so the password never
    /// travels in clear; everything else follows the domain's policy.
    pub fn choose(policy: TlsPolicy, kind: NextHopKind, port: u16, with_auth: bool) -> TlsMode {
        if kind == NextHopKind::Smarthost && with_auth {
            return if port == 465 {
                TlsMode::Implicit
            } else {
                TlsMode::Required
            };
        }
        if kind == NextHopKind::Smarthost && port == 465 && policy != TlsPolicy::Disabled {
            return TlsMode::Implicit;
        }
        match policy {
            TlsPolicy::Disabled => TlsMode::Disabled,
            TlsPolicy::Opportunistic => TlsMode::Opportunistic,
            TlsPolicy::Required => TlsMode::Required,
        }
    }

    /// True when the certificate must verify.
    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::Required | TlsMode::Implicit | TlsMode::Dane)
    }
}

/// The connectors for verified and unverified TLS.
#[derive(Clone)]
pub struct TlsClients {
    /// Checks the chain against webpki roots plus `delivery.tls_ca`, and the
    /// host name.
    pub verified: TlsConnector,
    /// Accepts any certificate (opportunistic TLS).
    pub unverified: TlsConnector,
    /// The roots of `verified` (webpki plus `delivery.tls_ca`), for the
    /// MTA-STS testing verifier.
    pub roots: Arc<RootCertStore>,
}

impl TlsClients {
    /// Builds both from `[delivery]`; TLS 1.2 and 1.3 only.
    pub fn from_config(config: &Config) -> Result<TlsClients, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.delivery.tls_ca {
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| TlsSetupError::CaFile {
                        path: path.display().to_string(),
                        reason: error.to_string(),
                    })?;
            }
        }
        let roots = Arc::new(roots);
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let unverified = connector_with(
            provider.clone(),
            Arc::new(AcceptAnyCertificate {
                signatures: HandshakeSignatures(provider),
            }),
        )?;
        Ok(TlsClients {
            verified: TlsConnector::from(Arc::new(verified)),
            unverified,
            roots,
        })
    }

    /// The connector for `mode`.
    pub fn for_mode(&self, mode: TlsMode) -> &TlsConnector {
        if mode.verifies() {
            &self.verified
        } else {
            &self.unverified
        }
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let error = |reason: String| TlsSetupError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let certificates: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(file))
            .collect::<Result<_, _>>()
            .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no PEM certificate in the file".into()));
    }
    Ok(certificates)
}

/// Opportunistic TLS (RFC 7435): encrypt, but take any certificate. The
/// handshake signature is still checked, so the session is at least bound to
/// the key in the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate {
    signatures: HandshakeSignatures,
}

/// A TLS 1.3 and 1.2 client whose server certificates `verifier` judges
/// (opportunistic TLS, DANE, MTA-STS testing).
pub fn connector_with(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<TlsConnector, rustls::Error> {
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The handshake signature checks of a [`ServerCertVerifier`] that judges
/// the certificate itself but not the signatures: those stay rustls's own.
#[derive(Debug)]
pub struct HandshakeSignatures(pub Arc<CryptoProvider>);

impl HandshakeSignatures {
    /// [`ServerCertVerifier::verify_tls12_signature`].
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// [`ServerCertVerifier::verify_tls13_signature`].
    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// [`ServerCertVerifier::supported_verify_schemes`].
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_smarthost_always_uses_tls() {
        for policy in [
            TlsPolicy::Disabled,
            TlsPolicy::Opportunistic,
            TlsPolicy::Required,
        ] {
            assert_eq!(
                TlsMode::choose(policy, NextHopKind::Smarthost, 587, true),
                TlsMode::Required
            );
            assert_eq!(
                TlsMode::choose(policy, NextHopKind::Smarthost, 465, true),
                TlsMode::Implicit
            );
        }
    }

    #[test]
    fn other_next_hops_follow_the_policy() {
        assert_eq!(
            TlsMode::choose(TlsPolicy::Opportunistic, NextHopKind::Mx, 25, false),
            TlsMode::Opportunistic
        );
        assert_eq!(
            TlsMode::choose(TlsPolicy::Disabled, NextHopKind::Route, 465, false),
            TlsMode::Disabled
        );
        assert_eq!(
            TlsMode::choose(TlsPolicy::Required, NextHopKind::ImplicitMx, 25, false),
            TlsMode::Required
        );
        assert!(TlsMode::Required.verifies() && !TlsMode::Opportunistic.verifies());
    }

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let mut config = Config::default();
        config.delivery.tls_ca = Some("/nonexistent/ca.pem".into());
        let error = TlsClients::from_config(&config).err().expect("an error");
        assert!(
            error
                .to_string()
                .contains("delivery.tls_ca /nonexistent/ca.pem")
        );
    }
}

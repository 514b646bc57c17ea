//! Which TLS policy governs a delivery, and why: DANE (RFC 7672), then
//! MTA-STS (RFC 8461), then `[tls_policy]`, then `delivery.tls`.
//!
//! [`Secure`] holds the state (built from a `Config` and the queue in one
//! place, [`Secure::from_config`]); [`Secure::for_domain`] looks up what the
//! recipient domain publishes once per attempt, and
//! [`DomainSecurity::for_host`] decides each MX host's [`HostPolicy`].
//! DANE and MTA-STS apply to MX (and implicit MX) next hops only: a
//! smarthost or a `[routes]` entry is the operator's own choice.

use std::sync::{Arc, Mutex};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RecordType;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sluice_queue::Queue;
use tokio_rustls::TlsConnector;

use super::dane::{self, Dane, HostDane, TlsaRecord};
use super::mta_sts::{ActivePolicy, Mode, MtaSts};
use super::route::{Host, NextHop, NextHopKind};
use super::tls::TlsMode;
use crate::config::Config;
use crate::metrics::Metrics;

/// DANE and MTA-STS state for delivery.
#[derive(Clone)]
pub struct Secure {
    /// TLSA lookups, and the raw (AD-bit) DNS queries MTA-STS uses too.
    pub dane: Dane,
    /// Policy discovery, fetch and cache.
    pub mta_sts: MtaSts,
}

impl Secure {
    /// From `delivery.dane`, `delivery.mta_sts` and `[dns]`; the policy
    /// cache is the `mta-sts` side tree of `queue` when one is given (the
    /// server), none for `sluice route`.
    pub fn from_config(config: &Config, queue: Option<&Queue>) -> Secure {
        let dane = Dane::from_config(config);
        if let Some(reason) = dane.disabled_reason() {
            tracing::warn!("DANE is off: {reason}");
        }
        let cache = queue.and_then(|queue| match queue.side_tree("mta-sts") {
            Ok(tree) => Some(tree),
            Err(error) => {
                tracing::warn!(%error, "no MTA-STS policy cache; policies are fetched each time");
                None
            }
        });
        Secure {
            dane,
            mta_sts: MtaSts::new(config.delivery.mta_sts, cache),
        }
    }

    /// What `domain` publishes, for the hosts of `hop`: its MTA-STS policy
    /// and whether its MX RRset is DNSSEC-secure.
    pub async fn for_domain(
        &self,
        domain: &str,
        hop: &NextHop,
        resolver: &TokioResolver,
        connector: &TlsConnector,
    ) -> DomainSecurity {
        // An address literal has no DNS and no policy.
        if !matches!(hop.kind, NextHopKind::Mx | NextHopKind::ImplicitMx)
            || domain.parse::<std::net::IpAddr>().is_ok()
        {
            return DomainSecurity::default();
        }
        let record_type = if hop.kind == NextHopKind::Mx {
            RecordType::MX
        } else {
            RecordType::A
        };
        // Both lookups at once: they are independent.
        let (mx_secure, mta_sts) = tokio::join!(
            self.dane.is_secure(domain, record_type),
            self.mta_sts
                .policy_for(domain, &self.dane, resolver, connector)
        );
        let mta_sts = mta_sts.filter(|active| active.cached.policy.mode != Mode::None);
        DomainSecurity {
            domain: domain.to_string(),
            applies: true,
            mx_secure,
            mta_sts,
            dane: Some(self.dane.clone()),
        }
    }
}

/// What one recipient domain publishes, for one attempt.
#[derive(Clone, Default)]
pub struct DomainSecurity {
    domain: String,
    /// An MX or implicit-MX next hop.
    applies: bool,
    /// The MX RRset (or, for an implicit MX, the A RRset) is secure.
    pub mx_secure: bool,
    /// The MTA-STS policy in force (mode enforce or testing).
    pub mta_sts: Option<ActivePolicy>,
    dane: Option<Dane>,
}

/// How one MX host is to be secured.
#[derive(Debug, Clone)]
pub enum HostPolicy {
    /// DANE: TLS mandatory, authenticated by these records.
    Dane(Vec<TlsaRecord>),
    /// The host cannot be used in this attempt under the policy named by
    /// `policy` ("dane" or "mta-sts"); `reason` says why, naming it.
    Refused {
        policy: &'static str,
        reason: String,
    },
    /// MTA-STS enforce: TLS mandatory, certificate valid for the host name.
    MtaStsEnforce,
    /// MTA-STS testing: as the static policy, reporting what would fail.
    MtaStsTesting,
    /// `[tls_policy]` or `delivery.tls`.
    Static,
}

impl DomainSecurity {
    /// The policy for `host`, in precedence order: usable TLSA records of a
    /// host of a secure MX RRset, then the MTA-STS policy, then static.
    pub async fn for_host(&self, host: &Host) -> HostPolicy {
        if !self.applies {
            return HostPolicy::Static;
        }
        if self.mx_secure
            && let Some(dane) = &self.dane
        {
            match dane.for_host(&host.name, host.port).await {
                HostDane::Records(records) => return HostPolicy::Dane(records),
                // RFC 7672 §2.2: never fall back to less security.
                HostDane::Failed(reason) => {
                    return HostPolicy::Refused {
                        policy: "dane",
                        reason: format!("DANE for {}: {reason}", host.name),
                    };
                }
                HostDane::NotApplicable => {}
            }
        }
        let Some(active) = &self.mta_sts else {
            return HostPolicy::Static;
        };
        let policy = &active.cached.policy;
        match policy.mode {
            Mode::Enforce if !policy.allows(&host.name) => HostPolicy::Refused {
                policy: "mta-sts",
                reason: format!(
                    "{}: MX host {} does not match the policy (mx: {})",
                    self.mta_sts_label(),
                    host.name,
                    policy.mx.join(", ")
                ),
            },
            Mode::Enforce => HostPolicy::MtaStsEnforce,
            Mode::Testing => {
                if !policy.allows(&host.name) {
                    tracing::warn!(
                        domain = %self.domain,
                        host = %host.name,
                        "MTA-STS testing: MX host does not match the policy; enforce would refuse it"
                    );
                }
                HostPolicy::MtaStsTesting
            }
            Mode::None => HostPolicy::Static,
        }
    }

    /// `MTA-STS policy of <domain> (mode, id)`, for reply texts.
    pub fn mta_sts_label(&self) -> String {
        match &self.mta_sts {
            Some(active) => format!(
                "MTA-STS policy of {} ({}, id {})",
                self.domain, active.cached.policy.mode, active.cached.id
            ),
            None => format!("MTA-STS policy of {}", self.domain),
        }
    }

    /// The recipient domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl HostPolicy {
    /// The TLS mode: DANE and MTA-STS enforce make TLS mandatory; otherwise
    /// `fallback` (from the static policy).
    pub fn mode(&self, fallback: TlsMode) -> TlsMode {
        match self {
            HostPolicy::Dane(_) => TlsMode::Dane,
            HostPolicy::MtaStsEnforce if fallback != TlsMode::Implicit => TlsMode::Required,
            _ => fallback,
        }
    }

    /// The `tls=` word of the delivery log line, given the session's TLS
    /// state: dane, mta-sts, required, opportunistic or plaintext.
    pub fn label(&self, mode: TlsMode, encrypted: bool) -> &'static str {
        match self {
            HostPolicy::Dane(_) => "dane",
            HostPolicy::MtaStsEnforce => "mta-sts",
            HostPolicy::Refused { policy, .. } => policy,
            _ if !encrypted => "plaintext",
            _ if mode.verifies() => "required",
            _ => "opportunistic",
        }
    }

    /// The words naming the policy in a deferral, if one governs.
    pub fn describe(&self, security: &DomainSecurity, host: &Host) -> Option<String> {
        match self {
            HostPolicy::Dane(records) => Some(format!(
                "DANE TLSA for {} ({})",
                host.name,
                records
                    .iter()
                    .map(TlsaRecord::presentation)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            HostPolicy::MtaStsEnforce => Some(security.mta_sts_label()),
            _ => None,
        }
    }

    /// The policy type for metrics.
    pub fn kind(&self, mode: TlsMode) -> &'static str {
        match self {
            HostPolicy::Dane(_) => "dane",
            HostPolicy::MtaStsEnforce | HostPolicy::MtaStsTesting => "mta-sts",
            HostPolicy::Refused { policy, .. } => policy,
            HostPolicy::Static if mode.verifies() => "required",
            HostPolicy::Static => "opportunistic",
        }
    }
}

/// A connector for the host: the DANE verifier for DANE, a recording one
/// for MTA-STS testing (with the slot where it notes a would-be failure),
/// else `None` (the shared connectors).
pub fn connector_for(
    policy: &HostPolicy,
    verified_roots: &Arc<rustls::RootCertStore>,
) -> (Option<TlsConnector>, Option<Observed>) {
    match policy {
        HostPolicy::Dane(records) => match dane::connector(records.clone()) {
            Ok(connector) => (Some(connector), None),
            Err(error) => {
                tracing::warn!(%error, "cannot build the DANE TLS configuration");
                (None, None)
            }
        },
        HostPolicy::MtaStsTesting => {
            let observed = Observed::default();
            match testing_connector(verified_roots.clone(), observed.clone()) {
                Ok(connector) => (Some(connector), Some(observed)),
                Err(_) => (None, None),
            }
        }
        _ => (None, None),
    }
}

/// What the MTA-STS testing verifier saw: the reason the certificate would
/// have failed, if it would.
#[derive(Debug, Clone, Default)]
pub struct Observed(Arc<Mutex<Option<String>>>);

impl Observed {
    /// The would-be failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

fn testing_connector(
    roots: Arc<rustls::RootCertStore>,
    observed: Observed,
) -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|error| rustls::Error::General(error.to_string()))?;
    super::tls::connector_with(provider, Arc::new(RecordingVerifier { inner, observed }))
}

/// MTA-STS testing (RFC 8461 §5): checks the certificate as enforce would,
/// notes the failure, and accepts anyway.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    observed: Observed,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Err(error) = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) && let Ok(mut slot) = self.observed.0.lock()
        {
            *slot = Some(error.to_string());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Counts one TLS session outcome: `sluice_tls_sessions_total{policy,
/// result}`. No recipient-domain label: the label set must not grow with
/// every domain mail goes to (the domain is in the delivery log lines).
pub fn count_session(metrics: &Metrics, _domain: &str, policy: &str, success: bool) {
    metrics
        .tls_sessions
        .get_or_create(&vec![
            ("policy".to_string(), policy.to_string()),
            (
                "result".to_string(),
                if success { "success" } else { "failure" }.to_string(),
            ),
        ])
        .inc();
}

/// After a session setup under `policy`: counts the TLS outcome for the
/// domain, and under MTA-STS testing logs what enforce would have refused
/// (RFC 8461 §5: deliver, and report).
pub fn observe_session(
    engine: &super::Engine,
    domain: &str,
    relay: &str,
    policy: &HostPolicy,
    mode: TlsMode,
    opened: &Result<super::client::Connection, super::client::ClientError>,
    observed: Option<&Observed>,
) {
    use super::client::ClientError;
    let kind = policy.kind(mode);
    match opened {
        Ok(connection) => {
            let encrypted = connection.tls().is_some();
            if matches!(policy, HostPolicy::MtaStsTesting) {
                let would_fail = if !encrypted {
                    Some("no TLS session".to_string())
                } else {
                    observed.and_then(Observed::failure)
                };
                if let Some(reason) = would_fail {
                    tracing::warn!(
                        domain,
                        %relay,
                        %reason,
                        "MTA-STS testing: delivering, but enforce would defer"
                    );
                }
            }
            if encrypted {
                count_session(&engine.ctx.metrics, domain, kind, true);
            } else if mode != TlsMode::Disabled && policy_wants_tls(policy) {
                count_session(&engine.ctx.metrics, domain, kind, false);
            }
        }
        Err(
            ClientError::TlsHandshake(_)
            | ClientError::TlsNotOffered
            | ClientError::TlsInjection
            | ClientError::Timeout { .. },
        ) if mode != TlsMode::Disabled => {
            count_session(&engine.ctx.metrics, domain, kind, false);
        }
        Err(_) => {}
    }
}

fn policy_wants_tls(policy: &HostPolicy) -> bool {
    matches!(
        policy,
        HostPolicy::Dane(_) | HostPolicy::MtaStsEnforce | HostPolicy::MtaStsTesting
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dane_and_mta_sts_enforce_make_tls_mandatory() {
        let dane = HostPolicy::Dane(vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![1],
        }]);
        assert_eq!(dane.mode(TlsMode::Opportunistic), TlsMode::Dane);
        assert_eq!(dane.mode(TlsMode::Disabled), TlsMode::Dane);
        assert_eq!(
            HostPolicy::MtaStsEnforce.mode(TlsMode::Disabled),
            TlsMode::Required
        );
        assert_eq!(
            HostPolicy::MtaStsTesting.mode(TlsMode::Opportunistic),
            TlsMode::Opportunistic
        );
        assert_eq!(
            HostPolicy::Static.mode(TlsMode::Disabled),
            TlsMode::Disabled
        );
    }

    #[test]
    fn the_log_word_names_the_policy_that_applied() {
        let dane = HostPolicy::Dane(Vec::new());
        assert_eq!(dane.label(TlsMode::Dane, true), "dane");
        assert_eq!(
            HostPolicy::MtaStsEnforce.label(TlsMode::Required, true),
            "mta-sts"
        );
        assert_eq!(
            HostPolicy::MtaStsTesting.label(TlsMode::Opportunistic, true),
            "opportunistic"
        );
        assert_eq!(
            HostPolicy::Static.label(TlsMode::Opportunistic, false),
            "plaintext"
        );
        assert_eq!(
            HostPolicy::Static.label(TlsMode::Required, true),
            "required"
        );
        let refused = HostPolicy::Refused {
            policy: "mta-sts",
            reason: "x".into(),
        };
        assert_eq!(refused.label(TlsMode::Required, false), "mta-sts");
        assert_eq!(refused.kind(TlsMode::Required), "mta-sts");
    }

    #[test]
    fn static_next_hops_get_no_secure_policy() {
        let security = DomainSecurity::default();
        let host = Host {
            name: "mx.example.test".into(),
            port: 25,
        };
        let policy = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(security.for_host(&host));
        assert!(matches!(policy, HostPolicy::Static));
    }
}

//! DANE for SMTP (RFC 7672): which MX hosts have DNSSEC-authenticated TLSA
//! records, and a rustls certificate verifier that authenticates a server
//! by them.
//!
//! Choices, after Postfix (`smtp_tls_security_level = dane`):
//! - sluice does not validate DNSSEC itself. It asks the configured
//!   nameservers with the AD bit set (RFC 6840 §5.7) and trusts the AD bit of
//!   the answer only when every nameserver is on loopback, i.e. a local
//!   validating resolver; otherwise DANE is off (logged once at startup).
//! - TLSA records are used only for hosts from a secure MX RRset (RFC 7672
//!   §2.2.1) whose address records are secure too (§2.2.2), at
//!   `_<port>._tcp.<host>` (§3). An insecure TLSA answer is as if there were
//!   none; a failed lookup (SERVFAIL: bogus, or no answer) makes the host
//!   unusable for this attempt (§2.2): it defers, never plaintext.
//! - Usable records: DANE-TA(2) and DANE-EE(3), selector Cert(0) or
//!   SPKI(1), matching Full(0), SHA2-256(1) or SHA2-512(2) (RFC 7672 §3.1).
//!   PKIX-TA(0) and PKIX-EE(1) and unknown values are ignored (§3.1.3).
//! - DANE-EE(3): the end-entity certificate or key matches; name and
//!   validity dates are not checked (§3.1.1). DANE-TA(2): a certificate of
//!   the chain the server sent matches and is the trust anchor for an
//!   ordinary chain validation, with the MX host name as reference
//!   identifier (§3.1.2, §3.2.2).
//!
//! The raw queries use hickory-proto messages over UDP (TCP when truncated),
//! since the shared resolver neither sets nor reports the AD bit.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::tls::HandshakeSignatures;

use crate::config::Config;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    /// Certificate usage: 2 DANE-TA, 3 DANE-EE (others are not kept).
    pub usage: u8,
    /// 0 the whole certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

impl TlsaRecord {
    /// RFC 7672 §3.1.3: only DANE-TA(2) and DANE-EE(3) with known selector
    /// and matching type are usable for SMTP.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && matches!(self.matching, 0..=2)
            && !self.data.is_empty()
    }

    /// True when `certificate` (its DER, or its SPKI for selector 1) matches
    /// the association data.
    pub fn matches(&self, certificate: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => certificate.as_ref().to_vec(),
            1 => match webpki::anchor_from_trusted_cert(certificate) {
                Ok(anchor) => webpki::spki_for_anchor(&anchor).as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        digest == self.data
    }

    /// `usage selector matching hex`, as in a zone file.
    pub fn presentation(&self) -> String {
        let hex: String = self.data.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{} {} {} {hex}", self.usage, self.selector, self.matching)
    }
}

/// What DANE says about one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// No secure, usable TLSA records (or DANE off): other policies apply.
    NotApplicable,
    /// Usable records: TLS is mandatory and authenticated by them.
    Records(Vec<TlsaRecord>),
    /// The TLSA lookup failed for a host of a secure MX RRset (RFC 7672
    /// §2.2): the host cannot be used now.
    Failed(String),
}

/// A DNS answer with its DNSSEC status as the resolver reported it.
#[derive(Debug, Clone)]
pub struct SecureAnswer {
    /// The response code.
    pub rcode: ResponseCode,
    /// The AD bit (meaningful only from a trusted resolver).
    pub authentic: bool,
    /// The answer section's data.
    pub records: Vec<RData>,
}

/// DANE lookups for delivery, from `delivery.dane` and `[dns]`.
#[derive(Debug, Clone)]
pub struct Dane {
    /// DANE is on and every nameserver is on loopback.
    enabled: bool,
    /// Why DANE is off, when it was asked for but cannot be used.
    disabled_reason: Option<String>,
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Dane {
    /// From `delivery.dane`, `[dns] nameservers` (else the system's) and
    /// `dns.timeout`. DANE stays off unless every nameserver is on loopback.
    pub fn from_config(config: &Config) -> Dane {
        let nameservers: Vec<SocketAddr> = if config.dns.nameservers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok((system, _)) => system
                    .name_servers()
                    .iter()
                    .map(|server| {
                        let port = server
                            .connections
                            .first()
                            .map(|connection| connection.port)
                            .unwrap_or(53);
                        SocketAddr::new(server.ip, port)
                    })
                    .collect(),
                Err(_) => vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            }
        } else {
            config.dns.nameservers.clone()
        };
        let loopback =
            !nameservers.is_empty() && nameservers.iter().all(|address| address.ip().is_loopback());
        let disabled_reason = match (config.delivery.dane, loopback) {
            (false, _) => None,
            (true, true) => None,
            (true, false) => Some(
                "not every nameserver is on loopback, so the AD bit cannot be trusted".to_string(),
            ),
        };
        Dane {
            enabled: config.delivery.dane && loopback,
            disabled_reason,
            nameservers,
            timeout: config.dns.timeout,
        }
    }

    /// True when TLSA records are looked up.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Why DANE is off although `delivery.dane` asks for it.
    pub fn disabled_reason(&self) -> Option<&str> {
        self.disabled_reason.as_deref()
    }

    /// True when the MX RRset of `domain` is DNSSEC-authenticated (RFC 7672
    /// §2.2.1). For an implicit MX, the domain's address records are asked
    /// instead (`record_type` A).
    pub async fn is_secure(&self, name: &str, record_type: RecordType) -> bool {
        if !self.enabled {
            return false;
        }
        matches!(
            self.query(name, record_type).await,
            Ok(SecureAnswer {
                rcode: ResponseCode::NoError,
                authentic: true,
                ..
            })
        )
    }

    /// What DANE says about `host` on `port`, a host of a secure MX RRset
    /// (the caller checked).
    pub async fn for_host(&self, host: &str, port: u16) -> HostDane {
        if !self.enabled {
            return HostDane::NotApplicable;
        }
        // RFC 7672 §2.2.2: TLSA records of a host whose address is insecure
        // are not looked up.
        if !self.is_secure(host, RecordType::A).await
            && !self.is_secure(host, RecordType::AAAA).await
        {
            return HostDane::NotApplicable;
        }
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let answer = match self.query(&name, RecordType::TLSA).await {
            Ok(answer) => answer,
            Err(reason) => return HostDane::Failed(format!("TLSA lookup of {name}: {reason}")),
        };
        match answer.rcode {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => return HostDane::Failed(format!("TLSA lookup of {name}: {code}")),
        }
        if !answer.authentic {
            return HostDane::NotApplicable;
        }
        let records: Vec<TlsaRecord> = answer
            .records
            .iter()
            .filter_map(|data| match data {
                RData::TLSA(tlsa) => Some(TlsaRecord {
                    usage: u8::from(tlsa.cert_usage),
                    selector: u8::from(tlsa.selector),
                    matching: u8::from(tlsa.matching),
                    data: tlsa.cert_data.clone(),
                }),
                _ => None,
            })
            .filter(TlsaRecord::is_usable)
            .collect();
        if records.is_empty() {
            HostDane::NotApplicable
        } else {
            HostDane::Records(records)
        }
    }

    /// Asks the nameservers in turn for `name`/`record_type` with the AD
    /// bit set, within `dns.timeout` each.
    pub async fn query(&self, name: &str, record_type: RecordType) -> Result<SecureAnswer, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let name = Name::from_ascii(&fqdn).map_err(|error| format!("{fqdn}: {error}"))?;
        let mut last = "no nameserver".to_string();
        for server in &self.nameservers {
            match tokio::time::timeout(self.timeout, ask(*server, &name, record_type)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => last = format!("{server}: {error}"),
                Err(_) => last = format!("{server}: timed out"),
            }
        }
        Err(last)
    }
}

/// One query to one nameserver: UDP, then TCP when the answer is truncated.
async fn ask(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
) -> std::io::Result<SecureAnswer> {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    // RFC 6840 §5.7: a validating resolver sets AD only when asked for it.
    request.metadata.authentic_data = true;
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    request.set_edns(edns);
    request.add_query(Query::query(name.clone(), record_type));
    let bytes = request.to_vec().map_err(std::io::Error::other)?;
    let bind: SocketAddr = match server.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(&bytes).await?;
    let mut buffer = vec![0u8; 4096];
    let response = loop {
        let read = socket.recv(&mut buffer).await?;
        // Anything that is not the answer to this query is ignored.
        if let Ok(response) = Message::from_vec(&buffer[..read])
            && response.metadata.id == request.metadata.id
            && response.queries.first().map(Query::name) == Some(name)
        {
            break response;
        }
    };
    let response = if response.metadata.truncation {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        let length = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(&bytes).await?;
        let length = stream.read_u16().await?;
        let mut answer = vec![0u8; usize::from(length)];
        stream.read_exact(&mut answer).await?;
        let response = Message::from_vec(&answer).map_err(std::io::Error::other)?;
        if response.metadata.id != request.metadata.id {
            return Err(std::io::Error::other("answer to another query"));
        }
        response
    } else {
        response
    };
    Ok(SecureAnswer {
        rcode: response.metadata.response_code,
        authentic: response.metadata.authentic_data,
        records: response
            .answers
            .iter()
            .filter(|record| record.record_type() == record_type)
            .map(|record| record.data.clone())
            .collect(),
    })
}

/// A TLS client configuration that authenticates the server by `records`
/// (usable ones, at least one), for one host.
pub fn connector(records: Vec<TlsaRecord>) -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DaneVerifier {
        records,
        signatures: HandshakeSignatures(provider.clone()),
    };
    super::tls::connector_with(provider, Arc::new(verifier))
}

/// Authenticates a server certificate by TLSA records (RFC 7672 §3.1).
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<TlsaRecord>,
    signatures: HandshakeSignatures,
}

impl DaneVerifier {
    /// A verifier for `records` (usable ones).
    pub fn new(records: Vec<TlsaRecord>) -> DaneVerifier {
        DaneVerifier {
            records,
            signatures: HandshakeSignatures(Arc::new(rustls::crypto::ring::default_provider())),
        }
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // RFC 7672 §3.1.1: DANE-EE binds the key; name and dates do not count.
        if self
            .records
            .iter()
            .filter(|record| record.usage == 3)
            .any(|record| record.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // RFC 7672 §3.1.2: a DANE-TA record names a trust anchor, which the
        // server must send in its chain (RFC 7671 §5.2.2).
        for record in self.records.iter().filter(|record| record.usage == 2) {
            for anchor in intermediates.iter().filter(|cert| record.matches(cert)) {
                let Ok(trust_anchor) = webpki::anchor_from_trusted_cert(anchor) else {
                    continue;
                };
                let mut roots = RootCertStore::empty();
                roots.roots.push(trust_anchor.to_owned());
                let verifier = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.signatures.0.clone(),
                )
                .build()
                .map_err(|error| rustls::Error::General(error.to_string()))?;
                return verifier.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                );
            }
        }
        // Error::Other displays its message ("other error: the certificate
        // matches no TLSA record"), which ends up in the deferral reply.
        Err(rustls::Error::Other(rustls::OtherError(Arc::new(
            NoTlsaMatch,
        ))))
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

/// The certificate chain matched no TLSA record.
#[derive(Debug)]
struct NoTlsaMatch;

impl std::fmt::Display for NoTlsaMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the certificate matches no TLSA record")
    }
}

impl std::error::Error for NoTlsaMatch {}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(name: &str) -> (CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        (cert.der().clone(), key.public_key_der())
    }

    #[test]
    fn usable_records_are_dane_ta_and_ee_with_known_parameters() {
        let record = |usage, selector, matching| TlsaRecord {
            usage,
            selector,
            matching,
            data: vec![1],
        };
        assert!(record(3, 1, 1).is_usable());
        assert!(record(2, 0, 2).is_usable());
        assert!(!record(1, 1, 1).is_usable(), "PKIX-EE is not for SMTP");
        assert!(!record(0, 0, 1).is_usable(), "PKIX-TA is not for SMTP");
        assert!(!record(3, 2, 1).is_usable());
        assert!(!record(3, 1, 3).is_usable());
    }

    #[test]
    fn selectors_and_matching_types_match_the_certificate() {
        let (cert, spki) = certificate("mx.example.test");
        let sha256 = |data: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, data)
                .as_ref()
                .to_vec()
        };
        let sha512 = |data: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, data)
                .as_ref()
                .to_vec()
        };
        let record = |selector, matching, data| TlsaRecord {
            usage: 3,
            selector,
            matching,
            data,
        };
        assert!(record(0, 0, cert.as_ref().to_vec()).matches(&cert));
        assert!(record(0, 1, sha256(cert.as_ref())).matches(&cert));
        assert!(record(1, 1, sha256(&spki)).matches(&cert));
        assert!(record(1, 2, sha512(&spki)).matches(&cert));
        assert!(record(1, 0, spki.clone()).matches(&cert));
        assert!(!record(1, 1, sha256(cert.as_ref())).matches(&cert));
        let (other, _) = certificate("mx.example.test");
        assert!(!record(1, 1, sha256(&spki)).matches(&other));
    }

    #[test]
    fn dane_ee_ignores_the_name_and_a_mismatch_is_refused() {
        let (cert, spki) = certificate("other.name.test");
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki)
            .as_ref()
            .to_vec();
        let verifier = DaneVerifier::new(vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: digest,
        }]);
        let name = ServerName::try_from("mx.example.test").expect("name");
        assert!(
            verifier
                .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let (other, _) = certificate("mx.example.test");
        assert!(
            verifier
                .verify_server_cert(&other, &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn presentation_is_zone_file_style() {
        let record = TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab, 0x01],
        };
        assert_eq!(record.presentation(), "3 1 1 ab01");
    }
}

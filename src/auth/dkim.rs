//! DKIM signing (RFC 6376; Ed25519-SHA256 from RFC 8463, RSA-SHA256):
//! the keys of `[[dkim]]`, loaded once when the server starts (and by
//! `check-config`), never per message; a [`SigningStream`] that follows a
//! message as it arrives and gives the `DKIM-Signature` header fields to
//! put in front of it; and key generation for `sluice dkim keygen`.
//!
//! Choices:
//! - The From: header field's domain picks the keys, compared exactly (no
//!   parent domains), case aside. A From: with addresses in several domains,
//!   or none, is not signed.
//! - Relaxed/relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4), no `l=`
//!   (a body length lets anyone append to the message) and no expiry.
//! - The header list is the entry's, by default the contract's with From
//!   listed twice: the second From is signed as absent, so a From added in
//!   transit breaks the signature (over-signing, RFC 6376 §8.15).
//! - Each entry for the domain gives one signature, in config order. The
//!   body is hashed as it arrives, once per entry; only the header section is
//!   held in memory.

use std::io::BufReader;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner, DkimSigningStream, Done};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use rsa::traits::PublicKeyParts as _;
use rustls::pki_types::PrivateKeyDer;

use crate::config::DkimEntry;

/// The smallest RSA key accepted: RFC 8301 §3.2 makes 1024 bits the floor
/// for verifiers, and 2048 is what receivers expect of signers today.
pub const MIN_RSA_BITS: usize = 2048;

/// A header section larger than this is not looked at: the message goes
/// unsigned rather than held in memory.
const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// A `[[dkim]]` key that cannot be used, naming the entry.
#[derive(Debug, thiserror::Error)]
#[error("dkim[{index}].private_key: {message}")]
pub struct KeyError {
    /// The entry's position in the file.
    pub index: usize,
    /// What is wrong with the key, naming the file.
    pub message: String,
}

impl KeyError {
    /// The config key in error, `dkim[N].private_key`.
    pub fn key(&self) -> String {
        format!("dkim[{}].private_key", self.index)
    }
}

/// The signature algorithms sluice signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `ed25519-sha256` (RFC 8463).
    Ed25519,
    /// `rsa-sha256`.
    Rsa,
}

impl Algorithm {
    /// The name in `sluice dkim keygen --algorithm` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }
}

enum Key {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

struct Entry {
    /// Lower case, without a trailing dot.
    domain: String,
    key: Key,
}

/// Every `[[dkim]]` key, ready to sign.
pub struct Signer {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domains: Vec<&str> = self.entries.iter().map(|e| e.domain.as_str()).collect();
        f.debug_struct("Signer").field("domains", &domains).finish()
    }
}

impl Signer {
    /// Loads the key of every entry. Fails on the first key that cannot be
    /// read or parsed, is neither Ed25519 nor RSA, or is RSA under
    /// [`MIN_RSA_BITS`].
    pub fn load(entries: &[DkimEntry]) -> Result<Signer, KeyError> {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let key = load_key(entry).map_err(|message| KeyError { index, message })?;
                Ok(Entry {
                    domain: entry.domain.trim_end_matches('.').to_ascii_lowercase(),
                    key,
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(Signer { entries })
    }

    /// A signer with no keys: nothing is signed.
    pub fn empty() -> Signer {
        Signer {
            entries: Vec::new(),
        }
    }

    /// True when there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A stream to feed one message to, from its first byte as stored;
    /// `None` when there are no keys (nothing to do).
    pub fn stream(&self) -> Option<SigningStream<'_>> {
        if self.is_empty() {
            return None;
        }
        Some(SigningStream {
            signer: self,
            state: StreamState::Headers {
                buffer: Vec::with_capacity(4096),
                scanned: 0,
            },
        })
    }
}

/// Follows one message as it is stored; [`SigningStream::finish`] gives the
/// signatures for it.
pub struct SigningStream<'a> {
    signer: &'a Signer,
    state: StreamState<'a>,
}

enum StreamState<'a> {
    /// Gathering the header section, up to the empty line.
    Headers { buffer: Vec<u8>, scanned: usize },
    /// The From: domain has keys: each hashes the body.
    Signing {
        domain: String,
        streams: Vec<Stream<'a>>,
    },
    /// No key for the From: domain (or no usable From:).
    NotSigned,
}

enum Stream<'a> {
    Ed25519(DkimSigningStream<'a, Ed25519Key>),
    Rsa(DkimSigningStream<'a, RsaKey<Sha256>>),
}

impl Stream<'_> {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            Stream::Ed25519(stream) => stream.write(bytes),
            Stream::Rsa(stream) => stream.write(bytes),
        }
    }

    fn finish(self, out: &mut Vec<u8>) -> mail_auth::Result<()> {
        match self {
            Stream::Ed25519(stream) => stream.finish()?.write_header(out),
            Stream::Rsa(stream) => stream.finish()?.write_header(out),
        }
        Ok(())
    }
}

/// The signatures made for one message.
#[derive(Debug, Default)]
pub struct Signatures {
    /// `DKIM-Signature:` header fields, CRLF-terminated, to put in front.
    pub header: Vec<u8>,
    /// How many.
    pub count: usize,
    /// The domain signed for (`d=`), when any.
    pub domain: Option<String>,
}

impl<'a> SigningStream<'a> {
    /// Feeds the next bytes of the message.
    pub fn write(&mut self, bytes: &[u8]) {
        match &mut self.state {
            StreamState::Headers { buffer, scanned } => {
                buffer.extend_from_slice(bytes);
                match memchr::memmem::find(&buffer[*scanned..], b"\r\n\r\n") {
                    Some(at) => {
                        let end = *scanned + at + 4;
                        let buffer = std::mem::take(buffer);
                        self.state = self.start(buffer, end);
                    }
                    None if buffer.len() > MAX_HEADER_SECTION => {
                        self.state = StreamState::NotSigned;
                    }
                    None => *scanned = buffer.len().saturating_sub(3),
                }
            }
            StreamState::Signing { streams, .. } => {
                for stream in streams {
                    stream.write(bytes);
                }
            }
            StreamState::NotSigned => {}
        }
    }

    /// With the header section complete (`buffer[..end]`, the empty line
    /// included): picks the keys for its From: domain and feeds them all of
    /// `buffer`.
    fn start(&self, buffer: Vec<u8>, end: usize) -> StreamState<'a> {
        let Some(domain) = from_domain(&buffer[..end]) else {
            return StreamState::NotSigned;
        };
        let signer: &'a Signer = self.signer;
        let mut streams: Vec<Stream<'a>> = signer
            .entries
            .iter()
            .filter(|entry| entry.domain == domain)
            .map(|entry| match &entry.key {
                Key::Ed25519(key) => Stream::Ed25519(key.sign_streaming()),
                Key::Rsa(key) => Stream::Rsa(key.sign_streaming()),
            })
            .collect();
        if streams.is_empty() {
            return StreamState::NotSigned;
        }
        for stream in &mut streams {
            stream.write(&buffer);
        }
        StreamState::Signing { domain, streams }
    }

    /// Signs: the header fields to put in front of the message, empty when
    /// it is not signed. Fails only when a signing operation fails.
    pub fn finish(mut self) -> Result<Signatures, mail_auth::Error> {
        if let StreamState::Headers { buffer, .. } = &mut self.state {
            // No empty line: the message is all header section.
            let mut buffer = std::mem::take(buffer);
            buffer.extend_from_slice(b"\r\n");
            let end = buffer.len();
            self.state = self.start(buffer, end);
        }
        let StreamState::Signing { domain, streams } = self.state else {
            return Ok(Signatures::default());
        };
        let mut signatures = Signatures {
            header: Vec::with_capacity(600 * streams.len()),
            count: streams.len(),
            domain: Some(domain),
        };
        for stream in streams {
            stream.finish(&mut signatures.header)?;
        }
        Ok(signatures)
    }
}

/// The domain of the From: header field's addresses, lower case, when
/// there is exactly one From: and all its addresses share one domain.
pub fn from_domain(header_section: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(header_section)?;
    let from_fields = message
        .headers()
        .iter()
        .filter(|header| header.name() == "From")
        .count();
    if from_fields != 1 {
        return None;
    }
    let mut domain: Option<String> = None;
    for address in message.from()?.iter() {
        let address = address.address.as_deref()?;
        let (_, this) = address.rsplit_once('@')?;
        let this = this.trim().trim_end_matches('.').to_ascii_lowercase();
        if this.is_empty() {
            return None;
        }
        match &domain {
            Some(seen) if *seen != this => return None,
            Some(_) => {}
            None => domain = Some(this),
        }
    }
    domain
}

fn load_key(entry: &DkimEntry) -> Result<Key, String> {
    let path = &entry.private_key;
    crate::keyfile::check_private(path).map_err(|error| error.to_string())?;
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let (key, _) = parse_key(&pem).map_err(|reason| format!("{}: {reason}", path.display()))?;
    Ok(match key {
        ParsedKey::Ed25519(key) => Key::Ed25519(builder(key, entry)),
        ParsedKey::Rsa(key) => Key::Rsa(builder(key, entry)),
    })
}

fn builder<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    entry: &DkimEntry,
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(entry.domain.trim_end_matches('.').to_ascii_lowercase())
        .selector(entry.selector.clone())
        .headers(entry.headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

enum ParsedKey {
    Ed25519(Ed25519Key),
    Rsa(RsaKey<Sha256>),
}

/// Parses a PEM private key: PKCS#8 (Ed25519 or RSA), or PKCS#1 RSA as
/// older tools write it. Returns the key and its algorithm.
fn parse_key(pem: &[u8]) -> Result<(ParsedKey, Algorithm), String> {
    let der = rustls_pemfile::private_key(&mut BufReader::new(pem))
        .map_err(|error| format!("not a PEM file: {error}"))?
        .ok_or("no private key in the file (PKCS#8 PEM expected: \"BEGIN PRIVATE KEY\")")?;
    let rsa = match &der {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            // RFC 8410 keys without the public key (as `openssl genpkey`
            // writes them) are accepted too.
            if let Ok(key) = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                return Ok((ParsedKey::Ed25519(key), Algorithm::Ed25519));
            }
            rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.secret_pkcs8_der())
                .map_err(|_| "neither an Ed25519 nor an RSA key".to_string())?
        }
        PrivateKeyDer::Pkcs1(pkcs1) => rsa::RsaPrivateKey::from_pkcs1_der(pkcs1.secret_pkcs1_der())
            .map_err(|error| format!("not a valid RSA key: {error}"))?,
        _ => return Err("not an Ed25519 or RSA key (EC keys are not used by DKIM)".into()),
    };
    let bits = rsa.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits is too weak; {MIN_RSA_BITS} bits or more are needed"
        ));
    }
    let key = RsaKey::<Sha256>::from_key_der(der)
        .map_err(|error| format!("cannot use the RSA key: {error}"))?;
    Ok((ParsedKey::Rsa(key), Algorithm::Rsa))
}

/// What ring's PKCS#8 v2 Ed25519 document starts with, up to the seed.
const RING_ED25519_V2_PREFIX: &[u8] = &[
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// RFC 8410 §7: a PKCS#8 v1 Ed25519 private key, up to the 32-byte seed.
const ED25519_V1_PREFIX: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new key pair, as `sluice dkim keygen` writes and prints it.
pub struct GeneratedKey {
    /// The private key, PKCS#8 PEM.
    pub pem: String,
    /// The TXT record's value (`v=DKIM1; k=…; p=…`).
    pub txt: String,
}

/// Generates a key: Ed25519, or RSA of [`MIN_RSA_BITS`] bits.
pub fn generate(algorithm: Algorithm) -> Result<GeneratedKey, String> {
    match algorithm {
        Algorithm::Ed25519 => {
            let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|error| error.to_string())?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|error| error.to_string())?;
            // ring writes PKCS#8 v2 (RFC 5958, with the public key), which
            // OpenSSL does not read; the file gets the RFC 8410 v1 form.
            let seed = pkcs8
                .strip_prefix(RING_ED25519_V2_PREFIX)
                .and_then(|rest| rest.get(..32))
                .ok_or("unexpected Ed25519 key encoding")?;
            let mut v1 = ED25519_V1_PREFIX.to_vec();
            v1.extend_from_slice(seed);
            Ok(GeneratedKey {
                pem: pem_encode("PRIVATE KEY", &v1),
                // RFC 8463 §4.2: the raw 32-byte public key.
                txt: format!("v=DKIM1; k=ed25519; p={}", BASE64.encode(key.public_key())),
            })
        }
        Algorithm::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, MIN_RSA_BITS)
                .map_err(|error| error.to_string())?;
            let pkcs8 = key.to_pkcs8_der().map_err(|error| error.to_string())?;
            // RFC 6376 §3.6.1: p= holds the SubjectPublicKeyInfo DER.
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|error| error.to_string())?;
            Ok(GeneratedKey {
                pem: pem_encode("PRIVATE KEY", pkcs8.as_bytes()),
                txt: format!("v=DKIM1; k=rsa; p={}", BASE64.encode(public.as_bytes())),
            })
        }
    }
}

/// The TXT record's value for the key in a PEM file (for tests and for
/// re-publishing a key).
pub fn public_record(path: &Path) -> Result<String, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let (_, algorithm) = parse_key(&pem)?;
    let der = rustls_pemfile::private_key(&mut BufReader::new(&pem[..]))
        .map_err(|error| error.to_string())?
        .ok_or("no private key")?;
    match algorithm {
        Algorithm::Ed25519 => {
            let PrivateKeyDer::Pkcs8(pkcs8) = der else {
                return Err("an Ed25519 key is always PKCS#8".into());
            };
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                .map_err(|error| error.to_string())?;
            Ok(format!(
                "v=DKIM1; k=ed25519; p={}",
                BASE64.encode(key.public_key())
            ))
        }
        Algorithm::Rsa => {
            let key = match der {
                PrivateKeyDer::Pkcs8(pkcs8) => {
                    rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.secret_pkcs8_der())
                        .map_err(|error| error.to_string())?
                }
                PrivateKeyDer::Pkcs1(pkcs1) => {
                    rsa::RsaPrivateKey::from_pkcs1_der(pkcs1.secret_pkcs1_der())
                        .map_err(|error| error.to_string())?
                }
                _ => return Err("not an RSA key".into()),
            };
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|error| error.to_string())?;
            Ok(format!(
                "v=DKIM1; k=rsa; p={}",
                BASE64.encode(public.as_bytes())
            ))
        }
    }
}

/// The algorithm of the key in a PEM file, when it is one sluice can use.
pub fn key_algorithm(pem: &[u8]) -> Result<Algorithm, String> {
    parse_key(pem).map(|(_, algorithm)| algorithm)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let encoded = BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The TXT record in zone-file form, its value split into strings of at
/// most 255 characters (RFC 1035 §3.3; an RSA key needs two).
pub fn zone_line(selector: &str, domain: &str, txt: &str) -> String {
    let strings: Vec<String> = txt
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!(
        "{selector}._domainkey.{}. IN TXT {}",
        domain.trim_end_matches('.'),
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, path: &Path) -> DkimEntry {
        DkimEntry {
            domain: domain.into(),
            selector: "s1".into(),
            private_key: path.to_path_buf(),
            headers: crate::config::DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|name| name.to_string())
                .collect(),
        }
    }

    fn key_file(dir: &tempfile::TempDir, name: &str, pem: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write key");
        // Keys others can read are refused (`keyfile`).
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    const MESSAGE: &[u8] = b"Received: from x\r\nFrom: Alice <alice@Example.ORG>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello\r\n";

    fn sign(signer: &Signer, message: &[u8], piece: usize) -> Signatures {
        let mut stream = signer.stream().expect("keys");
        for chunk in message.chunks(piece) {
            stream.write(chunk);
        }
        stream.finish().expect("signs")
    }

    #[test]
    fn the_from_domain_picks_every_key_for_it_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let ed = key_file(&dir, "ed.pem", &generate(Algorithm::Ed25519).unwrap().pem);
        let ed2 = key_file(&dir, "ed2.pem", &generate(Algorithm::Ed25519).unwrap().pem);
        let signer = Signer::load(&[
            entry("example.org", &ed),
            entry("other.org", &ed),
            entry("example.org.", &ed2),
        ])
        .expect("keys load");
        for piece in [1, 7, MESSAGE.len()] {
            let signed = sign(&signer, MESSAGE, piece);
            assert_eq!(signed.count, 2);
            assert_eq!(signed.domain.as_deref(), Some("example.org"));
            let text = String::from_utf8(signed.header).unwrap();
            assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
            assert!(text.contains("a=ed25519-sha256"), "{text}");
            assert!(text.contains("c=relaxed/relaxed"), "{text}");
            assert!(text.ends_with("\r\n"), "{text:?}");
        }
        let unsigned = sign(&signer, b"From: x@sub.example.org\r\n\r\nbody\r\n", 5);
        assert_eq!(unsigned.count, 0, "no parent-domain match");
        assert!(unsigned.header.is_empty());
    }

    #[test]
    fn from_is_over_signed() {
        let dir = tempfile::tempdir().unwrap();
        let ed = key_file(&dir, "ed.pem", &generate(Algorithm::Ed25519).unwrap().pem);
        let signer = Signer::load(&[entry("example.org", &ed)]).unwrap();
        let text = String::from_utf8(sign(&signer, MESSAGE, 100).header).unwrap();
        let unfolded = text.replace("\r\n\t", "").replace("\r\n ", "");
        let h = unfolded
            .split(';')
            .map(str::trim)
            .find_map(|tag| tag.strip_prefix("h="))
            .expect("h= tag");
        let names: Vec<&str> = h.split(':').map(str::trim).collect();
        assert_eq!(
            names
                .iter()
                .filter(|name| name.eq_ignore_ascii_case("from"))
                .count(),
            2,
            "{h}"
        );
        assert!(
            !names
                .iter()
                .any(|name| name.eq_ignore_ascii_case("received")),
            "{h}"
        );
    }

    #[test]
    fn a_message_without_body_or_from_domain_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let ed = key_file(&dir, "ed.pem", &generate(Algorithm::Ed25519).unwrap().pem);
        let signer = Signer::load(&[entry("example.org", &ed)]).unwrap();
        assert_eq!(
            sign(&signer, b"From: a@example.org\r\nSubject: x\r\n", 3).count,
            1
        );
        assert_eq!(sign(&signer, b"Subject: no from\r\n\r\nx\r\n", 3).count, 0);
        let two_domains = b"From: a@example.org, b@other.org\r\n\r\nx\r\n";
        assert_eq!(sign(&signer, two_domains, 3).count, 0);
    }

    #[test]
    fn keys_that_cannot_sign_are_refused_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let good = key_file(&dir, "ed.pem", &generate(Algorithm::Ed25519).unwrap().pem);
        let missing = dir.path().join("missing.pem");
        let error = Signer::load(&[entry("example.org", &good), entry("example.org", &missing)])
            .unwrap_err();
        assert_eq!(error.index, 1);
        assert!(
            error
                .to_string()
                .starts_with("dkim[1].private_key: cannot read"),
            "{error}"
        );
        let garbage = key_file(&dir, "garbage.pem", "not a key\n");
        let error = Signer::load(&[entry("example.org", &garbage)]).unwrap_err();
        assert!(error.to_string().contains("no private key"), "{error}");
        let small = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let small = small
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string();
        let small = key_file(&dir, "small.pem", &small);
        let error = Signer::load(&[entry("example.org", &small)]).unwrap_err();
        assert!(
            error.to_string().contains("1024 bits is too weak"),
            "{error}"
        );
    }

    #[test]
    fn generated_rsa_keys_sign_and_publish_their_spki() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(Algorithm::Rsa).unwrap();
        assert!(generated.pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // SubjectPublicKeyInfo of rsaEncryption starts "MIIB".
        assert!(
            generated.txt.starts_with("v=DKIM1; k=rsa; p=MIIB"),
            "{}",
            generated.txt
        );
        let path = key_file(&dir, "rsa.pem", &generated.pem);
        assert_eq!(public_record(&path).unwrap(), generated.txt);
        let signer = Signer::load(&[entry("example.org", &path)]).unwrap();
        let text = String::from_utf8(sign(&signer, MESSAGE, 10).header).unwrap();
        assert!(text.contains("a=rsa-sha256"), "{text}");
        let line = zone_line("s1", "example.org", &generated.txt);
        assert!(line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p="));
        assert!(
            line.matches('"').count() >= 4,
            "split into 255-character strings: {line}"
        );
    }
}

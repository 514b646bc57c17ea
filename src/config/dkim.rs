//! `[[dkim]]` and `[verify]`: signing outbound mail, checking inbound mail.
//!
//! Only the settings live here; the keys are loaded by
//! [`crate::auth::dkim::Signer`], at start and by `check-config`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// The headers signed when an entry names none: the contract's list, with
/// From listed twice so that a From added in transit breaks the signature
/// (over-signing, RFC 6376 §8.15).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "From",
];

/// One `[[dkim]]` entry: sign mail whose From: domain is `domain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimEntry {
    /// The From: domain this key signs for (the signature's `d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PKCS#8 PEM: Ed25519, or RSA of 2048 bits or more.
    pub private_key: PathBuf,
    /// The headers to sign (`h=`), in order; default [`DEFAULT_SIGNED_HEADERS`].
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
}

fn default_headers() -> Vec<String> {
    DEFAULT_SIGNED_HEADERS
        .iter()
        .map(|name| name.to_string())
        .collect()
}

/// `[verify]`: SPF, DKIM and DMARC checks of mail from clients outside
/// `relay_networks` that did not authenticate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Check, and add an `Authentication-Results` header. Off by default.
    pub enabled: bool,
    /// Refuse a DMARC failure under `p=reject` with `550 5.7.1`.
    pub enforce_dmarc: bool,
}

/// Each entry names a domain and a selector that can be DNS labels, and
/// signs From (RFC 6376 §5.4: the From header field MUST be signed).
pub(super) fn check(entries: &[DkimEntry], invalid: Invalid) -> Result<(), ConfigError> {
    for (index, entry) in entries.iter().enumerate() {
        let key = |field: &str| format!("dkim[{index}].{field}");
        let domain = entry.domain.trim_end_matches('.');
        if domain.is_empty() || !domain.contains('.') || !is_dns_name(domain) {
            return Err(invalid.at(key("domain"), "must be a domain name"));
        }
        if entry.selector.is_empty() || !is_dns_name(&entry.selector) {
            return Err(invalid.at(
                key("selector"),
                "must be one or more DNS labels (letters, digits, '-', '.')",
            ));
        }
        if entry.private_key.as_os_str().is_empty() {
            return Err(invalid.at(key("private_key"), "must name a PEM file"));
        }
        if !entry
            .headers
            .iter()
            .any(|name| name.eq_ignore_ascii_case("From"))
        {
            return Err(invalid.at(
                key("headers"),
                "must include From (RFC 6376 §5.4: From is always signed)",
            ));
        }
        if let Some(bad) = entry.headers.iter().find(|name| {
            name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        }) {
            return Err(invalid.at(
                key("headers"),
                format!("{bad:?} is not a header field name"),
            ));
        }
    }
    Ok(())
}

fn is_dns_name(name: &str) -> bool {
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

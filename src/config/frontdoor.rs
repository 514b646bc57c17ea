//! The front door of an Internet MX: `[recipients]` (who exists in
//! `accept_domains`), `[screen]` (pregreet and DNS lists at connect),
//! `[client_limits]` (rates per client) and `[greylisting]`. As written and
//! as used: every value is typed by serde, and `check` refuses the values
//! that cannot work.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::shaping::Rate;
use super::units::{duration, duration_or_off};
use super::{ConfigError, Invalid, positive};

/// How `[recipients]` learns whether an address exists beyond the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// The files alone (none: every address is taken).
    #[default]
    Off,
    /// Ask the domain's next hop (`MAIL FROM:<>`, `RCPT`, never DATA).
    CallAhead,
}

/// `[recipients]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientsConfig {
    /// `off` or `call-ahead`.
    pub verify: VerifyMode,
    /// One address or `@domain` a line; `#` comments. Loaded at start and
    /// at each reload.
    pub files: Vec<PathBuf>,
    /// How long a recipient the next hop accepted is remembered.
    #[serde(with = "duration")]
    pub positive_ttl: Duration,
    /// How long a recipient the next hop refused is remembered.
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
}

impl Default for RecipientsConfig {
    fn default() -> Self {
        RecipientsConfig {
            verify: VerifyMode::Off,
            files: Vec::new(),
            positive_ttl: Duration::from_secs(7 * 86_400),
            negative_ttl: Duration::from_secs(3 * 3600),
        }
    }
}

impl RecipientsConfig {
    /// True when any recipient in `accept_domains` is checked.
    pub fn is_active(&self) -> bool {
        self.verify == VerifyMode::CallAhead || !self.files.is_empty()
    }
}

/// One DNS list of `[screen] dnsbl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsList {
    /// The zone under which reversed addresses are looked up.
    pub zone: String,
    /// Added to the client's score when it is listed (negative: an allow
    /// list).
    #[serde(default = "default_weight")]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

/// `[screen]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreenConfig {
    /// How long the 220 is held back; a client that talks meanwhile is
    /// refused. `None`: "off".
    #[serde(with = "duration_or_off")]
    pub pregreet: Option<Duration>,
    /// The DNS lists, with their weights.
    pub dnsbl: Vec<DnsList>,
    /// A summed weight at or over this refuses the client.
    pub threshold: i32,
    /// How long a client that passed is not screened again.
    #[serde(with = "duration")]
    pub allowlist_ttl: Duration,
}

impl Default for ScreenConfig {
    fn default() -> Self {
        ScreenConfig {
            pregreet: None,
            dnsbl: Vec::new(),
            threshold: 3,
            allowlist_ttl: Duration::from_secs(86_400),
        }
    }
}

impl ScreenConfig {
    /// True when connections to relay listeners are screened.
    pub fn is_active(&self) -> bool {
        self.pregreet.is_some() || !self.dnsbl.is_empty()
    }
}

/// `[client_limits]`: rates per client IP (IPv6: its /64).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// New connections.
    #[serde(with = "optional_rate", skip_serializing_if = "Option::is_none")]
    pub connections: Option<Rate>,
    /// Transactions (MAIL commands).
    #[serde(with = "optional_rate", skip_serializing_if = "Option::is_none")]
    pub messages: Option<Rate>,
    /// Recipients (RCPT commands).
    #[serde(with = "optional_rate", skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Rate>,
}

impl ClientLimitsConfig {
    /// True when any rate is set.
    pub fn is_active(&self) -> bool {
        self.connections.is_some() || self.messages.is_some() || self.recipients.is_some()
    }
}

/// `[greylisting]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistingConfig {
    /// Off by default.
    pub enabled: bool,
    /// How long a new triplet is refused with 451 4.7.1.
    #[serde(with = "duration")]
    pub delay: Duration,
    /// How long a triplet is remembered: one that passed, since it was last
    /// seen; one not retried, since it was first seen.
    #[serde(with = "duration")]
    pub expiry: Duration,
}

impl Default for GreylistingConfig {
    fn default() -> Self {
        GreylistingConfig {
            enabled: false,
            delay: Duration::from_secs(300),
            expiry: Duration::from_secs(35 * 86_400),
        }
    }
}

/// The four sections together, as the rest of the program reads them.
#[derive(Debug, Clone, Default)]
pub struct FrontDoorConfig {
    pub recipients: RecipientsConfig,
    pub screen: ScreenConfig,
    pub client_limits: ClientLimitsConfig,
    pub greylisting: GreylistingConfig,
}

impl FrontDoorConfig {
    /// Refuses what cannot work: zero lifetimes and delays, empty zones.
    pub(super) fn check(&self, invalid: Invalid) -> Result<(), ConfigError> {
        positive(
            invalid,
            "recipients.positive_ttl",
            self.recipients.positive_ttl,
        )?;
        positive(
            invalid,
            "recipients.negative_ttl",
            self.recipients.negative_ttl,
        )?;
        if let Some(pregreet) = self.screen.pregreet {
            positive(invalid, "screen.pregreet", pregreet)?;
        }
        for (index, list) in self.screen.dnsbl.iter().enumerate() {
            let zone = list.zone.trim_matches('.');
            if zone.is_empty() || zone.contains(char::is_whitespace) {
                return Err(invalid.at(format!("screen.dnsbl[{index}].zone"), "must be a DNS zone"));
            }
        }
        if self.screen.threshold < 1 {
            return Err(invalid.at("screen.threshold", "must be at least 1"));
        }
        positive(invalid, "screen.allowlist_ttl", self.screen.allowlist_ttl)?;
        positive(invalid, "greylisting.delay", self.greylisting.delay)?;
        if self.greylisting.expiry <= self.greylisting.delay {
            return Err(invalid.at(
                "greylisting.expiry",
                "must be longer than greylisting.delay",
            ));
        }
        Ok(())
    }
}

/// Serde for an optional rate string ("60/m").
mod optional_rate {
    use super::*;

    pub fn serialize<S: Serializer>(rate: &Option<Rate>, serializer: S) -> Result<S::Ok, S::Error> {
        match rate {
            Some(rate) => serializer.serialize_str(&rate.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Rate>, D::Error> {
        let text = String::deserialize(deserializer)?;
        Rate::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

//! `[delivery]`, `[tls_policy]` and `[routes]`: how mail goes out. Next hops
//! (`relay_host`, `[routes]` values) are parsed here, once, into
//! [`NextHopAddress`] values; counts are `NonZero*`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::next_hop::{NextHopAddress, Route};
use super::units::{duration, duration_or_off};
use super::{ConfigError, Invalid, count, positive};

/// TLS toward a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// STARTTLS when offered, certificate not verified, plaintext fallback.
    Opportunistic,
    /// STARTTLS with a verified certificate, or defer.
    Required,
    /// Never TLS.
    Disabled,
}

/// `delivery.relay_auth`: the account at the smarthost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayAuth {
    /// The AUTH user name.
    pub username: String,
    /// The AUTH password (a secret: redacted by `check-config`).
    pub password: String,
}

/// `[delivery]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DeliveryFile {
    pub port: u16,
    pub tls: TlsPolicy,
    pub concurrency: usize,
    pub per_domain_concurrency: usize,
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    #[serde(with = "duration")]
    pub retry_max: Duration,
    pub retry_factor: f64,
    #[serde(with = "duration")]
    pub max_queue_lifetime: Duration,
    #[serde(with = "duration_or_off")]
    pub delay_warning: Option<Duration>,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    pub mta_sts: bool,
    pub dane: bool,
    pub chunking: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_auth: Option<RelayAuth>,
}

/// `[delivery]`, validated.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Remote SMTP port for MX deliveries, and for routes without a port.
    pub port: u16,
    /// TLS toward next hops, unless `[tls_policy]` names the domain.
    pub tls: TlsPolicy,
    /// SMTP transactions in flight in total.
    pub concurrency: NonZeroUsize,
    /// SMTP transactions in flight per recipient domain.
    pub per_domain_concurrency: NonZeroUsize,
    /// The first retry delay (above 0).
    pub retry_initial: Duration,
    /// The longest retry delay (not below `retry_initial`).
    pub retry_max: Duration,
    /// How much each retry delay grows (>= 1.0).
    pub retry_factor: f64,
    /// How long a message may stay queued before it bounces (above 0).
    pub max_queue_lifetime: Duration,
    /// How long a message waits before its sender gets the one delay notice
    /// (above 0); `None` ("off") sends none.
    pub delay_warning: Option<Duration>,
    /// TCP connect timeout (above 0).
    pub connect_timeout: Duration,
    /// RFC 5321 §4.5.3.2: greeting, MAIL, RCPT and other command replies.
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2: the reply after the final dot.
    pub data_timeout: Duration,
    /// Extra CA file for verifying remote servers.
    pub tls_ca: Option<PathBuf>,
    /// Optional smarthost: all mail goes there (port 25 unless given).
    pub relay_host: Option<NextHopAddress>,
    /// The smarthost account; only with `relay_host`.
    pub relay_auth: Option<RelayAuth>,
    /// Fetch, cache and obey recipient domains' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// Use DNSSEC-authenticated TLSA records (RFC 7672) when every
    /// nameserver is on loopback.
    pub dane: bool,
    /// Send bodies with BDAT (RFC 3030) to next hops offering CHUNKING.
    pub chunking: bool,
}

impl DeliveryFile {
    /// Validates `[delivery]`, naming the key of the first bad value.
    pub(super) fn into_settings(self, invalid: Invalid) -> Result<DeliveryConfig, ConfigError> {
        let concurrency = count(invalid, "delivery.concurrency", self.concurrency)?;
        let per_domain_concurrency = count(
            invalid,
            "delivery.per_domain_concurrency",
            self.per_domain_concurrency,
        )?;
        if !(self.retry_factor.is_finite() && self.retry_factor >= 1.0) {
            return Err(invalid.at("delivery.retry_factor", "must be a number >= 1.0"));
        }
        // A zero timeout would end every delivery at once, and a zero
        // lifetime would bounce all mail unattempted.
        let retry_initial = positive(invalid, "delivery.retry_initial", self.retry_initial)?;
        let max_queue_lifetime = positive(
            invalid,
            "delivery.max_queue_lifetime",
            self.max_queue_lifetime,
        )?;
        let delay_warning = match self.delay_warning {
            Some(warning) => Some(positive(invalid, "delivery.delay_warning", warning)?),
            None => None,
        };
        let connect_timeout = positive(invalid, "delivery.connect_timeout", self.connect_timeout)?;
        let command_timeout = positive(invalid, "delivery.command_timeout", self.command_timeout)?;
        let data_timeout = positive(invalid, "delivery.data_timeout", self.data_timeout)?;
        if self.port == 0 {
            return Err(invalid.at("delivery.port", "must be a port from 1 to 65535"));
        }
        if self.retry_max < retry_initial {
            return Err(invalid.at(
                "delivery.retry_max",
                "must not be below delivery.retry_initial",
            ));
        }
        let relay_host = match &self.relay_host {
            Some(text) => Some(
                NextHopAddress::parse(text)
                    .map_err(|message| invalid.at("delivery.relay_host", message))?,
            ),
            None => None,
        };
        if self.relay_auth.is_some() && relay_host.is_none() {
            return Err(invalid.at("delivery.relay_auth", "needs delivery.relay_host"));
        }
        Ok(DeliveryConfig {
            port: self.port,
            tls: self.tls,
            concurrency,
            per_domain_concurrency,
            retry_initial,
            retry_max: self.retry_max,
            retry_factor: self.retry_factor,
            max_queue_lifetime,
            delay_warning,
            connect_timeout,
            command_timeout,
            data_timeout,
            tls_ca: self.tls_ca,
            relay_host,
            relay_auth: self.relay_auth,
            mta_sts: self.mta_sts,
            dane: self.dane,
            chunking: self.chunking,
        })
    }
}

impl From<&DeliveryConfig> for DeliveryFile {
    fn from(delivery: &DeliveryConfig) -> DeliveryFile {
        DeliveryFile {
            port: delivery.port,
            tls: delivery.tls,
            concurrency: delivery.concurrency.get(),
            per_domain_concurrency: delivery.per_domain_concurrency.get(),
            retry_initial: delivery.retry_initial,
            retry_max: delivery.retry_max,
            retry_factor: delivery.retry_factor,
            max_queue_lifetime: delivery.max_queue_lifetime,
            delay_warning: delivery.delay_warning,
            connect_timeout: delivery.connect_timeout,
            command_timeout: delivery.command_timeout,
            data_timeout: delivery.data_timeout,
            tls_ca: delivery.tls_ca.clone(),
            relay_host: delivery.relay_host.as_ref().map(ToString::to_string),
            relay_auth: delivery.relay_auth.clone(),
            mta_sts: delivery.mta_sts,
            dane: delivery.dane,
            chunking: delivery.chunking,
        }
    }
}

/// Parses `[routes]`: each value a next hop (SMTP or LMTP), the key named
/// on error.
pub(super) fn parse_routes(
    routes: BTreeMap<String, String>,
    invalid: Invalid,
) -> Result<BTreeMap<String, Route>, ConfigError> {
    routes
        .into_iter()
        .map(|(domain, next_hop)| {
            let address = Route::parse(&next_hop)
                .map_err(|message| invalid.at(format!("routes.\"{domain}\""), message))?;
            Ok((domain, address))
        })
        .collect()
}

/// `[routes]` written back as the file has it.
pub(super) fn write_routes(routes: &BTreeMap<String, Route>) -> BTreeMap<String, String> {
    routes
        .iter()
        .map(|(domain, address)| (domain.clone(), address.to_string()))
        .collect()
}

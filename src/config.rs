//! Typed configuration: the TOML file's struct tree, its defaults (all in this
//! file), parsing of durations and sizes at load time, and validation.
//!
//! The rest of the program sees only runtime types (`Duration`, `IpNet`,
//! `SocketAddr`, byte counts), never the strings they came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The embedded defaults used when no configuration file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluice.toml";

/// What `sluice check-config` prints in place of a secret; refused as a
/// value, so a saved copy of that output cannot run with it.
pub const REDACTED: &str = "<redacted>";

/// A configuration problem, naming the file and the key involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our name in the greeting, EHLO, Received headers and bounces.
    pub hostname: String,
    pub spool: SpoolConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub limits: LimitsConfig,
    pub policy: PolicyConfig,
    #[serde(rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
    pub delivery: DeliveryConfig,
    /// Per-destination-domain override of `delivery.tls`.
    pub tls_policy: BTreeMap<String, TlsPolicy>,
    pub dns: DnsConfig,
    /// Static next hops by recipient domain ("*" catches all), before MX.
    pub routes: BTreeMap<String, String>,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub path: PathBuf,
    /// sled's page cache.
    #[serde(with = "byte_size")]
    pub cache_capacity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port-25 style: STARTTLS offered when configured, AUTH optional.
    Relay,
    /// Port 587: STARTTLS and AUTH required before MAIL.
    Submission,
    /// Port 465: implicit TLS, AUTH required before MAIL.
    Submissions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default = "default_listener_kind")]
    pub kind: ListenerKind,
}

fn default_listener_kind() -> ListenerKind {
    ListenerKind::Relay
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(with = "byte_size")]
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Failed AUTH attempts after which the connection is closed.
    pub max_auth_failures: u32,
    /// Errors (syntax, bad sequence) after which the connection is closed.
    pub max_errors: u32,
    /// How long in-progress transactions may run after SIGTERM.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// A message whose header carries more `Received:` fields than this is
    /// refused with 554 5.4.6 (RFC 5321 §6.3 mail loop); as Postfix's
    /// `hopcount_limit`.
    pub max_hops: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Clients in these networks may relay to any domain without AUTH.
    pub relay_networks: Vec<IpNet>,
    /// Anyone may send to these domains (we are their MX).
    pub accept_domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An argon2id PHC string, from `sluice hash-password`.
    pub password_hash: String,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayAuth {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Remote SMTP port for MX deliveries.
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
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// RFC 5321 §4.5.3.2: greeting, MAIL, RCPT and other command replies.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2: the reply after the final dot.
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Extra CA file for verifying remote servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Optional smarthost "host:port": all mail goes there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_auth: Option<RelayAuth>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Empty: the system resolver configuration (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    #[serde(with = "duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Bearer token; required when `address` is not loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: "info", "debug", "sluice=debug,info".
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: system_hostname(),
            spool: SpoolConfig::default(),
            listeners: vec![ListenerConfig {
                address: SocketAddr::from(([127, 0, 0, 1], 2525)),
                kind: ListenerKind::Relay,
            }],
            tls: None,
            limits: LimitsConfig::default(),
            policy: PolicyConfig::default(),
            users: Vec::new(),
            delivery: DeliveryConfig::default(),
            tls_policy: BTreeMap::new(),
            dns: DnsConfig::default(),
            routes: BTreeMap::new(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("./spool"),
            cache_capacity: 64 * MIB,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: 35 * MIB,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            max_auth_failures: 3,
            max_errors: 20,
            shutdown_grace: Duration::from_secs(30),
            max_hops: 50,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            relay_networks: vec![
                "127.0.0.0/8".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            accept_domains: Vec::new(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            port: 25,
            tls: TlsPolicy::Opportunistic,
            concurrency: 100,
            per_domain_concurrency: 10,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            retry_factor: 2.0,
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            tls_ca: None,
            relay_host: None,
            relay_auth: None,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 8025)),
            token: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Where the configuration came from, for messages and relative paths.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file read, or `None` for the embedded defaults.
    pub path: Option<PathBuf>,
}

impl Config {
    /// Loads `path` when given. Without one, loads the default path when that
    /// file exists, else the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
            None => {
                return Ok(Loaded {
                    config: Config::default(),
                    path: None,
                });
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Config::parse(&text, &path)?;
        Ok(Loaded {
            config,
            path: Some(path),
        })
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// The effective configuration as TOML, defaults included, secrets too.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config tree always serializes")
    }

    /// A copy with every secret replaced by [`REDACTED`]: `[admin] token`,
    /// the `delivery.relay_auth` password and each `[[user]]`
    /// `password_hash` (a hash is not the password, but it allows offline
    /// guessing). What `sluice check-config` prints, so its output can be
    /// pasted into a ticket; a saved copy is refused by [`Config::parse`]
    /// until the real secrets are put back.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        if let Some(token) = &mut copy.admin.token {
            *token = REDACTED.to_string();
        }
        if let Some(auth) = &mut copy.delivery.relay_auth {
            auth.password = REDACTED.to_string();
        }
        for user in &mut copy.users {
            user.password_hash = REDACTED.to_string();
        }
        copy
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let mut secrets: Vec<(String, &str)> = Vec::new();
        if let Some(token) = &self.admin.token {
            secrets.push(("admin.token".into(), token));
        }
        if let Some(auth) = &self.delivery.relay_auth {
            secrets.push(("delivery.relay_auth.password".into(), &auth.password));
        }
        for (index, user) in self.users.iter().enumerate() {
            secrets.push((format!("user[{index}].password_hash"), &user.password_hash));
        }
        if let Some((key, _)) = secrets.iter().find(|(_, value)| *value == REDACTED) {
            return Err(invalid(
                key,
                format!(
                    "{REDACTED:?} is the placeholder `sluice check-config` prints for a secret; \
                     put the real value back"
                ),
            ));
        }
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid("hostname", "must be a host name".into()));
        }
        if self.listeners.is_empty() {
            return Err(invalid(
                "listener",
                "at least one listener is needed".into(),
            ));
        }
        for (index, listener) in self.listeners.iter().enumerate() {
            if listener.kind != ListenerKind::Relay && self.tls.is_none() {
                return Err(invalid(
                    &format!("listener[{index}].kind"),
                    format!("a {:?} listener needs a [tls] certificate", listener.kind)
                        .to_lowercase(),
                ));
            }
        }
        if self.limits.max_message_size == 0 {
            return Err(invalid("limits.max_message_size", "must be above 0".into()));
        }
        for (key, value) in [
            ("limits.max_recipients", self.limits.max_recipients),
            ("limits.max_connections", self.limits.max_connections),
            ("limits.max_hops", self.limits.max_hops),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            ("delivery.concurrency", self.delivery.concurrency),
            (
                "delivery.per_domain_concurrency",
                self.delivery.per_domain_concurrency,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if !(self.delivery.retry_factor.is_finite() && self.delivery.retry_factor >= 1.0) {
            return Err(invalid(
                "delivery.retry_factor",
                "must be a number >= 1.0".into(),
            ));
        }
        // A zero timeout would end every session, delivery or lookup at
        // once, and a zero lifetime would bounce all mail unattempted.
        for (key, value) in [
            ("limits.command_timeout", self.limits.command_timeout),
            ("limits.data_timeout", self.limits.data_timeout),
            ("delivery.retry_initial", self.delivery.retry_initial),
            (
                "delivery.max_queue_lifetime",
                self.delivery.max_queue_lifetime,
            ),
            ("delivery.connect_timeout", self.delivery.connect_timeout),
            ("delivery.command_timeout", self.delivery.command_timeout),
            ("delivery.data_timeout", self.delivery.data_timeout),
            ("dns.timeout", self.dns.timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above 0".into()));
            }
        }
        if self.delivery.port == 0 {
            return Err(invalid(
                "delivery.port",
                "must be a port from 1 to 65535".into(),
            ));
        }
        for (index, listener) in self.listeners.iter().enumerate() {
            let earlier = &self.listeners[..index];
            if listener.address.port() != 0
                && earlier
                    .iter()
                    .any(|other| other.address == listener.address)
            {
                return Err(invalid(
                    &format!("listener[{index}].address"),
                    format!("{} is already used by another listener", listener.address),
                ));
            }
        }
        // DESIGN.md: sluice is never an open relay. A network holding every
        // address would make it one.
        if let Some(network) = self
            .policy
            .relay_networks
            .iter()
            .find(|n| n.prefix_len() == 0)
        {
            return Err(invalid(
                "policy.relay_networks",
                format!("{network} holds every address and would make sluice an open relay"),
            ));
        }
        if self.delivery.retry_max < self.delivery.retry_initial {
            return Err(invalid(
                "delivery.retry_max",
                "must not be below delivery.retry_initial".into(),
            ));
        }
        if let Some(relay_host) = &self.delivery.relay_host {
            parse_host_port(relay_host, 25)
                .map_err(|message| invalid("delivery.relay_host", message))?;
        }
        if self.delivery.relay_auth.is_some() && self.delivery.relay_host.is_none() {
            return Err(invalid(
                "delivery.relay_auth",
                "needs delivery.relay_host".into(),
            ));
        }
        for (domain, next_hop) in &self.routes {
            parse_host_port(next_hop, self.delivery.port)
                .map_err(|message| invalid(&format!("routes.\"{domain}\""), message))?;
        }
        for (index, user) in self.users.iter().enumerate() {
            if user.name.is_empty() {
                return Err(invalid(
                    &format!("user[{index}].name"),
                    "must not be empty".into(),
                ));
            }
            argon2::PasswordHash::new(&user.password_hash).map_err(|error| {
                invalid(
                    &format!("user[{index}].password_hash"),
                    format!("not a PHC hash ({error}); make one with `sluice hash-password`"),
                )
            })?;
        }
        if !self.admin.address.ip().is_loopback() && self.admin.token.is_none() {
            return Err(invalid(
                "admin.token",
                format!(
                    "required because admin.address {} is not a loopback address",
                    self.admin.address
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|error| invalid("log.level", error.to_string()))?;
        // A bare word that is no level parses as a target name and would
        // silently switch every log line off ("warnig"): refuse it.
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        if let Some(word) = self.log.level.split(',').map(str::trim).find(|part| {
            !part.is_empty()
                && !part.contains('=')
                && !LEVELS.contains(&part.to_ascii_lowercase().as_str())
        }) {
            return Err(invalid(
                "log.level",
                format!(
                    "{word:?} is not a level (trace, debug, info, warn, error, off) or a target=level directive"
                ),
            ));
        }
        Ok(())
    }

    /// The TLS policy for a destination domain.
    pub fn tls_policy_for(&self, domain: &str) -> TlsPolicy {
        self.tls_policy
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(domain))
            .map(|(_, policy)| *policy)
            .unwrap_or(self.delivery.tls)
    }
}

/// Splits "host:port", "host" (default port), "[v6]:port" or "v6".
pub fn parse_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not host:port");
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((text.to_string(), default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
        None => (text, default_port),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Parses "35MiB", "10MB", "512KiB", "1G", "1048576".
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. \"35MiB\""))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => MIB,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * MIB,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Formats a byte count the way [`parse_byte_size`] reads it back.
pub fn format_byte_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", 1024)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Formats a duration the way the configuration writes them: one number in
/// the largest unit that is exact ("5d", "1h", "90m", "90s", "250ms"), which
/// the parser reads back to the same value.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, size) = UNITS
        .into_iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .expect("every count of nanoseconds is a multiple of 1");
    format!("{}{unit}", nanos / size)
}

/// Serde for sizes: a string like "35MiB", or a plain integer of bytes.
mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_byte_size(*bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Raw::deserialize(deserializer)
            .map_err(|_| D::Error::custom("expected a size like \"35MiB\""))?
        {
            Raw::Number(bytes) => Ok(bytes),
            Raw::Text(text) => super::parse_byte_size(&text).map_err(D::Error::custom),
        }
    }
}

/// Serde for durations: strings like "30s", "5m", "5d", "1h 30m".
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)
            .map_err(|_| D::Error::custom("expected a duration string like \"30s\" or \"5m\""))?;
        humantime::parse_duration(&text)
            .map_err(|error| D::Error::custom(format!("invalid duration {text:?}: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:2525");
        assert_eq!(config.limits.max_message_size, 35 * MIB);
        assert_eq!(config.limits.command_timeout, Duration::from_secs(300));
        assert_eq!(
            config.delivery.max_queue_lifetime,
            Duration::from_secs(5 * 86400)
        );
        assert_eq!(config.delivery.port, 25);
        assert_eq!(config.admin.address.to_string(), "127.0.0.1:8025");
        assert_eq!(config.spool.path, PathBuf::from("./spool"));
    }

    #[test]
    fn unknown_key_is_rejected_naming_key_and_file() {
        let error = parse("[limits]\nmax_recipents = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("test.toml"), "{error}");
        assert!(error.contains("max_recipents"), "{error}");
    }

    #[test]
    fn max_hops_defaults_to_50_and_must_be_positive() {
        assert_eq!(parse("").expect("defaults").limits.max_hops, 50);
        assert_eq!(
            parse("[limits]\nmax_hops = 7\n")
                .expect("valid")
                .limits
                .max_hops,
            7
        );
        assert!(parse("[limits]\nmax_hops = 0\n").is_err());
    }

    #[test]
    fn values_that_would_stop_all_work_are_rejected_naming_the_key() {
        for (text, key) in [
            (
                "[limits]\ncommand_timeout = \"0s\"\n",
                "limits.command_timeout",
            ),
            ("[limits]\ndata_timeout = \"0s\"\n", "limits.data_timeout"),
            (
                "[delivery]\nconnect_timeout = \"0s\"\n",
                "delivery.connect_timeout",
            ),
            (
                "[delivery]\ncommand_timeout = \"0s\"\n",
                "delivery.command_timeout",
            ),
            (
                "[delivery]\ndata_timeout = \"0s\"\n",
                "delivery.data_timeout",
            ),
            (
                "[delivery]\nmax_queue_lifetime = \"0s\"\n",
                "delivery.max_queue_lifetime",
            ),
            ("[dns]\ntimeout = \"0s\"\n", "dns.timeout"),
            ("[delivery]\nport = 0\n", "delivery.port"),
            (
                "[[listener]]\naddress = \"127.0.0.1:2525\"\n\
                 [[listener]]\naddress = \"127.0.0.1:2525\"\n",
                "listener[1].address",
            ),
            (
                "[policy]\nrelay_networks = [\"0.0.0.0/0\"]\n",
                "policy.relay_networks",
            ),
            (
                "[policy]\nrelay_networks = [\"::/0\"]\n",
                "policy.relay_networks",
            ),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
        // Port 0 listeners (tests, ephemeral) may repeat; real networks pass.
        parse(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [policy]\nrelay_networks = [\"10.0.0.0/8\", \"::1/128\"]\n",
        )
        .expect("valid");
    }

    #[test]
    fn bad_duration_is_rejected() {
        let error = parse("[limits]\ncommand_timeout = \"5 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("command_timeout"), "{error}");
        assert!(error.contains("invalid duration"), "{error}");
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_byte_size("35MiB"), Ok(35 * MIB));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("512"), Ok(512));
        assert!(parse_byte_size("12 furlongs").is_err());
        let config = parse("[limits]\nmax_message_size = 1000\n").unwrap();
        assert_eq!(config.limits.max_message_size, 1000);
    }

    #[test]
    fn non_loopback_admin_needs_token() {
        let error = parse("[admin]\naddress = \"0.0.0.0:8025\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("admin.token"), "{error}");
        parse("[admin]\naddress = \"0.0.0.0:8025\"\ntoken = \"s3cret\"\n").unwrap();
    }

    #[test]
    fn effective_config_round_trips() {
        let config = parse(
            "hostname = \"mx.example.org\"\n[routes]\n\"example.test\" = \"127.0.0.1:2526\"\n",
        )
        .unwrap();
        let again = parse(&config.to_toml()).expect("printed config parses");
        assert_eq!(again.hostname, "mx.example.org");
        assert_eq!(again.routes["example.test"], "127.0.0.1:2526");
        assert_eq!(again.delivery.retry_max, config.delivery.retry_max);
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit_and_read_back() {
        for (seconds, text) in [
            (5 * 86400, "5d"),
            (3600, "1h"),
            (5400, "90m"),
            (90, "90s"),
            (300, "5m"),
            (0, "0s"),
        ] {
            let duration = Duration::from_secs(seconds);
            assert_eq!(format_duration(duration), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), duration);
        }
        let odd = Duration::from_millis(1500);
        assert_eq!(format_duration(odd), "1500ms");
        assert_eq!(humantime::parse_duration("1500ms").unwrap(), odd);
        let odd = Duration::new(1, 1);
        assert_eq!(
            humantime::parse_duration(&format_duration(odd)).unwrap(),
            odd
        );
    }

    #[test]
    fn redacted_copy_hides_every_secret_and_cannot_be_loaded() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$4cYoOKWeX7KncVmUYDcGLQ$Ibxani10KQs/tI7K6KRKUxVRJw7csoR+L/ZbR2fUkyM";
        let text = format!(
            "[admin]\ntoken = \"t0ken\"\n[delivery]\nrelay_host = \"smart.example\"\n\
             relay_auth = {{ username = \"u\", password = \"pa55\" }}\n\
             [[user]]\nname = \"app\"\npassword_hash = \"{hash}\"\n"
        );
        let config = parse(&text).expect("valid");
        let printed = config.redacted().to_toml();
        for secret in ["t0ken", "pa55", hash] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(printed.contains("username = \"u\""), "{printed}");
        assert!(printed.contains("name = \"app\""), "{printed}");
        assert_eq!(printed.matches(REDACTED).count(), 3, "{printed}");
        let error = parse(&printed)
            .expect_err("placeholders refused")
            .to_string();
        assert!(
            error.contains("admin.token") && error.contains(REDACTED),
            "{error}"
        );
        // Each secret on its own.
        let only_hash = printed
            .replace("token = \"<redacted>\"", "token = \"t0ken\"")
            .replace("password = \"<redacted>\"", "password = \"pa55\"");
        let error = parse(&only_hash)
            .expect_err("hash placeholder refused")
            .to_string();
        assert!(error.contains("user[0].password_hash"), "{error}");
        // The unredacted config is untouched and round-trips.
        assert_eq!(config.admin.token.as_deref(), Some("t0ken"));
        parse(&config.to_toml()).expect("the full config parses again");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("a.example:587", 25),
            Ok(("a.example".into(), 587))
        );
        assert_eq!(
            parse_host_port("a.example", 25),
            Ok(("a.example".into(), 25))
        );
        assert_eq!(parse_host_port("[::1]:2526", 25), Ok(("::1".into(), 2526)));
        assert!(parse_host_port("a.example:x", 25).is_err());
    }

    #[test]
    fn log_level_typo_is_refused_but_directives_are_accepted() {
        let path = Path::new("t.toml");
        for good in ["info", "DEBUG", "sluice=debug,info", "off"] {
            let text = format!("[log]\nlevel = \"{good}\"\n");
            assert!(Config::parse(&text, path).is_ok(), "{good}");
        }
        let error = Config::parse("[log]\nlevel = \"warnig\"\n", path)
            .expect_err("a typo is an error")
            .to_string();
        assert!(
            error.contains("log.level") && error.contains("warnig"),
            "{error}"
        );
    }
}

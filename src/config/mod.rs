//! Configuration: the TOML file, read and validated once at load into typed
//! settings. The rest of the program sees only runtime types (`Duration`,
//! `IpNet`, `SocketAddr`, `NonZero*` counts, [`NextHopAddress`]), never the
//! strings they came from.
//!
//! - `file`: the serde tree as written, every default, and the way from the
//!   file to [`Config`] (section by section) and back;
//! - one file per section, holding its typed settings and its validation:
//!   `spool`, `listeners` (`[[listener]]`, `[tls]`), `limits`, `policy`
//!   (`[policy]`, `[[user]]`), `delivery` (`[delivery]`, `[tls_policy]`,
//!   `[routes]`), `dns`, `dkim` (`[[dkim]]`, `[verify]`), `shaping`
//!   (`[shaping]`, `[cluster]`), `frontdoor` (`[recipients]`, `[screen]`,
//!   `[client_limits]`, `[greylisting]`), `admin`, `log`;
//! - `next_hop`: the host-and-port values of `relay_host` and `[routes]`;
//! - `units`: sizes and durations ("35MiB", "5d");
//! - `print`: what `sluice check-config` prints, and its redaction.

mod admin;
mod delivery;
mod dkim;
mod dns;
mod events;
mod file;
mod frontdoor;
mod limits;
mod listeners;
mod local;
mod log;
mod milter;
mod next_hop;
mod policy;
mod print;
mod shaping;
mod spool;
mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use admin::AdminConfig;
pub use delivery::{DeliveryConfig, RelayAuth, TlsPolicy};
pub use dkim::{DEFAULT_SIGNED_HEADERS, DkimEntry, VerifyConfig};
pub use dns::DnsConfig;
pub use events::{BOUNCE_CLASSES, BounceClassConfig, EVENT_TYPES, EventSink, EventsConfig};
pub use frontdoor::{
    ClientLimitsConfig, DnsList, FrontDoorConfig, GreylistingConfig, RecipientsConfig,
    ScreenConfig, VerifyMode,
};
pub use limits::LimitsConfig;
pub use listeners::{ListenerConfig, ListenerKind, TlsConfig};
pub use local::{LocalConfig, ServerConfig};
pub use log::{LogConfig, LogFormat};
pub use milter::{MilterAddress, MilterConfig, OnFailure};
pub use next_hop::{HostName, NextHopAddress, Route};
pub use policy::{PolicyConfig, UserConfig};
pub use print::REDACTED;
pub use shaping::{ClusterConfig, DEFAULT_SUSPEND_FOR, Rate, Shaping, ShapingKey, ShapingRule};
pub use spool::{MinFree, SpoolConfig};
pub use units::{format_byte_size, format_duration, parse_byte_size};

use file::ConfigFile;

/// The configuration file read when none is named, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sluice/sluice.toml";

/// A configuration problem, naming the file and the key involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value the program cannot run with.
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Builds [`ConfigError::Invalid`] for the file being validated.
#[derive(Debug, Clone, Copy)]
struct Invalid<'a> {
    path: &'a Path,
}

impl Invalid<'_> {
    /// The error for `key`.
    fn at(self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A count that must be at least 1, as its `NonZero*` type.
fn count<T, N: TryFrom<T>>(invalid: Invalid, key: &str, value: T) -> Result<N, ConfigError> {
    N::try_from(value).map_err(|_| invalid.at(key, "must be at least 1"))
}

/// A duration that must be above 0 (a zero timeout would end everything at
/// once).
fn positive(
    invalid: Invalid,
    key: &str,
    value: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    if value.is_zero() {
        return Err(invalid.at(key, "must be above 0"));
    }
    Ok(value)
}

/// The whole configuration, validated: what the rest of the program reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our name in the greeting, EHLO, Received headers and bounces.
    pub hostname: String,
    /// `[spool]`.
    pub spool: SpoolConfig,
    /// `[[listener]]`: at least one, no two on one address.
    pub listeners: Vec<ListenerConfig>,
    /// `[tls]`: the inbound certificate.
    pub tls: Option<TlsConfig>,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// `[[user]]`: AUTH accounts.
    pub users: Vec<UserConfig>,
    /// `[delivery]`.
    pub delivery: DeliveryConfig,
    /// Per-destination-domain override of `delivery.tls`.
    pub tls_policy: BTreeMap<String, TlsPolicy>,
    /// `[dns]`.
    pub dns: DnsConfig,
    /// Static next hops by recipient domain ("*" catches all), before MX.
    pub routes: BTreeMap<String, Route>,
    /// `[[dkim]]`: signing keys by From: domain (loaded by `auth::dkim`).
    pub dkim: Vec<DkimEntry>,
    /// `[verify]`.
    pub verify: VerifyConfig,
    /// `[[milter]]`: content filters, in order.
    pub milters: Vec<MilterConfig>,
    /// `[shaping."KEY"]`: traffic shaping per destination.
    pub shaping: Shaping,
    /// `[cluster]`: limits shared through Redis.
    pub cluster: ClusterConfig,
    /// `[recipients]`, `[screen]`, `[client_limits]`, `[greylisting]`.
    pub front_door: FrontDoorConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[[events]]`: delivery-event subscribers.
    pub events: Vec<EventsConfig>,
    /// `[[bounce_class]]`: the operator's classifier rules, before the built-in ones.
    pub bounce_classes: Vec<BounceClassConfig>,
    /// `[local]`.
    pub local: LocalConfig,
    /// `[server]`.
    pub server: ServerConfig,
}

/// The embedded defaults: what an empty file gives.
impl Default for Config {
    fn default() -> Self {
        ConfigFile::default()
            .into_settings(Path::new("<embedded defaults>"))
            .expect("the embedded defaults are valid")
    }
}

/// Where the configuration came from, for messages and relative paths.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
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
        ConfigFile::parse(text, path)?.into_settings(path)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::units::MIB;
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
        assert_eq!(
            config.delivery.delay_warning,
            Some(Duration::from_secs(4 * 3600))
        );
        assert_eq!(config.admin.address.to_string(), "127.0.0.1:8025");
        assert_eq!(config.spool.path, PathBuf::from("./spool"));
    }

    #[test]
    fn delay_warning_is_a_duration_or_off_and_prints_back() {
        let config = parse("[delivery]\ndelay_warning = \"off\"\n").expect("off is valid");
        assert_eq!(config.delivery.delay_warning, None);
        assert!(config.to_toml().contains("delay_warning = \"off\""));
        let config = parse("[delivery]\ndelay_warning = \"90m\"\n").expect("valid");
        assert_eq!(
            config.delivery.delay_warning,
            Some(Duration::from_secs(5400))
        );
        assert!(config.to_toml().contains("delay_warning = \"90m\""));
        let error = parse("[delivery]\ndelay_warning = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("delay_warning"), "{error}");
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
        assert_eq!(parse("").expect("defaults").limits.max_hops.get(), 50);
        assert_eq!(
            parse("[limits]\nmax_hops = 7\n")
                .expect("valid")
                .limits
                .max_hops
                .get(),
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
            (
                "[delivery]\ndelay_warning = \"0s\"\n",
                "delivery.delay_warning",
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
    fn every_count_refuses_zero_naming_file_and_key() {
        for key in [
            "limits.max_recipients",
            "limits.max_connections",
            "limits.max_connections_per_ip",
            "limits.max_auth_failures",
            "limits.max_errors",
            "limits.max_hops",
            "limits.max_junk_commands",
            "delivery.concurrency",
            "delivery.per_domain_concurrency",
        ] {
            let (table, name) = key.split_once('.').expect("section.key");
            let text = format!("[{table}]\n{name} = 0\n");
            let error = parse(&text).expect_err(&text).to_string();
            assert_eq!(
                error,
                format!("config file test.toml: {key}: must be at least 1"),
                "{text}"
            );
        }
        let limits = parse("[limits]\nmax_errors = 1\nmax_auth_failures = 1\n")
            .expect("1 is a valid count")
            .limits;
        assert_eq!(limits.max_errors.get(), 1);
        assert_eq!(limits.max_auth_failures.get(), 1);
    }

    #[test]
    fn next_hops_are_parsed_at_load_naming_the_key_of_a_bad_one() {
        let config = parse(
            "[delivery]\nrelay_host = \"smart.example:587\"\n\
             [routes]\n\"a.test\" = \"[::1]:2526\"\n\"b.test\" = \"mx.b.test\"\n",
        )
        .expect("valid");
        let relay = config.delivery.relay_host.expect("relay_host");
        assert_eq!(relay.host, HostName::Domain("smart.example".into()));
        assert_eq!(relay.port, Some(587));
        let Route::Smtp(a) = &config.routes["a.test"] else {
            panic!("an SMTP route")
        };
        assert_eq!(a.host, HostName::Ip("::1".parse().unwrap()));
        assert_eq!(config.routes["b.test"].to_string(), "mx.b.test");
        for (text, key) in [
            (
                "[delivery]\nrelay_host = \"smart:x\"\n",
                "delivery.relay_host",
            ),
            ("[routes]\n\"a.test\" = \"a b\"\n", "routes.\"a.test\""),
            (
                "[routes]\n\"a.test\" = \"lmtp:127.0.0.1\"\n",
                "routes.\"a.test\"",
            ),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(
                error.starts_with(&format!("config file test.toml: {key}: ")),
                "{error}"
            );
        }
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
        assert_eq!(again.routes["example.test"].to_string(), "127.0.0.1:2526");
        assert_eq!(again.delivery.retry_max, config.delivery.retry_max);
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

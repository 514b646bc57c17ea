//! The configuration file as written: the serde tree (`deny_unknown_fields`
//! everywhere), every default in one place, the way from the file to the
//! typed [`Config`] (validated section by section) and back, for printing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::admin::AdminConfig;
use super::delivery::{DeliveryFile, TlsPolicy, parse_routes, write_routes};
use super::dkim::{self, DkimEntry, VerifyConfig};
use super::dns::DnsConfig;
use super::events::{self, BounceClassConfig, EventsConfig};
use super::frontdoor::{
    ClientLimitsConfig, FrontDoorConfig, GreylistingConfig, RecipientsConfig, ScreenConfig,
};
use super::limits::LimitsFile;
use super::listeners::{self, ListenerConfig, ListenerKind, TlsConfig};
use super::local::{LocalConfig, ServerConfig};
use super::log::{LogConfig, LogFormat};
use super::milter::{self, MilterFile};
use super::policy::{self, PolicyConfig, UserConfig};
use super::print;
use super::shaping::{ClusterFile, Shaping, ShapingFile};
use super::spool::SpoolConfig;
use super::units::MIB;
use super::{Config, ConfigError, Invalid};

/// The whole file, as written. Field order is the order `check-config`
/// prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ConfigFile {
    pub hostname: String,
    pub spool: SpoolConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub limits: LimitsFile,
    pub policy: PolicyConfig,
    #[serde(rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
    pub delivery: DeliveryFile,
    pub tls_policy: BTreeMap<String, TlsPolicy>,
    pub dns: DnsConfig,
    pub routes: BTreeMap<String, String>,
    #[serde(rename = "dkim", skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimEntry>,
    pub verify: VerifyConfig,
    #[serde(rename = "milter", skip_serializing_if = "Vec::is_empty")]
    pub milters: Vec<MilterFile>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shaping: BTreeMap<String, ShapingFile>,
    pub cluster: ClusterFile,
    pub recipients: RecipientsConfig,
    pub screen: ScreenConfig,
    pub client_limits: ClientLimitsConfig,
    pub greylisting: GreylistingConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    #[serde(rename = "events", skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventsConfig>,
    #[serde(rename = "bounce_class", skip_serializing_if = "Vec::is_empty")]
    pub bounce_classes: Vec<BounceClassConfig>,
    pub local: LocalConfig,
    pub server: ServerConfig,
}

impl ConfigFile {
    /// Parses TOML text; `path` is only used in messages.
    pub(super) fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })
    }

    /// Validates the file section by section into the typed settings; the
    /// first problem found is returned, naming `path` and the key.
    pub(super) fn into_settings(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = Invalid { path };
        print::refuse_placeholders(&self, invalid)?;
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid.at("hostname", "must be a host name"));
        }
        listeners::check(&self.listeners, self.tls.as_ref(), invalid)?;
        let limits = self.limits.into_settings(invalid)?;
        let delivery = self.delivery.into_settings(invalid)?;
        self.dns.check(invalid)?;
        let routes = parse_routes(self.routes, invalid)?;
        self.policy.check(invalid)?;
        policy::check_users(&self.users, invalid)?;
        dkim::check(&self.dkim, invalid)?;
        self.admin.check(invalid)?;
        self.log.check(invalid)?;
        self.server.check(invalid)?;
        let shaping = Shaping::from_file(self.shaping, invalid)?;
        let cluster = self.cluster.into_settings(&self.hostname, invalid)?;
        let front_door = FrontDoorConfig {
            recipients: self.recipients,
            screen: self.screen,
            client_limits: self.client_limits,
            greylisting: self.greylisting,
        };
        front_door.check(invalid)?;
        let milters = milter::into_settings(self.milters, invalid)?;
        events::check(&self.events, &self.bounce_classes, invalid)?;
        Ok(Config {
            hostname: self.hostname,
            spool: self.spool,
            listeners: self.listeners,
            tls: self.tls,
            limits,
            policy: self.policy,
            users: self.users,
            delivery,
            tls_policy: self.tls_policy,
            dns: self.dns,
            routes,
            dkim: self.dkim,
            verify: self.verify,
            milters,
            shaping,
            cluster,
            front_door,
            admin: self.admin,
            log: self.log,
            events: self.events,
            bounce_classes: self.bounce_classes,
            local: self.local,
            server: self.server,
        })
    }
}

/// The settings written back in the file's form.
impl From<&Config> for ConfigFile {
    fn from(config: &Config) -> ConfigFile {
        ConfigFile {
            hostname: config.hostname.clone(),
            spool: config.spool.clone(),
            listeners: config.listeners.clone(),
            tls: config.tls.clone(),
            limits: LimitsFile::from(&config.limits),
            policy: config.policy.clone(),
            users: config.users.clone(),
            delivery: DeliveryFile::from(&config.delivery),
            tls_policy: config.tls_policy.clone(),
            dns: config.dns.clone(),
            routes: write_routes(&config.routes),
            dkim: config.dkim.clone(),
            verify: config.verify.clone(),
            milters: config.milters.iter().map(MilterFile::from).collect(),
            shaping: config.shaping.to_file(),
            cluster: ClusterFile::from(&config.cluster),
            recipients: config.front_door.recipients.clone(),
            screen: config.front_door.screen.clone(),
            client_limits: config.front_door.client_limits.clone(),
            greylisting: config.front_door.greylisting.clone(),
            admin: config.admin.clone(),
            log: config.log.clone(),
            events: config.events.clone(),
            bounce_classes: config.bounce_classes.clone(),
            // Printed resolved, so `check-config` shows where they are.
            local: LocalConfig {
                submit_socket: Some(config.local.submit_socket(&config.spool.path)),
                maildrop: Some(config.local.maildrop(&config.spool.path)),
            },
            server: config.server.clone(),
        }
    }
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            hostname: system_hostname(),
            spool: SpoolConfig::default(),
            listeners: vec![ListenerConfig {
                address: SocketAddr::from(([127, 0, 0, 1], 2525)),
                kind: ListenerKind::Relay,
                proxy_protocol: false,
            }],
            tls: None,
            limits: LimitsFile::default(),
            policy: PolicyConfig::default(),
            users: Vec::new(),
            delivery: DeliveryFile::default(),
            tls_policy: BTreeMap::new(),
            dns: DnsConfig::default(),
            routes: BTreeMap::new(),
            dkim: Vec::new(),
            verify: VerifyConfig::default(),
            milters: Vec::new(),
            shaping: BTreeMap::new(),
            cluster: ClusterFile::default(),
            recipients: RecipientsConfig::default(),
            screen: ScreenConfig::default(),
            client_limits: ClientLimitsConfig::default(),
            greylisting: GreylistingConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            events: Vec::new(),
            bounce_classes: Vec::new(),
            local: LocalConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("./spool"),
            cache_capacity: 16 * MIB,
            min_free: super::MinFree::Auto,
        }
    }
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
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
            max_junk_commands: 100,
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

impl Default for DeliveryFile {
    fn default() -> Self {
        DeliveryFile {
            port: 25,
            tls: TlsPolicy::Opportunistic,
            concurrency: 100,
            per_domain_concurrency: 10,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            retry_factor: 2.0,
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            // OpenSMTPD's default; Postfix sends none unless configured.
            delay_warning: Some(Duration::from_secs(4 * 3600)),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            mta_sts: true,
            dane: true,
            chunking: true,
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
            socket: None,
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

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

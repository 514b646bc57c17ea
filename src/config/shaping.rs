//! `[shaping."KEY"]` and `[cluster]`: traffic shaping per destination (a
//! recipient domain, a ".suffix" of MX host names, or "*"), and the Redis
//! server through which several nodes share their limits.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::duration;
use super::{ConfigError, Invalid, count, positive};

/// `suspend_for` when a rule does not say.
pub const DEFAULT_SUSPEND_FOR: Duration = Duration::from_secs(30 * 60);

/// One `[shaping."KEY"]` table as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShapingFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspend_on: Vec<String>,
    #[serde(default = "default_suspend_for", with = "duration")]
    pub suspend_for: Duration,
}

fn default_suspend_for() -> Duration {
    DEFAULT_SUSPEND_FOR
}

/// A message rate: `count` messages per `per` ("50/s", "300/m", "1000/h").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages allowed per period.
    pub count: NonZeroU32,
    /// The period: one second, minute or hour.
    pub per: Duration,
}

impl Rate {
    /// Parses "50/s", "300/m", "1000/h" (also "/sec", "/min", "/hour").
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (number, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("invalid rate {text:?}: expected e.g. \"50/s\""))?;
        let count: u32 = number
            .trim()
            .parse()
            .map_err(|_| format!("invalid rate {text:?}: {number:?} is not a count"))?;
        let count = NonZeroU32::new(count)
            .ok_or_else(|| format!("invalid rate {text:?}: the count must be at least 1"))?;
        let per = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(format!("invalid rate {text:?}: the unit is /s, /m or /h")),
        };
        Ok(Rate { count, per })
    }

    /// The time between two messages at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }

    /// The burst the token bucket allows: one second's worth, at least one.
    pub fn burst(&self) -> u32 {
        let per_second = f64::from(self.count.get()) / self.per.as_secs_f64();
        (per_second.floor() as u32).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Which destinations a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShapingKey {
    /// One recipient domain, lower case.
    Domain(String),
    /// MX host names ending in this suffix (with its leading dot).
    MxSuffix(String),
    /// Every destination.
    Any,
}

impl ShapingKey {
    fn parse(key: &str) -> Result<ShapingKey, String> {
        let key = key.trim().trim_end_matches('.').to_ascii_lowercase();
        if key == "*" {
            return Ok(ShapingKey::Any);
        }
        let name = key.strip_prefix('.').unwrap_or(&key);
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err("must be a domain, a \".suffix\" of MX host names, or \"*\"".into());
        }
        Ok(if key.starts_with('.') {
            ShapingKey::MxSuffix(key)
        } else {
            ShapingKey::Domain(key)
        })
    }

    /// The key as written in the file.
    pub fn as_str(&self) -> &str {
        match self {
            ShapingKey::Domain(name) | ShapingKey::MxSuffix(name) => name,
            ShapingKey::Any => "*",
        }
    }
}

/// One validated shaping rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapingRule {
    /// What it applies to.
    pub key: ShapingKey,
    /// Concurrent connections to the destination; `None`:
    /// `delivery.per_domain_concurrency`.
    pub connections: Option<NonZeroUsize>,
    /// Messages per connection before it is closed; `None`: no limit of
    /// the rule's own.
    pub messages_per_connection: Option<NonZeroU32>,
    /// Messages per second, minute or hour; `None`: unlimited.
    pub rate: Option<Rate>,
    /// Strings that, found in a reply's enhanced code or text, suspend the
    /// destination.
    pub suspend_on: Vec<String>,
    /// How long such a suspension lasts.
    pub suspend_for: Duration,
}

impl ShapingRule {
    /// True when `reply` (one line: code, enhanced code, text) contains
    /// one of the `suspend_on` strings (case-insensitively).
    pub fn suspends_on(&self, reply: &str) -> bool {
        let reply = reply.to_ascii_lowercase();
        self.suspend_on
            .iter()
            .any(|needle| reply.contains(&needle.to_ascii_lowercase()))
    }
}

/// Every `[shaping]` rule, ready for matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shaping {
    /// By key; MX suffixes are matched longest first.
    rules: BTreeMap<ShapingKey, ShapingRule>,
}

impl Shaping {
    pub(super) fn from_file(
        file: BTreeMap<String, ShapingFile>,
        invalid: Invalid,
    ) -> Result<Shaping, ConfigError> {
        let mut rules = BTreeMap::new();
        for (written, rule) in file {
            let at = |field: &str| format!("shaping.{written:?}.{field}");
            let key = ShapingKey::parse(&written)
                .map_err(|message| invalid.at(format!("shaping.{written:?}"), message))?;
            let connections = rule
                .connections
                .map(|value| count(invalid, &at("connections"), value))
                .transpose()?;
            let messages_per_connection = rule
                .messages_per_connection
                .map(|value| count(invalid, &at("messages_per_connection"), value))
                .transpose()?;
            let rate = rule
                .rate
                .as_deref()
                .map(Rate::parse)
                .transpose()
                .map_err(|message| invalid.at(at("rate"), message))?;
            if rule
                .suspend_on
                .iter()
                .any(|needle| needle.trim().is_empty())
            {
                return Err(invalid.at(at("suspend_on"), "an empty string would match every reply"));
            }
            let suspend_for = positive(invalid, &at("suspend_for"), rule.suspend_for)?;
            if rules.contains_key(&key) {
                return Err(invalid.at(format!("shaping.{written:?}"), "given twice"));
            }
            rules.insert(
                key.clone(),
                ShapingRule {
                    key,
                    connections,
                    messages_per_connection,
                    rate,
                    suspend_on: rule.suspend_on,
                    suspend_for,
                },
            );
        }
        Ok(Shaping { rules })
    }

    pub(super) fn to_file(&self) -> BTreeMap<String, ShapingFile> {
        self.rules
            .values()
            .map(|rule| {
                (
                    rule.key.as_str().to_string(),
                    ShapingFile {
                        connections: rule.connections.map(NonZeroUsize::get),
                        messages_per_connection: rule.messages_per_connection.map(NonZeroU32::get),
                        rate: rule.rate.map(|rate| rate.to_string()),
                        suspend_on: rule.suspend_on.clone(),
                        suspend_for: rule.suspend_for,
                    },
                )
            })
            .collect()
    }

    /// True when no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True when some rule is keyed by an MX suffix (so matching needs the
    /// destination's MX host names).
    pub fn has_mx_rules(&self) -> bool {
        self.rules
            .keys()
            .any(|key| matches!(key, ShapingKey::MxSuffix(_)))
    }

    /// The rule for a recipient `domain` whose MX host names are
    /// `mx_hosts`: the domain's own, else the longest matching MX suffix,
    /// else `"*"`.
    pub fn rule_for<'a>(
        &self,
        domain: &str,
        mx_hosts: impl IntoIterator<Item = &'a str>,
    ) -> Option<&ShapingRule> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(rule) = self.rules.get(&ShapingKey::Domain(domain)) {
            return Some(rule);
        }
        let hosts: Vec<String> = mx_hosts
            .into_iter()
            .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let suffix = self
            .rules
            .values()
            .filter(|rule| match &rule.key {
                ShapingKey::MxSuffix(suffix) => {
                    hosts.iter().any(|host| host.ends_with(suffix.as_str()))
                }
                _ => false,
            })
            .max_by_key(|rule| rule.key.as_str().len());
        suffix.or_else(|| self.rules.get(&ShapingKey::Any))
    }

    /// The rule keyed exactly `key` (as written: "gmail.com", ".google.com", "*").
    pub fn rule_keyed(&self, key: &str) -> Option<&ShapingRule> {
        ShapingKey::parse(key)
            .ok()
            .and_then(|key| self.rules.get(&key))
    }

    /// Every rule, by key.
    pub fn rules(&self) -> impl Iterator<Item = &ShapingRule> {
        self.rules.values()
    }
}

/// `[cluster]` as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ClusterFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `[cluster]`: limits shared through Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port/db`; `None`: every limit is local.
    pub redis: Option<String>,
    /// This node's name in shared keys (default: `hostname`).
    pub node: String,
}

impl ClusterFile {
    pub(super) fn into_settings(
        self,
        hostname: &str,
        invalid: Invalid,
    ) -> Result<ClusterConfig, ConfigError> {
        if let Some(url) = &self.redis
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
        {
            return Err(invalid.at(
                "cluster.redis",
                "must be a redis:// URL, e.g. \"redis://127.0.0.1:6379/0\"",
            ));
        }
        let node = self.node.unwrap_or_else(|| hostname.to_string());
        if node.is_empty() || node.contains(char::is_whitespace) {
            return Err(invalid.at("cluster.node", "must be a name without spaces"));
        }
        Ok(ClusterConfig {
            redis: self.redis,
            node,
        })
    }
}

impl From<&ClusterConfig> for ClusterFile {
    fn from(cluster: &ClusterConfig) -> ClusterFile {
        ClusterFile {
            redis: cluster.redis.clone(),
            node: Some(cluster.node.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shaping(text: &str) -> Result<Shaping, ConfigError> {
        let file: BTreeMap<String, ShapingFile> = toml::from_str(text).expect("valid TOML");
        Shaping::from_file(
            file,
            Invalid {
                path: Path::new("test.toml"),
            },
        )
    }

    #[test]
    fn rates_parse_and_print() {
        let rate = Rate::parse("50/s").unwrap();
        assert_eq!(rate.interval(), Duration::from_millis(20));
        assert_eq!(rate.burst(), 50);
        assert_eq!(rate.to_string(), "50/s");
        let rate = Rate::parse("120/m").unwrap();
        assert_eq!(rate.burst(), 2);
        assert_eq!(rate.to_string(), "120/m");
        assert_eq!(Rate::parse("10/h").unwrap().burst(), 1);
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("50").is_err());
        assert!(Rate::parse("5/d").is_err());
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let shaping = shaping(
            r#"
            ["*"]
            connections = 100
            [".google.com"]
            connections = 5
            [".mx.google.com"]
            connections = 3
            ["Gmail.com"]
            connections = 20
            "#,
        )
        .unwrap();
        let connections = |domain: &str, mx: &[&str]| {
            shaping
                .rule_for(domain, mx.iter().copied())
                .and_then(|rule| rule.connections)
                .map(NonZeroUsize::get)
        };
        assert_eq!(
            connections("gmail.com", &["gmail-smtp-in.l.google.com"]),
            Some(20)
        );
        assert_eq!(
            connections("example.org", &["aspmx.l.google.com."]),
            Some(5)
        );
        assert_eq!(connections("example.org", &["alt.mx.google.com"]), Some(3));
        assert_eq!(connections("example.net", &["mx.example.net"]), Some(100));
        assert!(shaping.has_mx_rules());
    }

    #[test]
    fn bad_rules_are_refused_with_their_key() {
        let error = shaping("[\"x.test\"]\nrate = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("shaping.\"x.test\".rate"), "{error}");
        assert!(shaping("[\"x.test\"]\nconnections = 0").is_err());
        assert!(shaping("[\"x.test\"]\nsuspend_on = [\"\"]").is_err());
        assert!(shaping("[\"a b\"]\nconnections = 1").is_err());
    }

    #[test]
    fn suspend_on_matches_code_or_text() {
        let shaping = shaping("[\"yahoo.com\"]\nsuspend_on = [\"TSS04\", \"4.7.28\"]").unwrap();
        let rule = shaping.rule_for("yahoo.com", []).unwrap();
        assert!(rule.suspends_on("421 4.7.0 [TSS04] Messages temporarily deferred"));
        assert!(rule.suspends_on("421 4.7.28 rate limited"));
        assert!(!rule.suspends_on("451 4.3.0 try again"));
        assert_eq!(rule.suspend_for, DEFAULT_SUSPEND_FOR);
    }
}

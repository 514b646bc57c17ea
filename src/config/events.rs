//! `[[events]]` (delivery-event subscribers) and `[[bounce_class]]`
//! (the operator's rules for the bounce classifier).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// The event types of DESIGN.md "Delivery events for applications".
pub const EVENT_TYPES: &[&str] = &[
    "received",
    "rejected",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "delayed",
    "suspended",
    "resumed",
];

/// The classes a bounce or deferral is put in.
pub const BOUNCE_CLASSES: &[&str] = &[
    "invalid_recipient",
    "mailbox_full",
    "spam_block",
    "policy",
    "rate_limited",
    "dns",
    "connection",
    "tls",
    "message_too_large",
    "other",
];

/// One `[[events]]` subscriber, as written and as used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// In logs, metrics and `sluice events status`; also the subscriber's
    /// cursor in the spool, so renaming one starts it afresh.
    pub name: String,
    /// HTTP(S) POST of a JSON array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// AMQP 0-9-1 broker URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<String>,
    /// The AMQP topic exchange (durable, declared when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// Redis URL for XADD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// The Redis stream key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The types sent; default every type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// HTTP: the HMAC-SHA256 key of `X-Sluice-Signature` (a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Most events per POST or publish round.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Give up on an event this old; default `delivery.max_queue_lifetime`.
    #[serde(
        default,
        with = "duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
}

fn default_batch() -> usize {
    100
}

/// Where a subscriber's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    /// POST to this URL.
    Http { url: String },
    /// Publish to `exchange` on this broker.
    Amqp { url: String, exchange: String },
    /// XADD to `stream`.
    Redis { url: String, stream: String },
}

impl EventsConfig {
    /// The one sink the entry names.
    pub fn sink(&self) -> EventSink {
        if let Some(url) = &self.url {
            EventSink::Http { url: url.clone() }
        } else if let Some(url) = &self.amqp {
            EventSink::Amqp {
                url: url.clone(),
                exchange: self.exchange.clone().unwrap_or_else(|| "sluice".into()),
            }
        } else {
            EventSink::Redis {
                url: self.redis.clone().unwrap_or_default(),
                stream: self
                    .stream
                    .clone()
                    .unwrap_or_else(|| "sluice:events".into()),
            }
        }
    }

    /// Whether events of `kind` go to this subscriber.
    pub fn wants(&self, kind: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.iter().any(|wanted| wanted == kind))
    }
}

/// One `[[bounce_class]]` rule: replies matching `pattern` are `class`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceClassConfig {
    /// A regular expression over the whole reply (code, enhanced code, text).
    pub pattern: String,
    /// One of the classes of DESIGN.md.
    pub class: String,
}

/// Checks every `[[events]]` and `[[bounce_class]]` entry.
pub(super) fn check(
    events: &[EventsConfig],
    classes: &[BounceClassConfig],
    invalid: Invalid,
) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    for (index, entry) in events.iter().enumerate() {
        let key = |field: &str| format!("events[{index}].{field}");
        if entry.name.is_empty()
            || !entry
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid.at(key("name"), "must be letters, digits, '-', '_' or '.'"));
        }
        if !names.insert(entry.name.as_str()) {
            return Err(invalid.at(key("name"), format!("{:?} is used twice", entry.name)));
        }
        let sinks = [&entry.url, &entry.amqp, &entry.redis]
            .iter()
            .filter(|sink| sink.is_some())
            .count();
        if sinks != 1 {
            return Err(invalid.at(key("url"), "exactly one of url, amqp or redis must be set"));
        }
        if let Some(url) = &entry.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid.at(key("url"), "must be an http:// or https:// URL"));
        }
        if let Some(url) = &entry.amqp
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            return Err(invalid.at(key("amqp"), "must be an amqp:// URL"));
        }
        if let Some(url) = &entry.redis
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid.at(key("redis"), "must be a redis:// URL"));
        }
        if entry.exchange.is_some() && entry.amqp.is_none() {
            return Err(invalid.at(key("exchange"), "only for an amqp subscriber"));
        }
        if entry.stream.is_some() && entry.redis.is_none() {
            return Err(invalid.at(key("stream"), "only for a redis subscriber"));
        }
        if entry.secret.is_some() && entry.url.is_none() {
            return Err(invalid.at(key("secret"), "only for an HTTP (url) subscriber"));
        }
        if let Some(types) = &entry.types {
            for kind in types {
                if !EVENT_TYPES.contains(&kind.as_str()) {
                    return Err(invalid.at(
                        key("types"),
                        format!(
                            "unknown event type {kind:?}; known: {}",
                            EVENT_TYPES.join(", ")
                        ),
                    ));
                }
            }
        }
        if entry.batch == 0 || entry.batch > 10_000 {
            return Err(invalid.at(key("batch"), "must be between 1 and 10000"));
        }
    }
    for (index, rule) in classes.iter().enumerate() {
        if !BOUNCE_CLASSES.contains(&rule.class.as_str()) {
            return Err(invalid.at(
                format!("bounce_class[{index}].class"),
                format!(
                    "unknown class {:?}; known: {}",
                    rule.class,
                    BOUNCE_CLASSES.join(", ")
                ),
            ));
        }
        if let Err(error) = regex::Regex::new(&rule.pattern) {
            return Err(invalid.at(
                format!("bounce_class[{index}].pattern"),
                format!("not a regular expression: {error}"),
            ));
        }
    }
    Ok(())
}

/// Serde for an optional duration string ("5d").
mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => {
                serializer.serialize_str(&super::super::units::format_duration(*duration))
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)
            .map_err(|_| D::Error::custom("expected a duration string like \"5d\""))?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|error| D::Error::custom(format!("invalid duration {text:?}: {error}")))
    }
}

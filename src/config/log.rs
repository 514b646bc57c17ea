//! `[log]`: the log format and filter.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// key=value text lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[log]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A tracing filter: "info", "debug", "sluice=debug,info".
    pub level: String,
}

impl LogConfig {
    /// The level must be a filter tracing accepts, and not a typo that
    /// would silently switch logging off.
    pub(super) fn check(&self, invalid: Invalid) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|error| invalid.at("log.level", error.to_string()))?;
        // A bare word that is no level parses as a target name and would
        // silently switch every log line off ("warnig"): refuse it.
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        if let Some(word) = self.level.split(',').map(str::trim).find(|part| {
            !part.is_empty()
                && !part.contains('=')
                && !LEVELS.contains(&part.to_ascii_lowercase().as_str())
        }) {
            return Err(invalid.at(
                "log.level",
                format!(
                    "{word:?} is not a level (trace, debug, info, warn, error, off) or a target=level directive"
                ),
            ));
        }
        Ok(())
    }
}

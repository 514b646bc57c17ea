//! `[limits]`: what one inbound client may do. Counts are `NonZero*`, so a
//! limit of zero (no recipient, no connection, closing at the first error)
//! cannot exist past load.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{byte_size, duration};
use super::{ConfigError, Invalid, count, positive};

/// `[limits]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LimitsFile {
    #[serde(with = "byte_size")]
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    pub max_auth_failures: u32,
    pub max_errors: u32,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    pub max_hops: usize,
    pub max_junk_commands: u32,
}

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Largest message accepted, in bytes (above 0).
    pub max_message_size: u64,
    /// RCPT commands accepted per transaction.
    pub max_recipients: NonZeroUsize,
    /// Inbound connections open at once.
    pub max_connections: NonZeroUsize,
    /// Inbound connections open at once from one IP address (one /64 for
    /// IPv6).
    pub max_connections_per_ip: NonZeroUsize,
    /// How long the server waits for a command (above 0).
    pub command_timeout: Duration,
    /// How long the server waits for message data (above 0).
    pub data_timeout: Duration,
    /// Failed AUTH attempts after which the connection is closed.
    pub max_auth_failures: NonZeroU32,
    /// Errors (syntax, bad sequence) after which the connection is closed.
    pub max_errors: NonZeroU32,
    /// How long in-progress transactions may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// A message whose header carries more `Received:` fields than this is
    /// refused with 554 5.4.6 (RFC 5321 §6.3 mail loop); as Postfix's
    /// `hopcount_limit`.
    pub max_hops: NonZeroUsize,
    /// NOOP, RSET, VRFY and HELP a session may send; the next one gets
    /// `421 4.7.0` and the connection is closed (as Postfix's
    /// `smtpd_junk_command_limit`).
    pub max_junk_commands: NonZeroU32,
}

impl LimitsFile {
    /// Validates `[limits]`, naming the key of the first bad value.
    pub(super) fn into_settings(self, invalid: Invalid) -> Result<LimitsConfig, ConfigError> {
        if self.max_message_size == 0 {
            return Err(invalid.at("limits.max_message_size", "must be above 0"));
        }
        Ok(LimitsConfig {
            max_message_size: self.max_message_size,
            max_recipients: count(invalid, "limits.max_recipients", self.max_recipients)?,
            max_connections: count(invalid, "limits.max_connections", self.max_connections)?,
            max_connections_per_ip: count(
                invalid,
                "limits.max_connections_per_ip",
                self.max_connections_per_ip,
            )?,
            command_timeout: positive(invalid, "limits.command_timeout", self.command_timeout)?,
            data_timeout: positive(invalid, "limits.data_timeout", self.data_timeout)?,
            max_auth_failures: count(invalid, "limits.max_auth_failures", self.max_auth_failures)?,
            max_errors: count(invalid, "limits.max_errors", self.max_errors)?,
            shutdown_grace: self.shutdown_grace,
            max_hops: count(invalid, "limits.max_hops", self.max_hops)?,
            max_junk_commands: count(invalid, "limits.max_junk_commands", self.max_junk_commands)?,
        })
    }
}

impl From<&LimitsConfig> for LimitsFile {
    fn from(limits: &LimitsConfig) -> LimitsFile {
        LimitsFile {
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients.get(),
            max_connections: limits.max_connections.get(),
            max_connections_per_ip: limits.max_connections_per_ip.get(),
            command_timeout: limits.command_timeout,
            data_timeout: limits.data_timeout,
            max_auth_failures: limits.max_auth_failures.get(),
            max_errors: limits.max_errors.get(),
            shutdown_grace: limits.shutdown_grace,
            max_hops: limits.max_hops.get(),
            max_junk_commands: limits.max_junk_commands.get(),
        }
    }
}

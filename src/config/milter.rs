//! `[[milter]]`: content filters spoken to with the Sendmail milter
//! protocol (rspamd, OpenDKIM, clamav-milter), in the order written.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::duration;
use super::{ConfigError, Invalid, positive};

/// One `[[milter]]` entry as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterFile {
    /// `inet:HOST:PORT` (an IPv6 address in brackets) or `unix:/path`.
    pub address: String,
    /// The whole conversation about one message, connect to quit.
    #[serde(with = "duration", default = "default_timeout")]
    pub timeout: Duration,
    /// What a milter that cannot be reached, times out or breaks the
    /// protocol means for the message.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Also filter mail from `relay_networks` and authenticated clients
    /// (outbound mail). `false` leaves it to inbound mail only.
    #[serde(default = "yes")]
    pub outbound: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn yes() -> bool {
    true
}

/// `on_failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// `451 4.7.1`: the client tries again later.
    #[default]
    Tempfail,
    /// The message goes on as if this milter were not configured.
    Accept,
}

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    /// A TCP `host:port` (an IP address or a name resolved at connect).
    Inet(String),
    /// A UNIX socket.
    Unix(PathBuf),
}

impl fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterAddress::Inet(address) => write!(f, "inet:{address}"),
            MilterAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl MilterAddress {
    /// Parses `inet:HOST:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> Result<MilterAddress, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err("unix: needs an absolute path".into());
            }
            return Ok(MilterAddress::Unix(PathBuf::from(path)));
        }
        let Some(address) = text.strip_prefix("inet:") else {
            return Err("must be inet:HOST:PORT or unix:/path".into());
        };
        let (host, port) = address.rsplit_once(':').ok_or("inet: needs HOST:PORT")?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err()) {
            return Err(format!(
                "{host:?} is not a host (an IPv6 address goes in brackets)"
            ));
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(format!("{port:?} is not a port")),
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Ok(MilterAddress::Inet(format!("{host}:{port}")))
    }
}

/// One milter, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterConfig {
    pub address: MilterAddress,
    pub timeout: Duration,
    pub on_failure: OnFailure,
    pub outbound: bool,
}

/// Validates every entry; errors name `milter[N].key`.
pub(super) fn into_settings(
    entries: Vec<MilterFile>,
    invalid: Invalid,
) -> Result<Vec<MilterConfig>, ConfigError> {
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let key = |field: &str| format!("milter[{index}].{field}");
            let address = MilterAddress::parse(&entry.address)
                .map_err(|message| invalid.at(key("address"), message))?;
            Ok(MilterConfig {
                address,
                timeout: positive(invalid, &key("timeout"), entry.timeout)?,
                on_failure: entry.on_failure,
                outbound: entry.outbound,
            })
        })
        .collect()
}

impl From<&MilterConfig> for MilterFile {
    fn from(config: &MilterConfig) -> MilterFile {
        MilterFile {
            address: config.address.to_string(),
            timeout: config.timeout,
            on_failure: config.on_failure,
            outbound: config.outbound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            MilterAddress::parse("inet:127.0.0.1:11332"),
            Ok(MilterAddress::Inet("127.0.0.1:11332".into()))
        );
        assert_eq!(
            MilterAddress::parse("inet:[::1]:8891"),
            Ok(MilterAddress::Inet("[::1]:8891".into()))
        );
        assert_eq!(
            MilterAddress::parse("inet:localhost:8891"),
            Ok(MilterAddress::Inet("localhost:8891".into()))
        );
        assert_eq!(
            MilterAddress::parse("unix:/run/rspamd/milter.sock"),
            Ok(MilterAddress::Unix("/run/rspamd/milter.sock".into()))
        );
        for bad in [
            "127.0.0.1:11332",
            "inet:127.0.0.1",
            "inet::1:25",
            "inet:h:0",
            "unix:rel",
            "inet:h:x",
        ] {
            assert!(MilterAddress::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

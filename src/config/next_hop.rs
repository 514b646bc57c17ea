//! Next-hop addresses as configured (`delivery.relay_host`, `[routes]`
//! values): a host, a domain name or an IP literal, and maybe a port; for
//! `[routes]`, also an LMTP server (RFC 2033) on TCP or a UNIX socket.
//! Parsed once at load; written back in the same form by `check-config`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

/// A configured host: a domain name (as written, without brackets) or an IP
/// address literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// A domain name, looked up in DNS at delivery time.
    Domain(String),
    /// An IP address: connected to directly.
    Ip(IpAddr),
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Domain(name) => f.write_str(name),
            HostName::Ip(address) => address.fmt(f),
        }
    }
}

/// A next hop as configured: "host:port", "host", "[v6]:port", "[v6]" or
/// "v6". Without a port, the user of the value picks the default (port 25
/// for a smarthost, `delivery.port` for a route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHopAddress {
    /// Where to connect.
    pub host: HostName,
    /// The port, when the configuration gives one.
    pub port: Option<u16>,
}

impl NextHopAddress {
    /// Parses the forms above; the message says what was expected.
    pub fn parse(text: &str) -> Result<NextHopAddress, String> {
        let bad = || format!("{text:?} is not host:port");
        let port = |digits: &str| digits.parse::<u16>().map_err(|_| bad());
        let host_name = |host: &str| match host.parse::<IpAddr>() {
            Ok(address) => Ok(HostName::Ip(address)),
            Err(_)
                if host.is_empty()
                    || host.contains(|c: char| c.is_whitespace() || "[]:/".contains(c)) =>
            {
                Err(bad())
            }
            Err(_) => Ok(HostName::Domain(host.to_string())),
        };
        if let Some(rest) = text.strip_prefix('[') {
            // Brackets are needed around an IPv6 literal with a port; around
            // anything else they are accepted and dropped.
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(digits) => Some(port(digits)?),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            return Ok(NextHopAddress {
                host: host_name(host)?,
                port,
            });
        }
        if let Ok(address) = text.parse::<Ipv6Addr>() {
            return Ok(NextHopAddress {
                host: HostName::Ip(IpAddr::V6(address)),
                port: None,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, digits)) => (host, Some(port(digits)?)),
            None => (text, None),
        };
        Ok(NextHopAddress {
            host: host_name(host)?,
            port,
        })
    }
}

/// The form [`NextHopAddress::parse`] reads back to the same value.
impl fmt::Display for NextHopAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (HostName::Ip(IpAddr::V6(address)), Some(port)) => write!(f, "[{address}]:{port}"),
            (host, Some(port)) => write!(f, "{host}:{port}"),
            (host, None) => host.fmt(f),
        }
    }
}

/// A `[routes]` value: where mail for a domain goes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `host:port`, `[addr]:port` (or a host alone: `delivery.port`): SMTP.
    Smtp(NextHopAddress),
    /// `lmtp:host:port` or `lmtp:[addr]:port`: LMTP over TCP (the port is
    /// required, LMTP has no standard one).
    LmtpTcp(NextHopAddress),
    /// `lmtp:unix:/path`: LMTP on a UNIX socket (an absolute path).
    LmtpUnix(PathBuf),
}

impl Route {
    /// Parses the forms above; anything else is refused with a message
    /// that lists them.
    pub fn parse(text: &str) -> Result<Route, String> {
        let forms = "host:port, [addr]:port, lmtp:host:port, lmtp:[addr]:port or lmtp:unix:/path";
        let bad = || format!("{text:?} is not one of {forms}");
        let Some(rest) = text.strip_prefix("lmtp:") else {
            return NextHopAddress::parse(text)
                .map(Route::Smtp)
                .map_err(|_| bad());
        };
        if let Some(path) = rest.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("{text:?}: the LMTP socket path must be absolute"));
            }
            return Ok(Route::LmtpUnix(path));
        }
        match NextHopAddress::parse(rest) {
            Ok(address) if address.port.is_some() => Ok(Route::LmtpTcp(address)),
            Ok(_) => Err(format!(
                "{text:?}: an LMTP route needs a port (lmtp:host:port)"
            )),
            Err(_) => Err(bad()),
        }
    }

    /// True for an LMTP route.
    pub fn is_lmtp(&self) -> bool {
        !matches!(self, Route::Smtp(_))
    }
}

/// The form [`Route::parse`] reads back to the same value.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Smtp(address) => address.fmt(f),
            Route::LmtpTcp(address) => write!(f, "lmtp:{address}"),
            Route::LmtpUnix(path) => write!(f, "lmtp:unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_forms() {
        for (text, lmtp) in [
            ("127.0.0.1:2526", false),
            ("[::1]:2526", false),
            ("mx.b.test", false),
            ("lmtp:127.0.0.1:24", true),
            ("lmtp:[::1]:24", true),
            ("lmtp:mail.test:24", true),
            ("lmtp:unix:/run/dovecot/lmtp", true),
        ] {
            let route = Route::parse(text).expect(text);
            assert_eq!(route.is_lmtp(), lmtp, "{text}");
            assert_eq!(route.to_string(), text);
            assert_eq!(Route::parse(&route.to_string()), Ok(route));
        }
        for bad in [
            "lmtp:127.0.0.1",
            "lmtp:unix:run/lmtp",
            "lmtp:",
            "lmtp:unix:",
            "smtp:127.0.0.1:25",
            "lmtp:a:b:24",
            "unix:/run/lmtp",
            "a/b:25",
        ] {
            assert!(Route::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn parse(text: &str) -> Result<NextHopAddress, String> {
        NextHopAddress::parse(text)
    }

    #[test]
    fn host_port_forms() {
        let domain = |name: &str| HostName::Domain(name.into());
        let ip = |text: &str| HostName::Ip(text.parse().unwrap());
        for (text, host, port) in [
            ("a.example:587", domain("a.example"), Some(587)),
            ("a.example", domain("a.example"), None),
            ("127.0.0.1:2526", ip("127.0.0.1"), Some(2526)),
            ("127.0.0.1", ip("127.0.0.1"), None),
            ("[::1]:2526", ip("::1"), Some(2526)),
            ("[::1]", ip("::1"), None),
            ("::1", ip("::1"), None),
        ] {
            assert_eq!(parse(text), Ok(NextHopAddress { host, port }), "{text}");
        }
        for bad in [
            "a.example:x",
            "a.example:70000",
            "",
            ":25",
            "a b:25",
            "[::1",
            "[::1]x",
            "[]:25",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn written_forms_read_back_unchanged() {
        for text in [
            "Smart.Example:587",
            "mx.name.test",
            "127.0.0.1:2526",
            "[::1]:2527",
            "::1",
            "relay.test:26",
        ] {
            let address = parse(text).expect(text);
            assert_eq!(address.to_string(), text);
            assert_eq!(parse(&address.to_string()), Ok(address));
        }
        // Brackets are kept only where they are needed.
        assert_eq!(parse("[::1]").unwrap().to_string(), "::1");
        assert_eq!(
            parse("[relay.test]:25").unwrap().to_string(),
            "relay.test:25"
        );
    }
}

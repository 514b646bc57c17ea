//! The PROXY protocol header (HAProxy's PROXY protocol, versions 1 and 2)
//! that a load balancer puts before the SMTP bytes of a connection it
//! forwards, naming the client it accepted. A listener with
//! `proxy_protocol = true` requires it and uses the address in it
//! everywhere (limits, screens, logs, `Received:`, verification).
//!
//! The parser is pure: [`parse`] takes the bytes read so far and says
//! whether the header is complete ([`Parsed::Header`], with its exact
//! length, so not one SMTP byte is eaten), needs more bytes
//! ([`Parsed::NeedMore`], with how many at least), or is not a valid
//! header ([`ProxyError`]). [`read_header`] is the thin I/O shell: it reads
//! exactly what the header needs, never past it, within a deadline.
//!
//! Choices where the specification leaves one:
//! - `PROXY UNKNOWN` (v1) and the `LOCAL` command or an `AF_UNSPEC` /
//!   `AF_UNIX` family (v2) carry no client address: the connection's own
//!   peer address is kept (the balancer's health checks send these).
//! - v2 TLVs are skipped; only the addresses are used.
//! - v1 lines longer than 107 octets (the specification's maximum) or with
//!   an address that does not parse for its family are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (specification §2.1).
pub const V1_MAX: usize = 107;
/// The v2 fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// What [`parse`] found in the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `length` octets; `source` is the client it
    /// names, `None` when it names none (`UNKNOWN`, `LOCAL`).
    Header {
        length: usize,
        source: Option<SocketAddr>,
    },
    /// Not enough bytes yet: at least this many more are needed.
    NeedMore(usize),
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 line without CRLF within 107 octets.
    #[error("PROXY v1 line too long")]
    TooLong,
    /// A v1 line that does not follow the grammar.
    #[error("malformed PROXY v1 line: {0}")]
    V1(&'static str),
    /// A v2 header with a version other than 2 or an unknown command.
    #[error("unsupported PROXY v2 version or command")]
    V2Version,
    /// A v2 address block shorter than its family needs.
    #[error("PROXY v2 address block too short for its family")]
    V2Length,
}

/// Parses the PROXY header at the start of `input`.
pub fn parse(input: &[u8]) -> Result<Parsed, ProxyError> {
    match input.first() {
        None => return Ok(Parsed::NeedMore(1)),
        Some(b'\r') => return parse_v2(input),
        Some(_) => {}
    }
    const V1_PREFIX: &[u8] = b"PROXY ";
    let common = input.len().min(V1_PREFIX.len());
    if input[..common] != V1_PREFIX[..common] {
        return Err(ProxyError::Missing);
    }
    parse_v1(input)
}

fn parse_v1(input: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(end) = memchr::memchr(b'\n', &input[..input.len().min(V1_MAX)]) else {
        if input.len() >= V1_MAX {
            return Err(ProxyError::TooLong);
        }
        return Ok(Parsed::NeedMore(1));
    };
    if end == 0 || input[end - 1] != b'\r' {
        return Err(ProxyError::V1("the line must end with CRLF"));
    }
    let line = std::str::from_utf8(&input[..end - 1]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let length = end + 1;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let family = fields.next().ok_or(ProxyError::V1("no protocol"))?;
    if family == "UNKNOWN" {
        // §2.1: the rest of the line is to be ignored.
        return Ok(Parsed::Header {
            length,
            source: None,
        });
    }
    let parts: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = parts[..] else {
        return Err(ProxyError::V1("expected four fields after the protocol"));
    };
    let source: IpAddr = match family {
        "TCP4" => IpAddr::V4(
            source
                .parse::<Ipv4Addr>()
                .map_err(|_| ProxyError::V1("bad IPv4 source"))?,
        ),
        "TCP6" => IpAddr::V6(
            source
                .parse::<Ipv6Addr>()
                .map_err(|_| ProxyError::V1("bad IPv6 source"))?,
        ),
        _ => return Err(ProxyError::V1("the protocol is TCP4, TCP6 or UNKNOWN")),
    };
    let destination_ok = match family {
        "TCP4" => destination.parse::<Ipv4Addr>().is_ok(),
        _ => destination.parse::<Ipv6Addr>().is_ok(),
    };
    if !destination_ok {
        return Err(ProxyError::V1("bad destination address"));
    }
    let port = |text: &str| -> Result<u16, ProxyError> {
        // §2.1: no leading zeros, 0 to 65535.
        if text.is_empty() || text.len() > 1 && text.starts_with('0') {
            return Err(ProxyError::V1("bad port"));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::V1("bad port"));
        }
        text.parse().map_err(|_| ProxyError::V1("bad port"))
    };
    let source_port = port(source_port)?;
    port(destination_port)?;
    Ok(Parsed::Header {
        length,
        source: Some(SocketAddr::new(source, source_port)),
    })
}

fn parse_v2(input: &[u8]) -> Result<Parsed, ProxyError> {
    let common = input.len().min(V2_SIGNATURE.len());
    if input[..common] != V2_SIGNATURE[..common] {
        return Err(ProxyError::Missing);
    }
    if input.len() < V2_FIXED {
        return Ok(Parsed::NeedMore(V2_FIXED - input.len()));
    }
    let version_command = input[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    let command = version_command & 0x0f;
    let family = input[13];
    let block = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let length = V2_FIXED + block;
    if input.len() < length {
        return Ok(Parsed::NeedMore(length - input.len()));
    }
    let addresses = &input[V2_FIXED..length];
    match command {
        // LOCAL: the balancer's own connection (health checks).
        0x0 => {
            return Ok(Parsed::Header {
                length,
                source: None,
            });
        }
        0x1 => {}
        _ => return Err(ProxyError::V2Version),
    }
    // The high nibble is the address family, the low one the transport.
    let source = match family >> 4 {
        0x1 => {
            if addresses.len() < 12 {
                return Err(ProxyError::V2Length);
            }
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        0x2 => {
            if addresses.len() < 36 {
                return Err(ProxyError::V2Length);
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // AF_UNSPEC, AF_UNIX: no address to use.
        _ => None,
    };
    Ok(Parsed::Header { length, source })
}

/// Why [`read_header`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header.
    #[error(transparent)]
    Invalid(#[from] ProxyError),
    /// No complete header within the timeout.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The client closed or the read failed.
    #[error("connection lost before the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header off `stream` within `timeout`, never reading a
/// byte past it; returns the client it names (`None`: keep the peer).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ReadError> {
    let read = async {
        let mut buffer = Vec::with_capacity(V2_FIXED);
        loop {
            match parse(&buffer)? {
                Parsed::Header { source, .. } => return Ok(source),
                Parsed::NeedMore(more) => {
                    let start = buffer.len();
                    buffer.resize(start + more, 0);
                    stream.read_exact(&mut buffer[start..]).await?;
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ReadError::Timeout(timeout))?
}

/// A v2 header for `source` to `destination` (tests and the fuzz target
/// build them with this).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x21); // version 2, PROXY
    match (source, destination) {
        (SocketAddr::V4(source), SocketAddr::V4(destination)) => {
            header.push(0x11); // AF_INET, STREAM
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&source.ip().octets());
            header.extend_from_slice(&destination.ip().octets());
            header.extend_from_slice(&source.port().to_be_bytes());
            header.extend_from_slice(&destination.port().to_be_bytes());
        }
        (source, destination) => {
            let v6 = |address: SocketAddr| match address.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            header.push(0x21); // AF_INET6, STREAM
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&v6(source).octets());
            header.extend_from_slice(&v6(destination).octets());
            header.extend_from_slice(&source.port().to_be_bytes());
            header.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(input: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(input) {
            Ok(Parsed::Header { length, source }) => (length, source),
            other => panic!("expected a header in {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_names_the_client_and_its_length() {
        let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n";
        let (length, source) = header(input);
        assert_eq!(&input[length..], b"EHLO x\r\n");
        assert_eq!(source, Some("192.0.2.7:56324".parse().unwrap()));
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (_, source) = header(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 25\r\n");
        assert_eq!(source, Some("[2001:db8::7]:1".parse().unwrap()));
        let (length, source) = header(b"PROXY UNKNOWN whatever\r\n");
        assert_eq!((length, source), (24, None));
    }

    #[test]
    fn v1_needs_more_until_crlf() {
        assert_eq!(parse(b""), Ok(Parsed::NeedMore(1)));
        assert_eq!(parse(b"PRO"), Ok(Parsed::NeedMore(1)));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::NeedMore(1)));
    }

    #[test]
    fn v1_refusals() {
        for (input, expected) in [
            (&b"EHLO client\r\n"[..], ProxyError::Missing),
            (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", ProxyError::Missing),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                ProxyError::V1("the line must end with CRLF"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                ProxyError::V1("bad port"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                ProxyError::V1("bad port"),
            ),
            (
                b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
                ProxyError::V1("bad IPv4 source"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 5.6.7.8 1 2\r\n",
                ProxyError::V1("bad destination address"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                ProxyError::V1("expected four fields after the protocol"),
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1("the protocol is TCP4, TCP6 or UNKNOWN"),
            ),
        ] {
            assert_eq!(
                parse(input),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    #[test]
    fn v2_ipv4_and_ipv6_round_trip() {
        let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let destination: SocketAddr = "198.51.100.1:25".parse().unwrap();
        let mut input = v2_header(source, destination);
        let length = input.len();
        input.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(header(&input), (length, Some(source)));
        let source: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        assert_eq!(header(&v2_header(source, destination)), (52, Some(source)));
    }

    #[test]
    fn v2_needs_exactly_what_is_missing() {
        let full = v2_header(
            "203.0.113.9:1".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        assert_eq!(parse(&full[..1]), Ok(Parsed::NeedMore(15)));
        assert_eq!(parse(&full[..16]), Ok(Parsed::NeedMore(12)));
        assert_eq!(parse(&full[..27]), Ok(Parsed::NeedMore(1)));
    }

    #[test]
    fn v2_local_tlvs_and_refusals() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 3, 1, 2, 3]);
        assert_eq!(header(&local), (19, None));
        // TLVs after the addresses are skipped with the block.
        let mut tlv = v2_header(
            "203.0.113.9:1".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        tlv[15] = 12 + 4;
        tlv.extend_from_slice(&[0x04, 0, 1, 0]);
        assert_eq!(header(&tlv), (32, Some("203.0.113.9:1".parse().unwrap())));
        let mut bad = local.clone();
        bad[12] = 0x11;
        assert_eq!(parse(&bad), Err(ProxyError::V2Version));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(ProxyError::V2Length));
        assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyError::Missing));
    }

    #[tokio::test]
    async fn read_header_leaves_the_smtp_bytes() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n";
        let source = read_header(&mut input, Duration::from_secs(1))
            .await
            .expect("header");
        assert_eq!(source, Some("192.0.2.7:56324".parse().unwrap()));
        assert_eq!(input, b"EHLO x\r\n");
        let mut input: &[u8] = b"EHLO x\r\n";
        assert!(matches!(
            read_header(&mut input, Duration::from_secs(1)).await,
            Err(ReadError::Invalid(ProxyError::Missing))
        ));
    }
}

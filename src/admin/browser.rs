//! The admin API against web browsers: a page the operator visits must not
//! be able to read the queue or act on it.
//!
//! - **DNS rebinding.** A page on `evil.example` can make its name resolve to
//!   127.0.0.1 and then read the API as a same-origin resource. Its requests
//!   still carry `Host: evil.example:8025`, so every request whose `Host` is
//!   not the address the client connected to (`IP:port`, `[IPv6]:port`, or
//!   `localhost:port` on loopback; the port may be left out only when it is
//!   80, RFC 9110 §7.2) is answered `421 Misdirected Request` with a JSON
//!   error (RFC 9110 §15.5.20: this server does not serve that authority).
//!   There is no setting for other names: reach the API by address.
//! - **Cross-site requests (CSRF).** A page can send a "simple" cross-site
//!   POST (`Content-Type: text/plain`, no custom header) without a CORS
//!   preflight. A state-changing request (`POST`, `DELETE`) is therefore
//!   answered `403` when it carries an `Origin` other than the API's own, or
//!   when it carries neither `Authorization` nor [`REQUEST_HEADER`]: a
//!   browser sends either cross-site only after a preflight, and the API
//!   answers no preflight (`OPTIONS` gets `405` and no `Access-Control-*`
//!   header), so the browser never sends the real request. `sluice queue`
//!   sends `X-Sluice-Request: 1` with every request.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AdminError;

/// The header a client sends to show it is not a cross-site form or
/// script: browsers cannot add it cross-site without a CORS preflight.
pub const REQUEST_HEADER: &str = "x-sluice-request";

/// The local address of the connection a request came on (the address the
/// client connected to), put in each request's extensions by `http`.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddress(pub SocketAddr);

/// Refuses requests that a web page could have sent (see the module doc).
/// A request without [`LocalAddress`] (not from `http::serve`) is refused;
/// one from the admin socket (`socket::SocketPeer`) is let through.
pub async fn guard(request: Request, next: Next) -> Response {
    // The admin socket: no browser reaches a UNIX socket, and its peers were
    // checked by uid.
    if request
        .extensions()
        .get::<super::socket::SocketPeer>()
        .is_some()
    {
        return next.run(request).await;
    }
    let Some(LocalAddress(local)) = request.extensions().get::<LocalAddress>().copied() else {
        return AdminError::Internal("request without a connection address".into()).into_response();
    };
    if let Err(error) = check(request.method(), request.headers(), local) {
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            %error,
            "admin API request refused"
        );
        return error.into_response();
    }
    next.run(request).await
}

/// Whether a request with this method and these headers, received on a
/// connection to `local`, may be served.
pub fn check(method: &Method, headers: &HeaderMap, local: SocketAddr) -> Result<(), AdminError> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if !is_own_host(host, local) {
        return Err(AdminError::MisdirectedHost {
            host: host.to_string(),
            address: local,
        });
    }
    if !changes_state(method) {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = format!("http://{host}");
        let same = origin
            .to_str()
            .is_ok_and(|origin| origin.trim().eq_ignore_ascii_case(&own));
        if !same {
            return Err(AdminError::CrossSite(format!(
                "refused: Origin {:?} is not this API ({own})",
                String::from_utf8_lossy(origin.as_bytes())
            )));
        }
    }
    if !headers.contains_key(header::AUTHORIZATION) && !headers.contains_key(REQUEST_HEADER) {
        return Err(AdminError::CrossSite(format!(
            "refused: a {method} needs an Authorization header or \"X-Sluice-Request: 1\" \
             (protection against cross-site requests)"
        )));
    }
    Ok(())
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `host` (a `Host` header value) names the address `local`.
fn is_own_host(host: &str, local: SocketAddr) -> bool {
    let (name, port) = split_host_port(host);
    let port_ok = match port {
        Some(port) => port.parse::<u16>() == Ok(local.port()),
        None => local.port() == 80,
    };
    if !port_ok {
        return false;
    }
    if local.ip().is_loopback() && name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // RFC 3986 §3.2.2: an IPv6 address is written in brackets.
    let name = match name.strip_prefix('[') {
        Some(inner) => match inner.strip_suffix(']') {
            Some(inner) => inner,
            None => return false,
        },
        None if name.contains(':') => return false,
        None => name,
    };
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip == local.ip() || ip.to_canonical() == local.ip().to_canonical())
}

/// `("host", Some("port"))`, `("[::1]", Some("8025"))`, `("host", None)`.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => {
                let (name, rest) = host.split_at(end + 1);
                (name, rest.strip_prefix(':'))
            }
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const LOCAL: &str = "127.0.0.1:8025";

    fn allowed(method: Method, pairs: &[(&'static str, &str)]) -> bool {
        check(&method, &headers(pairs), LOCAL.parse().unwrap()).is_ok()
    }

    #[test]
    fn only_the_listeners_own_address_is_a_valid_host() {
        let local: SocketAddr = LOCAL.parse().unwrap();
        for good in ["127.0.0.1:8025", "localhost:8025", "LOCALHOST:8025"] {
            assert!(is_own_host(good, local), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:8025",
            "127.0.0.1",
            "127.0.0.1:8026",
            "127.0.0.2:8025",
            "localhost",
            "",
            "[::1]:8025",
        ] {
            assert!(!is_own_host(bad, local), "{bad}");
        }
        let v6: SocketAddr = "[::1]:8025".parse().unwrap();
        assert!(is_own_host("[::1]:8025", v6));
        assert!(is_own_host("localhost:8025", v6));
        assert!(!is_own_host("::1:8025", v6));
        let public: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert!(is_own_host("192.0.2.1", public));
        assert!(is_own_host("192.0.2.1:80", public));
        assert!(!is_own_host("localhost:80", public), "not loopback");
    }

    #[test]
    fn a_foreign_host_is_refused_with_421() {
        let error = check(
            &Method::GET,
            &headers(&[("host", "evil.example")]),
            LOCAL.parse().unwrap(),
        )
        .unwrap_err();
        assert_eq!(error.status().as_u16(), 421);
    }

    #[test]
    fn reads_need_no_custom_header() {
        assert!(allowed(Method::GET, &[("host", LOCAL)]));
        assert!(allowed(
            Method::GET,
            &[("host", LOCAL), ("origin", "http://evil.example")]
        ));
    }

    #[test]
    fn state_changes_need_a_custom_header_or_a_token_and_no_foreign_origin() {
        assert!(!allowed(Method::POST, &[("host", LOCAL)]));
        assert!(!allowed(Method::DELETE, &[("host", LOCAL)]));
        assert!(allowed(
            Method::POST,
            &[("host", LOCAL), ("x-sluice-request", "1")]
        ));
        assert!(allowed(
            Method::DELETE,
            &[("host", LOCAL), ("authorization", "Bearer x")]
        ));
        assert!(!allowed(
            Method::POST,
            &[
                ("host", LOCAL),
                ("x-sluice-request", "1"),
                ("origin", "http://evil.example")
            ]
        ));
        assert!(!allowed(
            Method::POST,
            &[
                ("host", LOCAL),
                ("x-sluice-request", "1"),
                ("origin", "null")
            ]
        ));
        assert!(allowed(
            Method::POST,
            &[
                ("host", LOCAL),
                ("x-sluice-request", "1"),
                ("origin", "http://127.0.0.1:8025")
            ]
        ));
    }
}

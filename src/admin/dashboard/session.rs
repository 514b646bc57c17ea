//! The dashboard's login: the API's bearer token, kept by the browser in a
//! cookie the page's script cannot read.
//!
//! `POST /login` with `{"token": "…"}` checks the token against `[admin]
//! token` and answers `204` with `Set-Cookie: sluice_token=<hex>; HttpOnly;
//! SameSite=Strict; Path=/` (hex because a token may hold characters a
//! cookie value may not). `POST /logout` clears it. Both are state changes,
//! so `browser::guard` lets them through only with `X-Sluice-Request` and no
//! foreign `Origin`: a page elsewhere can neither log the operator in under
//! its own token nor out.
//!
//! [`cookie_to_bearer`] runs after `browser::guard` and before the token
//! check: a request with no `Authorization` but the cookie is given
//! `Authorization: Bearer <token>`. The guard has already judged the request
//! on its own headers, so the cookie never stands in for the CSRF header.
//! Without `[admin] token` the API's loopback rule applies (the admin
//! listener is loopback-only then) and no login is needed.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::admin::api::same_secret;
use crate::admin::error::AdminError;
use crate::context::Context;

/// The cookie's name.
pub const COOKIE: &str = "sluice_token";

/// The body of `POST /login`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: String,
}

/// `POST /login`.
pub async fn login(State(ctx): State<Context>, body: axum::body::Bytes) -> Response {
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(error) => {
            return AdminError::BadRequest(format!(
                "bad body (expected {{\"token\": \"…\"}}): {error}"
            ))
            .into_response();
        }
    };
    let config = ctx.config();
    let Some(expected) = config.admin.token.as_deref() else {
        // No token: nothing to keep.
        return StatusCode::NO_CONTENT.into_response();
    };
    if !same_secret(login.token.as_bytes(), expected.as_bytes()) {
        tracing::warn!("dashboard login with a wrong token");
        return AdminError::Unauthorized.into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        hex(login.token.as_bytes())
    );
    with_cookie(&cookie)
}

/// `POST /logout`: the cookie expires.
pub async fn logout() -> Response {
    with_cookie(&format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    ))
}

fn with_cookie(cookie: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /v1/dashboard/session`: whether a login is needed (no token is
/// configured, or the request carries a valid one).
pub async fn session(State(ctx): State<Context>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"token_required": ctx.config().admin.token.is_some()}))
}

/// Gives a request that carries the login cookie and no `Authorization`
/// the bearer token from the cookie (see the module doc).
pub async fn cookie_to_bearer(mut request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::AUTHORIZATION)
        && let Some(token) = token_from_cookies(request.headers())
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    next.run(request).await
}

/// The token in the `sluice_token` cookie, when there is one that decodes.
fn token_from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| unhex(value.trim()))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|token| !token.is_empty())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn the_cookie_round_trips_any_token() {
        for token in ["s3cret", "a b;c=d,\"é\"", "x"] {
            let mut headers = HeaderMap::new();
            let cookie = format!("other=1; {COOKIE}={}; last=2", hex(token.as_bytes()));
            headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
            assert_eq!(token_from_cookies(&headers).as_deref(), Some(token));
        }
    }

    #[test]
    fn a_bad_cookie_gives_no_token() {
        for cookie in [
            format!("{COOKIE}="),
            format!("{COOKIE}=abc"),
            format!("{COOKIE}=zz"),
            format!("{COOKIE}=c3"),
            "x=1".to_string(),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
            let token = token_from_cookies(&headers);
            assert!(token.is_none(), "{cookie}: {token:?}");
        }
    }
}

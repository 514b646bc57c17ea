//! The dashboard's login: a session, kept by the browser in a cookie the
//! page's script cannot read. The cookie holds a random session ID, never
//! the token (cookies are not separated by port: another service on the
//! host would see it).
//!
//! `POST /login` with `{"token": "…"}` checks the token (`admin::token`)
//! and answers `204` with `Set-Cookie: sluice_session=<random ID>; HttpOnly;
//! SameSite=Strict; Path=/; Max-Age=…`; the session ends after
//! [`SESSION_LIFETIME`], at `POST /logout`, or when the token in force
//! changes. Logins are rate limited: after [`MAX_FAILED_LOGINS`] wrong
//! tokens within [`FAILED_LOGIN_WINDOW`], every login is answered `429`
//! until the window has passed. Both routes change state, so
//! `browser::guard` lets them through only with `X-Sluice-Request` and no
//! foreign `Origin`.
//!
//! [`cookie_session`] runs after `browser::guard` and before the token
//! check: a request with a live session is let through by the token check
//! ([`Session`] in its extensions). The guard has already judged the
//! request on its own headers, so the cookie never stands in for the CSRF
//! header.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::admin::error::AdminError;
use crate::admin::token::{AdminToken, same_secret};

/// The cookie's name.
pub const COOKIE: &str = "sluice_session";

/// How long a session lasts from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Wrong tokens tolerated within [`FAILED_LOGIN_WINDOW`].
pub const MAX_FAILED_LOGINS: usize = 5;

/// The window over which failed logins are counted.
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Sessions kept at once; the oldest goes first beyond this.
const MAX_SESSIONS: usize = 256;

/// Random bytes in a session ID.
const SESSION_ID_BYTES: usize = 32;

/// The live sessions and the recent failed logins, shared by every
/// connection of one admin listener (in the router's extensions).
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<SessionState>>,
}

#[derive(Default)]
struct SessionState {
    /// Session ID → (expiry, the token it was opened with).
    live: HashMap<String, (Instant, String)>,
    /// When the recent failed logins happened, oldest first.
    failures: VecDeque<Instant>,
}

/// Put in a request's extensions when its cookie names a live session.
#[derive(Debug, Clone, Copy)]
pub struct Session;

impl Sessions {
    fn open(&self, token: String) -> String {
        use rand::RngCore as _;
        let mut bytes = [0u8; SESSION_ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = hex(&bytes);
        let now = Instant::now();
        let mut state = self.inner.lock().expect("session lock");
        state.live.retain(|_, (expiry, _)| *expiry > now);
        if state.live.len() >= MAX_SESSIONS
            && let Some(oldest) = state
                .live
                .iter()
                .min_by_key(|(_, (expiry, _))| *expiry)
                .map(|(id, _)| id.clone())
        {
            state.live.remove(&oldest);
        }
        state
            .live
            .insert(id.clone(), (now + SESSION_LIFETIME, token));
        id
    }

    /// Whether `id` is a live session opened with the token now in force.
    fn is_live(&self, id: &str, token: &str) -> bool {
        let state = self.inner.lock().expect("session lock");
        state.live.get(id).is_some_and(|(expiry, opened_with)| {
            *expiry > Instant::now() && same_secret(opened_with.as_bytes(), token.as_bytes())
        })
    }

    fn close(&self, id: &str) {
        self.inner.lock().expect("session lock").live.remove(id);
    }

    /// Whether logins are refused for now (too many recent failures).
    fn throttled(&self) -> bool {
        let mut state = self.inner.lock().expect("session lock");
        let now = Instant::now();
        while state
            .failures
            .front()
            .is_some_and(|at| now.duration_since(*at) >= FAILED_LOGIN_WINDOW)
        {
            state.failures.pop_front();
        }
        state.failures.len() >= MAX_FAILED_LOGINS
    }

    fn failed(&self) {
        let mut state = self.inner.lock().expect("session lock");
        state.failures.push_back(Instant::now());
        if state.failures.len() > MAX_FAILED_LOGINS {
            state.failures.pop_front();
        }
    }
}

/// The body of `POST /login`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: String,
}

/// `POST /login`.
pub async fn login(
    axum::Extension(token): axum::Extension<AdminToken>,
    axum::Extension(sessions): axum::Extension<Sessions>,
    body: axum::body::Bytes,
) -> Response {
    if sessions.throttled() {
        tracing::warn!("dashboard login refused: too many wrong tokens lately");
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({
                "error": format!(
                    "too many failed logins (at most {MAX_FAILED_LOGINS} a minute); try again later"
                )
            })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return response;
    }
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(error) => {
            return AdminError::BadRequest(format!(
                "bad body (expected {{\"token\": \"…\"}}): {error}"
            ))
            .into_response();
        }
    };
    if !token.accepts(&login.token) {
        sessions.failed();
        tracing::warn!("dashboard login with a wrong token");
        return AdminError::Unauthorized.into_response();
    }
    let id = sessions.open(login.token);
    with_cookie(&format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    ))
}

/// `POST /logout`: the session ends and the cookie expires.
pub async fn logout(
    axum::Extension(sessions): axum::Extension<Sessions>,
    request: Request,
) -> Response {
    if let Some(id) = session_from_cookies(request.headers()) {
        sessions.close(&id);
    }
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

/// `GET /v1/dashboard/session`: whether a login is needed (always, on
/// `admin.address`: the token is always required there).
pub async fn session() -> Json<serde_json::Value> {
    Json(serde_json::json!({"token_required": true}))
}

/// Marks a request that carries the cookie of a live session (see the
/// module doc).
pub async fn cookie_session(mut request: Request, next: Next) -> Response {
    let token = request.extensions().get::<AdminToken>().cloned();
    let sessions = request.extensions().get::<Sessions>().cloned();
    if let (Some(token), Some(sessions)) = (token, sessions)
        && let Some(id) = session_from_cookies(request.headers())
        && let Some(expected) = token.expected()
        && sessions.is_live(&id, &expected)
    {
        request.extensions_mut().insert(Session);
    }
    next.run(request).await
}

/// The session ID in the `sluice_session` cookie, when there is one.
fn session_from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|id| id.len() == SESSION_ID_BYTES * 2)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_live_only_under_the_token_it_was_opened_with() {
        let sessions = Sessions::default();
        let id = sessions.open("tok".into());
        assert_eq!(id.len(), SESSION_ID_BYTES * 2);
        assert!(!id.contains("tok"));
        assert!(sessions.is_live(&id, "tok"));
        assert!(!sessions.is_live(&id, "other"));
        assert!(!sessions.is_live("0000", "tok"));
        sessions.close(&id);
        assert!(!sessions.is_live(&id, "tok"));
    }

    #[test]
    fn failed_logins_are_throttled() {
        let sessions = Sessions::default();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(!sessions.throttled());
            sessions.failed();
        }
        assert!(sessions.throttled());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.open("tok".into());
        }
        assert!(sessions.inner.lock().unwrap().live.len() <= MAX_SESSIONS);
    }
}

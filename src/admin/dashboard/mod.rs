//! The queue dashboard: a web page served by the admin listener at `/`.
//!
//! The page (`assets/dashboard/`: HTML, one script, one style sheet) is
//! embedded in the binary and needs nothing from elsewhere; its charts are
//! SVG drawn by the script. It reads the API with the same token as every
//! client (kept in a cookie by [`session`]), plus routes of its own:
//! `GET /v1/dashboard/history` (the [`history`] the server samples),
//! `GET /v1/dashboard/overview` (the queue summary and the top deferral
//! reasons from one scan: [`overview`]) and `GET /v1/dashboard/state`
//! (listeners, deliveries in flight, counters).
//!
//! Security, since the page shows attacker-controlled text (senders,
//! subjects, remote replies):
//! - every page and asset is sent with a Content-Security-Policy that allows
//!   only this origin's script and style sheet, no inline script or style,
//!   no frames, no form posts, no other origin;
//! - the script writes every string from mail with `textContent`, never as
//!   markup;
//! - actions are `fetch` requests with `X-Sluice-Request: 1`, so
//!   `browser::guard` refuses them from any other origin (CSRF).

pub mod history;
pub mod overview;
pub mod session;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};

use self::history::{History, Minute};
use super::error::AdminError;
use crate::context::Context;

/// The policy sent with every page and asset.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("../../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../../assets/dashboard/app.css");

/// What the dashboard's own routes share, in the router's extensions (see
/// `Admin::run`).
#[derive(Clone)]
pub struct Dashboard {
    /// The sampled history.
    pub history: History,
    /// When the admin API started (close to the server's start).
    pub started_at: DateTime<Utc>,
}

impl Dashboard {
    /// The dashboard's state, with its history sampler running until
    /// `ctx`'s shutdown.
    pub fn start(ctx: &Context) -> Dashboard {
        let history = History::new();
        tokio::spawn(history.clone().run_sampler(ctx.clone()));
        Dashboard {
            history,
            started_at: Utc::now(),
        }
    }
}

/// The routes open to anyone who reaches the listener: the page, its
/// assets, login and logout. They carry no queue data.
pub fn public_routes() -> Router<Context> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/login", post(session::login))
        .route("/logout", post(session::logout))
        .route("/v1/dashboard/session", get(session::session))
}

/// The routes behind the token.
pub fn protected_routes() -> Router<Context> {
    Router::new()
        .route("/v1/dashboard/history", get(history_route))
        .route("/v1/dashboard/state", get(state_route))
        .route("/v1/dashboard/overview", get(overview_route))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn dashboard_of(extension: Option<axum::Extension<Dashboard>>) -> Result<Dashboard, AdminError> {
    extension
        .map(|axum::Extension(dashboard)| dashboard)
        .ok_or_else(|| AdminError::Internal("the dashboard is not running".into()))
}

/// `GET /v1/dashboard/history`: `{"interval_seconds": 10, "minutes": [{"at",
/// "queued", "held", "deferred_recipients", "received", "sent", "deferred",
/// "bounced"}, …]}`, oldest first, at most a day.
async fn history_route(
    State(ctx): State<Context>,
    extension: Option<axum::Extension<Dashboard>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let dashboard = dashboard_of(extension)?;
    dashboard.history.sample(&ctx).await;
    let minutes: Vec<Minute> = dashboard.history.minutes();
    Ok(Json(serde_json::json!({
        "interval_seconds": history::SAMPLE_INTERVAL.as_secs(),
        "minutes": minutes,
    })))
}

/// `GET /v1/dashboard/overview`: see [`overview`].
async fn overview_route(
    State(ctx): State<Context>,
) -> Result<Json<overview::Overview>, AdminError> {
    let queue = ctx.queue.clone();
    let overview = tokio::task::spawn_blocking(move || overview::build(&queue, Utc::now()))
        .await
        .map_err(|error| AdminError::Internal(format!("queue overview failed: {error}")))??;
    Ok(Json(overview))
}

/// `GET /v1/dashboard/state`: the listeners, the delivery side, the queue's
/// counts and the counters since the start.
async fn state_route(
    State(ctx): State<Context>,
    extension: Option<axum::Extension<Dashboard>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let dashboard = dashboard_of(extension)?;
    let config = ctx.config();
    let queue = ctx.queue.clone();
    let spool = config.spool.path.clone();
    // The addresses the listeners got (the real port where the configuration
    // says 0), from `<spool>/smtp.address`; the configured ones without it.
    let (stats, bound) = tokio::task::spawn_blocking(move || {
        (queue.stats(), crate::runfile::read_listeners(&spool))
    })
    .await
    .map_err(|error| AdminError::Internal(format!("queue stats failed: {error}")))?;
    let stats = stats?;
    let metrics = &ctx.metrics;
    let listeners: Vec<serde_json::Value> = match bound {
        Some(bound) => bound
            .iter()
            .map(|(kind, address)| serde_json::json!({"address": address.to_string(), "kind": kind}))
            .collect(),
        None => config
            .listeners
            .iter()
            .map(|listener| {
                serde_json::json!({"address": listener.address.to_string(), "kind": listener.kind})
            })
            .collect(),
    };
    let failure = ctx.queue.failure();
    let delivery = if ctx.shutdown.is_cancelled() {
        "stopping"
    } else if failure.is_some() {
        "stopped: spool failure"
    } else {
        "running"
    };
    Ok(Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": config.hostname,
        "started_at": super::view::format_time(&dashboard.started_at),
        "listeners": listeners,
        "starttls": config.tls.is_some(),
        "connections_active": metrics.connections_active.get(),
        "delivery": delivery,
        "spool_failure": failure,
        "deliveries_in_flight": metrics.deliveries_in_flight.get(),
        "queue": {
            "messages": stats.messages,
            "held": stats.held,
            "pending": stats.pending,
            "deferred": stats.deferred,
        },
        "totals": {
            "received": metrics.messages_received.get(),
            "sent": metrics.recipients_delivered.get(),
            "deferred": metrics.recipients_deferred.get(),
            "bounced": metrics.recipients_bounced.get(),
        },
    })))
}

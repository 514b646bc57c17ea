//! `/v1/suspensions`: destinations that get no delivery attempts for a
//! while (see `delivery::shaping`).
//!
//! - `GET /v1/suspensions` -> `{"suspensions": [{"destination": "…",
//!   "until": "RFC 3339", "reason": "…"}]}`, soonest to end first;
//! - `POST /v1/suspensions/{destination}` with an optional body
//!   `{"for": "1h"}` (default: the rule's `suspend_for`, else 30m) ->
//!   the suspension object;
//! - `DELETE /v1/suspensions/{destination}` -> 204, or 404 when it was not
//!   suspended.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use sluice_queue::Suspension;

use super::error::AdminError;
use crate::context::Context;
use crate::delivery::shaping::{self, BY_HAND};

/// One suspension as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuspensionView {
    /// A recipient domain or an MX suffix (".google.com").
    pub destination: String,
    /// When it ends (RFC 3339, UTC).
    pub until: String,
    /// The reply that set it, or "suspended by the operator".
    pub reason: String,
}

impl From<&Suspension> for SuspensionView {
    fn from(suspension: &Suspension) -> SuspensionView {
        SuspensionView {
            destination: suspension.destination.clone(),
            until: suspension.until.to_rfc3339_opts(SecondsFormat::Secs, true),
            reason: suspension.reason.clone(),
        }
    }
}

/// The answer of `GET /v1/suspensions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuspensionList {
    /// Every suspension in force.
    pub suspensions: Vec<SuspensionView>,
}

/// The optional body of `POST /v1/suspensions/{destination}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    #[serde(rename = "for")]
    duration: Option<String>,
}

/// `GET /v1/suspensions`.
pub async fn list(State(ctx): State<Context>) -> Json<SuspensionList> {
    Json(SuspensionList {
        suspensions: ctx.shaper.list().iter().map(SuspensionView::from).collect(),
    })
}

/// `POST /v1/suspensions/{destination}`.
pub async fn suspend(
    State(ctx): State<Context>,
    Path(destination): Path<String>,
    body: Bytes,
) -> Result<Json<SuspensionView>, AdminError> {
    let destination = checked(&destination)?;
    let body: SuspendBody = if body.iter().all(u8::is_ascii_whitespace) {
        SuspendBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            AdminError::BadRequest(format!("bad body (expected {{\"for\": \"1h\"}}): {error}"))
        })?
    };
    let duration = match body.duration {
        Some(text) => humantime::parse_duration(&text)
            .ok()
            .filter(|duration| !duration.is_zero())
            .ok_or_else(|| {
                AdminError::BadRequest(format!("bad duration {text:?}: expected e.g. \"1h\""))
            })?,
        None => default_duration(&ctx, &destination),
    };
    let until = chrono::Utc::now()
        + chrono::Duration::from_std(duration)
            .map_err(|_| AdminError::BadRequest("duration too long".into()))?;
    let suspension = ctx
        .shaper
        .suspend(&destination, until, BY_HAND.to_string())
        .await?;
    tracing::info!(destination = %suspension.destination, until = %SuspensionView::from(&suspension).until, "destination suspended by the operator");
    Ok(Json(SuspensionView::from(&suspension)))
}

/// `DELETE /v1/suspensions/{destination}`.
pub async fn resume(
    State(ctx): State<Context>,
    Path(destination): Path<String>,
) -> Result<StatusCode, AdminError> {
    let destination = checked(&destination)?;
    if ctx.shaper.resume(&destination).await? {
        tracing::info!(destination, "destination resumed by the operator");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NoSuspension(destination))
    }
}

/// The duration of a suspension by hand without `for`: the `suspend_for`
/// of the rule keyed by the destination, else the default.
pub fn default_duration(ctx: &Context, destination: &str) -> std::time::Duration {
    ctx.config()
        .shaping
        .rule_keyed(destination)
        .map_or(crate::config::DEFAULT_SUSPEND_FOR, |rule| rule.suspend_for)
}

fn checked(destination: &str) -> Result<String, AdminError> {
    if !shaping::valid_destination(destination) {
        return Err(AdminError::BadRequest(format!(
            "bad destination {destination:?}: expected a domain or an MX suffix like \".google.com\""
        )));
    }
    Ok(shaping::normalize(destination))
}

//! The HTTP routes of the admin API, the bearer-token check, and the
//! streaming queue listing.
//!
//! `GET /v1/queue` streams a JSON array built from `Queue::iter` in a
//! blocking task, chunk by chunk through a bounded channel, so memory does not
//! grow with the queue. With `?limit=N` it answers one page (at most
//! [`MAX_PAGE`] messages) and, when more messages match, a `Link: <…>;
//! rel="next"` header (RFC 8288) and a `Sluice-Next-After: <id>` header: the
//! next page is `?after=<id>` with the same filters.

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use sluice_queue::QueueId;

use super::browser;
use super::bulk::{self, Action};
use super::content;
use super::dashboard;
use super::error::AdminError;
use super::http::{BODY_TIMEOUT, MAX_BODY_BYTES};
use super::ops;
use super::summary;
use super::suspensions;
use super::token::AdminToken;
use super::view::{JsonArrayWriter, ListFilter, MessageView, StatusFilter};
use crate::context::Context;

/// The largest `?limit=` (a page is built in memory before it is sent).
pub const MAX_PAGE: usize = 10_000;

/// Bytes of JSON gathered before a chunk of the listing is sent.
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks buffered between the queue scan and the socket.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The content type of `/metrics` (prometheus-client writes OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every route of the admin API over `ctx`, and the dashboard's. Every route
/// but `/health`, `/metrics` and the dashboard's page, assets and login
/// requires `Authorization: Bearer <token>` on `admin.address` (the
/// dashboard's session cookie stands for it: `dashboard::session`); the
/// admin socket needs none. Requests need an [`AdminToken`] extension.
/// Every request is first checked against web pages (`browser::guard`:
/// Host, Origin, custom header), then its body is limited (see
/// [`limit_body`]).
pub fn router(ctx: Context) -> Router {
    let protected = Router::new()
        .route("/v1/queue", get(list).delete(bulk_route(Action::Delete)))
        .route("/v1/queue/retry", bulk_route(Action::Retry))
        .route("/v1/queue/hold", bulk_route(Action::Hold))
        .route("/v1/queue/release", bulk_route(Action::Release))
        .route("/v1/queue/delete", bulk_route(Action::Delete))
        .route("/v1/queue/bounce", bulk_route(Action::Bounce))
        .route("/v1/queue/summary", get(summary))
        .route("/v1/queue/:id", get(show).delete(delete_one))
        .route("/v1/queue/:id/message", get(cat))
        .route("/v1/queue/:id/retry", post(retry_one))
        .route("/v1/queue/:id/hold", post(hold_one))
        .route("/v1/queue/:id/release", post(release_one))
        .route("/v1/queue/:id/bounce", post(bounce_one))
        .route("/v1/events", get(events_status))
        .route("/v1/suspensions", get(suspensions::list))
        .route(
            "/v1/suspensions/:destination",
            post(suspensions::suspend).delete(suspensions::resume),
        )
        .merge(dashboard::protected_routes())
        .route_layer(middleware::from_fn(require_token));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(dashboard::public_routes())
        .merge(protected)
        .fallback(|| async { AdminError::NoEndpoint })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        // Inside the guard: the guard judges the request's own headers.
        .layer(middleware::from_fn(dashboard::session::cookie_session))
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn(browser::guard))
        .with_state(ctx)
}

/// Reads the request body, at most [`MAX_BODY_BYTES`] within
/// [`BODY_TIMEOUT`], before any handler runs: a declared `Content-Length`
/// over the limit is answered `413` at once, without reading; a chunked
/// body is cut off at the limit (`413`); a body that trickles in is answered
/// `408`. Handlers see the buffered body, so none can be made to wait on
/// the network or to buffer without bound.
async fn limit_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return AdminError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        }
        .into_response();
    }
    match tokio::time::timeout(BODY_TIMEOUT, read_limited(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(error)) => error.into_response(),
        Err(_) => AdminError::BodyTimeout(BODY_TIMEOUT).into_response(),
    }
}

/// The whole of `body` when it is at most `limit` bytes.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, AdminError> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|error| AdminError::BadRequest(format!("cannot read the body: {error}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(AdminError::BodyTooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// The token rule of `admin.address` (see `admin::token`): a request needs
/// `Authorization: Bearer <token>` (the dashboard's session cookie becomes
/// one in `dashboard::session`). A request on the admin socket
/// ([`super::socket::SocketPeer`]) passes: the socket served it only after
/// checking the peer's uid.
async fn require_token(request: Request, next: Next) -> Response {
    let extensions = request.extensions();
    if extensions.get::<super::socket::SocketPeer>().is_some()
        || extensions.get::<dashboard::session::Session>().is_some()
    {
        return next.run(request).await;
    }
    let Some(token) = request.extensions().get::<AdminToken>().cloned() else {
        return AdminError::Internal("the admin token rule is not set up".into()).into_response();
    };
    // RFC 6750 §2.1: `Authorization: Bearer <token>`; the scheme name is
    // case-insensitive (RFC 7235 §2.1).
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    if !given.is_some_and(|given| token.accepts(given)) {
        tracing::warn!(path = %request.uri().path(), "admin API request without the right bearer token");
        return AdminError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// `GET /v1/events`: each `[[events]]` subscriber's pending count, oldest
/// entry, counters and last error (`sluice events status`).
async fn events_status(State(ctx): State<Context>) -> Json<Vec<crate::events::SubscriberStatus>> {
    let statuses = match ctx.events.get() {
        Some(dispatchers) => dispatchers.statuses(),
        None => Vec::new(),
    };
    Json(statuses)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(ctx): State<Context>) -> Result<Response, AdminError> {
    let queue = ctx.queue.clone();
    let stats = tokio::task::spawn_blocking(move || queue.stats())
        .await
        .map_err(|error| AdminError::Internal(format!("queue stats failed: {error}")))??;
    let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let label = |key: &str, value: &str| vec![(key.to_string(), value.to_string())];
    // The spool gauges are fresh even when no mail arrives (cached a second).
    ctx.disk.is_low(ctx.config().spool.min_free);
    // Suspensions that ended show 0 (the list drops them).
    ctx.shaper.list();
    let metrics = &ctx.metrics;
    metrics
        .queue_messages
        .get_or_create(&label("state", "queued"))
        .set(gauge(stats.messages.saturating_sub(stats.held)));
    metrics
        .queue_messages
        .get_or_create(&label("state", "held"))
        .set(gauge(stats.held));
    for (status, count) in [
        ("pending", stats.pending),
        ("deferred", stats.deferred),
        ("delivered", stats.delivered),
        ("failed", stats.failed),
    ] {
        metrics
            .queue_recipients
            .get_or_create(&label("status", status))
            .set(gauge(count));
    }
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode()).into_response())
}

/// The query of `GET /v1/queue`, validated.
#[derive(Debug, Default)]
struct ListQuery {
    filter: ListFilter,
    after: Option<QueueId>,
    limit: Option<usize>,
}

fn parse_list_query(pairs: Vec<(String, String)>) -> Result<ListQuery, AdminError> {
    let mut query = ListQuery::default();
    for (key, value) in pairs {
        match key.as_str() {
            "status" => query.filter.status = Some(StatusFilter::parse(&value)?),
            "domain" => query.filter.domain = Some(value),
            "sender" => query.filter.sender = Some(value),
            "older_than" => {
                query.filter.older_than =
                    Some(bulk::parse_age(&value).map_err(AdminError::BadRequest)?)
            }
            "after" => query.after = Some(ops::parse_id(&value)?),
            "limit" => {
                let limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE).contains(limit))
                    .ok_or_else(|| {
                        AdminError::BadRequest(format!(
                            "bad limit {value:?}: a number from 1 to {MAX_PAGE}"
                        ))
                    })?;
                query.limit = Some(limit);
            }
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown parameter {other:?} (known: status, domain, sender, older_than, limit, after)"
                )));
            }
        }
    }
    Ok(query)
}

async fn list(
    State(ctx): State<Context>,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, AdminError> {
    let Query(pairs) = pairs.map_err(|error| AdminError::BadRequest(error.body_text()))?;
    let query = parse_list_query(pairs)?;
    match query.limit {
        Some(limit) => page(ctx, query.filter, query.after, limit).await,
        None => Ok(stream_all(ctx, query.filter, query.after)),
    }
}

fn json_response(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Streams every matching message after `after`.
fn stream_all(ctx: Context, filter: ListFilter, after: Option<QueueId>) -> Response {
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let queue = ctx.queue.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = JsonArrayWriter::new(Vec::with_capacity(CHUNK_BYTES))
            .expect("writing to a Vec cannot fail");
        for message in queue.iter(after.as_ref()) {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    // The 200 is sent already: end the body early so the
                    // client sees a truncated array, never a complete lie.
                    tracing::error!(%error, "queue listing failed midway");
                    let _ = sender.blocking_send(Err(std::io::Error::other(error.to_string())));
                    return;
                }
            };
            if !filter.matches(&message) {
                continue;
            }
            writer
                .push(&MessageView::from(message))
                .expect("writing to a Vec cannot fail");
            if writer.get_mut().len() >= CHUNK_BYTES {
                let chunk = std::mem::replace(writer.get_mut(), Vec::with_capacity(CHUNK_BYTES));
                if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                    return; // the client went away
                }
            }
        }
        let rest = writer.finish().expect("writing to a Vec cannot fail");
        let _ = sender.blocking_send(Ok(Bytes::from(rest)));
    });
    let stream = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
    json_response(Body::from_stream(stream))
}

/// One page of at most `limit` matching messages after `after`, with the
/// next-page cursor in `Link` and `Sluice-Next-After` when more match.
async fn page(
    ctx: Context,
    filter: ListFilter,
    after: Option<QueueId>,
    limit: usize,
) -> Result<Response, AdminError> {
    let queue = ctx.queue.clone();
    let scan_filter = filter.clone();
    let (views, more) = tokio::task::spawn_blocking(move || {
        let mut views = Vec::new();
        for message in queue.iter(after.as_ref()) {
            let message = message?;
            if !scan_filter.matches(&message) {
                continue;
            }
            if views.len() == limit {
                return Ok((views, true));
            }
            views.push(MessageView::from(message));
        }
        Ok::<_, AdminError>((views, false))
    })
    .await
    .map_err(|error| AdminError::Internal(format!("queue scan failed: {error}")))??;
    let mut writer = JsonArrayWriter::new(Vec::new()).expect("writing to a Vec cannot fail");
    for view in &views {
        writer.push(view).expect("writing to a Vec cannot fail");
    }
    let body = writer.finish().expect("writing to a Vec cannot fail");
    let mut response = json_response(Body::from(body));
    if let (true, Some(last)) = (more, views.last()) {
        let mut pairs = filter.query_pairs();
        pairs.push(("limit", limit.to_string()));
        pairs.push(("after", last.id.clone()));
        let query: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{key}={}", percent_encode(value)))
            .collect();
        let link = format!("</v1/queue?{}>; rel=\"next\"", query.join("&"));
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
        if let Ok(value) = HeaderValue::from_str(&last.id) {
            headers.insert("sluice-next-after", value);
        }
    }
    Ok(response)
}

/// The `:id` segment of a queue path, as text. Unlike a bare `Path`, a
/// segment that cannot be decoded (bad percent-encoding, invalid UTF-8) is
/// answered like any other bad request: a JSON error, not axum's plain text.
struct QueuePath(String);

#[axum::async_trait]
impl<S: Send + Sync> FromRequestParts<S> for QueuePath {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(QueuePath(id)),
            Err(rejection) => Err(AdminError::BadRequest(rejection.body_text())),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn show(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
) -> Result<Response, AdminError> {
    let id = ops::parse_id(&id)?;
    let queue_ctx = ctx.clone();
    let view = tokio::task::spawn_blocking(move || ops::show(&queue_ctx, &id))
        .await
        .map_err(|error| AdminError::Internal(format!("queue lookup failed: {error}")))??;
    Ok(Json(view).into_response())
}

async fn summary(State(ctx): State<Context>) -> Result<Json<summary::Summary>, AdminError> {
    let queue = ctx.queue.clone();
    let mut summary =
        tokio::task::spawn_blocking(move || summary::build(&queue, chrono::Utc::now()))
            .await
            .map_err(|error| AdminError::Internal(format!("queue summary failed: {error}")))??;
    summary::mark_suspended(&mut summary, |domain| {
        ctx.shaper.suspended_as_known(domain).is_some()
    });
    Ok(Json(summary))
}

/// The query of `GET /v1/queue/{id}/message`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatQuery {
    /// Only the header section.
    #[serde(default)]
    headers: bool,
}

/// The message as stored (`message/rfc822`), streamed from a blocking task
/// through a bounded channel.
async fn cat(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
    query: Result<Query<CatQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    let Query(query) = query.map_err(|error| AdminError::BadRequest(error.body_text()))?;
    let id = ops::parse_id(&id)?;
    let queue = ctx.queue.clone();
    let body = tokio::task::spawn_blocking(move || content::open(&queue, &id))
        .await
        .map_err(|error| AdminError::Internal(format!("queue lookup failed: {error}")))??;
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter(sender.clone());
        if let Err(content::CopyError::Read(error)) = content::copy(body, query.headers, &mut out) {
            // The 200 is sent already: cut the body short.
            tracing::error!(%error, "reading a queued message failed midway");
            let _ = sender.blocking_send(Err(error));
        }
    });
    let stream = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("message/rfc822"),
    );
    Ok(response)
}

/// Sends what is written, chunk by chunk, to a response body.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn retry_one(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
) -> Result<Json<MessageView>, AdminError> {
    Ok(Json(ops::retry(&ctx, &ops::parse_id(&id)?).await?))
}

async fn hold_one(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
) -> Result<Json<MessageView>, AdminError> {
    Ok(Json(ops::hold(&ctx, &ops::parse_id(&id)?).await?))
}

async fn release_one(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
) -> Result<Json<MessageView>, AdminError> {
    Ok(Json(ops::release(&ctx, &ops::parse_id(&id)?).await?))
}

async fn bounce_one(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
) -> Result<Json<MessageView>, AdminError> {
    Ok(Json(ops::bounce(&ctx, &ops::parse_id(&id)?).await?))
}

async fn delete_one(
    State(ctx): State<Context>,
    QueuePath(id): QueuePath,
) -> Result<StatusCode, AdminError> {
    ops::delete(&ctx, &ops::parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/queue/{action}` (and `DELETE /v1/queue`): a bulk action.
fn bulk_route(action: Action) -> MethodRouter<Context> {
    let handler =
        move |State(ctx): State<Context>,
              pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
              body: Bytes| async move { bulk_action(ctx, action, pairs, body).await };
    if action == Action::Delete {
        delete(handler).post(handler)
    } else {
        post(handler)
    }
}

/// The optional body of a bulk request: `{"ids": ["…", …]}` names the
/// messages; without it, the query's filters select them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    ids: Option<Vec<String>>,
}

/// Acts on the messages named in the body (answering the count and each
/// refusal: `{"held": 2, "errors": ["no such message: X"]}`), or else on
/// every message passing the query's filters (`status`, `domain`, `sender`,
/// `older_than`; none: all), answering `{"held": N}`.
async fn bulk_action(
    ctx: Context,
    action: Action,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, AdminError> {
    let Query(pairs) = pairs.map_err(|error| AdminError::BadRequest(error.body_text()))?;
    let query = parse_list_query(pairs)?;
    if query.after.is_some() || query.limit.is_some() {
        return Err(AdminError::BadRequest(
            "limit and after are for listings, not actions".into(),
        ));
    }
    let body: BulkBody = if body.iter().all(u8::is_ascii_whitespace) {
        BulkBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            AdminError::BadRequest(format!("bad body (expected {{\"ids\": [...]}}): {error}"))
        })?
    };
    let key = action.done_key();
    let Some(ids) = body.ids else {
        let count = bulk::select(&ctx, action, query.filter).await?;
        return Ok(Json(serde_json::json!({ key: count })));
    };
    if !query.filter.is_empty() {
        return Err(AdminError::BadRequest(
            "name messages by IDs or select them by filters, not both".into(),
        ));
    }
    let mut errors = Vec::new();
    // At most a body's worth (16 KiB) of IDs.
    let ids: Vec<Result<QueueId, AdminError>> = ids.iter().map(|id| ops::parse_id(id)).collect();
    let count = bulk::each_id(&ctx, action, ids, &mut |error| {
        errors.push(error.to_string())
    })
    .await;
    Ok(Json(serde_json::json!({ key: count, "errors": errors })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_query_accepts_filters_limit_and_cursor() {
        let query = parse_list_query(pairs(&[
            ("status", "deferred"),
            ("domain", "example.net"),
            ("sender", ""),
            ("limit", "50"),
            ("after", "AbC123"),
        ]))
        .unwrap();
        assert_eq!(query.limit, Some(50));
        assert_eq!(query.after.unwrap().as_str(), "AbC123");
        assert_eq!(query.filter.sender.as_deref(), Some(""));
        assert_eq!(query.filter.domain.as_deref(), Some("example.net"));
    }

    #[test]
    fn list_query_refuses_bad_values_and_unknown_keys() {
        for bad in [
            ("limit", "0"),
            ("limit", "10001"),
            ("limit", "ten"),
            ("after", "a-b"),
            ("status", "stuck"),
            ("colour", "red"),
        ] {
            let error = parse_list_query(pairs(&[bad])).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        use crate::admin::token::same_secret;
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cres", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }

    #[tokio::test]
    async fn a_body_without_length_is_cut_off_at_the_limit() {
        let chunks = (0..5).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000])));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let error = read_limited(body, 4096).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE, "{error}");

        let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024])));
        let body = Body::from_stream(futures::stream::iter(chunks));
        assert_eq!(read_limited(body, 4096).await.unwrap().len(), 4096);
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode("a+b@x.org"), "a%2Bb%40x.org");
        assert_eq!(percent_encode(""), "");
    }
}

//! The admin HTTP API from the outside: one request at a time, and the
//! JSON contract of its message objects (DESIGN.md).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// An answer of the admin API.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
    pub content_type: Option<String>,
    pub link: Option<String>,
    pub next_after: Option<String>,
    pub www_authenticate: Option<String>,
}

impl HttpReply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }
}

/// One HTTP request to the admin API at `admin` (panics when there is no
/// answer). `token` `None` sends the token sluice generated for a test
/// server started without `[admin] token`, if any ([`http_anonymous`] sends
/// none).
pub fn http(method: &str, admin: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    try_http(method, admin, path, token).unwrap_or_else(|error| panic!("{method} {path}: {error}"))
}

/// One HTTP request to the admin API at `admin`; any status is an answer,
/// no answer (connection or transport failure) is an error.
pub fn try_http(
    method: &str,
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<HttpReply, String> {
    let generated = super::server::generated_token(admin);
    try_http_as(method, admin, path, token.or(generated.as_deref()))
}

/// One HTTP request with no `Authorization` at all.
#[allow(dead_code)]
pub fn http_anonymous(method: &str, admin: SocketAddr, path: &str) -> HttpReply {
    try_http_as(method, admin, path, None)
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
}

fn try_http_as(
    method: &str,
    admin: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<HttpReply, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    // As `sluice queue` does: the API refuses state changes without it.
    let mut request = agent
        .request(method, &format!("http://{admin}{path}"))
        .set("X-Sluice-Request", "1");
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match if method == "GET" {
        request.call()
    } else {
        request.send_bytes(&[])
    } {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => return Err(error.to_string()),
    };
    let header = |name: &str| response.header(name).map(str::to_string);
    let status = response.status();
    let content_type = header("content-type");
    let link = header("link");
    let next_after = header("sluice-next-after");
    let www_authenticate = header("www-authenticate");
    let body = response.into_string().expect("read the body");
    Ok(HttpReply {
        status,
        body,
        content_type,
        link,
        next_after,
        www_authenticate,
    })
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| chrono::DateTime::parse_from_rfc3339(text).is_ok())
}

/// Asserts that `message` is exactly a DESIGN.md message object.
pub fn assert_message_shape(message: &Value) {
    assert_eq!(
        keys(message),
        ["held", "id", "received_at", "recipients", "sender", "size"],
        "message object keys: {message}"
    );
    assert!(
        message["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
    );
    assert!(message["sender"].is_string(), "{message}");
    assert!(message["size"].is_u64(), "{message}");
    assert!(is_rfc3339(&message["received_at"]), "{message}");
    assert!(message["held"].is_boolean(), "{message}");
    let recipients = message["recipients"].as_array().expect("recipients array");
    assert!(!recipients.is_empty(), "{message}");
    for recipient in recipients {
        let mut recipient_keys = keys(recipient);
        // `show` adds each recipient's attempt history.
        if let Some(log) = recipient.get("attempts_log") {
            recipient_keys.retain(|key| key != "attempts_log");
            for attempt in log.as_array().expect("attempts_log is an array") {
                assert_eq!(
                    keys(attempt),
                    ["relay", "reply", "time", "tls"],
                    "attempt keys: {attempt}"
                );
                assert!(is_rfc3339(&attempt["time"]), "{attempt}");
            }
        }
        assert_eq!(
            recipient_keys,
            [
                "address",
                "attempts",
                "last_reply",
                "next_attempt_at",
                "status"
            ],
            "recipient object keys: {recipient}"
        );
        assert!(recipient["address"].is_string());
        assert!(
            ["pending", "deferred", "delivered", "failed"]
                .contains(&recipient["status"].as_str().unwrap_or("")),
            "{recipient}"
        );
        assert!(recipient["attempts"].is_u64());
        assert!(
            recipient["next_attempt_at"].is_null() || is_rfc3339(&recipient["next_attempt_at"]),
            "{recipient}"
        );
        assert!(
            recipient["last_reply"].is_null() || recipient["last_reply"].is_string(),
            "{recipient}"
        );
    }
}

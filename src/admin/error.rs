//! The errors of queue management, shared by the HTTP API and the offline
//! `sluice queue`, and their mapping to HTTP statuses and JSON bodies.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_queue::{QueueError, QueueId};

/// What can go wrong when inspecting or managing the queue.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The text given as a queue ID is not one (`[A-Za-z0-9]{1,64}`).
    #[error("bad queue ID {0:?}: an ID is 1 to 64 letters and digits")]
    BadId(String),
    /// No message with this ID is queued.
    #[error("no such message: {0}")]
    NotFound(QueueId),
    /// The action makes no sense for a held message (retry: release it first).
    #[error("message {0} is held: release it first")]
    Held(QueueId),
    /// A query parameter or request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// `[admin] token` is set and the request did not carry it.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The `Host` header is not the API's own address (DNS rebinding).
    #[error(
        "refused: Host {host:?} is not this API's address {address} (use the address, or localhost on loopback)"
    )]
    MisdirectedHost {
        host: String,
        address: std::net::SocketAddr,
    },
    /// A state-changing request a web page could have sent cross-site.
    #[error("{0}")]
    CrossSite(String),
    /// The request names no endpoint of the API.
    #[error("no such endpoint")]
    NoEndpoint,
    /// The endpoint exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body is larger than the API accepts.
    #[error("request body too large: at most {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The request body did not arrive in time.
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// `DELETE /v1/suspensions/{destination}` of one not suspended.
    #[error("{0} is not suspended")]
    NoSuspension(String),
    /// The queue failed.
    #[error(transparent)]
    Queue(QueueError),
    /// Bouncing the message failed.
    #[error("bouncing {id} failed: {reason:#}")]
    Bounce { id: QueueId, reason: anyhow::Error },
    /// A background task died (a bug or shutdown).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<QueueError> for AdminError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::NotFound(text) => match QueueId::parse(&text) {
                Some(id) => AdminError::NotFound(id),
                None => AdminError::Queue(QueueError::NotFound(text)),
            },
            other => AdminError::Queue(other),
        }
    }
}

impl AdminError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadId(_) | AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) | AdminError::NoEndpoint | AdminError::NoSuspension(_) => {
                StatusCode::NOT_FOUND
            }
            AdminError::Queue(QueueError::NotFound(_)) => StatusCode::NOT_FOUND,
            AdminError::Held(_) => StatusCode::CONFLICT,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::MisdirectedHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            AdminError::CrossSite(_) => StatusCode::FORBIDDEN,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AdminError::Queue(QueueError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Queue(_) | AdminError::Bounce { .. } | AdminError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// The JSON body of every error answer: `{"error": "…"}`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in words an operator understands.
    pub error: String,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "admin API request failed");
        }
        let body = Json(ErrorBody {
            error: self.to_string(),
        });
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: a 401 names the scheme it wants.
            (
                status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"sluice\"")],
                body,
            )
                .into_response()
        } else {
            (status, body).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_not_found_becomes_404_with_the_words_no_such_message() {
        let error = AdminError::from(QueueError::NotFound("ABC123".into()));
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        assert_eq!(error.to_string(), "no such message: ABC123");
    }

    #[test]
    fn held_is_a_conflict_and_bad_id_a_bad_request() {
        let id = QueueId::parse("X1").expect("valid id");
        assert_eq!(AdminError::Held(id).status(), StatusCode::CONFLICT);
        assert_eq!(
            AdminError::BadId("a-b".into()).status(),
            StatusCode::BAD_REQUEST
        );
    }
}

//! `ApiError`: every error the public API returns, as `{"error": {"code", "message", "field"}}`
//! with the status of SPEC §2. A client mistake is always a 4xx.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hookd_raft::ReplicaError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// A `412`'s job version as it stands (null when the job does not exist), also sent as the
    /// `ETag`.
    pub current_version: Option<Option<u64>>,
}

/// Seconds a client should wait before retrying a `503` or `429`.
const RETRY_AFTER_SECS: &str = "1";

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            current_version: None,
        }
    }

    /// `400`: the body is not well-formed JSON.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    /// `400`: a query parameter or path segment cannot be parsed.
    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).at(field)
    }

    /// `422`: well-formed but invalid. Errors under `schedule` get the code `invalid_schedule`.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        let code = if field == "schedule" || field.starts_with("schedule.") {
            "invalid_schedule"
        } else {
            "invalid_field"
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).at(field)
    }

    /// `422` with a code of its own, naming `field`.
    pub fn new_invalid(code: &'static str, field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).at(field)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message).at("id")
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must be JSON (Content-Type: application/json)",
        )
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token (Authorization: Bearer TOKEN)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    }

    pub fn no_leader(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message)
    }

    /// This error, naming field `to` where it named `from`.
    pub fn renamed(mut self, from: &str, to: &str) -> ApiError {
        if self.field.as_deref() == Some(from) {
            self.field = Some(to.to_owned());
        }
        self
    }

    /// `429`: the leader sheds writes while its backlog is over its bound.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
    }

    /// `504`: the work was started but did not finish in its bound.
    pub fn gateway_timeout(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, code, message)
    }

    /// `412`: an `If-Match` that the job's version (`current`, none when there is no job)
    /// does not satisfy.
    pub fn precondition_failed(id: &str, current: Option<u64>) -> ApiError {
        let message = match current {
            Some(v) => format!("job {id:?} is at version {v}, which If-Match does not name"),
            None => format!("no job {id:?}, and If-Match needs one"),
        };
        let mut e = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            message,
        )
        .at("If-Match");
        e.current_version = Some(current);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// Names the offending input (JSON path such as `schedule.cron`).
    pub fn at(mut self, field: &str) -> ApiError {
        self.field = Some(field.to_owned());
        self
    }
}

impl From<crate::core::validate::Invalid> for ApiError {
    fn from(e: crate::core::validate::Invalid) -> ApiError {
        ApiError::invalid(&e.field, e.message)
    }
}

impl From<ReplicaError> for ApiError {
    fn from(e: ReplicaError) -> ApiError {
        match e {
            ReplicaError::NoLeader(_) | ReplicaError::Unconfirmed(_) => {
                ApiError::no_leader(e.to_string())
            }
            ReplicaError::Fatal(_) => ApiError::unavailable(e.to_string()),
            ReplicaError::Overloaded(m) => ApiError::overloaded(m),
        }
    }
}

impl From<crate::core::state::StateFault> for ApiError {
    fn from(e: crate::core::state::StateFault) -> ApiError {
        tracing::error!(error = %e, "reading the state machine failed");
        ApiError::unavailable(format!("this node cannot read its state: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message, "field": self.field});
        if let Some(current) = self.current_version {
            error["current_version"] = json!(current);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(Some(v)) = self.current_version {
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\"")) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
        }
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

//! The error a client sees: a stable code, a message that says what to do, and the channel when
//! it concerns one. The same shape travels in WebSocket `error` frames and REST error bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tidings_protocol::{ErrorBody, ErrorCode};

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub channel: Option<String>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            channel: None,
        }
    }

    /// Attach the channel the error concerns.
    pub fn on(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// The wire body, with the client's correlation reference if any.
    pub fn body(&self, reference: Option<String>) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
            channel: self.channel.clone(),
            reference,
        }
    }

    /// The HTTP status for this error on REST routes.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::MalformedFrame
            | ErrorCode::UnknownFrameType
            | ErrorCode::InvalidChannel
            | ErrorCode::InvalidMessage
            | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::MessageTooLarge | ErrorCode::RequestTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::TokenRevoked => {
                StatusCode::UNAUTHORIZED
            }
            ErrorCode::Forbidden | ErrorCode::OriginNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::TooManyConnections
            | ErrorCode::TooManyChannels
            | ErrorCode::TooManyRevocations
            | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NotAttached => StatusCode::CONFLICT,
            ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The standard answer to a caller without the capability. It never says whether the
    /// channel exists.
    pub fn forbidden(op: crate::grant::Operation, channel: &str) -> Self {
        ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "your credentials do not allow {} on this channel; ask for a key or token with that capability",
                match op {
                    crate::grant::Operation::Subscribe => "subscribe",
                    crate::grant::Operation::Publish => "publish",
                    crate::grant::Operation::History => "history",
                }
            ),
        )
        .on(channel)
    }

    /// The answer to a request or connection whose token was revoked.
    pub fn token_revoked() -> Self {
        ApiError::new(
            ErrorCode::TokenRevoked,
            "the token was revoked: fetch a new one and retry (or reconnect and resume) with it",
        )
    }

    /// The answer to a log failure.
    pub fn from_log(e: &crate::log::LogError) -> Self {
        match e {
            crate::log::LogError::Closed => ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; retry against another instance or after restart",
            ),
            other => {
                tracing::error!(error = %other, "channel log error");
                ApiError::new(
                    ErrorCode::Internal,
                    "the channel log failed; nothing was acknowledged, retry with the same message ids",
                )
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        (
            status,
            axum::Json(serde_json::json!({ "error": self.body(None) })),
        )
            .into_response()
    }
}

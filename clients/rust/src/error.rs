//! Errors of the client. Each says what went wrong and, where the caller can do something about
//! it, what to do next. Server refusals carry the protocol's stable error code.

use std::time::Duration;

use tidings_protocol::{ErrorBody, ErrorCode};

use crate::transport::Transport;

/// A boxed error, as returned by a token source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to a Tidings server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused a request or a frame with one of the protocol's error codes
    /// (`docs/protocol.md`, "Error codes"). [`Error::code`] returns the code.
    #[error("the server answered {code}: {message}")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation, usually with the fix.
        message: String,
        /// The channel the error is about, when it is about one.
        channel: Option<String>,
    },
    /// The server answered with an error code this client does not know (a newer server).
    #[error("the server answered {code}: {message}")]
    UnknownServerError {
        /// The code as the server sent it.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The channel name breaks the naming rules; nothing was sent.
    #[error("invalid channel name {channel:?}: {problem}")]
    InvalidChannel {
        /// The refused name.
        channel: String,
        /// Which rule it breaks.
        problem: &'static str,
    },
    /// The server URL given to the builder cannot be used.
    #[error("invalid server URL {url:?}: {problem}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        problem: String,
    },
    /// The message breaks the protocol's rules (no `data` nor `name`, an empty or too long
    /// `id`, `headers` not an object); nothing was sent.
    #[error("invalid message: {0}")]
    InvalidMessage(&'static str),
    /// A position given to [`Start::From`](crate::Start::From) cannot be a server's: its epoch
    /// is empty or holds characters epochs never contain; nothing was sent.
    #[error("invalid position: {0}")]
    InvalidPosition(&'static str),
    /// The channel is already attached on this client: one subscription per channel.
    #[error("channel {0:?} is already attached on this client; drop its Subscription first")]
    AlreadyAttached(String),
    /// The message is larger than the server accepts (`connected.max_message_bytes`); it was not
    /// sent.
    #[error("the message is {size} bytes, over the server's limit of {limit} bytes")]
    MessageTooLarge {
        /// Size of id + name + data + headers as JSON text.
        size: usize,
        /// The server's limit.
        limit: usize,
    },
    /// A publish without an `id` was sent, but the connection dropped before its ack: it may or
    /// may not have been appended. Give messages an `id` and the client retries them safely.
    #[error("the connection was lost before the publish was acknowledged, so it may or may not have been appended; give messages an `id` to let the client retry them safely")]
    PublishInterrupted,
    /// A transport could not connect, or its connection failed.
    #[error("{transport} failed: {message}")]
    Transport {
        /// The transport that failed.
        transport: Transport,
        /// What happened.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// An HTTP request (publish, history, token) failed before an answer came.
    #[error("HTTP request to {url} failed: {source}")]
    Http {
        /// The request's URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The token source (the callback given to the builder) failed.
    #[error("the token source failed: {0}")]
    TokenSource(#[source] BoxError),
    /// Nothing arrived from the server for this long, about 2.5 heartbeat intervals: the
    /// connection is dead even though the socket looks open. The client reconnects.
    #[error("nothing heard from the server for {0:?} (heartbeats missed): the connection is dead")]
    HeartbeatTimeout(Duration),
    /// The server closed the WebSocket with a close code (`docs/protocol.md`, "Closing").
    #[error("the server closed the connection with code {code}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    ClosedByServer {
        /// The WebSocket close code (1001, 4001, 4002, 4008, 4009, ...).
        code: u16,
        /// The close reason the server gave.
        reason: String,
    },
    /// The server sent something this client cannot read.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The client stopped after an error that retrying cannot fix (refused credentials, for
    /// example); every subscription yields it once and ends.
    #[error("the client stopped: {0}")]
    Stopped(#[source] std::sync::Arc<Error>),
    /// The client was closed (by [`Client::close`](crate::Client::close), or after a fatal
    /// error reported in [`ConnectionState::Closed`](crate::ConnectionState::Closed)).
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// The protocol error code, when the server refused with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::Stopped(e) => e.code(),
            _ => None,
        }
    }

    /// The error of a server `error` frame or REST error body.
    pub(crate) fn from_body(body: ErrorBody) -> Error {
        Error::Server {
            code: body.code,
            message: body.message,
            channel: body.channel,
        }
    }

    /// Read a REST error answer (`{"error": {...}}`). `None` when the body is not one of ours,
    /// which means something other than a Tidings server answered (a proxy, a wrong URL).
    pub(crate) fn from_rest(body: &[u8]) -> Option<Error> {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: serde_json::Value,
        }
        let envelope: Envelope = serde_json::from_slice(body).ok()?;
        Error::from_error_value(envelope.error)
    }

    /// Read an error object, known code or not.
    pub(crate) fn from_error_value(value: serde_json::Value) -> Option<Error> {
        match serde_json::from_value::<ErrorBody>(value.clone()) {
            // A code this version does not know parses as `Unknown`; keep its text instead.
            Ok(body) if body.code != ErrorCode::Unknown => Some(Error::from_body(body)),
            _ => {
                let code = value.get("code")?.as_str()?.to_owned();
                let message = value
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_owned();
                Some(Error::UnknownServerError { code, message })
            }
        }
    }

    /// The channel a server error is about.
    pub(crate) fn channel(&self) -> Option<&str> {
        match self {
            Error::Server { channel, .. } => channel.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn transport(
        transport: Transport,
        message: impl Into<String>,
        source: Option<BoxError>,
    ) -> Error {
        Error::Transport {
            transport,
            message: message.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_errors_keep_their_code_and_channel() {
        let e = Error::from_rest(
            br#"{"error":{"code":"forbidden","message":"no","channel":"store:1"}}"#,
        )
        .unwrap();
        assert_eq!(e.code(), Some(ErrorCode::Forbidden));
        assert_eq!(e.channel(), Some("store:1"));
    }

    #[test]
    fn unknown_codes_are_kept_as_text() {
        let e = Error::from_rest(br#"{"error":{"code":"brand_new","message":"later"}}"#).unwrap();
        assert!(
            matches!(&e, Error::UnknownServerError { code, .. } if code == "brand_new"),
            "{e:?}"
        );
        assert_eq!(e.code(), None);
    }

    #[test]
    fn foreign_bodies_are_not_server_errors() {
        assert!(Error::from_rest(b"<html>502 Bad Gateway</html>").is_none());
        assert!(Error::from_rest(br#"{"message":"nope"}"#).is_none());
    }

    #[test]
    fn every_protocol_code_maps_to_a_typed_error() {
        for code in [
            "malformed_frame",
            "unknown_frame_type",
            "message_too_large",
            "invalid_channel",
            "invalid_message",
            "invalid_request",
            "unauthorized",
            "token_expired",
            "token_revoked",
            "forbidden",
            "origin_not_allowed",
            "too_many_connections",
            "too_many_channels",
            "too_many_revocations",
            "rate_limited",
            "not_attached",
            "shutting_down",
            "internal",
        ] {
            let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
            let e = Error::from_rest(body.as_bytes()).unwrap();
            assert_eq!(e.code().map(|c| c.as_str()), Some(code));
        }
    }
}

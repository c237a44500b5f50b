//! Wire types of the Tidings protocol, shared by the server and every client.
//!
//! `docs/protocol.md` is the prose description of the same protocol; the two are kept in step.
//! Frames are JSON objects with a `type` field. Everything here is plain data: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Protocol version carried in the `connected` frame and in the WebSocket path (`/v1/connect`).
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket close code sent on graceful shutdown: the client should reconnect (to this or
/// another node) and resume every channel from its last serial.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code for a frame larger than the server's hard frame limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for a connection that could not drain its socket in time. Resumable.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// WebSocket close code for a connection that sent nothing within the idle timeout. Resumable.
pub const CLOSE_IDLE: u16 = 4009;

/// A position in one channel's history: the epoch names the incarnation of the history, the
/// serial the last message the holder has seen (0 = before the first message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Incarnation of the channel's history. A different epoch means a different history.
    pub epoch: String,
    /// Serial of the last message seen. Serials strictly increase but may have gaps.
    pub serial: u64,
}

/// Frames a client sends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Start receiving a channel, optionally resuming after a position or rewinding N messages.
    Attach {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Position>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewind: Option<u64>,
    },
    /// Stop receiving a channel.
    Detach { channel: String },
    /// Publish one message; answered by `ack` once it is durable, or by `error`.
    Publish {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<RawValue>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<Box<RawValue>>,
        /// Client correlation reference, echoed in the `ack` or `error`.
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
    },
    /// Application-level liveness probe; answered by `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
    },
}

/// Why an `attached` frame says `resumed: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContinuityLost {
    /// The client presented an epoch other than the channel's current one: history was reset.
    EpochChanged,
    /// The client's serial is older than what retention kept: messages in between are gone.
    HistoryExpired,
    /// The client's serial is ahead of the channel's head: it belongs to another history.
    PositionAhead,
}

/// Frames the server sends. `Message` frames are encoded by the server directly (see
/// [`MessageFrame`]) so they can be built once and shared; this enum covers the rest.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on every connection.
    Connected {
        connection_id: String,
        protocol: u32,
        max_message_bytes: usize,
        heartbeat_ms: u64,
    },
    /// A channel is attached; messages with serials above `serial` follow (after the resume
    /// point when `resumed`, else from the head).
    Attached {
        channel: String,
        epoch: String,
        /// With `resumed: true`, the serial delivery continues after; otherwise the head.
        serial: u64,
        resumed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ContinuityLost>,
    },
    /// A channel is detached; no more messages for it follow.
    Detached { channel: String },
    /// One message on an attached channel.
    Message(MessageFrame),
    /// A publish is durable.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
        channel: String,
        serial: u64,
        /// True when the message id was already in the channel: nothing new was appended.
        duplicate: bool,
    },
    /// Something the client sent, or something about a channel, went wrong.
    Error(ErrorBody),
    /// Sent when the connection has been otherwise quiet for the heartbeat interval.
    Heartbeat {},
    /// Answer to `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
    },
}

/// A delivered message, as on the wire (`type: "message"`). History items have the same fields.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct MessageFrame {
    pub channel: String,
    pub serial: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<serde_json::Value>,
    pub headers: Option<serde_json::Value>,
    /// Milliseconds since the Unix epoch at which the message was appended.
    pub timestamp: u64,
}

/// Body of an `error` frame and of every REST error (`{"error": ErrorBody}`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
    pub reference: Option<String>,
}

/// Stable error codes. Their meaning never changes; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is not valid JSON, or not an object of the expected shape.
    MalformedFrame,
    /// The frame's `type` is not one this server knows.
    UnknownFrameType,
    /// A message (data + headers + name + id) is larger than the configured limit.
    MessageTooLarge,
    /// The channel name breaks the naming rules.
    InvalidChannel,
    /// A message field is invalid (no `name` nor `data`, `headers` not an object, id too long).
    InvalidMessage,
    /// No credentials, or credentials that are wrong.
    Unauthorized,
    /// Valid credentials that lack the capability for this operation on this channel.
    Forbidden,
    /// The operation needs the channel attached first.
    NotAttached,
    /// A query parameter is out of range or unparseable.
    InvalidRequest,
    /// Too many publishes in flight on this connection.
    TooManyInflight,
    /// The server is shutting down; reconnect and resume elsewhere.
    ShuttingDown,
    /// The server failed; the operation may be retried.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownFrameType => "unknown_frame_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotAttached => "not_attached",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooManyInflight => "too_many_inflight",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Answer of `POST /v1/channels/{channel}/messages`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PublishResponse {
    pub channel: String,
    /// One serial per message, in the order given; a duplicate id answers its existing serial.
    pub serials: Vec<u64>,
}

/// Answer of `GET /v1/channels/{channel}/messages`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct HistoryPage {
    pub channel: String,
    pub epoch: String,
    pub items: Vec<HistoryItem>,
    /// Pass as `after` to read the next page; null when this page reached the head.
    pub next: Option<u64>,
}

/// One message of a history page.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct HistoryItem {
    pub serial: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<serde_json::Value>,
    pub headers: Option<serde_json::Value>,
    pub timestamp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_frame_parses_with_and_without_position() {
        let f: ClientFrame = serde_json::from_str(r#"{"type":"attach","channel":"a:b"}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Attach { ref channel, from: None, rewind: None } if channel == "a:b")
        );
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"attach","channel":"a","from":{"epoch":"e1","serial":7}}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Attach { from: Some(p), .. } => assert_eq!(p.serial, 7),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"ping","bogus":1}"#).is_err());
    }

    #[test]
    fn error_codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::MalformedFrame,
            ErrorCode::TooManyInflight,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn attached_frame_round_trips() {
        let f = ServerFrame::Attached {
            channel: "c".into(),
            epoch: "e".into(),
            serial: 3,
            resumed: false,
            reason: Some(ContinuityLost::HistoryExpired),
        };
        let s = serde_json::to_string(&f).unwrap();
        assert!(s.contains(r#""reason":"history_expired""#), "{s}");
        assert_eq!(serde_json::from_str::<ServerFrame>(&s).unwrap(), f);
    }
}

//! Wire types of the Tidings protocol, shared by the server and every client.
//!
//! `docs/protocol.md` is the prose description of the same protocol; the two are kept in step.
//! Frames are JSON objects with a `type` field. Everything here is plain data: no I/O.

use serde::de::DeserializeOwned;
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
/// WebSocket close code when the connection's token expired: fetch a new token, reconnect with
/// it, and resume from the last serial.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// WebSocket close code when the connection's token was revoked (`POST /v1/tokens/revoke`):
/// treat it like [`CLOSE_TOKEN_EXPIRED`]: fetch a new token, reconnect with it, and resume from
/// the last serial.
pub const CLOSE_TOKEN_REVOKED: u16 = 4002;

/// A position in one channel's history: the epoch names the incarnation of the history, the
/// serial the last message the holder has seen (0 = before the first message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Incarnation of the channel's history. A different epoch means a different history.
    pub epoch: String,
    /// Serial of the last message seen. Serials strictly increase but may have gaps.
    pub serial: u64,
}

/// Frames a client sends. Servers parse them with [`ClientFrame::parse`], which keeps `data`
/// and `headers` as raw JSON and tells a malformed frame from an unknown frame type.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
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
    /// Replace the connection's token before it expires; answered by `authorized` or `error`.
    Auth {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
    },
}

/// Why a client frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON, not an object, a missing or mistyped field, or a field the type does not have.
    Malformed(String),
    /// A `type` this protocol version does not define.
    UnknownType(String),
}

/// Every field any client frame may carry; each frame type takes its own subset.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnyClientFrame {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    from: Option<Position>,
    rewind: Option<u64>,
    id: Option<String>,
    name: Option<String>,
    data: Option<Box<RawValue>>,
    headers: Option<Box<RawValue>>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    token: Option<String>,
}

/// Client frame types, in the order `docs/protocol.md` lists them.
pub const CLIENT_FRAME_TYPES: [&str; 5] = ["attach", "detach", "publish", "ping", "auth"];

impl ClientFrame {
    /// Parse one text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let f: AnyClientFrame = serde_json::from_str(text).map_err(|e| {
            // Say "unknown type" when the type is the problem, even if other fields are odd too.
            match serde_json::from_str::<serde_json::Value>(text) {
                Err(e) => FrameError::Malformed(format!("the frame is not valid JSON: {e}")),
                Ok(v) => match v.get("type").and_then(|t| t.as_str()) {
                    None => FrameError::Malformed(
                        "the frame must be a JSON object with a string `type` field".into(),
                    ),
                    Some(t) if !CLIENT_FRAME_TYPES.contains(&t) => {
                        FrameError::UnknownType(t.to_owned())
                    }
                    Some(t) => FrameError::Malformed(format!("invalid `{t}` frame: {e}")),
                },
            }
        })?;
        let kind = f.kind.as_str();
        let extra = |allowed: &[&str]| -> Result<(), FrameError> {
            let present = [
                ("channel", f.channel.is_some()),
                ("from", f.from.is_some()),
                ("rewind", f.rewind.is_some()),
                ("id", f.id.is_some()),
                ("name", f.name.is_some()),
                ("data", f.data.is_some()),
                ("headers", f.headers.is_some()),
                ("ref", f.reference.is_some()),
                ("token", f.token.is_some()),
            ];
            match present.iter().find(|(n, p)| *p && !allowed.contains(n)) {
                Some((n, _)) => Err(FrameError::Malformed(format!(
                    "invalid `{kind}` frame: unknown field `{n}`"
                ))),
                None => Ok(()),
            }
        };
        let channel = |c: Option<String>| {
            c.ok_or_else(|| {
                FrameError::Malformed(format!("invalid `{kind}` frame: missing field `channel`"))
            })
        };
        match kind {
            "attach" => {
                extra(&["channel", "from", "rewind"])?;
                Ok(ClientFrame::Attach {
                    channel: channel(f.channel)?,
                    from: f.from,
                    rewind: f.rewind,
                })
            }
            "detach" => {
                extra(&["channel"])?;
                Ok(ClientFrame::Detach {
                    channel: channel(f.channel)?,
                })
            }
            "publish" => {
                extra(&["channel", "id", "name", "data", "headers", "ref"])?;
                Ok(ClientFrame::Publish {
                    channel: channel(f.channel)?,
                    id: f.id,
                    name: f.name,
                    data: f.data,
                    headers: f.headers,
                    reference: f.reference,
                })
            }
            "ping" => {
                extra(&["ref"])?;
                Ok(ClientFrame::Ping {
                    reference: f.reference,
                })
            }
            "auth" => {
                extra(&["token", "ref"])?;
                Ok(ClientFrame::Auth {
                    token: f.token.ok_or_else(|| {
                        FrameError::Malformed("invalid `auth` frame: missing field `token`".into())
                    })?,
                    reference: f.reference,
                })
            }
            other => Err(FrameError::UnknownType(other.to_owned())),
        }
    }
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
    #[serde(deserialize_with = "buffered_message")]
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
    /// Answer to `auth`: the new token is in force.
    Authorized {
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
        subject: String,
        /// When the token expires, in milliseconds since the Unix epoch.
        expires_at: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
        reference: Option<String>,
    },
}

/// A delivered message, as on the wire (`type: "message"`). History items have the same fields.
///
/// `data` and `headers` are kept as the JSON text the server sent, not parsed into a tree:
/// most receivers either hand them on or want their own types, and building a
/// `serde_json::Value` for every message costs more than the rest of receiving it. Read them
/// with [`MessageFrame::data_as`] and [`MessageFrame::headers_as`] (into `serde_json::Value`,
/// or straight into an application type), or take the text with `RawValue::get`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MessageFrame {
    pub channel: String,
    pub serial: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub headers: Option<Box<RawValue>>,
    /// Milliseconds since the Unix epoch at which the message was appended.
    pub timestamp: u64,
}

impl MessageFrame {
    /// The data parsed as `T` (JSON `null` when the message has none, so `Option<T>` reads a
    /// message without data as `None`).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        parse_raw(&self.data)
    }

    /// The headers parsed as `T` (JSON `null` when the message has none).
    pub fn headers_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        parse_raw(&self.headers)
    }
}

/// Equal when every field is, `data` and `headers` compared as the JSON text they hold.
impl PartialEq for MessageFrame {
    fn eq(&self, other: &Self) -> bool {
        self.channel == other.channel
            && self.serial == other.serial
            && self.id == other.id
            && self.name == other.name
            && raw_text(&self.data) == raw_text(&other.data)
            && raw_text(&self.headers) == raw_text(&other.headers)
            && self.timestamp == other.timestamp
    }
}

/// A message read through [`ServerFrame`]: serde buffers the fields of an internally tagged
/// enum, and a `RawValue` cannot be read from that buffer, so the message goes through a
/// `serde_json::Value` (its `data` and `headers` come out as the same JSON, compact, with object
/// keys in the order `serde_json::Map` keeps: sorted unless `preserve_order` is on). Readers
/// that expect messages parse [`MessageFrame`] directly and keep the text as sent.
fn buffered_message<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MessageFrame, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    serde_json::from_value(value).map_err(serde::de::Error::custom)
}

fn parse_raw<T: DeserializeOwned>(raw: &Option<Box<RawValue>>) -> Result<T, serde_json::Error> {
    serde_json::from_str(raw.as_deref().map_or("null", RawValue::get))
}

fn raw_text(raw: &Option<Box<RawValue>>) -> Option<&str> {
    raw.as_deref().map(RawValue::get)
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
    /// A request body is larger than the server reads (messages × batch limit).
    RequestTooLarge,
    /// The channel name breaks the naming rules.
    InvalidChannel,
    /// A message field is invalid (no `name` nor `data`, `headers` not an object, id too long).
    InvalidMessage,
    /// No credentials, or credentials that are wrong.
    Unauthorized,
    /// The token has expired: fetch a new one and retry (or reconnect) with it.
    TokenExpired,
    /// The token was revoked (`POST /v1/tokens/revoke`): fetch a new one and retry (or
    /// reconnect) with it, as after [`ErrorCode::TokenExpired`].
    TokenRevoked,
    /// Valid credentials that lack the capability for this operation on this channel.
    Forbidden,
    /// The request's `Origin` is not among the configured allowed origins.
    OriginNotAllowed,
    /// Too many connections (in total, or for this token subject or key).
    TooManyConnections,
    /// Too many channels attached on this connection.
    TooManyChannels,
    /// `POST /v1/tokens/revoke` found `auth.max_revocations` revocations in force.
    TooManyRevocations,
    /// Publishing faster than the per-connection rate limit allows.
    RateLimited,
    /// The operation needs the channel attached first.
    NotAttached,
    /// A query parameter is out of range or unparseable.
    InvalidRequest,
    /// The server is shutting down; reconnect and resume elsewhere.
    ShuttingDown,
    /// The server failed; the operation may be retried.
    Internal,
    /// A code this version of the types does not know (sent by a newer server). Clients treat
    /// it by its HTTP status or as a generic error.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownFrameType => "unknown_frame_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::TooManyRevocations => "too_many_revocations",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotAttached => "not_attached",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
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

/// One message of a history page; `data` and `headers` as JSON text, as in [`MessageFrame`].
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HistoryItem {
    pub serial: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub headers: Option<Box<RawValue>>,
    pub timestamp: u64,
}

impl HistoryItem {
    /// The data parsed as `T` (JSON `null` when the message has none).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        parse_raw(&self.data)
    }

    /// The headers parsed as `T` (JSON `null` when the message has none).
    pub fn headers_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        parse_raw(&self.headers)
    }
}

/// Equal when every field is, `data` and `headers` compared as the JSON text they hold.
impl PartialEq for HistoryItem {
    fn eq(&self, other: &Self) -> bool {
        self.serial == other.serial
            && self.id == other.id
            && self.name == other.name
            && raw_text(&self.data) == raw_text(&other.data)
            && raw_text(&self.headers) == raw_text(&other.headers)
            && self.timestamp == other.timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_frame_parses_with_and_without_position() {
        let f = ClientFrame::parse(r#"{"type":"attach","channel":"a:b"}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Attach { ref channel, from: None, rewind: None } if channel == "a:b")
        );
        let f = ClientFrame::parse(
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
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping","bogus":1}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping","channel":"a"}"#),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn publish_keeps_data_raw() {
        let f =
            ClientFrame::parse(r#"{"type":"publish","channel":"c","data":{"a": 1.50},"ref":"r"}"#)
                .unwrap();
        match f {
            ClientFrame::Publish {
                data: Some(d),
                reference,
                ..
            } => {
                assert_eq!(d.get(), r#"{"a": 1.50}"#);
                assert_eq!(reference.as_deref(), Some("r"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_unknown_are_told_apart() {
        assert!(matches!(
            ClientFrame::parse("{nope"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse("[1]"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"attach"}"#),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","channel":"c"}"#).unwrap_err(),
            FrameError::UnknownType("subscribe".into())
        );
    }

    #[test]
    fn error_codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::MalformedFrame,
            ErrorCode::MessageTooLarge,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn future_error_codes_parse_as_unknown() {
        let code: ErrorCode = serde_json::from_str(r#""quota_exceeded""#).unwrap();
        assert_eq!(code, ErrorCode::Unknown);
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

    #[test]
    fn message_data_stays_json_text_and_parses_on_demand() {
        let text = r#"{"type":"message","channel":"c","serial":4,"id":null,"name":"n","data":{"b":[1,2.5],"a":"x"},"headers":{"h":"v"},"timestamp":9}"#;
        // Read as a message (its `type` field ignored), the data is kept byte for byte, key
        // order included.
        let m: MessageFrame = serde_json::from_str(text).unwrap();
        assert_eq!(m.data.as_deref().unwrap().get(), r#"{"b":[1,2.5],"a":"x"}"#);
        let data: serde_json::Value = m.data_as().unwrap();
        assert_eq!(data, serde_json::json!({"a": "x", "b": [1, 2.5]}));
        #[derive(Deserialize, Debug, PartialEq)]
        struct Headers {
            h: String,
        }
        assert_eq!(
            m.headers_as::<Headers>().unwrap(),
            Headers { h: "v".into() }
        );
        assert!(m.data_as::<u64>().is_err());
        // No data reads as JSON null.
        let bare: MessageFrame = serde_json::from_str(
            r#"{"channel":"c","serial":5,"id":null,"name":"n","data":null,"headers":null,"timestamp":9}"#,
        )
        .unwrap();
        assert_eq!(bare.data_as::<Option<u64>>().unwrap(), None);
        // Through the frame enum too: the same JSON, compact.
        let ServerFrame::Message(through) = serde_json::from_str::<ServerFrame>(
            &serde_json::to_string(&ServerFrame::Message(m.clone())).unwrap(),
        )
        .unwrap() else {
            panic!("not a message");
        };
        assert_eq!(through.data_as::<serde_json::Value>().unwrap(), data);
        assert_eq!(
            (through.serial, through.headers_as::<Headers>().unwrap().h),
            (4, "v".to_owned())
        );
        // Serialised again, the frame carries the same text; equality compares it.
        let again: MessageFrame =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        assert_ne!(
            again,
            MessageFrame {
                serial: 6,
                ..m.clone()
            }
        );
        assert_ne!(bare, MessageFrame { serial: 5, ..m });
    }
}

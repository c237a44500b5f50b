//! Turning what a client sent into messages the log accepts, and appending them.
//!
//! Shared by every transport so the same message gets the same answer wherever it comes from.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use tidings_protocol::ErrorCode;

use crate::channel::{ChannelName, ChannelNameError};
use crate::error::ApiError;
use crate::grant::{Operation, Principal};
use crate::log::{Appended, ChannelLog, NewMessage};
use crate::metrics::Metrics;

/// Longest message id accepted, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// A message as a client sends it (REST body item; the WebSocket `publish` frame has the same
/// fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub headers: Option<Box<RawValue>>,
}

/// Parse a channel name, answering `invalid_channel` with the reason.
pub fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| {
        ApiError::new(ErrorCode::InvalidChannel, e.to_string()).on(truncate(name, 300))
    })
}

/// Check that `principal` may do `op` on `channel`.
pub fn authorize(
    principal: &Principal,
    op: Operation,
    channel: &ChannelName,
) -> Result<(), ApiError> {
    if principal.allows(op, channel.as_str()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(op, channel.as_str()))
    }
}

/// Why a message cannot go into the log. One set of rules for every way a message comes in
/// (REST, WebSocket, a connector's change); each way maps the reason to its own answer. The
/// text is the operator's, as connector dead letters and logs show it; clients get
/// [`ApiError`]s worded for them (see [`validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// The channel name is not one.
    #[error("invalid channel {name:?}: {source}")]
    Channel {
        name: String,
        source: ChannelNameError,
    },
    /// Neither `data` nor `name`: nothing to deliver.
    #[error("the change has neither data nor name")]
    Empty,
    /// The id is empty or longer than [`MAX_ID_LEN`].
    #[error("message id must be 1 to {MAX_ID_LEN} bytes")]
    Id,
    /// The headers are JSON, but not an object.
    #[error("headers must be a JSON object")]
    Headers,
    /// id + name + data + headers exceed the size limit.
    #[error("the message is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
}

/// A message's fields, borrowed from whatever carried them (a REST body, a WebSocket frame, a
/// connector's change), so that every way in checks them by the same rules without a copy.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub data: Option<&'a RawValue>,
    pub headers: Option<&'a RawValue>,
}

impl Fields<'_> {
    /// Check the field rules and the size limit (id + name + data + headers, in bytes), in that
    /// order, for a message whose channel is already parsed.
    pub fn check(&self, max_bytes: usize) -> Result<(), InvalidMessage> {
        if self.name.is_none() && self.data.is_none() {
            return Err(InvalidMessage::Empty);
        }
        if let Some(id) = self.id {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(InvalidMessage::Id);
            }
        }
        if let Some(h) = self.headers {
            if !h.get().trim_start().starts_with('{') {
                return Err(InvalidMessage::Headers);
            }
        }
        let size = self.id.map_or(0, str::len)
            + self.name.map_or(0, str::len)
            + self.data.map_or(0, |d| d.get().len())
            + self.headers.map_or(0, |h| h.get().len());
        if size > max_bytes {
            return Err(InvalidMessage::TooLarge {
                size,
                max: max_bytes,
            });
        }
        Ok(())
    }

    /// Check a message that names its channel as text (a connector's change): the channel
    /// first, then [`Fields::check`]. Answers the parsed channel.
    pub fn check_on(&self, channel: &str, max_bytes: usize) -> Result<ChannelName, InvalidMessage> {
        let parsed = ChannelName::parse(channel).map_err(|source| InvalidMessage::Channel {
            name: channel.to_owned(),
            source,
        })?;
        self.check(max_bytes)?;
        Ok(parsed)
    }
}

impl MessageIn {
    /// The fields to check.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            id: self.id.as_deref(),
            name: self.name.as_deref(),
            data: self.data.as_deref(),
            headers: self.headers.as_deref(),
        }
    }
}

/// Validate one message a client sent for `channel` (REST or WebSocket) against the size limit
/// and the field rules, answering the client's error codes and texts.
pub fn validate(
    channel: &ChannelName,
    m: MessageIn,
    max_bytes: usize,
) -> Result<NewMessage, ApiError> {
    m.fields()
        .check(max_bytes)
        .map_err(|e| client_error(e).on(channel.as_str()))?;
    Ok(NewMessage {
        channel: channel.clone(),
        id: m.id,
        name: m.name,
        data: m.data,
        headers: m.headers,
    })
}

/// What a client is told about an invalid message.
fn client_error(e: InvalidMessage) -> ApiError {
    let invalid = |text: String| ApiError::new(ErrorCode::InvalidMessage, text);
    match e {
        InvalidMessage::Channel { name, source } => {
            ApiError::new(ErrorCode::InvalidChannel, source.to_string()).on(truncate(&name, 300))
        }
        InvalidMessage::Empty => invalid("a message needs `data` or `name` (or both)".into()),
        InvalidMessage::Id => invalid(format!("`id` must be 1 to {MAX_ID_LEN} bytes")),
        InvalidMessage::Headers => invalid("`headers` must be a JSON object".into()),
        InvalidMessage::TooLarge { size, max } => ApiError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "the message is {size} bytes (id + name + data + headers); the limit is {max}: split it or raise limits.max_message_bytes"
            ),
        ),
    }
}

/// Append validated messages, timing the publish; answers only once they are durable.
pub async fn append(
    log: &Arc<dyn ChannelLog>,
    metrics: &Metrics,
    messages: Vec<NewMessage>,
) -> Result<Vec<Appended>, ApiError> {
    let started = Instant::now();
    let result = log.append(messages, None).await;
    metrics
        .publish_duration
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|e| ApiError::from_log(&e))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(json: &str) -> MessageIn {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn validation_rules() {
        let ch = ChannelName::parse("c").unwrap();
        assert!(validate(&ch, m(r#"{"data":1}"#), 1024).is_ok());
        assert!(validate(&ch, m(r#"{"name":"x"}"#), 1024).is_ok());
        let e = validate(&ch, m(r#"{"id":"x"}"#), 1024).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let e = validate(&ch, m(r#"{"data":1,"headers":[1]}"#), 1024).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(2000));
        let e = validate(&ch, m(&big), 1024).unwrap_err();
        assert_eq!(
            (e.code, e.channel.as_deref()),
            (ErrorCode::MessageTooLarge, Some("c"))
        );
        assert!(serde_json::from_str::<MessageIn>(r#"{"data":1,"extra":2}"#).is_err());
    }

    #[test]
    fn one_rule_set_two_wordings() {
        let big = m(r#"{"id":"x","data":"0123456789"}"#);
        let e = big.fields().check_on("bad channel", 4).unwrap_err();
        assert!(
            matches!(e, InvalidMessage::Channel { .. }),
            "the channel is checked first: {e}"
        );
        let e = big.fields().check_on("c", 4).unwrap_err();
        assert_eq!(e, InvalidMessage::TooLarge { size: 13, max: 4 });
        assert_eq!(e.to_string(), "the message is 13 bytes; the limit is 4");
        let ch = ChannelName::parse("c").unwrap();
        let api = validate(&ch, big, 4).unwrap_err();
        assert_eq!(
            api.message,
            "the message is 13 bytes (id + name + data + headers); the limit is 4: split it or raise limits.max_message_bytes"
        );
        let e = m(r#"{"id":""}"#).fields().check(64).unwrap_err();
        assert_eq!(e, InvalidMessage::Empty, "data or name comes before the id");
        let e = m(r#"{"id":"","name":"n"}"#).fields().check(64).unwrap_err();
        assert_eq!(e.to_string(), "message id must be 1 to 255 bytes");
    }
}

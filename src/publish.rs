//! Turning what a client sent into messages the log accepts, and appending them.
//!
//! Shared by every transport so the same message gets the same answer wherever it comes from.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use tidings_protocol::ErrorCode;

use crate::channel::ChannelName;
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

/// Validate one message for `channel` against the size limit and the field rules.
pub fn validate(
    channel: &ChannelName,
    m: MessageIn,
    max_bytes: usize,
) -> Result<NewMessage, ApiError> {
    let err = |code, msg: String| ApiError::new(code, msg).on(channel.as_str());
    if m.name.is_none() && m.data.is_none() {
        return Err(err(
            ErrorCode::InvalidMessage,
            "a message needs `data` or `name` (or both)".into(),
        ));
    }
    if let Some(id) = &m.id {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(err(
                ErrorCode::InvalidMessage,
                format!("`id` must be 1 to {MAX_ID_LEN} bytes"),
            ));
        }
    }
    if let Some(h) = &m.headers {
        if !h.get().trim_start().starts_with('{') {
            return Err(err(
                ErrorCode::InvalidMessage,
                "`headers` must be a JSON object".into(),
            ));
        }
    }
    let size = m.id.as_ref().map_or(0, String::len)
        + m.name.as_ref().map_or(0, String::len)
        + m.data.as_ref().map_or(0, |d| d.get().len())
        + m.headers.as_ref().map_or(0, |h| h.get().len());
    if size > max_bytes {
        return Err(err(
            ErrorCode::MessageTooLarge,
            format!(
                "the message is {size} bytes (id + name + data + headers); the limit is {max_bytes}: split it or raise limits.max_message_bytes"
            ),
        ));
    }
    Ok(NewMessage {
        channel: channel.clone(),
        id: m.id,
        name: m.name,
        data: m.data,
        headers: m.headers,
    })
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
}

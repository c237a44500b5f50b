//! WebSocket client frames (`tidings_protocol::ClientFrame::parse`), and the checks the server's
//! session makes on a parsed frame before acting on it (`tidings::publish::channel` and
//! `tidings::publish::validate`).
//!
//! Properties: an unknown type is one the protocol does not define; a parsed frame serialises
//! to a frame that parses to the same frame; a publish the server accepts has a valid channel,
//! an id of 1 to 255 bytes when it has one, headers that are a JSON object, and fits the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;
use tidings::publish::{self, MessageIn, MAX_ID_LEN};
use tidings_protocol::{ClientFrame, FrameError, CLIENT_FRAME_TYPES};

/// A small limit, so the fuzzer reaches "too large" with small inputs.
const MAX_MESSAGE_BYTES: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match ClientFrame::parse(text) {
        Ok(f) => f,
        Err(FrameError::UnknownType(t)) => {
            assert!(!CLIENT_FRAME_TYPES.contains(&t.as_str()), "{text:?}");
            return;
        }
        Err(FrameError::Malformed(_)) => return,
    };
    let written = serde_json::to_string(&frame).expect("a parsed frame serialises");
    let again = ClientFrame::parse(&written)
        .unwrap_or_else(|e| panic!("{text:?} wrote {written:?}, which does not parse: {e:?}"));
    assert_eq!(
        serde_json::to_string(&again).unwrap(),
        written,
        "{text:?} does not round-trip"
    );
    match frame {
        ClientFrame::Attach { channel, .. } | ClientFrame::Detach { channel } => {
            let _ = publish::channel(&channel);
        }
        ClientFrame::Publish {
            channel,
            id,
            name,
            data,
            headers,
            reference: _,
        } => {
            let Ok(channel) = publish::channel(&channel) else {
                return;
            };
            let message = MessageIn {
                id,
                name,
                data,
                headers,
            };
            let Ok(m) = publish::validate(&channel, message, MAX_MESSAGE_BYTES) else {
                return;
            };
            assert_eq!(m.channel, channel);
            assert!(m.name.is_some() || m.data.is_some());
            if let Some(id) = &m.id {
                assert!(!id.is_empty() && id.len() <= MAX_ID_LEN, "{text:?}");
            }
            if let Some(h) = &m.headers {
                // An object (its numbers may be beyond what an f64 holds).
                serde_json::from_str::<BTreeMap<String, IgnoredAny>>(h.get())
                    .unwrap_or_else(|e| panic!("{text:?}: headers {}: {e}", h.get()));
            }
            let size = [m.id.as_deref(), m.name.as_deref()]
                .iter()
                .flatten()
                .map(|s| s.len())
                .sum::<usize>()
                + [m.data.as_deref(), m.headers.as_deref()]
                    .iter()
                    .flatten()
                    .map(|v| v.get().len())
                    .sum::<usize>();
            assert!(size <= MAX_MESSAGE_BYTES, "{text:?} is {size} bytes");
        }
        ClientFrame::Ping { .. } | ClientFrame::Auth { .. } => {}
    }
});

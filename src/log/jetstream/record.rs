//! What the stream's messages hold: a channel message's JSON envelope, an epoch record, a
//! checkpoint record.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tidings_connectors_core::SourcePosition;

use crate::log::{LogError, NewMessage, StoredMessage};

/// Header of an epoch marker on a channel's message subject: the channel's history restarts
/// under this epoch at the marker's sequence. Readers skip markers; the live feed turns them
/// into a reset.
pub const EPOCH_HEADER: &str = "Tidings-Epoch";

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<&'a RawValue>,
    ts: u64,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    id: Option<String>,
    name: Option<String>,
    data: Option<Box<RawValue>>,
    headers: Option<Box<RawValue>>,
    ts: u64,
}

/// A channel message as the stream stores it, stamped `ts` (ms since the Unix epoch).
pub fn encode_message(m: &NewMessage, ts: u64) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&EnvelopeOut {
            id: m.id.as_deref(),
            name: m.name.as_deref(),
            data: m.data.as_deref(),
            headers: m.headers.as_deref(),
            ts,
        })
        .expect("a message of valid JSON parts always encodes"),
    )
}

/// A stored channel message back, with its serial.
pub fn decode_message(serial: u64, payload: &[u8]) -> Result<StoredMessage, LogError> {
    let e: EnvelopeIn = serde_json::from_slice(payload).map_err(|e| {
        LogError::Corrupt(format!(
            "message {serial} in the stream is not a Tidings message: {e}"
        ))
    })?;
    Ok(StoredMessage {
        serial,
        id: e.id,
        name: e.name,
        data: e.data,
        headers: e.headers,
        timestamp: e.ts,
    })
}

/// A channel's epoch record (`tdg.ep.…`): its history restarted under `epoch`. It is written in
/// one atomic batch with the channel's epoch marker right after it, so the marker's sequence,
/// where the new history starts, is the record's plus one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: String,
}

/// A connector's checkpoint record (`tdg.cp.…`).
///
/// `position` is where the connector resumes. A source batch too large for one atomic batch is
/// written in parts; each part but the last stores `partial`: the batch being written and how
/// many of its messages are stored, so that after a crash the replayed batch skips them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub position: Option<SourcePosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    /// Who wrote it: the node and a nonce of this one write, so that a writer whose ack was
    /// lost recognises its own record, and never mistakes another writer's for it.
    #[serde(default)]
    pub writer: String,
}

/// Progress through a source batch written in parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The position after the whole batch.
    pub target: SourcePosition,
    /// How many of its messages are stored.
    pub done: usize,
}

/// The current time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

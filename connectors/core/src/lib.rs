//! The source-side contract of Tidings connectors.
//!
//! A connector reads a database's own change feed and hands the server batches of
//! [`Publish`]es, one batch per source transaction, each with the [`SourcePosition`] to resume
//! from *after* it. The server appends the batch and the position to the channel log in one
//! atomic write, and only then tells the source (through [`Source::committed`]) that the position
//! is durable, so the connector may confirm it upstream.
//!
//! Each connector builds itself from a [`Context`] the runtime hands it ([`Connector`]), and
//! reports its status and metrics through the context's handles.
//!
//! Connectors depend on this crate only, never on the server.

pub mod config;
pub mod connector;
pub mod metrics;
pub mod route;
pub mod status;

pub use config::{ConfigProblem, OnPoison};
pub use connector::{Connector, Context};
pub use metrics::{ConnectorGauge, ConnectorGauges, ConnectorMetrics};
pub use status::StatusFields;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where a source's change feed stands, typed per database. Stored by the log beside the
/// messages it covers, and handed back to the connector on start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum SourcePosition {
    /// A Postgres WAL position: the commit LSN of the last transaction appended.
    PostgresLsn(u64),
    /// A MongoDB change stream resume token, as relaxed Extended JSON.
    MongoResumeToken(serde_json::Value),
}

/// A source's checkpoint: which source, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The connector's configured name, unique in one server.
    pub source: String,
    /// Position to resume from after the batch this checkpoint is stored with.
    pub position: SourcePosition,
}

/// One message a source wants on a channel.
///
/// The payload, headers and key are JSON text, as the log stores them: a connector that reads
/// JSON text (Postgres) keeps it, one that reads another format (MongoDB's BSON) writes the text
/// directly, and no one builds a [`serde_json::Value`] only for the server to serialise it again.
/// Compared (`==`) by that text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// Channel name (validated by the server before append).
    pub channel: String,
    /// Event name, for example the outbox row's `name`.
    pub name: Option<String>,
    /// Payload as JSON text.
    pub data: Option<Box<RawValue>>,
    /// Free-form headers, JSON text of an object (the server checks it is one).
    pub headers: Option<Box<RawValue>>,
    /// Idempotency id. Sources derive it from the source position so that a replay after a
    /// crash deduplicates instead of appending twice.
    pub id: Option<String>,
    /// The changed record's key in the source (MongoDB's `documentKey` as relaxed Extended
    /// JSON text), when the source has one. Not part of the message: it names the record in the
    /// dead-letter message when the change cannot be published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Box<RawValue>>,
}

impl PartialEq for Publish {
    fn eq(&self, other: &Self) -> bool {
        fn text(v: &Option<Box<RawValue>>) -> Option<&str> {
            v.as_deref().map(RawValue::get)
        }
        self.channel == other.channel
            && self.name == other.name
            && text(&self.data) == text(&other.data)
            && text(&self.headers) == text(&other.headers)
            && self.id == other.id
            && text(&self.key) == text(&other.key)
    }
}

/// The JSON text of a value, for messages a connector builds as a [`serde_json::Value`]
/// (control and dead-letter messages, tests).
pub fn json_text(value: &serde_json::Value) -> Box<RawValue> {
    // A `Value` always serialises: its map keys are strings and its numbers finite.
    serde_json::value::to_raw_value(value).expect("a serde_json::Value serialises")
}

/// A batch of publishes from one source transaction, and the position after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Messages in source commit order.
    pub messages: Vec<Publish>,
    /// Where to resume after this batch.
    pub position: SourcePosition,
}

/// What went wrong in a source, and whether the server should retry.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A transient failure (connection lost, timeout): retry with backoff from the last
    /// durable checkpoint.
    #[error("{what}")]
    Transient {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A failure that needs the operator (bad configuration, lost history): stop and report.
    #[error("{what}; to fix: {fix}")]
    Fatal { what: String, fix: String },
}

impl SourceError {
    /// A failure that needs the operator: `what` happened, `fix` says what to do about it.
    pub fn fatal(what: impl Into<String>, fix: impl Into<String>) -> Self {
        SourceError::Fatal {
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// A change feed reader.
///
/// The server calls [`Source::start`] once with the last durable checkpoint (None on first
/// run), then [`Source::next_batch`] in a loop. After each batch is durable in the log, the
/// server calls [`Source::committed`] with its position; the source may then confirm that
/// position to the database. A position must never be confirmed upstream before `committed`.
#[async_trait::async_trait]
pub trait Source: Send {
    /// Connect and position the feed after `from`.
    async fn start(&mut self, from: Option<SourcePosition>) -> Result<(), SourceError>;
    /// The next batch, waiting until one is available.
    async fn next_batch(&mut self) -> Result<Batch, SourceError>;
    /// `position` and everything before it is durable in the log.
    async fn committed(&mut self, position: &SourcePosition) -> Result<(), SourceError>;
    /// Let go of the database's change feed (close its connection) until the next
    /// [`Source::start`]: the runner calls it when this process stops running the source but
    /// goes on (cluster mode: another node took the connector's lease, and needs the
    /// replication slot). The default keeps nothing to let go of.
    async fn stop(&mut self) {}

    /// Channels whose history restarts with the batch just returned by
    /// [`Source::next_batch`] (source history lost and re-snapshotted, a dropped replication
    /// slot recreated). The server gives each a new epoch before appending the batch, so
    /// clients holding the old history are told continuity was lost instead of being resumed
    /// into a different one. Called once after each batch; the default is none.
    fn take_resets(&mut self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_serialize_with_their_kind() {
        let p = SourcePosition::PostgresLsn(0x16_B374_D848);
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(s, r#"{"kind":"postgres_lsn","value":97500059720}"#);
        assert_eq!(serde_json::from_str::<SourcePosition>(&s).unwrap(), p);
    }

    #[test]
    fn publishes_compare_and_serialise_by_their_json_text() {
        let p = |data: &str| Publish {
            channel: "c".into(),
            name: None,
            data: Some(RawValue::from_string(data.into()).unwrap()),
            headers: None,
            id: None,
            key: Some(json_text(&serde_json::json!({"_id": 1}))),
        };
        assert_eq!(p(r#"{"a":1}"#), p(r#"{"a":1}"#));
        // The same value in other words is another text.
        assert_ne!(p(r#"{"a":1}"#), p(r#"{"a": 1}"#));
        assert_eq!(
            serde_json::to_string(&p(r#"{"a": 1}"#)).unwrap(),
            r#"{"channel":"c","name":null,"data":{"a": 1},"headers":null,"id":null,"key":{"_id":1}}"#
        );
    }
}

//! The channel log: durable, ordered history of every channel.
//!
//! [`ChannelLog`] is the boundary between the server and storage. The embedded implementation
//! ([`embedded::EmbeddedLog`], SQLite in WAL mode) is the default; the cluster one
//! ([`jetstream::JetStreamLog`], NATS JetStream) takes its place behind the same trait when the
//! server runs with `--nats`.

pub mod embedded;
pub mod jetstream;

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tidings_connectors_core::{Checkpoint, SourcePosition};

use crate::channel::ChannelName;

/// A message to append. Validated by the caller (channel name, size, fields).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub channel: ChannelName,
    /// Idempotency id: a second message with the same id on the same channel within the dedup
    /// window is not appended again; its existing serial is answered.
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub headers: Option<Box<RawValue>>,
}

/// Outcome of appending one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's serial in its channel.
    pub serial: u64,
    /// True when the id was already present and nothing was appended.
    pub duplicate: bool,
}

/// A message as stored in the log.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub serial: u64,
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub headers: Option<Box<RawValue>>,
    /// Milliseconds since the Unix epoch, non-decreasing per log.
    pub timestamp: u64,
}

/// Where a channel's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState {
    /// Incarnation of the channel's history.
    pub epoch: Arc<str>,
    /// Serial of the newest message (0 when the channel has none yet).
    pub head: u64,
    /// Every serial at or below this one was removed by retention (0 = nothing removed).
    pub trimmed: u64,
}

/// A range read: the channel's state when the read began, and the messages found.
#[derive(Debug, Clone)]
pub struct ReadPage {
    pub state: ChannelState,
    pub messages: Vec<StoredMessage>,
}

/// How long messages of one namespace are kept. Both limits apply when both are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_messages: Option<u64>,
}

/// Retention for every namespace: per-namespace rules, and the rule for the rest.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    pub default: Retention,
    pub namespaces: Vec<(String, Retention)>,
}

impl RetentionPolicy {
    /// The rule that applies to a namespace.
    pub fn for_namespace(&self, namespace: &str) -> Retention {
        self.namespaces
            .iter()
            .find(|(ns, _)| ns == namespace)
            .map(|(_, r)| *r)
            .unwrap_or(self.default)
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub channels_trimmed: u64,
    pub messages_removed: u64,
}

/// Told of every committed append, in commit order, from the log's writer. Must not block.
pub trait AppendObserver: Send + Sync {
    /// `messages` were appended to `channel` (ascending serials); `prev` is the serial of the
    /// message before the first of them (0 if none).
    fn appended(&self, channel: &ChannelName, prev: u64, messages: &[StoredMessage]);

    /// `channel`'s history restarted under `epoch`; its head stays `head` (serials keep
    /// increasing across epochs) and nothing before it can be resumed.
    fn reset(&self, channel: &ChannelName, epoch: &Arc<str>, head: u64);

    /// Messages may have been lost on their way to the observer (the cluster log's live feed
    /// reconnected or fell behind): every subscriber must check the log for what it missed.
    /// The embedded log never calls it.
    fn resync(&self) {}
}

/// Where the log's storage stands, for `GET /v1/cluster`: plain data any log fills in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogStatus {
    /// `single` (the embedded log) or `cluster` (NATS JetStream).
    pub mode: &'static str,
    /// This node's id, in cluster mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What the log can tell about its engine: for the cluster, the NATS server this node is
    /// connected to and the stream's state and replicas.
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// What trying to take a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This node holds it now; the token is what renewing and releasing it need.
    Taken(u64),
    /// Another node holds it (its id, as it wrote it).
    HeldBy(String),
}

/// Who runs which connector in a cluster: one node at a time, under a lease that lapses unless
/// renewed within [`ttl`](Leases::ttl). The lease decides who *should* write; the checkpoint's
/// compare-and-set in [`ChannelLog::append`] is what refuses a writer that lost it (fencing).
/// The cluster log keeps them in the same engine; a single node needs none.
#[async_trait::async_trait]
pub trait Leases: Send + Sync + 'static {
    /// How long a lease lasts without renewal.
    fn ttl(&self) -> Duration;

    /// Take the lease on `name` unless another node holds it.
    async fn acquire(&self, name: &str) -> Result<Acquired, LogError>;

    /// Renew the lease on `name` held with `token`: the new token, or `None` when it was lost
    /// (it lapsed, and maybe another node took it).
    async fn renew(&self, name: &str, token: u64) -> Result<Option<u64>, LogError>;

    /// Give the lease up (on shutdown), so another node takes over at once.
    async fn release(&self, name: &str, token: u64);
}

/// Errors of the log. None of them means an acknowledged message was lost.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the channel log in {path}: {problem}")]
    Open {
        path: String,
        problem: String,
        #[source]
        source: Option<rusqlite::Error>,
    },
    #[error("channel log storage failed; nothing in this request was acknowledged")]
    Storage(#[source] Arc<rusqlite::Error>),
    #[error("the channel log is closed (the server is shutting down)")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The distributed log could not be reached or did not answer in time.
    #[error("the cluster's log is unavailable ({0}); nothing in this request was acknowledged: retry, and check that the NATS servers are up and reachable")]
    Unavailable(String),
    /// Another writer moved `source`'s checkpoint since this one read it: this writer's batch
    /// was refused, nothing of it was stored. It must re-read the checkpoint before writing.
    #[error("the checkpoint of {connector} was moved by another writer; this batch was refused and nothing of it stored (the connector restarts from the stored checkpoint)")]
    Fenced { connector: String },
}

impl From<rusqlite::Error> for LogError {
    fn from(e: rusqlite::Error) -> Self {
        LogError::Storage(Arc::new(e))
    }
}

/// The durable, ordered history of every channel.
///
/// Contract:
/// - [`append`](ChannelLog::append) writes the messages and the optional checkpoint in one
///   atomic, durable write, assigning each new message its channel's next serial. It answers only
///   once that write is on disk; concurrent appends may share one disk flush.
/// - Per channel, serials strictly increase in commit order. Messages of one call keep their order.
/// - After a crash, the log opens with every answered append present exactly once.
/// - Observers see each commit's messages after they are durable, in commit order.
/// - Serials may have gaps within a channel (the cluster log's serials are stream sequences);
///   callers never count messages by subtracting serials.
#[async_trait::async_trait]
pub trait ChannelLog: Send + Sync + 'static {
    /// Append `messages` and store `checkpoint` atomically. One [`Appended`] per message.
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<Appended>, LogError>;

    /// Current state of a channel (a channel never written has head 0 and the log's base epoch).
    /// Everything appended and answered before this call is at or below the head it returns.
    async fn state(&self, channel: &ChannelName) -> Result<ChannelState, LogError>;

    /// Up to `limit` messages with serial greater than `after`, ascending.
    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<ReadPage, LogError>;

    /// Give each channel a new epoch: its history restarts at its current head, older messages
    /// are removed, and subscribers are told (through the observer) that continuity was lost.
    async fn reset(&self, channels: Vec<ChannelName>) -> Result<(), LogError>;

    /// The last checkpoint stored for `source`.
    async fn checkpoint(&self, source: &str) -> Result<Option<SourcePosition>, LogError>;

    /// Remove what `policy` no longer keeps.
    async fn apply_retention(&self, policy: &RetentionPolicy) -> Result<RetentionReport, LogError>;

    /// Where the storage stands (`GET /v1/cluster`). A single node's log has nothing to add.
    async fn status(&self) -> Result<LogStatus, LogError> {
        Ok(LogStatus {
            mode: "single",
            node: None,
            detail: serde_json::Map::new(),
        })
    }

    /// Finish pending writes and stop accepting new ones.
    async fn close(&self);
}

//! The embedded channel log: one SQLite database in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the write connection (`writer`). Appends queue to it; it takes every
//! request waiting (up to [`MAX_GROUP_MESSAGES`]) and commits them in one transaction, so
//! concurrent appends share one fsync (`commit`). Readers use a small pool of read-only
//! connections, which WAL mode lets run beside the writer (`reads`). Channel heads and epochs
//! are kept in memory (`channels`) and updated after each commit. Why SQLite: see
//! `docs/storage.md`.

mod channels;
mod clock;
mod commit;
mod reads;
mod reset;
mod retention;
mod schema;
mod stats;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rusqlite::Connection;
use tidings_connectors_core::{Checkpoint, SourcePosition};
use tokio::sync::{mpsc, oneshot};

use crate::channel::ChannelName;
use crate::log::{
    AppendObserver, Appended, ChannelLog, ChannelState, LogError, NewMessage, ReadPage,
    RetentionPolicy, RetentionReport,
};
use channels::Shared;
use reads::Readers;
use writer::{Request, Writer};

pub use channels::new_epoch;
pub use stats::WriterStats;
pub use writer::{MAX_GROUP_MESSAGES, WRITER_QUEUE};

/// Options of the embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// A message id seen on the channel within this window deduplicates.
    pub dedup_window: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            dedup_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// The default [`ChannelLog`]: SQLite on local disk.
pub struct EmbeddedLog {
    sender: RwLock<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
    readers: Arc<Readers>,
}

impl EmbeddedLog {
    /// Open (creating if needed) the log in `dir`. `observer` hears every commit.
    pub fn open(
        dir: &Path,
        options: EmbeddedOptions,
        observer: Arc<dyn AppendObserver>,
    ) -> Result<Self, LogError> {
        let open_err = |problem: String, source: Option<rusqlite::Error>| LogError::Open {
            path: dir.display().to_string(),
            problem,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            open_err(
                format!("cannot create the directory ({e}); check the path and its permissions"),
                None,
            )
        })?;
        let path = dir.join("log.sqlite");
        let conn = Connection::open(&path).map_err(|e| {
            open_err(
                "cannot open log.sqlite; check permissions and free space".into(),
                Some(e),
            )
        })?;
        schema::init_schema(&conn).map_err(|e| {
            open_err(
                "cannot initialise the schema (is another tidings using this directory?)".into(),
                Some(e),
            )
        })?;
        let base_epoch: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .map_err(|e| open_err("cannot read the log's epoch".into(), Some(e)))?;
        let channels = channels::load(&conn)?;
        let last_ts = clock::last_stored(&conn)?;
        tracing::info!(
            path = %path.display(),
            channels = channels.len(),
            epoch = %base_epoch,
            "channel log opened"
        );
        let shared = Arc::new(Shared {
            base_epoch: Arc::from(base_epoch),
            channels: RwLock::new(channels),
            stats: WriterStats::default(),
        });
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let writer = Writer::new(
            conn,
            shared.clone(),
            observer,
            last_ts,
            options.dedup_window,
        );
        let handle = std::thread::Builder::new()
            .name("tidings-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}"), None))?;
        Ok(EmbeddedLog {
            sender: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
            readers: Arc::new(Readers::new(path)),
        })
    }

    /// Writer counters.
    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// A channel's state from the in-memory table (kept current by the writer).
    fn current(&self, channel: &ChannelName) -> ChannelState {
        match self.shared.channels.read().get(channel.as_arc()) {
            Some(m) => ChannelState {
                epoch: m.epoch.clone(),
                head: m.head,
                trimmed: m.trimmed,
            },
            None => ChannelState {
                epoch: self.shared.base_epoch.clone(),
                head: 0,
                trimmed: 0,
            },
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, LogError> {
        self.sender.read().clone().ok_or(LogError::Closed)
    }
}

#[async_trait::async_trait]
impl ChannelLog for EmbeddedLog {
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<Appended>, LogError> {
        if messages.is_empty() && checkpoint.is_none() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Request::Append {
                messages,
                checkpoint,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    async fn state(&self, channel: &ChannelName) -> Result<ChannelState, LogError> {
        Ok(self.current(channel))
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let meta = self.shared.channels.read().get(channel.as_arc()).cloned();
        let Some(meta) = meta else {
            return Ok(ReadPage {
                state: self.current(channel),
                messages: Vec::new(),
            });
        };
        let state = ChannelState {
            epoch: meta.epoch,
            head: meta.head,
            trimmed: meta.trimmed,
        };
        if limit == 0 || after >= meta.head {
            return Ok(ReadPage {
                state,
                messages: Vec::new(),
            });
        }
        let readers = self.readers.clone();
        let channel_id = meta.id;
        let messages =
            tokio::task::spawn_blocking(move || readers.messages(channel_id, after, limit))
                .await
                .map_err(|e| LogError::Corrupt(format!("log reader panicked: {e}")))??;
        Ok(ReadPage { state, messages })
    }

    async fn reset(&self, channels: Vec<ChannelName>) -> Result<(), LogError> {
        if channels.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Request::Reset { channels, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    async fn checkpoint(&self, source: &str) -> Result<Option<SourcePosition>, LogError> {
        let readers = self.readers.clone();
        let source = source.to_owned();
        let text = tokio::task::spawn_blocking(move || readers.checkpoint(&source))
            .await
            .map_err(|e| LogError::Corrupt(format!("log reader panicked: {e}")))??;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| LogError::Corrupt(format!("stored checkpoint unreadable: {e}")))
        })
        .transpose()
    }

    async fn apply_retention(&self, policy: &RetentionPolicy) -> Result<RetentionReport, LogError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Request::Retain {
                policy: policy.clone(),
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    async fn close(&self) {
        drop(self.sender.write().take());
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

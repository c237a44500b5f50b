//! The embedded channel log: one SQLite database in WAL mode with `synchronous=FULL`.
//!
//! One writer thread owns the write connection. Appends queue to it; it takes every request
//! waiting (up to [`MAX_GROUP_MESSAGES`]) and commits them in one transaction, so concurrent
//! appends share one fsync (group commit). Readers use a small pool of read-only connections,
//! which WAL mode lets run beside the writer. Channel heads and epochs are kept in memory and
//! updated after each commit. Why SQLite: see `docs/storage.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::value::RawValue;
use tidings_connectors_core::{Checkpoint, SourcePosition};
use tokio::sync::{mpsc, oneshot};

use super::{
    AppendObserver, Appended, ChannelLog, ChannelState, LogError, NewMessage, ReadPage,
    RetentionPolicy, RetentionReport, StoredMessage,
};
use crate::channel::{namespace_of, ChannelName};

/// Most messages committed in one transaction. Bounds the latency one group adds.
pub const MAX_GROUP_MESSAGES: usize = 8192;
/// Capacity of the writer's request queue; appends wait (asynchronously) when it is full.
pub const WRITER_QUEUE: usize = 4096;
/// Page cache of the writer's connection, in KiB (see `init_schema`).
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Rows one retention pass examines per channel, so a pass never holds the writer for long.
const RETENTION_SCAN_LIMIT: i64 = 50_000;

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

/// Counters about the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Messages appended (duplicates excluded).
    pub messages: AtomicU64,
}

#[derive(Debug, Clone)]
struct ChannelMeta {
    id: i64,
    epoch: Arc<str>,
    head: u64,
    trimmed: u64,
}

struct Shared {
    base_epoch: Arc<str>,
    channels: RwLock<HashMap<Arc<str>, ChannelMeta>>,
    stats: WriterStats,
}

enum Request {
    Append {
        messages: Vec<NewMessage>,
        checkpoint: Option<Checkpoint>,
        reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
    },
    Retain {
        policy: RetentionPolicy,
        reply: oneshot::Sender<Result<RetentionReport, LogError>>,
    },
    Reset {
        channels: Vec<ChannelName>,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
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
        init_schema(&conn).map_err(|e| {
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
        let mut channels = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT id, name, epoch, head, trimmed FROM channels")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (id, name, epoch, head, trimmed) = row?;
                channels.insert(
                    Arc::<str>::from(name),
                    ChannelMeta {
                        id,
                        epoch: Arc::from(epoch),
                        head: head as u64,
                        trimmed: trimmed as u64,
                    },
                );
            }
        }
        // Timestamps never decrease, so the newest message of each channel holds the latest.
        let last_ts: i64 = conn.query_row(
            "SELECT COALESCE(MAX((SELECT ts FROM messages WHERE channel_id = c.id
                                  ORDER BY serial DESC LIMIT 1)), 0)
             FROM channels c",
            [],
            |r| r.get(0),
        )?;
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
        let writer = Writer {
            conn,
            shared: shared.clone(),
            observer,
            last_ts: last_ts as u64,
            dedup_window_ms: options.dedup_window.as_millis() as u64,
        };
        let handle = std::thread::Builder::new()
            .name("tidings-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}"), None))?;
        Ok(EmbeddedLog {
            sender: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Writer counters.
    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, LogError> {
        self.sender.read().clone().ok_or(LogError::Closed)
    }
}

fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // SQLite's default cache is 2 MiB; a group commit of a few thousand connector messages
    // dirties more pages than that, and SQLite then spills them to the WAL mid-transaction and
    // reads them back: 500,000 MongoDB events went in at 41k/s with the default, 72k/s with
    // 16 MiB (8 MiB: 69k, 32 MiB: 63k; examples/mongodb_throughput). Pages are allocated as
    // used, so a quiet log does not pay for it. Readers keep the default.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS channels (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             epoch TEXT NOT NULL,
             head INTEGER NOT NULL,
             trimmed INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE IF NOT EXISTS messages (
             channel_id INTEGER NOT NULL,
             serial INTEGER NOT NULL,
             msg_id TEXT,
             name TEXT,
             data TEXT,
             headers TEXT,
             ts INTEGER NOT NULL,
             PRIMARY KEY (channel_id, serial)) WITHOUT ROWID;
         DROP INDEX IF EXISTS messages_by_id;
         CREATE INDEX IF NOT EXISTS messages_dedup ON messages (channel_id, msg_id, ts)
             WHERE msg_id IS NOT NULL;
         CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, position TEXT NOT NULL);",
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
        [new_epoch()],
    )?;
    Ok(())
}

/// A fresh random epoch name.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn raw_from_text(text: Option<String>) -> rusqlite::Result<Option<Box<RawValue>>> {
    text.map(|t| {
        RawValue::from_string(t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    observer: Arc<dyn AppendObserver>,
    last_ts: u64,
    dedup_window_ms: u64,
}

/// A channel touched by the group being committed.
struct Staged {
    meta: ChannelMeta,
    prev_head: u64,
    created: bool,
    new: Vec<StoredMessage>,
}

type AppendReply = oneshot::Sender<Result<Vec<Appended>, LogError>>;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends = Vec::new();
            let mut retains = Vec::new();
            let mut resets = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append {
                        messages,
                        checkpoint,
                        reply,
                    } => {
                        count += messages.len().max(1);
                        appends.push((messages, checkpoint, reply));
                    }
                    Request::Retain { policy, reply } => retains.push((policy, reply)),
                    Request::Reset { channels, reply } => resets.push((channels, reply)),
                }
                if count < MAX_GROUP_MESSAGES {
                    next = rx.try_recv().ok();
                }
            }
            // Resets queued before appends in this group go first: a source asks for the reset
            // before it appends the batch that starts the new history.
            for (channels, reply) in resets {
                let _ = reply.send(self.reset(&channels));
            }
            if !appends.is_empty() {
                self.commit_group(appends);
            }
            for (policy, reply) in retains {
                let _ = reply.send(self.retain(&policy));
            }
        }
        tracing::debug!("channel log writer stopped");
    }

    fn commit_group(&mut self, group: Vec<(Vec<NewMessage>, Option<Checkpoint>, AppendReply)>) {
        let ts = now_ms().max(self.last_ts);
        let mut staged: HashMap<Arc<str>, Staged> = HashMap::new();
        let (work, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|(messages, checkpoint, reply)| ((messages, checkpoint), reply))
            .unzip();
        let mut answers = Vec::with_capacity(work.len());
        let outcome = (|| -> Result<(), LogError> {
            let tx = self.conn.transaction()?;
            // Prepared once per group, not per message: looking a statement up in rusqlite's
            // cache hashes its SQL and reorders the cache, ~5 % of a connector's append.
            let mut dedup = tx.prepare_cached(
                "SELECT serial FROM messages INDEXED BY messages_dedup
                 WHERE channel_id = ?1 AND msg_id IS NOT NULL AND msg_id = ?2
                   AND ts >= ?3 LIMIT 1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (channel_id, serial, msg_id, name, data, headers, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (messages, checkpoint) in work {
                let mut results = Vec::with_capacity(messages.len());
                for m in messages {
                    let key = m.channel.as_arc();
                    if !staged.contains_key(key) {
                        let existing = self.shared.channels.read().get(key).cloned();
                        let (meta, created) = match existing {
                            Some(meta) => (meta, false),
                            None => {
                                let id: i64 = tx
                                    .prepare_cached(
                                        "INSERT INTO channels (name, epoch, head) VALUES (?1, ?2, 0)
                                         RETURNING id",
                                    )?
                                    .query_row(params![&**key, &*self.shared.base_epoch], |r| {
                                        r.get(0)
                                    })?;
                                let meta = ChannelMeta {
                                    id,
                                    epoch: self.shared.base_epoch.clone(),
                                    head: 0,
                                    trimmed: 0,
                                };
                                (meta, true)
                            }
                        };
                        staged.insert(
                            key.clone(),
                            Staged {
                                prev_head: meta.head,
                                meta,
                                created,
                                new: Vec::new(),
                            },
                        );
                    }
                    let st = staged.get_mut(key).expect("staged above");
                    if let Some(id) = &m.id {
                        let found: Option<i64> = dedup
                            .query_row(
                                params![
                                    st.meta.id,
                                    id,
                                    ts.saturating_sub(self.dedup_window_ms) as i64
                                ],
                                |r| r.get(0),
                            )
                            .optional()?;
                        if let Some(serial) = found {
                            results.push(Appended {
                                serial: serial as u64,
                                duplicate: true,
                            });
                            continue;
                        }
                    }
                    let serial = st.meta.head + 1;
                    insert.execute(params![
                        st.meta.id,
                        serial as i64,
                        m.id,
                        m.name,
                        m.data.as_deref().map(RawValue::get),
                        m.headers.as_deref().map(RawValue::get),
                        ts as i64
                    ])?;
                    st.meta.head = serial;
                    st.new.push(StoredMessage {
                        serial,
                        id: m.id,
                        name: m.name,
                        data: m.data,
                        headers: m.headers,
                        timestamp: ts,
                    });
                    results.push(Appended {
                        serial,
                        duplicate: false,
                    });
                }
                if let Some(cp) = checkpoint {
                    let position = serde_json::to_string(&cp.position).map_err(|e| {
                        LogError::Corrupt(format!("checkpoint not serialisable: {e}"))
                    })?;
                    tx.prepare_cached(
                        "INSERT INTO checkpoints (source, position) VALUES (?1, ?2)
                         ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                    )?
                    .execute(params![cp.source, position])?;
                }
                answers.push(results);
            }
            drop((dedup, insert));
            for st in staged.values() {
                if st.meta.head != st.prev_head {
                    tx.prepare_cached("UPDATE channels SET head = ?1 WHERE id = ?2")?
                        .execute(params![st.meta.head as i64, st.meta.id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                self.last_ts = ts;
                self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                {
                    let mut channels = self.shared.channels.write();
                    for (name, st) in &staged {
                        if st.created || st.meta.head != st.prev_head {
                            channels.insert(name.clone(), st.meta.clone());
                        }
                    }
                }
                let mut appended = 0;
                for (name, st) in &staged {
                    if !st.new.is_empty() {
                        appended += st.new.len() as u64;
                        // The key came from a validated ChannelName.
                        let channel = ChannelName::from_validated(name.clone());
                        self.observer.appended(&channel, st.prev_head, &st.new);
                    }
                }
                self.shared
                    .stats
                    .messages
                    .fetch_add(appended, Ordering::Relaxed);
                for (reply, results) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(results));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "channel log commit failed; the group was not acknowledged");
                for reply in replies {
                    let each = match &e {
                        LogError::Storage(inner) => LogError::Storage(inner.clone()),
                        other => LogError::Corrupt(other.to_string()),
                    };
                    let _ = reply.send(Err(each));
                }
            }
        }
    }

    fn reset(&mut self, channels: &[ChannelName]) -> Result<(), LogError> {
        let mut done = Vec::new();
        let tx = self.conn.transaction()?;
        for channel in channels {
            let epoch: Arc<str> = Arc::from(new_epoch());
            let existing = self.shared.channels.read().get(channel.as_arc()).cloned();
            let meta = match existing {
                Some(mut meta) => {
                    tx.execute(
                        "DELETE FROM messages WHERE channel_id = ?1",
                        params![meta.id],
                    )?;
                    tx.execute(
                        "UPDATE channels SET epoch = ?1, trimmed = head WHERE id = ?2",
                        params![&*epoch, meta.id],
                    )?;
                    meta.epoch = epoch.clone();
                    meta.trimmed = meta.head;
                    meta
                }
                None => {
                    let id: i64 = tx.query_row(
                        "INSERT INTO channels (name, epoch, head) VALUES (?1, ?2, 0) RETURNING id",
                        params![channel.as_str(), &*epoch],
                        |r| r.get(0),
                    )?;
                    ChannelMeta {
                        id,
                        epoch: epoch.clone(),
                        head: 0,
                        trimmed: 0,
                    }
                }
            };
            done.push((channel.clone(), meta));
        }
        tx.commit()?;
        let mut map = self.shared.channels.write();
        for (channel, meta) in &done {
            map.insert(channel.as_arc().clone(), meta.clone());
        }
        drop(map);
        for (channel, meta) in &done {
            tracing::warn!(channel = %channel, epoch = %meta.epoch, head = meta.head, "channel history reset: new epoch");
            self.observer.reset(channel, &meta.epoch, meta.head);
        }
        Ok(())
    }

    fn retain(&mut self, policy: &RetentionPolicy) -> Result<RetentionReport, LogError> {
        let now = now_ms();
        let snapshot: Vec<(Arc<str>, ChannelMeta)> = self
            .shared
            .channels
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut report = RetentionReport::default();
        for (name, meta) in snapshot {
            let rule = policy.for_namespace(namespace_of(&name));
            let mut cut = meta.trimmed;
            if let Some(max) = rule.max_messages {
                cut = cut.max(meta.head.saturating_sub(max));
            }
            if let Some(age) = rule.max_age {
                let cutoff = now.saturating_sub(age.as_millis() as u64);
                let old: Option<i64> = self.conn.query_row(
                    "SELECT MAX(serial) FROM (SELECT serial, ts FROM messages
                       WHERE channel_id = ?1 AND serial > ?2 ORDER BY serial LIMIT ?3)
                     WHERE ts < ?4",
                    params![
                        meta.id,
                        meta.trimmed as i64,
                        RETENTION_SCAN_LIMIT,
                        cutoff as i64
                    ],
                    |r| r.get(0),
                )?;
                if let Some(old) = old {
                    cut = cut.max(old as u64);
                }
            }
            if cut <= meta.trimmed {
                continue;
            }
            let tx = self.conn.transaction()?;
            let removed = tx.execute(
                "DELETE FROM messages WHERE channel_id = ?1 AND serial <= ?2",
                params![meta.id, cut as i64],
            )?;
            tx.execute(
                "UPDATE channels SET trimmed = ?1 WHERE id = ?2",
                params![cut as i64, meta.id],
            )?;
            tx.commit()?;
            if let Some(m) = self.shared.channels.write().get_mut(&name) {
                m.trimmed = m.trimmed.max(cut);
            }
            report.channels_trimmed += 1;
            report.messages_removed += removed as u64;
            tracing::debug!(channel = %name, trimmed = cut, removed, "retention applied");
        }
        Ok(report)
    }
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn with<R>(&self, f: impl FnOnce(&Connection) -> Result<R, LogError>) -> Result<R, LogError> {
        let conn = match self.idle.lock().pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < 16 {
            idle.push(conn);
        }
        result
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

    fn state(&self, channel: &ChannelName) -> ChannelState {
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

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let meta = self.shared.channels.read().get(channel.as_arc()).cloned();
        let Some(meta) = meta else {
            return Ok(ReadPage {
                state: self.state(channel),
                messages: Vec::new(),
            });
        };
        let state = ChannelState {
            epoch: meta.epoch.clone(),
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
        let messages = tokio::task::spawn_blocking(move || {
            readers.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT serial, msg_id, name, data, headers, ts FROM messages
                     WHERE channel_id = ?1 AND serial > ?2 ORDER BY serial LIMIT ?3",
                )?;
                let rows = stmt.query_map(
                    params![meta.id, after as i64, limit.min(i64::MAX as usize) as i64],
                    |r| {
                        Ok(StoredMessage {
                            serial: r.get::<_, i64>(0)? as u64,
                            id: r.get(1)?,
                            name: r.get(2)?,
                            data: raw_from_text(r.get(3)?)?,
                            headers: raw_from_text(r.get(4)?)?,
                            timestamp: r.get::<_, i64>(5)? as u64,
                        })
                    },
                )?;
                let mut out = Vec::with_capacity(limit.min(1024));
                for row in rows {
                    out.push(row?);
                }
                Ok(out)
            })
        })
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
        let text: Option<String> = tokio::task::spawn_blocking(move || {
            readers.with(|conn| {
                Ok(conn
                    .query_row(
                        "SELECT position FROM checkpoints WHERE source = ?1",
                        [&source],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Retention;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64, Vec<u64>)>>);

    impl AppendObserver for Recorder {
        fn appended(&self, channel: &ChannelName, prev: u64, messages: &[StoredMessage]) {
            self.0.lock().push((
                channel.to_string(),
                prev,
                messages.iter().map(|m| m.serial).collect(),
            ));
        }

        fn reset(&self, channel: &ChannelName, _epoch: &Arc<str>, head: u64) {
            self.0
                .lock()
                .push((format!("reset {channel}"), head, Vec::new()));
        }
    }

    fn msg(channel: &str, id: Option<&str>, data: &str) -> NewMessage {
        NewMessage {
            channel: ChannelName::parse(channel).unwrap(),
            id: id.map(str::to_owned),
            name: Some("n".into()),
            data: Some(RawValue::from_string(data.to_owned()).unwrap()),
            headers: None,
        }
    }

    fn open(dir: &Path) -> (EmbeddedLog, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let log = EmbeddedLog::open(dir, EmbeddedOptions::default(), rec.clone()).unwrap();
        (log, rec)
    }

    #[tokio::test]
    async fn serials_increase_per_channel_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rec) = open(dir.path());
        let a = log
            .append(
                vec![
                    msg("a", None, "1"),
                    msg("b", None, "2"),
                    msg("a", None, "3"),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            a.iter().map(|x| x.serial).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        let page = log
            .read(&ChannelName::parse("a").unwrap(), 0, 10)
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 2);
        assert_eq!(page.messages[1].data.as_ref().unwrap().get(), "3");
        assert_eq!(page.state.head, 2);
        let epoch = page.state.epoch.clone();
        assert!(!rec.0.lock().is_empty());
        log.close().await;
        drop(log);

        let (log, _) = open(dir.path());
        let a = log.append(vec![msg("a", None, "4")], None).await.unwrap();
        assert_eq!(a[0].serial, 3);
        let state = log.state(&ChannelName::parse("a").unwrap());
        assert_eq!((state.head, state.epoch), (3, epoch));
    }

    #[tokio::test]
    async fn duplicate_ids_answer_the_existing_serial() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rec) = open(dir.path());
        let first = log
            .append(vec![msg("a", Some("x"), "1")], None)
            .await
            .unwrap();
        let again = log
            .append(
                vec![
                    msg("a", Some("x"), "1"),
                    msg("a", Some("y"), "2"),
                    msg("a", Some("y"), "2"),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            first[0],
            Appended {
                serial: 1,
                duplicate: false
            }
        );
        assert_eq!(
            again,
            vec![
                Appended {
                    serial: 1,
                    duplicate: true
                },
                Appended {
                    serial: 2,
                    duplicate: false
                },
                Appended {
                    serial: 2,
                    duplicate: true
                },
            ]
        );
        // Same id on another channel is a different message.
        let other = log
            .append(vec![msg("b", Some("x"), "1")], None)
            .await
            .unwrap();
        assert!(!other[0].duplicate);
        let heard: Vec<u64> = rec
            .0
            .lock()
            .iter()
            .flat_map(|(_, _, s)| s.clone())
            .collect();
        assert_eq!(
            heard,
            vec![1, 2, 1],
            "observers hear only what was appended"
        );
    }

    #[tokio::test]
    async fn checkpoint_is_stored_with_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        assert_eq!(log.checkpoint("pg").await.unwrap(), None);
        let cp = Checkpoint {
            source: "pg".into(),
            position: SourcePosition::PostgresLsn(42),
        };
        log.append(vec![msg("a", None, "1")], Some(cp.clone()))
            .await
            .unwrap();
        assert_eq!(log.checkpoint("pg").await.unwrap(), Some(cp.position));
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rec) = open(dir.path());
        let log = Arc::new(log);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..20 {
                    log.append(vec![msg("c", None, &format!("{}", i * 100 + j))], None)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let commits = log.stats().commits.load(Ordering::Relaxed);
        assert_eq!(log.stats().messages.load(Ordering::Relaxed), 1280);
        assert!(
            commits < 1280,
            "64 concurrent appenders should share fsyncs, got {commits} commits"
        );
        // The observer saw one contiguous, strictly increasing sequence.
        let mut expected_prev = 0;
        for (_, prev, serials) in rec.0.lock().iter() {
            assert_eq!(*prev, expected_prev);
            for s in serials {
                assert_eq!(*s, expected_prev + 1);
                expected_prev = *s;
            }
        }
        assert_eq!(expected_prev, 1280);
    }

    #[tokio::test]
    async fn retention_trims_by_count_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        let batch: Vec<_> = (0..10)
            .map(|i| msg("short:1", None, &i.to_string()))
            .collect();
        log.append(batch, None).await.unwrap();
        let batch: Vec<_> = (0..10)
            .map(|i| msg("long:1", None, &i.to_string()))
            .collect();
        log.append(batch, None).await.unwrap();
        let policy = RetentionPolicy {
            default: Retention::default(),
            namespaces: vec![(
                "short".into(),
                Retention {
                    max_age: None,
                    max_messages: Some(3),
                },
            )],
        };
        let report = log.apply_retention(&policy).await.unwrap();
        assert_eq!(report.messages_removed, 7);
        let short = ChannelName::parse("short:1").unwrap();
        let page = log.read(&short, 0, 100).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.serial).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(page.state.trimmed, 7);
        let long = ChannelName::parse("long:1").unwrap();
        assert_eq!(log.read(&long, 0, 100).await.unwrap().messages.len(), 10);
    }

    #[tokio::test]
    async fn reset_gives_a_new_epoch_and_keeps_serials_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, rec) = open(dir.path());
        let a = ChannelName::parse("a").unwrap();
        log.append(vec![msg("a", None, "1"), msg("a", None, "2")], None)
            .await
            .unwrap();
        let before = log.state(&a);
        log.reset(vec![a.clone(), ChannelName::parse("fresh").unwrap()])
            .await
            .unwrap();
        let after = log.state(&a);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!((after.head, after.trimmed), (2, 2));
        assert!(
            log.read(&a, 0, 10).await.unwrap().messages.is_empty(),
            "the old history is gone"
        );
        assert_eq!(
            log.append(vec![msg("a", None, "3")], None).await.unwrap()[0].serial,
            3
        );
        assert!(rec
            .0
            .lock()
            .iter()
            .any(|(c, head, _)| c == "reset a" && *head == 2));
        // The new epoch survives a restart.
        log.close().await;
        drop(log);
        let (log, _) = open(dir.path());
        assert_eq!(log.state(&a).epoch, after.epoch);
    }

    #[tokio::test]
    async fn retention_trims_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(dir.path());
        log.append(vec![msg("a", None, "1"), msg("a", None, "2")], None)
            .await
            .unwrap();
        let policy = RetentionPolicy {
            default: Retention {
                max_age: Some(Duration::from_millis(1)),
                max_messages: None,
            },
            namespaces: vec![],
        };
        std::thread::sleep(Duration::from_millis(5));
        log.apply_retention(&policy).await.unwrap();
        let a = ChannelName::parse("a").unwrap();
        let state = log.state(&a);
        assert_eq!((state.head, state.trimmed), (2, 2));
        // Serials keep increasing after everything was trimmed.
        assert_eq!(
            log.append(vec![msg("a", None, "3")], None).await.unwrap()[0].serial,
            3
        );
    }
}

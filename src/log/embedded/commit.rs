//! Group commit: every append waiting for the writer goes into one transaction, so concurrent
//! appends share one fsync.
//!
//! Acknowledged means durable: the in-memory table, the observer and the callers hear of a
//! group only after its transaction committed. The group is all or nothing: if anything in it
//! fails (storage, an unserialisable checkpoint), nothing of it is written and every append in
//! it is answered with the error.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use serde_json::value::RawValue;
use tidings_connectors_core::Checkpoint;
use tokio::sync::oneshot;

use super::channels::{ChannelMeta, Shared};
use super::clock::now_ms;
use crate::channel::ChannelName;
use crate::log::{AppendObserver, Appended, LogError, NewMessage, StoredMessage};

/// Where the writer answers one append.
pub(super) type AppendReply = oneshot::Sender<Result<Vec<Appended>, LogError>>;

/// One append waiting for the writer: its messages, its checkpoint, and where to answer.
pub(super) type PendingAppend = (Vec<NewMessage>, Option<Checkpoint>, AppendReply);

/// What the writer keeps from one group to the next to commit appends.
pub(super) struct GroupCommit {
    /// Timestamp of the last committed group; the next one is never earlier.
    last_ts: u64,
    dedup_window_ms: u64,
}

/// A channel touched by the group being committed.
struct Staged {
    /// The channel as it will be once the group is committed.
    meta: ChannelMeta,
    /// Its head before the group.
    prev_head: u64,
    /// Its row was inserted by this group.
    created: bool,
    /// Messages the group appends to it, ascending.
    new: Vec<StoredMessage>,
}

/// A group written and committed: the channels it touched and each append's answer, in order.
struct Written {
    channels: HashMap<Arc<str>, Staged>,
    answers: Vec<Vec<Appended>>,
}

impl GroupCommit {
    /// `last_ts`: the newest timestamp already stored; `dedup_window`: how far back an id
    /// deduplicates.
    pub(super) fn new(last_ts: u64, dedup_window: Duration) -> Self {
        GroupCommit {
            last_ts,
            dedup_window_ms: dedup_window.as_millis() as u64,
        }
    }

    /// Commit `group` in one transaction, then update the channel table, tell `observer` and
    /// answer every append, in that order. On failure, answer every append with the error.
    pub(super) fn commit(
        &mut self,
        conn: &mut Connection,
        shared: &Shared,
        observer: &dyn AppendObserver,
        group: Vec<PendingAppend>,
    ) {
        let ts = now_ms().max(self.last_ts);
        let (work, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|(messages, checkpoint, reply)| ((messages, checkpoint), reply))
            .unzip();
        let dedup_since = ts.saturating_sub(self.dedup_window_ms) as i64;
        match write(conn, shared, ts, dedup_since, work) {
            Ok(written) => {
                // Durable from here on: only now may anyone hear of the group.
                self.last_ts = ts;
                publish(shared, observer, &written.channels);
                for (reply, results) in replies.into_iter().zip(written.answers) {
                    let _ = reply.send(Ok(results));
                }
            }
            Err(e) => refuse(replies, &e),
        }
    }
}

/// Write the whole group in one transaction: each append's messages then its checkpoint, then
/// the new heads, then commit.
fn write(
    conn: &mut Connection,
    shared: &Shared,
    ts: u64,
    dedup_since: i64,
    work: Vec<(Vec<NewMessage>, Option<Checkpoint>)>,
) -> Result<Written, LogError> {
    let mut answers = Vec::with_capacity(work.len());
    let tx = conn.transaction()?;
    let mut stage = Stage::prepare(&tx, shared, ts, dedup_since)?;
    for (messages, checkpoint) in work {
        let results = stage.append(messages)?;
        if let Some(cp) = checkpoint {
            write_checkpoint(&tx, &cp)?;
        }
        answers.push(results);
    }
    let channels = stage.finish();
    write_heads(&tx, &channels)?;
    tx.commit()?;
    Ok(Written { channels, answers })
}

/// The group's messages being inserted: the open transaction, its two per-message statements,
/// and the channels touched so far.
struct Stage<'t> {
    conn: &'t Connection,
    shared: &'t Shared,
    dedup: CachedStatement<'t>,
    insert: CachedStatement<'t>,
    /// Timestamp of every message of the group.
    ts: u64,
    /// An id stored at or after this timestamp deduplicates.
    dedup_since: i64,
    channels: HashMap<Arc<str>, Staged>,
}

impl<'t> Stage<'t> {
    fn prepare(
        conn: &'t Connection,
        shared: &'t Shared,
        ts: u64,
        dedup_since: i64,
    ) -> Result<Self, LogError> {
        // Prepared once per group, not per message: looking a statement up in rusqlite's
        // cache hashes its SQL and reorders the cache, a noticeable share of an append.
        let dedup = conn.prepare_cached(
            "SELECT serial FROM messages INDEXED BY messages_dedup
             WHERE channel_id = ?1 AND msg_id IS NOT NULL AND msg_id = ?2
               AND ts >= ?3 LIMIT 1",
        )?;
        let insert = conn.prepare_cached(
            "INSERT INTO messages (channel_id, serial, msg_id, name, data, headers, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        Ok(Stage {
            conn,
            shared,
            dedup,
            insert,
            ts,
            dedup_since,
            channels: HashMap::new(),
        })
    }

    /// Stage one append's messages, in order. One answer per message.
    fn append(&mut self, messages: Vec<NewMessage>) -> Result<Vec<Appended>, LogError> {
        let mut results = Vec::with_capacity(messages.len());
        for m in messages {
            results.push(self.message(m)?);
        }
        Ok(results)
    }

    /// Answer a duplicate id with its stored serial, or insert the message as its channel's
    /// next serial.
    fn message(&mut self, m: NewMessage) -> Result<Appended, LogError> {
        let key = m.channel.as_arc();
        if !self.channels.contains_key(key) {
            self.stage_channel(key)?;
        }
        let st = self.channels.get_mut(key).expect("staged above");
        // The two per-message statements bind tuples, not `params![]`: each value is then bound
        // through its own type, with no `dyn ToSql` call per parameter.
        if let Some(id) = &m.id {
            let found: Option<i64> = self
                .dedup
                .query_row((st.meta.id, id, self.dedup_since), |r| r.get(0))
                .optional()?;
            if let Some(serial) = found {
                return Ok(Appended {
                    serial: serial as u64,
                    duplicate: true,
                });
            }
        }
        let serial = st.meta.head + 1;
        self.insert.execute((
            st.meta.id,
            serial as i64,
            &m.id,
            &m.name,
            m.data.as_deref().map(RawValue::get),
            m.headers.as_deref().map(RawValue::get),
            self.ts as i64,
        ))?;
        st.meta.head = serial;
        st.new.push(StoredMessage {
            serial,
            id: m.id,
            name: m.name,
            data: m.data,
            headers: m.headers,
            timestamp: self.ts,
        });
        Ok(Appended {
            serial,
            duplicate: false,
        })
    }

    /// Bring the channel `key` into the group: as the log knows it, or inserted under the
    /// log's base epoch if it has never been written.
    fn stage_channel(&mut self, key: &Arc<str>) -> Result<(), LogError> {
        let existing = self.shared.channels.read().get(key).cloned();
        let (meta, created) = match existing {
            Some(meta) => (meta, false),
            None => (self.create_channel(key)?, true),
        };
        self.channels.insert(
            key.clone(),
            Staged {
                prev_head: meta.head,
                meta,
                created,
                new: Vec::new(),
            },
        );
        Ok(())
    }

    fn create_channel(&self, name: &str) -> Result<ChannelMeta, LogError> {
        let id: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO channels (name, epoch, head) VALUES (?1, ?2, 0)
                 RETURNING id",
            )?
            .query_row(params![name, &*self.shared.base_epoch], |r| r.get(0))?;
        Ok(ChannelMeta {
            id,
            epoch: self.shared.base_epoch.clone(),
            head: 0,
            trimmed: 0,
        })
    }

    /// The channels the group touched; the per-message statements go back to the cache.
    fn finish(self) -> HashMap<Arc<str>, Staged> {
        self.channels
    }
}

/// Store `cp` in the group's transaction, replacing the source's previous checkpoint.
fn write_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<(), LogError> {
    let position = serde_json::to_string(&cp.position)
        .map_err(|e| LogError::Corrupt(format!("checkpoint not serialisable: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO checkpoints (source, position) VALUES (?1, ?2)
         ON CONFLICT (source) DO UPDATE SET position = excluded.position",
    )?
    .execute(params![cp.source, position])?;
    Ok(())
}

/// Store the new head of every channel the group appended to.
fn write_heads(conn: &Connection, channels: &HashMap<Arc<str>, Staged>) -> Result<(), LogError> {
    for st in channels.values() {
        if st.meta.head != st.prev_head {
            conn.prepare_cached("UPDATE channels SET head = ?1 WHERE id = ?2")?
                .execute(params![st.meta.head as i64, st.meta.id])?;
        }
    }
    Ok(())
}

/// After the commit: make the group visible in the channel table, then tell `observer` of each
/// channel's new messages.
fn publish(shared: &Shared, observer: &dyn AppendObserver, channels: &HashMap<Arc<str>, Staged>) {
    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
    {
        let mut table = shared.channels.write();
        for (name, st) in channels {
            if st.created || st.meta.head != st.prev_head {
                table.insert(name.clone(), st.meta.clone());
            }
        }
    }
    let mut appended = 0;
    for (name, st) in channels {
        if !st.new.is_empty() {
            appended += st.new.len() as u64;
            // The key came from a validated ChannelName.
            let channel = ChannelName::from_validated(name.clone());
            observer.appended(&channel, st.prev_head, &st.new);
        }
    }
    shared.stats.messages.fetch_add(appended, Ordering::Relaxed);
}

/// Answer every append of a group that was not committed with the error that stopped it.
fn refuse(replies: Vec<AppendReply>, e: &LogError) {
    tracing::error!(error = %e, "channel log commit failed; the group was not acknowledged");
    for reply in replies {
        let each = match e {
            LogError::Storage(inner) => LogError::Storage(inner.clone()),
            other => LogError::Corrupt(other.to_string()),
        };
        let _ = reply.send(Err(each));
    }
}

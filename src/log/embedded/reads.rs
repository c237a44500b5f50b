//! Reads: a small pool of read-only connections, which WAL mode lets run beside the writer.

use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::value::RawValue;

use crate::log::{LogError, StoredMessage};

/// Most idle read connections kept for reuse; more are opened when needed and then closed.
const IDLE_READERS: usize = 16;

/// Read-only connections to the log's database, opened on demand and reused.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// A pool over the database at `path`, with no connection open yet.
    pub(super) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Up to `limit` messages of the channel with row id `channel_id` after serial `after`,
    /// ascending. Blocking.
    pub(super) fn messages(
        &self,
        channel_id: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, LogError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT serial, msg_id, name, data, headers, ts FROM messages
                 WHERE channel_id = ?1 AND serial > ?2 ORDER BY serial LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    channel_id,
                    after as i64,
                    limit.min(i64::MAX as usize) as i64
                ],
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
    }

    /// The stored checkpoint text of `source`, if any. Blocking.
    pub(super) fn checkpoint(&self, source: &str) -> Result<Option<String>, LogError> {
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT position FROM checkpoints WHERE source = ?1",
                    [source],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

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
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

fn raw_from_text(text: Option<String>) -> rusqlite::Result<Option<Box<RawValue>>> {
    text.map(|t| {
        RawValue::from_string(t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

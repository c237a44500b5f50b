//! The in-memory table of channels (id, epoch, head, trimmed) that the writer updates after
//! each commit and that reads and `state` consult without touching SQLite.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rusqlite::Connection;

use super::stats::WriterStats;
use crate::log::LogError;

/// What the log knows about one channel, mirroring its row in `channels`.
#[derive(Debug, Clone)]
pub(super) struct ChannelMeta {
    pub(super) id: i64,
    pub(super) epoch: Arc<str>,
    pub(super) head: u64,
    pub(super) trimmed: u64,
}

/// State shared by the writer thread and the log's readers.
pub(super) struct Shared {
    /// Epoch of every channel that was never reset.
    pub(super) base_epoch: Arc<str>,
    pub(super) channels: RwLock<HashMap<Arc<str>, ChannelMeta>>,
    pub(super) stats: WriterStats,
}

/// A fresh random epoch name.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Every channel stored in `conn`, by name.
pub(super) fn load(conn: &Connection) -> Result<HashMap<Arc<str>, ChannelMeta>, LogError> {
    let mut channels = HashMap::new();
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
    Ok(channels)
}

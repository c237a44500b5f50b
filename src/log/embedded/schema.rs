//! The SQLite schema of the log and the settings of its write connection.

use std::time::Duration;

use rusqlite::Connection;

use super::channels::new_epoch;

/// Page cache of the writer's connection, in KiB (see `init_schema`).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// Configure the write connection (WAL, `synchronous=FULL`, cache) and create what is missing,
/// including the log's base epoch on first open.
pub(super) fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // SQLite's default cache (2 MiB) is smaller than what a group commit of a few thousand
    // connector messages dirties; SQLite then spills pages to the WAL mid-transaction and reads
    // them back. 16 MiB measured best with examples/mongodb_throughput (figures in
    // docs/storage.md). Pages are allocated as used, so a quiet log does not pay for it. Readers
    // keep the default.
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

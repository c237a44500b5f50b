//! Message timestamps: wall-clock milliseconds that never decrease, also across restarts.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::log::LogError;

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The newest timestamp stored, so that a reopened log never stamps a message earlier.
pub(super) fn last_stored(conn: &Connection) -> Result<u64, LogError> {
    // Timestamps never decrease, so the newest message of each channel holds the latest.
    let last_ts: i64 = conn.query_row(
        "SELECT COALESCE(MAX((SELECT ts FROM messages WHERE channel_id = c.id
                              ORDER BY serial DESC LIMIT 1)), 0)
         FROM channels c",
        [],
        |r| r.get(0),
    )?;
    Ok(last_ts as u64)
}

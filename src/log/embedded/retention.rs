//! Retention: removing, channel by channel, what the namespace's rule no longer keeps.

use std::sync::Arc;

use rusqlite::{params, Connection};

use super::channels::{ChannelMeta, Shared};
use super::clock::now_ms;
use crate::channel::namespace_of;
use crate::log::{LogError, RetentionPolicy, RetentionReport};

/// Rows one retention pass examines per channel, so a pass never holds the writer for long.
const RETENTION_SCAN_LIMIT: i64 = 50_000;

/// One retention pass over every channel known when it starts, one transaction per channel
/// trimmed.
pub(super) fn retain(
    conn: &mut Connection,
    shared: &Shared,
    policy: &RetentionPolicy,
) -> Result<RetentionReport, LogError> {
    let now = now_ms();
    let snapshot: Vec<(Arc<str>, ChannelMeta)> = shared
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
            let old: Option<i64> = conn.query_row(
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
        // Raised before the rows go, so a reader that found them gone sees `trimmed` cover them
        // when it looks after its read (a catch-up tells its client, never skips); put back if
        // the delete fails.
        let before = shared.channels.write().get_mut(&name).map(|m| {
            let before = m.trimmed;
            m.trimmed = m.trimmed.max(cut);
            before
        });
        let deleted = (|| {
            let tx = conn.transaction()?;
            let removed = tx.execute(
                "DELETE FROM messages WHERE channel_id = ?1 AND serial <= ?2",
                params![meta.id, cut as i64],
            )?;
            tx.execute(
                "UPDATE channels SET trimmed = ?1 WHERE id = ?2",
                params![cut as i64, meta.id],
            )?;
            tx.commit()?;
            Ok::<_, rusqlite::Error>(removed)
        })();
        let removed = match deleted {
            Ok(removed) => removed,
            Err(e) => {
                if let (Some(before), Some(m)) = (before, shared.channels.write().get_mut(&name)) {
                    m.trimmed = before;
                }
                return Err(e.into());
            }
        };
        report.channels_trimmed += 1;
        report.messages_removed += removed as u64;
        tracing::debug!(channel = %name, trimmed = cut, removed, "retention applied");
    }
    Ok(report)
}

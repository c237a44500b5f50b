//! Epoch resets: a channel's history restarts under a new epoch at its current head.

use std::sync::Arc;

use rusqlite::{params, Connection};

use super::channels::{new_epoch, ChannelMeta, Shared};
use crate::channel::ChannelName;
use crate::log::{AppendObserver, LogError};

/// Give each of `channels` a new epoch in one transaction, removing its messages (a channel
/// never written is created under the new epoch), then update the in-memory table and tell
/// `observer`, only once the transaction is committed.
pub(super) fn reset(
    conn: &mut Connection,
    shared: &Shared,
    observer: &dyn AppendObserver,
    channels: &[ChannelName],
) -> Result<(), LogError> {
    let mut done = Vec::new();
    let tx = conn.transaction()?;
    for channel in channels {
        let epoch: Arc<str> = Arc::from(new_epoch());
        let existing = shared.channels.read().get(channel.as_arc()).cloned();
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
    let mut map = shared.channels.write();
    for (channel, meta) in &done {
        map.insert(channel.as_arc().clone(), meta.clone());
    }
    drop(map);
    for (channel, meta) in &done {
        tracing::warn!(channel = %channel, epoch = %meta.epoch, head = meta.head, "channel history reset: new epoch");
        observer.reset(channel, &meta.epoch, meta.head);
    }
    Ok(())
}

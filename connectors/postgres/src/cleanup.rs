//! Deleting outbox rows whose messages are durable in the log.
//!
//! The source hands over row ids only from [`Source::committed`](tidings_connectors_core::Source::committed),
//! so a row is never deleted before its message is durable. Deletes run on their own SQL
//! session, in batches, off the streaming path; the deletes are not in the publication (it
//! publishes inserts), so they never come back through the stream.
//!
//! Bounded: at most [`MAX_PENDING`] ids wait; past that, ids are dropped with a warning and
//! their rows stay in the table (harmless: they were published; delete them by age, see
//! docs/postgres.md). Ids waiting when the process dies are forgotten the same way.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::connection::{answered, within, Settings};

/// Most row ids waiting to be deleted.
pub const MAX_PENDING: usize = 1_000_000;
/// Longest pause between retries after a failed delete.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Handle to the clean-up task; dropping it lets the task finish what is queued and stop.
pub struct Cleanup {
    tx: mpsc::Sender<Vec<i64>>,
}

impl Cleanup {
    /// Delete the rows queued by [`Cleanup::durable`] from `table` (schema, table; validated
    /// identifiers), at most `batch` per
    /// statement with `pause` between statements; a session that does not answer within
    /// `limit` is replaced.
    pub fn spawn(
        settings: Settings,
        table: (&str, &str),
        batch: usize,
        pause: Duration,
        limit: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let sql = format!(
            "DELETE FROM \"{}\".\"{}\" WHERE id = ANY($1)",
            table.0, table.1
        );
        tokio::spawn(run(settings, sql, batch, pause, limit, rx));
        Cleanup { tx }
    }

    /// Queue rows whose messages are durable.
    pub fn durable(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        let n = ids.len();
        if self.tx.try_send(ids).is_err() {
            tracing::warn!(
                rows = n,
                "outbox clean-up is behind; these published rows stay in the table (delete old rows by created_at)"
            );
        }
    }
}

async fn run(
    settings: Settings,
    sql: String,
    batch: usize,
    pause: Duration,
    limit: Duration,
    mut rx: mpsc::Receiver<Vec<i64>>,
) {
    let mut pending: Vec<i64> = Vec::new();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut retry = Duration::from_millis(200);
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(ids) => pending.extend(ids),
                None => return,
            }
        }
        while open && pending.len() < batch {
            match rx.try_recv() {
                Ok(ids) => pending.extend(ids),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if pending.len() > MAX_PENDING {
            let dropped = pending.len() - MAX_PENDING;
            pending.drain(..dropped);
            tracing::warn!(
                rows = dropped,
                "outbox clean-up is behind; these published rows stay in the table"
            );
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match answered(within(limit, settings.connect_sql()).await) {
                Ok(c) => client = Some(c),
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "outbox clean-up cannot connect; will retry");
                    if !open {
                        return;
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        let take = pending.len().min(batch);
        let ids: Vec<i64> = pending[..take].to_vec();
        let c = client.as_ref().expect("connected above");
        match answered(within(limit, c.execute(sql.as_str(), &[&ids])).await) {
            Ok(deleted) => {
                pending.drain(..take);
                retry = Duration::from_millis(200);
                tracing::debug!(deleted, "outbox rows cleaned up");
                if !pending.is_empty() && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "outbox clean-up failed; will retry");
                client = None;
                if !open {
                    return;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

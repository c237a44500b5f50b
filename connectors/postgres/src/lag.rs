//! Slot lag: how many bytes of WAL the replication slot holds back, read from
//! `pg_replication_slots` every status interval on its own SQL session and handed to an
//! observer (the server turns it into the `tidings_postgres_slot_lag_bytes` gauge) and to the
//! connector's [`SlotStatus`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::connection::{answered, within, Settings};

/// One reading of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLag {
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: WAL written since the last position
    /// Tidings confirmed (made durable in its log).
    pub lag_bytes: i64,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL Postgres keeps on disk for the slot.
    pub retained_bytes: i64,
}

/// Called with each reading; must not block.
pub type LagObserver = Arc<dyn Fn(&str, SlotLag) + Send + Sync>;

/// The latest reading, shared with whoever reports the connector's status. `-1` until the
/// first reading, and while the slot cannot be read.
#[derive(Debug)]
pub struct SlotStatus {
    lag_bytes: AtomicI64,
    retained_bytes: AtomicI64,
}

impl Default for SlotStatus {
    fn default() -> Self {
        SlotStatus {
            lag_bytes: AtomicI64::new(-1),
            retained_bytes: AtomicI64::new(-1),
        }
    }
}

impl SlotStatus {
    /// The latest reading, if there is one.
    pub fn get(&self) -> Option<SlotLag> {
        let lag_bytes = self.lag_bytes.load(Ordering::Relaxed);
        (lag_bytes >= 0).then(|| SlotLag {
            lag_bytes,
            retained_bytes: self.retained_bytes.load(Ordering::Relaxed),
        })
    }

    fn set(&self, lag: Option<SlotLag>) {
        let (a, b) = lag.map_or((-1, -1), |l| (l.lag_bytes, l.retained_bytes));
        self.lag_bytes.store(a, Ordering::Relaxed);
        self.retained_bytes.store(b, Ordering::Relaxed);
    }
}

/// Reads the slot until dropped.
pub struct LagReader {
    task: tokio::task::AbortHandle,
}

impl Drop for LagReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LagReader {
    /// Read `slot` every `interval`, reporting to `status` and `observer` (as connector `name`);
    /// a session that does not answer within `limit` is replaced.
    pub fn spawn(
        name: String,
        settings: Settings,
        slot: String,
        interval: Duration,
        limit: Duration,
        status: Arc<SlotStatus>,
        observer: Option<LagObserver>,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if client
                    .as_ref()
                    .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
                {
                    client = answered(within(limit, settings.connect_sql()).await).ok();
                }
                let Some(c) = client.as_ref() else {
                    status.set(None);
                    continue;
                };
                let reading = within(
                    limit,
                    c.query_opt(
                        "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, \
                                coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    ),
                )
                .await;
                let lag = match answered(reading) {
                    Ok(Some(row)) => Some(SlotLag {
                        lag_bytes: row.get::<_, i64>(0).max(0),
                        retained_bytes: row.get::<_, i64>(1).max(0),
                    }),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::debug!(%error, "cannot read the slot's lag");
                        client = None;
                        None
                    }
                };
                status.set(lag);
                if let (Some(lag), Some(observe)) = (lag, observer.as_ref()) {
                    observe(&name, lag);
                }
            }
        });
        LagReader {
            task: task.abort_handle(),
        }
    }
}

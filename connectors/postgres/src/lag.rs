//! Slot lag: how many bytes of WAL the replication slot holds back, read from
//! `pg_replication_slots` every status interval on its own SQL session and handed to the
//! connector's status fields and gauges ([`LagReport`]).

use std::time::Duration;

use tidings_connectors_core::metrics::Unit;
use tidings_connectors_core::{ConnectorGauge, Context, StatusFields};

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

/// Where the readings go: the connector's status fields (`slot_lag_bytes`,
/// `retained_wal_bytes`; `null` until the first reading and while the slot cannot be read) and
/// its two gauges, `tidings_postgres_slot_lag_bytes` and `tidings_postgres_slot_retained_wal_bytes`
/// (a series appears at the first reading), all from the runtime's [`Context`]; and
/// `retained_wal_warning`, whether the retained WAL is above the configured threshold.
#[derive(Debug, Clone)]
pub struct LagReport {
    status: StatusFields,
    lag: ConnectorGauge,
    retained: ConnectorGauge,
    warning_bytes: i64,
}

impl LagReport {
    /// Register the gauges with `ctx`'s metrics and show the status fields as unknown; a
    /// slot retaining more than `warning_bytes` of WAL is warned about.
    pub fn new(ctx: &Context, warning_bytes: u64) -> Self {
        let report = LagReport {
            status: ctx.status.clone(),
            lag: ctx.metrics.gauge(
                "postgres_slot_lag",
                "WAL written since the position a Postgres connector last confirmed (pg_current_wal_lsn() - confirmed_flush_lsn)",
                Some(Unit::Bytes),
            ),
            retained: ctx.metrics.gauge(
                "postgres_slot_retained_wal",
                "WAL Postgres keeps for a connector's replication slot (pg_current_wal_lsn() - restart_lsn)",
                Some(Unit::Bytes),
            ),
            warning_bytes: i64::try_from(warning_bytes).unwrap_or(i64::MAX),
        };
        report.set(None);
        report
    }

    /// Whether `retained_bytes` is above the warning threshold.
    fn above(&self, retained_bytes: i64) -> bool {
        retained_bytes > self.warning_bytes
    }

    /// Report a reading, or that there is none now; the gauges keep their last value then.
    fn set(&self, lag: Option<SlotLag>) {
        self.status.set("slot_lag_bytes", lag.map(|l| l.lag_bytes));
        self.status
            .set("retained_wal_bytes", lag.map(|l| l.retained_bytes));
        self.status.set(
            "retained_wal_warning",
            lag.map(|l| self.above(l.retained_bytes)),
        );
        if let Some(lag) = lag {
            self.lag.set(lag.lag_bytes);
            self.retained.set(lag.retained_bytes);
        }
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
    /// Read `slot` every `interval`, reporting to `report`; a session that does not answer
    /// within `limit` is replaced.
    pub fn spawn(
        settings: Settings,
        slot: String,
        interval: Duration,
        limit: Duration,
        report: LagReport,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut client = None;
            // Warn once per crossing of the threshold, not at every reading above it.
            let mut warned = false;
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
                    report.set(None);
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
                if let Some(l) = lag {
                    let above = report.above(l.retained_bytes);
                    if above && !warned {
                        tracing::warn!(%slot, retained_wal_bytes = l.retained_bytes, threshold = report.warning_bytes, "the replication slot retains more WAL than retained_wal_warning: Postgres keeps it on disk until Tidings confirms it (see max_slot_wal_keep_size in docs/postgres.md)");
                    } else if !above && warned {
                        tracing::info!(%slot, retained_wal_bytes = l.retained_bytes, "the replication slot's retained WAL is back below retained_wal_warning");
                    }
                    warned = above;
                }
                report.set(lag);
            }
        });
        LagReader {
            task: task.abort_handle(),
        }
    }
}

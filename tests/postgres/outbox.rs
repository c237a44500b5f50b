//! Writing outbox rows and checking what reached the log: exactly once, in commit order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_testkit::postgres::Cluster;
use tidings_testkit::rest::history;

use crate::CATCH_UP;

/// The outbox schema and the slot on a test cluster, as `tidings migrate` sets them up.
pub trait Outbox {
    /// Apply the outbox migrations and create the slot `tidings` (as `tidings migrate` does).
    async fn migrate(&self);
    /// Apply the outbox migrations only.
    async fn migrate_without_slot(&self);
    /// `confirmed_flush_lsn` of a slot, as a number.
    async fn confirmed_flush(&self, client: &tokio_postgres::Client, slot: &str) -> u64;
}

impl Outbox for Cluster {
    async fn migrate(&self) {
        let report = tidings_connector_postgres::migrate(&self.url(), Some("tidings"))
            .await
            .expect("migrations apply");
        assert!(
            matches!(
                report.slot,
                tidings_connector_postgres::SlotOutcome::Created { .. }
                    | tidings_connector_postgres::SlotOutcome::Existed { .. }
            ),
            "{report:?}"
        );
    }

    async fn migrate_without_slot(&self) {
        tidings_connector_postgres::migrate(&self.url(), None)
            .await
            .expect("migrations apply");
    }

    async fn confirmed_flush(&self, client: &tokio_postgres::Client, slot: &str) -> u64 {
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        row.and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| tidings_connector_postgres::pgoutput::parse_lsn(&t))
            .unwrap_or(0)
    }
}

/// Wait until `channel` holds `n` messages, then make sure no more arrive; returns them.
pub async fn expect_messages(base: &str, channel: &str, n: usize) -> Vec<Value> {
    let http = reqwest::Client::new();
    // Reading back a long history takes time of its own: a millisecond per message more.
    let limit = CATCH_UP + Duration::from_millis(n as u64);
    let deadline = Instant::now() + limit;
    loop {
        let items = history(&http, base, channel).await;
        if items.len() >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{channel}: {} of {n} messages after {limit:?}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give duplicates, if any, the chance to show.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let items = history(&http, base, channel).await;
    assert_eq!(
        items.len(),
        n,
        "{channel}: more messages than rows committed"
    );
    items
}

/// The commit LSN a derived message id names (`pg:<lsn>:<index>`).
pub fn commit_lsn_of(id: &str) -> (u64, u64) {
    let mut parts = id.split(':');
    assert_eq!(parts.next(), Some("pg"), "{id}");
    let lsn = tidings_connector_postgres::pgoutput::parse_lsn(parts.next().unwrap()).unwrap();
    (lsn, parts.next().unwrap().parse().unwrap())
}

/// Every `(txn, k)` exactly once, transactions in order, rows of one transaction together.
pub fn assert_exactly_once_in_order(items: &[Value], txns: u64, rows_per_txn: u64) {
    let got: Vec<(u64, u64)> = items
        .iter()
        .map(|m| {
            (
                m["data"]["txn"].as_u64().unwrap(),
                m["data"]["k"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = (0..txns)
        .flat_map(|t| (0..rows_per_txn).map(move |k| (t, k)))
        .collect();
    if got != expected {
        let mut seen = HashMap::new();
        for g in &got {
            *seen.entry(*g).or_insert(0) += 1;
        }
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| !seen.contains_key(e))
            .take(5)
            .collect();
        panic!(
            "not exactly once in commit order: {} messages for {} rows; duplicated {dups:?}; missing {missing:?}",
            got.len(),
            expected.len()
        );
    }
}

/// Commit `txns` transactions of `rows` outbox rows each on `channel`, one after another,
/// from `first` on. Retries a transaction that failed to commit because the server went away
/// (it was not committed, so it is not a duplicate).
pub async fn write_txns(cluster_url: &str, channel: &str, first: u64, txns: u64, rows: u64) {
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(cluster_url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(c)
    };
    let mut client = None;
    let mut txn = first;
    while txn < first + txns {
        if client.is_none() {
            client = connect().await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let c: &mut tokio_postgres::Client = client.as_mut().unwrap();
        let result = async {
            let tx = c.transaction().await?;
            for k in 0..rows {
                tx.execute(
                    "INSERT INTO tidings.outbox (channel, name, data) VALUES ($1, 'row', jsonb_build_object('txn', $2::bigint, 'k', $3::bigint))",
                    &[&channel, &(txn as i64), &(k as i64)],
                )
                .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => txn += 1,
            Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

//! A large transaction goes through within the memory budget.

use std::time::Instant;

use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::tidings_exe;

use crate::outbox::{assert_exactly_once_in_order, expect_messages, Outbox};

/// The issue asks for 1,000,000 rows; CI runs 100,000 (set TIDINGS_TEST_LARGE_TXN_ROWS to
/// run more) and checks the process stays within a memory budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_transaction_goes_through_within_the_memory_budget() {
    let rows: i64 = std::env::var("TIDINGS_TEST_LARGE_TXN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pg = Cluster::start();
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &pg.url()]).await;
    let c = pg.sql().await;
    let started = Instant::now();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) SELECT 'big:1', 'row', jsonb_build_object('txn', 0, 'k', g, 'pad', repeat('p', 100)) FROM generate_series(0, $1::bigint - 1) g",
        &[&rows],
    )
    .await
    .unwrap();
    let committed = started.elapsed();
    let items = expect_messages(&tidings.http(), "big:1", rows as usize).await;
    let delivered = started.elapsed();
    assert_exactly_once_in_order(&items, 1, rows as u64);
    let peak_mib = tidings.peak_rss_kib() / 1024;
    eprintln!(
        "large transaction: {rows} rows committed in {committed:?}, in the log (and read back) after {delivered:?}; tidings peak RSS {peak_mib} MiB"
    );
    assert!(
        peak_mib < 512,
        "tidings peaked at {peak_mib} MiB for a {rows}-row transaction"
    );
}

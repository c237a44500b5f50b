//! Exactly once across a killed server, a killed walsender and a Postgres restart.

use std::time::{Duration, Instant};

use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::rest::history;
use tidings_testkit::tidings_exe;

use crate::in_process::InProcess;
use crate::outbox::{assert_exactly_once_in_order, expect_messages, write_txns, Outbox};
use crate::CATCH_UP;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_then_restart_delivers_every_row_exactly_once() {
    let pg = Cluster::start();
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let mut tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &url]).await;
    let (txns, rows) = (1500u64, 2u64);
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_txns(&url, "kill:1", 0, txns, rows).await }
    });
    // Kill it while rows are streaming in.
    let http = reqwest::Client::new();
    let base = tidings.http();
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let n = history(&http, &base, "kill:1").await.len();
        if n >= 400 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} messages arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tidings.kill9().await;
    writer.await.unwrap();
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &url]).await;
    let items = expect_messages(&tidings.http(), "kill:1", (txns * rows) as usize).await;
    assert_exactly_once_in_order(&items, txns, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walsender_terminated_reconnects_and_resumes_without_loss_or_duplicates() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;
    let url = pg.url();
    let (txns, rows) = (600u64, 3u64);
    let writer = tokio::spawn(async move { write_txns(&url, "term:1", 0, txns, rows).await });
    let admin = pg.sql().await;
    let mut terminated = 0;
    let deadline = Instant::now() + CATCH_UP;
    while terminated < 3 {
        assert!(Instant::now() < deadline, "the walsender never came back");
        let killed: Option<bool> = admin
            .query_one(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'tidings' AND active_pid IS NOT NULL",
                &[],
            )
            .await
            .ok()
            .map(|r| r.get(0));
        if killed == Some(true) {
            terminated += 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    writer.await.unwrap();
    let items = expect_messages(&t.http(), "term:1", (txns * rows) as usize).await;
    assert_exactly_once_in_order(&items, txns, rows);
    t.server.shutdown();
    t.server.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_resumes_without_loss_or_duplicates() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;
    let url = pg.url();
    write_txns(&url, "restart:1", 0, 100, 2).await;
    expect_messages(&t.http(), "restart:1", 200).await;
    // Restart while a writer keeps committing: some of its commits land before the restart,
    // the rest after, and the stream must pick up every one of them once.
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_txns(&url, "restart:1", 100, 300, 2).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pg.restart();
    writer.await.unwrap();
    let items = expect_messages(&t.http(), "restart:1", 800).await;
    assert_exactly_once_in_order(&items, 400, 2);
    t.server.shutdown();
    t.server.wait().await;
}

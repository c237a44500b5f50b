//! Channel order is the source's commit order, and a commit reaches the log at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tidings_testkit::postgres::Cluster;
use tidings_testkit::rest::history;

use crate::in_process::InProcess;
use crate::outbox::{commit_lsn_of, expect_messages, write_txns, Outbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_order_follows_commit_order_across_interleaved_transactions() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;

    // Two transactions, interleaved: A inserts first, B commits first.
    let mut a = pg.sql().await;
    let mut b = pg.sql().await;
    let ta = a.transaction().await.unwrap();
    let tb = b.transaction().await.unwrap();
    let ins = "INSERT INTO tidings.outbox (channel, name, data) VALUES ('orders:1', $1, '{}')";
    ta.execute(ins, &[&"a0"]).await.unwrap();
    tb.execute(ins, &[&"b0"]).await.unwrap();
    ta.execute(ins, &[&"a1"]).await.unwrap();
    tb.execute(ins, &[&"b1"]).await.unwrap();
    tb.commit().await.unwrap();
    ta.commit().await.unwrap();
    let items = expect_messages(&t.http(), "orders:1", 4).await;
    let names: Vec<&str> = items.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["b0", "b1", "a0", "a1"],
        "commit order, not insert order"
    );

    // Many concurrent writers with interleaved transactions of three rows each.
    let (tasks, txns, rows) = (6u64, 40u64, 3u64);
    let mut writers = Vec::new();
    for task in 0..tasks {
        let url = pg.url();
        writers.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for txn in 0..txns {
                let tx = c.transaction().await.unwrap();
                for k in 0..rows {
                    tx.execute(
                        "INSERT INTO tidings.outbox (channel, data) VALUES ('orders:2', jsonb_build_object('task', $1::bigint, 'txn', $2::bigint, 'k', $3::bigint))",
                        &[&(task as i64), &(txn as i64), &(k as i64)],
                    )
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis((task + k) % 3)).await;
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let items = expect_messages(&t.http(), "orders:2", (tasks * txns * rows) as usize).await;
    let mut last_txn_of_task: BTreeMap<u64, i64> = BTreeMap::new();
    let mut last_commit = 0u64;
    let mut i = 0;
    while i < items.len() {
        // A transaction's rows are contiguous, in insert order, under one commit LSN.
        let first = &items[i]["data"];
        let (task, txn) = (
            first["task"].as_u64().unwrap(),
            first["txn"].as_u64().unwrap(),
        );
        let (commit, _) = commit_lsn_of(items[i]["id"].as_str().unwrap());
        assert!(
            commit > last_commit,
            "commit LSNs increase along the channel"
        );
        last_commit = commit;
        for k in 0..rows {
            let m = &items[i + k as usize];
            assert_eq!(
                (
                    m["data"]["task"].as_u64(),
                    m["data"]["txn"].as_u64(),
                    m["data"]["k"].as_u64()
                ),
                (Some(task), Some(txn), Some(k)),
                "rows of one transaction stay together and in order"
            );
            assert_eq!(commit_lsn_of(m["id"].as_str().unwrap()), (commit, k));
        }
        let last = last_txn_of_task.entry(task).or_insert(-1);
        assert_eq!(
            *last + 1,
            txn as i64,
            "each writer's transactions in its order"
        );
        *last = txn as i64;
        i += rows as usize;
    }
    assert!(last_txn_of_task.values().all(|t| *t == txns as i64 - 1));

    // Published rows are deleted once durable.
    let c = pg.sql().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = c
            .query_one("SELECT count(*) FROM tidings.outbox", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} published rows were not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.server.shutdown();
    t.server.wait().await;
}

/// A transaction is handed to the log as soon as its commit arrives: it never waits for the
/// next event from Postgres (which, on a quiet database, may be a keepalive many seconds later).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_transaction_reaches_the_log_without_waiting_for_the_next_one() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |c| c.status_interval = Duration::from_secs(30)).await;
    write_txns(&pg.url(), "lone:0", 0, 1, 1).await;
    expect_messages(&t.http(), "lone:0", 1).await;
    let http = reqwest::Client::new();
    for k in 1..=3u64 {
        let channel = format!("lone:{k}");
        let started = Instant::now();
        write_txns(&pg.url(), &channel, 0, 1, 1).await;
        loop {
            if !history(&http, &t.http(), &channel).await.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{channel}: a committed row was not in the log after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Quiet in between, so nothing but keepalives follows each commit.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    t.server.shutdown();
    t.server.wait().await;
}

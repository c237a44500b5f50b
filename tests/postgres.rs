//! The Postgres outbox connector against a real Postgres cluster (started from the system's
//! binaries by `support::Cluster`): commit order, exactly once across crashes, restarts and a
//! killed walsender, slot loss, poison rows, idle WAL, and a large transaction.

mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{channel_epoch, connector_status, history, KEY};
use serde_json::Value;
use support::{Cluster, Tidings};
use tidings::config::Config;
use tidings::config::ConnectorConfig;
use tidings::runtime::Server;
use tidings_connector_postgres::{ConnectionUrl, PostgresConfig};

/// How long a test waits for the stream to catch up.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A server in this process with one Postgres connector named `pg`.
struct InProcess {
    server: Server,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(cluster: &Cluster, adjust: impl FnOnce(&mut PostgresConfig)) -> InProcess {
        Self::start_named("pg", cluster, adjust).await
    }

    /// Like [`InProcess::start`], with the connector named `name` (process-wide metrics are
    /// labelled by connector name, so a test reading them needs its own).
    async fn start_named(
        name: &str,
        cluster: &Cluster,
        adjust: impl FnOnce(&mut PostgresConfig),
    ) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.add_api_key(KEY).unwrap();
        let mut pg = PostgresConfig::with_defaults(ConnectionUrl::new(cluster.url()));
        pg.status_interval = Duration::from_millis(500);
        pg.cleanup_interval = Duration::from_millis(10);
        adjust(&mut pg);
        config
            .connectors
            .insert(name.into(), ConnectorConfig::Postgres(pg));
        let server = Server::start(config).await.unwrap();
        InProcess { server, _dir: dir }
    }

    fn http(&self) -> String {
        format!("http://{}", self.server.addr())
    }
}

/// Wait until `channel` holds `n` messages, then make sure no more arrive; returns them.
async fn expect_messages(base: &str, channel: &str, n: usize) -> Vec<Value> {
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
fn commit_lsn_of(id: &str) -> (u64, u64) {
    let mut parts = id.split(':');
    assert_eq!(parts.next(), Some("pg"), "{id}");
    let lsn = tidings_connector_postgres::pgoutput::parse_lsn(parts.next().unwrap()).unwrap();
    (lsn, parts.next().unwrap().parse().unwrap())
}

/// Every `(txn, k)` exactly once, transactions in order, rows of one transaction together.
fn assert_exactly_once_in_order(items: &[Value], txns: u64, rows_per_txn: u64) {
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
async fn write_txns(cluster_url: &str, channel: &str, first: u64, txns: u64, rows: u64) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_then_restart_delivers_every_row_exactly_once() {
    let pg = Cluster::start();
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let mut tidings = Tidings::serve(data.path(), &["--postgres", &url]).await;
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
    let tidings = Tidings::serve(data.path(), &["--postgres", &url]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_slot_stops_the_server_with_what_was_lost_and_the_fix() {
    let pg = Cluster::start();
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let mut tidings = Tidings::serve(data.path(), &["--postgres", &url]).await;
    write_txns(&url, "slot:1", 0, 3, 1).await;
    expect_messages(&tidings.http(), "slot:1", 3).await;
    std::process::Command::new("kill")
        .args(["-TERM", &tidings.pid().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), tidings.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a clean shutdown");

    let admin = pg.sql().await;
    admin
        .execute("SELECT pg_drop_replication_slot('tidings')", &[])
        .await
        .unwrap();
    write_txns(&url, "slot:1", 3, 2, 1).await;

    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &url]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success(), "a lost slot is a failure");
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(lines.contains("does not exist"), "{lines}");
    assert!(lines.contains("can no longer be streamed"), "{lines}");
    assert!(lines.contains("on_slot_lost"), "{lines}");
    // It did not quietly create a new slot and carry on.
    let slots: i64 = admin
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);

    // Recreating the slot by hand does not make the hole go away: the slot is past the
    // checkpoint, and Tidings still refuses to resume across it.
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot('tidings', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
    write_txns(&url, "slot:1", 5, 1, 1).await;
    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &url]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success(), "a slot past the checkpoint is a failure");
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("but this connector's checkpoint is at LSN"),
        "{lines}"
    );
    assert!(lines.contains("on_slot_lost"), "{lines}");
}

/// The recovery the error points to: `on_slot_lost = "recreate"`, and clients holding the old
/// history are told continuity was lost (a new epoch) instead of resuming across the hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovering_from_a_dropped_slot_gives_its_channels_a_new_epoch() {
    let pg = Cluster::start();
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let config = data.path().join("tidings.toml");
    std::fs::write(
        &config,
        format!("[connectors.postgres]\ntype = \"postgres\"\nurl = \"{url}\"\non_slot_lost = \"recreate\"\nstatus_interval = \"500ms\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let mut tidings = Tidings::serve(data.path(), &["--config", config]).await;
    write_txns(&url, "slot:1", 0, 3, 1).await;
    write_txns(&url, "untouched:1", 0, 1, 1).await;
    expect_messages(&tidings.http(), "slot:1", 3).await;
    expect_messages(&tidings.http(), "untouched:1", 1).await;
    let before = channel_epoch(&tidings.http(), "slot:1").await;
    tidings.kill9().await;

    let admin = pg.sql().await;
    admin
        .execute("SELECT pg_drop_replication_slot('tidings')", &[])
        .await
        .unwrap();
    // Committed while there is no slot: lost, which is why the channel gets a new epoch.
    write_txns(&url, "slot:1", 3, 2, 1).await;

    let tidings = Tidings::serve(data.path(), &["--config", config]).await;
    let slot_back = wait_for_slot(&admin, "tidings").await;
    assert!(slot_back, "the connector created the slot again");
    write_txns(&url, "slot:1", 5, 2, 1).await;
    let items = expect_messages(&tidings.http(), "slot:1", 2).await;
    let txns: Vec<u64> = items
        .iter()
        .map(|m| m["data"]["txn"].as_u64().unwrap())
        .collect();
    assert_eq!(
        txns,
        [5, 6],
        "the new history holds what was committed after recovery"
    );
    let after = channel_epoch(&tidings.http(), "slot:1").await;
    assert_ne!(before, after, "slot:1 has a new epoch");
    // A channel with no message in the hole is reset too: the connector cannot know what the
    // lost WAL held, so every channel it published to restarts.
    assert_ne!(
        channel_epoch(&tidings.http(), "untouched:1").await,
        before,
        "untouched:1 has a new epoch"
    );
    // A client resuming from the old history is told continuity was lost.
    let ws = format!("ws://{}/v1/connect", tidings.addr.as_deref().unwrap());
    let mut client = common::Client::connect(&ws, Some(KEY)).await;
    let attached = client
        .attach(
            "slot:1",
            serde_json::json!({"from": {"epoch": before, "serial": 3}}),
        )
        .await;
    assert_eq!(attached["resumed"], false, "{attached}");
    assert_eq!(attached["reason"], "epoch_changed", "{attached}");
    assert_eq!(attached["epoch"], after.as_str(), "{attached}");
    assert!(tidings
        .logged("replication slot lost changes; its channels get a new epoch and clients resync")
        .iter()
        .any(|l| l["loss"] == "dropped"));
}

/// The slot dropped under a running connector (walsender terminated first, as an operator
/// would have to): with `on_slot_lost = "recreate"` it recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_dropped_while_streaming_is_recreated_and_its_channels_reset() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |c| {
        c.on_slot_lost = tidings_connector_postgres::OnSlotLost::Recreate;
    })
    .await;
    write_txns(&pg.url(), "live:1", 0, 2, 1).await;
    expect_messages(&t.http(), "live:1", 2).await;
    let before = t
        .server
        .log()
        .state(&tidings::channel::ChannelName::parse("live:1").unwrap())
        .epoch;
    let admin = pg.sql().await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'tidings' AND active_pid IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        if admin
            .execute("SELECT pg_drop_replication_slot('tidings')", &[])
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_for_slot(&admin, "tidings").await, "recreated");
    write_txns(&pg.url(), "live:1", 2, 2, 1).await;
    let items = expect_messages(&t.http(), "live:1", 2).await;
    assert_eq!(items[0]["data"]["txn"], 2, "{items:?}");
    assert_ne!(
        t.server
            .log()
            .state(&tidings::channel::ChannelName::parse("live:1").unwrap())
            .epoch,
        before,
        "a new epoch"
    );
    t.server.shutdown();
    t.server.wait().await;
}

/// Wait until `slot` exists.
async fn wait_for_slot(admin: &tokio_postgres::Client, slot: &str) -> bool {
    let deadline = Instant::now() + CATCH_UP;
    while Instant::now() < deadline {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_wal_level_and_missing_replication_role_refuse_to_start_with_the_fix() {
    let pg = Cluster::start_with("wal_level = replica");
    pg.migrate_without_slot().await;
    let data = tempfile::tempdir().unwrap();
    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &pg.url()]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success());
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(lines.contains("wal_level is \\\"replica\\\""), "{lines}");
    assert!(
        lines.contains("ALTER SYSTEM SET wal_level = logical"),
        "{lines}"
    );

    let pg = Cluster::start();
    pg.migrate().await;
    let admin = pg.sql().await;
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'app-password'")
        .await
        .unwrap();
    let url = format!(
        "postgres://app:app-password@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &url]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success());
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(lines.contains("may not start replication"), "{lines}");
    assert!(
        lines.contains("ALTER ROLE \\\"app\\\" REPLICATION"),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_rows_go_to_the_dead_letter_channel_and_the_stream_goes_on() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;
    let c = pg.sql().await;
    let big = "x".repeat(70 * 1024);
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('ok:1', 'before', '1')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('has space', 'bad-channel', '2')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('ok:1', 'too-big', to_jsonb($1::text))",
        &[&big],
    )
    .await
    .unwrap();
    c.batch_execute(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'tidings', '{\"data\": 1}');
         SELECT pg_logical_emit_message(true, 'tidings', 'not json');
         SELECT pg_logical_emit_message(true, 'tidings', '{\"channel\": \"ok:1\", \"name\": \"emitted\", \"data\": {\"via\": \"message\"}}');
         SELECT pg_logical_emit_message(true, 'someone-else', '{\"channel\": \"ok:1\"}');
         COMMIT;",
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('ok:1', 'after', '3')",
        &[],
    )
    .await
    .unwrap();
    let ok = expect_messages(&t.http(), "ok:1", 3).await;
    let names: Vec<&str> = ok.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["before", "emitted", "after"]);
    assert_eq!(ok[1]["data"]["via"], "message");
    let dead = expect_messages(&t.http(), "dead:pg", 4).await;
    let errors: Vec<String> = dead
        .iter()
        .map(|m| m["data"]["error"].as_str().unwrap().to_owned())
        .collect();
    assert!(errors[0].contains("invalid channel"), "{errors:?}");
    assert!(errors[1].contains("bytes; the limit is"), "{errors:?}");
    assert!(errors[2].contains("no `channel`"), "{errors:?}");
    assert!(errors[3].contains("not a JSON object"), "{errors:?}");
    assert!(dead.iter().all(|m| m["name"] == "dead_letter"));
    t.server.shutdown();
    t.server.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_outbox_on_a_busy_database_still_advances_confirmed_flush() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;
    let c = pg.sql().await;
    c.batch_execute("CREATE TABLE other (x int)").await.unwrap();
    write_txns(&pg.url(), "idle:1", 0, 1, 1).await;
    expect_messages(&t.http(), "idle:1", 1).await;
    for i in 0..200 {
        c.execute("INSERT INTO other VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let target: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let target = tidings_connector_postgres::pgoutput::parse_lsn(&target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let confirmed = pg.confirmed_flush(&c, "tidings").await;
        if confirmed >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stayed at {confirmed:X} below {target:X} while only other tables wrote"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.server.shutdown();
    t.server.wait().await;
}

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
    let tidings = Tidings::serve(data.path(), &["--postgres", &pg.url()]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_command_is_idempotent_and_creates_the_slot() {
    let pg = Cluster::start();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["migrate", "--postgres", &pg.url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("applied migrations [1, 2]"), "{first}");
    assert!(
        first.contains("created replication slot tidings"),
        "{first}"
    );
    let second = run();
    assert!(second.contains("up to date (migration 2)"), "{second}");
    assert!(
        second.contains("replication slot tidings exists"),
        "{second}"
    );
    let c = pg.sql().await;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM tidings.outbox), (SELECT array_agg(pubinsert::text || pubupdate::text || pubdelete::text) FROM pg_publication WHERE pubname = 'tidings_outbox')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["truefalsefalse".to_string()],
        "the publication publishes inserts only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_verify_full_streams_and_a_wrong_ca_is_refused() {
    let pg = Cluster::start_tls();
    pg.migrate().await;
    let url = pg.tls_url("verify-full");
    let t = InProcess::start(&pg, |c| c.url = ConnectionUrl::new(url.clone())).await;
    write_txns(&pg.url(), "tls:1", 0, 3, 1).await;
    expect_messages(&t.http(), "tls:1", 3).await;
    // Both of the connector's sessions are encrypted: the walsender and the SQL session.
    let c = pg.sql().await;
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE a.backend_type = 'walsender'), bool_and(s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tidings'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "one walsender for the connector");
    assert_eq!(
        row.get::<_, Option<bool>>(1),
        Some(true),
        "every connector session uses TLS"
    );
    t.server.shutdown();
    t.server.wait().await;

    // A CA that did not sign the server's certificate: the connector stops, saying why.
    let other = tempfile::tempdir().unwrap();
    let ca = other.path().join("other-ca.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(other.path().join("k"))
        .arg("-out")
        .arg(&ca)
        .args(["-days", "2", "-subj", "/CN=someone else"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let bad = format!(
        "postgres://{}:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        support::USER,
        support::PASSWORD,
        pg.port,
        ca.display()
    );
    let data = tempfile::tempdir().unwrap();
    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &bad]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success());
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(lines.contains("sslrootcert"), "{lines}");
}

/// `tidings_postgres_slot_lag_bytes{connector}` from `GET /metrics`.
async fn slot_lag(base: &str, connector: &str) -> Option<i64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("tidings_postgres_slot_lag_bytes{{connector=\"{connector}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

/// Slot lag is reported, grows while the connector cannot confirm, and falls once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slot_lag_is_a_metric_that_grows_while_behind_and_falls_after() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start_named("lagged", &pg, |_| {}).await;
    write_txns(&pg.url(), "lag:1", 0, 1, 1).await;
    expect_messages(&t.http(), "lag:1", 1).await;
    let first = wait_for_lag(&t.http(), |_| true).await;
    assert!(first < 1 << 20, "caught up, yet {first} bytes behind");
    // The same reading in the connector's status.
    let me = connector_status(&t.http(), "lagged").await;
    assert_eq!(me["type"], "postgres");
    assert!(me["slot_lag_bytes"].as_i64().is_some(), "{me}");
    assert!(me["retained_wal_bytes"].as_i64().is_some(), "{me}");

    // Hold the connector back: it records a new channel before handing out its first
    // message, and that table is locked. Meanwhile other tables write 8 MB of WAL.
    let mut blocker = pg.sql().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE tidings.connector_channels IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    write_txns(&pg.url(), "lag:2", 0, 1, 1).await;
    let c = pg.sql().await;
    c.batch_execute(
        "CREATE TABLE filler (x text); INSERT INTO filler SELECT repeat('f', 1000) FROM generate_series(1, 8000)",
    )
    .await
    .unwrap();
    let behind = wait_for_lag(&t.http(), |lag| lag > 8_000_000).await;
    let status = connector_status(&t.http(), "lagged").await;
    assert!(
        status["slot_lag_bytes"]
            .as_i64()
            .is_some_and(|l| l > 8_000_000),
        "the status shows the lag too: {status}"
    );
    lock.rollback().await.unwrap();
    expect_messages(&t.http(), "lag:2", 1).await;
    let caught_up = wait_for_lag(&t.http(), |lag| lag < 1 << 20).await;
    eprintln!("slot lag: {first} B caught up, {behind} B held back, {caught_up} B after");
    t.server.shutdown();
    t.server.wait().await;
}

/// Poll the `lagged` connector's lag until `ok` holds; returns that reading.
async fn wait_for_lag(base: &str, ok: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + CATCH_UP;
    let mut last = None;
    while Instant::now() < deadline {
        last = slot_lag(base, "lagged").await;
        if let Some(lag) = last.filter(|l| ok(*l)) {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slot lag never reached the expected value; last reading {last:?}");
}

/// Plain table capture: every table of the publication becomes normalized row-change
/// messages routed by a template over its columns; Postgres types map to JSON without loss;
/// an unchanged TOASTed value is marked, never nulled; REPLICA IDENTITY FULL gives `before`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_of_the_publication_become_normalized_row_changes() {
    let pg = Cluster::start();
    pg.migrate().await;
    let c = pg.sql().await;
    c.batch_execute(
        "CREATE TABLE public.products (
             id bigint PRIMARY KEY, store_id int NOT NULL, name text, price numeric(10,2),
             tags text[], sizes int[], attrs jsonb, photo bytea, updated timestamptz, made timestamp,
             big int8, small int8, flag bool, ratio float8, day date, uid uuid, note text, blob text);
         ALTER TABLE public.products REPLICA IDENTITY FULL;
         CREATE TABLE public.lines (id int PRIMARY KEY, store_id int NOT NULL, qty int);
         CREATE PUBLICATION shop FOR TABLE public.products, public.lines, tidings.outbox;
         ALTER ROLE tidings SET TimeZone = 'Asia/Kolkata';
         ALTER ROLE tidings SET DateStyle = 'SQL, DMY';
         ALTER ROLE tidings SET bytea_output = 'escape';",
    )
    .await
    .unwrap();
    let t = InProcess::start(&pg, |cfg| {
        cfg.publication = "shop".into();
        cfg.channel = Some("products:{store_id}".into());
    })
    .await;
    // The writer's time zone is not UTC: the connector's own session settings decide how
    // timestamptz values read (UTC), whatever the server or the writer use.
    c.batch_execute(
        "SET TIME ZONE 'Asia/Kolkata';
         SET DateStyle = 'SQL, DMY';
         SET search_path = public;
         BEGIN;
         INSERT INTO products VALUES (1, 7, 'Lamp', 12.50, '{\"a b\",NULL,\"c\\\"d\"}', '{{1,2},{3,4}}',
             '{\"color\": \"red\", \"n\": [1, 2]}', '\\x00ff10', '2024-01-02 03:04:05.123456+00',
             '2024-01-02 03:04:05', 9007199254740991, 9007199254740993, true, 0.25, '2024-02-29',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL,
             (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g));
         INSERT INTO tidings.outbox (channel, name, data) VALUES ('products:7', 'outbox', '{}');
         COMMIT;
         UPDATE products SET price = 13.00 WHERE id = 1;
         DELETE FROM products WHERE id = 1;
         INSERT INTO lines VALUES (10, 7, 2);
         DELETE FROM lines WHERE id = 10;
         TRUNCATE lines;",
    )
    .await
    .unwrap();
    let items = expect_messages(&t.http(), "products:7", 5).await;
    let names: Vec<&str> = items.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["insert", "outbox", "update", "delete", "insert"]);

    let insert = &items[0]["data"];
    assert_eq!(insert["op"], "insert");
    assert_eq!(
        insert["ns"],
        serde_json::json!({"schema": "public", "table": "products"})
    );
    assert_eq!(
        insert["key"],
        serde_json::json!({"id": 1}),
        "the primary key, not every column"
    );
    let doc = &insert["document"];
    assert_eq!(doc["id"], 1);
    assert_eq!(doc["store_id"], 7);
    assert_eq!(doc["name"], "Lamp");
    assert_eq!(doc["price"], "12.50", "numeric as a string");
    assert_eq!(doc["tags"], serde_json::json!(["a b", null, "c\"d"]));
    assert_eq!(doc["sizes"], serde_json::json!([[1, 2], [3, 4]]));
    assert_eq!(
        doc["attrs"],
        serde_json::json!({"color": "red", "n": [1, 2]})
    );
    assert_eq!(doc["photo"], "AP8Q", "bytea as base64");
    assert_eq!(doc["updated"], "2024-01-02T03:04:05.123456+00:00");
    assert_eq!(doc["made"], "2024-01-02T03:04:05");
    assert_eq!(doc["big"], 9007199254740991_i64);
    assert_eq!(doc["small"], "9007199254740993", "beyond 2^53 as a string");
    assert_eq!(doc["flag"], true);
    assert_eq!(doc["ratio"], 0.25);
    assert_eq!(doc["day"], "2024-02-29");
    assert_eq!(doc["uid"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert!(
        doc["note"].is_null() && doc.get("note").is_some(),
        "NULL stays null"
    );
    assert_eq!(doc["blob"].as_str().unwrap().len(), 32_000);
    assert!(insert["before"].is_null());
    assert!(insert["commit_time"].as_str().unwrap().ends_with('Z'));

    // The update left the TOASTed `blob` alone: no document, the other columns as updated
    // fields, `blob` marked unchanged; never a null.
    let update = &items[2]["data"];
    assert_eq!(update["op"], "update");
    assert!(update["document"].is_null(), "{update}");
    assert_eq!(update["updated_fields"]["price"], "13.00");
    assert!(update["updated_fields"].get("blob").is_none(), "{update}");
    assert_eq!(update["unchanged_toast"], serde_json::json!(["blob"]));
    assert_eq!(update["key"], serde_json::json!({"id": 1}));
    assert_eq!(
        update["before"]["price"], "12.50",
        "FULL identity gives the old row"
    );

    let delete = &items[3]["data"];
    assert_eq!(delete["op"], "delete");
    assert_eq!(delete["key"], serde_json::json!({"id": 1}));
    assert!(delete["document"].is_null());
    assert_eq!(delete["before"]["name"], "Lamp");

    // `lines` has the default identity: an insert routes, a delete carries only the key, so
    // `{store_id}` does not resolve and the delete goes to the dead letter, saying why.
    assert_eq!(items[4]["data"]["ns"]["table"], "lines");
    assert_eq!(items[4]["data"]["key"], serde_json::json!({"id": 10}));
    let dead = expect_messages(&t.http(), "dead:pg", 1).await;
    let error = dead[0]["data"]["error"].as_str().unwrap();
    assert!(error.contains("REPLICA IDENTITY FULL"), "{error}");
    let control = expect_messages(&t.http(), "postgres:pg", 1).await;
    assert_eq!(control[0]["name"], "truncate");
    assert_eq!(control[0]["data"]["ns"]["table"], "lines");
    t.server.shutdown();
    t.server.wait().await;
}

/// Whether every session of the connector (application_name `tidings`) uses TLS, and how
/// many there are.
async fn connector_sessions_tls(c: &tokio_postgres::Client) -> (i64, Option<bool>) {
    let row = c
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'tidings'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `prefer`, `require` and `verify-ca` against a server with TLS: each streams, encrypted.
/// `verify-ca` checks the chain but not the name (the certificate names `localhost`, the URL
/// says 127.0.0.1), which `verify-full` refuses. Against a server without TLS, `prefer` falls
/// back to plain and `require` stops with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sslmodes_prefer_require_and_verify_ca_behave_as_libpq() {
    let pg = Cluster::start_tls();
    pg.migrate().await;
    let admin = pg.sql().await;
    let by_ip = |mode: &str| {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres?sslmode={mode}&sslrootcert={}",
            support::USER,
            support::PASSWORD,
            pg.port,
            pg.ca_pem().display()
        )
    };
    for (n, mode) in ["prefer", "require", "verify-ca"].into_iter().enumerate() {
        let url = by_ip(mode);
        let t = InProcess::start(&pg, |c| c.url = ConnectionUrl::new(url.clone())).await;
        let channel = format!("ssl:{n}");
        write_txns(&pg.url(), &channel, 0, 2, 1).await;
        expect_messages(&t.http(), &channel, 2).await;
        let (sessions, all_tls) = connector_sessions_tls(&admin).await;
        assert!(sessions >= 2, "{mode}: {sessions} sessions");
        assert_eq!(
            all_tls,
            Some(true),
            "{mode}: every connector session uses TLS"
        );
        t.server.shutdown();
        t.server.wait().await;
        // Let the sessions of this run end before the next mode counts its own.
        let deadline = Instant::now() + CATCH_UP;
        while connector_sessions_tls(&admin).await.0 > 0 {
            assert!(Instant::now() < deadline, "{mode}: sessions linger");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // verify-full checks the host name: 127.0.0.1 is not in the certificate.
    let data = tempfile::tempdir().unwrap();
    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &by_ip("verify-full")]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success());
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(lines.contains("sslrootcert"), "{lines}");

    // A server without TLS.
    let plain = Cluster::start();
    plain.migrate().await;
    let prefer = plain.url().replace("sslmode=disable", "sslmode=prefer");
    let t = InProcess::start(&plain, |c| c.url = ConnectionUrl::new(prefer.clone())).await;
    write_txns(&plain.url(), "plain:1", 0, 2, 1).await;
    expect_messages(&t.http(), "plain:1", 2).await;
    let (sessions, all_tls) = connector_sessions_tls(&plain.sql().await).await;
    assert!(sessions >= 2);
    assert_eq!(all_tls, Some(false), "prefer falls back to plain");
    t.server.shutdown();
    t.server.wait().await;
    let require = plain.url().replace("sslmode=disable", "sslmode=require");
    let data = tempfile::tempdir().unwrap();
    let mut tidings = Tidings::spawn(data.path(), &["--postgres", &require]);
    let status = tokio::time::timeout(Duration::from_secs(30), tidings.child.wait())
        .await
        .expect("tidings stops by itself")
        .unwrap();
    assert!(!status.success());
    let lines = tidings.lines.lock().unwrap().join("\n");
    assert!(lines.contains("server does not support TLS"), "{lines}");
    assert!(lines.contains("ssl = on"), "{lines}");
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

/// A TCP proxy between the connector and Postgres that can cut the network under it. It knows
/// which of its connections are replication sessions (their startup packet asks for
/// `replication`), counts the bytes Postgres sends on each, and can cut every connection at
/// once, abortively (an RST both ways, no FIN: nothing is flushed or closed in order), and
/// refuse new ones for a while; or stall every connection open at once: nothing more is
/// passed on either way and nothing is closed, as when a NAT or firewall drops its state.
/// `common::Proxy` stands in front of Tidings' clients and cuts on demand only; this one
/// watches the Postgres side and cuts at a byte count, from inside the copy, so a cut lands
/// in the middle of a transaction on the wire.
struct PgProxy {
    addr: std::net::SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    refusing: AtomicBool,
    refused: AtomicU64,
    /// Bytes from Postgres on replication connections, all together.
    replication_total: AtomicU64,
    /// Bytes from Postgres on each replication connection, in the order they opened.
    replication: Mutex<Vec<Arc<AtomicU64>>>,
    /// Cut once `replication_total` reaches this (0: not armed).
    cut_at: AtomicU64,
    /// Bumped by each cut; every connection open at that moment is cut.
    cut: tokio::sync::watch::Sender<u64>,
    /// Bumped by each stall; every connection open at that moment is stalled.
    stall: tokio::sync::watch::Sender<u64>,
    /// The sockets of stalled connections, kept open and never read again.
    stalled: Mutex<Vec<tokio::net::TcpStream>>,
}

impl ProxyState {
    /// Refuse new connections (first, so nothing reconnects in between) and cut every open one.
    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }
}

impl PgProxy {
    async fn start(target_port: u16) -> PgProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            replication_total: AtomicU64::new(0),
            replication: Mutex::new(Vec::new()),
            cut_at: AtomicU64::new(0),
            cut: tokio::sync::watch::channel(0).0,
            stall: tokio::sync::watch::channel(0).0,
            stalled: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if shared.refusing.load(Ordering::SeqCst) {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = inbound.set_zero_linger();
                    continue; // dropped: reset
                }
                tokio::spawn(PgProxy::pipe(inbound, target_port, shared.clone()));
            }
        });
        PgProxy { addr, state }
    }

    async fn pipe(mut inbound: tokio::net::TcpStream, target_port: u16, state: Arc<ProxyState>) {
        let mut cut = state.cut.subscribe();
        let mut stall = state.stall.subscribe();
        let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
            return;
        };
        let mut outbound = Tap {
            inner: outbound,
            state: state.clone(),
            sniffed: Vec::new(),
            received: None,
        };
        let stalled = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
            _ = cut.changed() => {
                // Both sockets drop here, reset rather than closed.
                let _ = inbound.set_zero_linger();
                let _ = outbound.inner.set_zero_linger();
                false
            }
            _ = stall.changed() => true,
        };
        if stalled {
            let mut held = state.stalled.lock().unwrap();
            held.push(inbound);
            held.push(outbound.inner);
        }
    }

    /// A URL for the connector that goes through the proxy.
    fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres?sslmode=disable",
            support::USER,
            support::PASSWORD,
            self.addr.port()
        )
    }

    /// Cut every connection, and refuse new ones until [`PgProxy::refuse`]`(false)`, once
    /// `more` bytes more have come from Postgres on replication connections.
    fn cut_after(&self, more: u64) {
        let at = self.state.replication_total.load(Ordering::SeqCst) + more;
        self.state.cut_at.store(at, Ordering::SeqCst);
    }

    /// Cut every connection now, and refuse new ones until [`PgProxy::refuse`]`(false)`.
    fn cut_now(&self) {
        self.state.cut();
    }

    /// Stall every connection open now; new ones go through as before.
    fn stall(&self) {
        self.state.stall.send_modify(|n| *n += 1);
    }

    fn cuts(&self) -> u64 {
        *self.state.cut.borrow()
    }

    fn refuse(&self, refuse: bool) {
        self.state.refusing.store(refuse, Ordering::SeqCst);
    }

    fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Bytes Postgres sent on each replication connection so far, oldest first.
    fn replication_bytes(&self) -> Vec<u64> {
        self.state
            .replication
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.load(Ordering::SeqCst))
            .collect()
    }
}

/// The proxy's Postgres-side socket: reads are bytes from Postgres (counted on replication
/// connections, and the armed cut fired from here), writes are bytes to it (the start of
/// which is sniffed for the startup packet).
struct Tap {
    inner: tokio::net::TcpStream,
    state: Arc<ProxyState>,
    sniffed: Vec<u8>,
    received: Option<Arc<AtomicU64>>,
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if let (Some(received), true) = (&self.received, n > 0) {
            received.fetch_add(n, Ordering::SeqCst);
            let total = self.state.replication_total.fetch_add(n, Ordering::SeqCst) + n;
            let at = self.state.cut_at.load(Ordering::SeqCst);
            if at > 0
                && total >= at
                && self
                    .state
                    .cut_at
                    .compare_exchange(at, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                self.state.cut();
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            if self.received.is_none() && self.sniffed.len() < 1024 {
                let n = *n;
                self.sniffed.extend_from_slice(&buf[..n]);
                if self
                    .sniffed
                    .windows(b"replication\0".len())
                    .any(|w| w == b"replication\0")
                {
                    let counter = Arc::new(AtomicU64::new(0));
                    self.state.replication.lock().unwrap().push(counter.clone());
                    self.received = Some(counter);
                }
            }
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Poll connector `name`'s status until `ok` holds; returns it.
async fn wait_for_status(base: &str, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let status = connector_status(base, name).await;
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "connector {name} never reached the expected status; last {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The head serial of `channel` in the in-process server's log.
fn head(t: &InProcess, channel: &str) -> u64 {
    t.server
        .log()
        .state(&tidings::channel::ChannelName::parse(channel).unwrap())
        .head
}

/// Message frames a WebSocket subscriber receives until `n` arrived and then nothing more for
/// a while (heartbeats skipped); any other frame fails the test.
async fn receive(client: &mut common::Client, n: usize) -> Vec<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut frames = Vec::with_capacity(n);
    // Generous between messages while the stream recovers (heartbeats do not count as
    // progress); short once everything is in, to catch extras.
    let mut deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let msg = match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Err(_) if frames.len() >= n => return frames,
            Err(_) => panic!(
                "{} of {n} messages, then none for {CATCH_UP:?}",
                frames.len()
            ),
            Ok(msg) => msg.expect("the subscriber stays connected").unwrap(),
        };
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str() {
            Some("heartbeat") => {}
            Some("message") => {
                frames.push(frame);
                if frames.len() < n {
                    deadline = tokio::time::Instant::now() + CATCH_UP;
                } else if frames.len() == n {
                    deadline = tokio::time::Instant::now() + Duration::from_millis(700);
                }
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
}

/// Exactly once, in order: serials contiguous from 1, `k` is 0..n in order, each outbox id
/// of `committed` once, and each message id once.
fn assert_delivered_exactly_once(frames: &[Value], n: u64, committed: (i64, i64)) {
    let serials: Vec<u64> = frames
        .iter()
        .map(|f| f["serial"].as_u64().unwrap())
        .collect();
    let ks: Vec<u64> = frames
        .iter()
        .map(|f| f["data"]["k"].as_u64().unwrap())
        .collect();
    let outbox_ids: Vec<i64> = frames
        .iter()
        .map(|f| f["data"]["outbox_id"].as_i64().unwrap())
        .collect();
    let message_ids: std::collections::HashSet<&str> =
        frames.iter().map(|f| f["id"].as_str().unwrap()).collect();
    let describe = |what: &str, got: &[u64], want: &dyn Fn(usize) -> u64| {
        let first_wrong = got.iter().enumerate().find(|(i, v)| **v != want(*i));
        assert!(
            got.len() as u64 == n && first_wrong.is_none(),
            "{what}: {} values for {n} rows; first out of place: {first_wrong:?}",
            got.len()
        );
    };
    describe("rows (k in commit order)", &ks, &|i| i as u64);
    let ids: Vec<u64> = outbox_ids
        .iter()
        .map(|i| (i - committed.0) as u64)
        .collect();
    describe("outbox ids (each committed one once)", &ids, &|i| i as u64);
    describe("serials (contiguous from 1)", &serials, &|i| i as u64 + 1);
    assert_eq!(
        committed.1 - committed.0 + 1,
        n as i64,
        "the rows committed"
    );
    assert_eq!(message_ids.len() as u64, n, "message ids are unique");
}

/// A connection that goes silent without being closed (a NAT or firewall that dropped its
/// state, a frozen host): nothing resets it, only its silence shows it is dead. Postgres sends
/// a keepalive every `wal_sender_timeout / 2` on an idle replication session, so an idle
/// session longer than `network_timeout` is left alone; once every connection through the
/// proxy stalls, the connector gives up on its replication session after `network_timeout`,
/// reconnects and resumes from its checkpoint, and its SQL sessions (lag, clean-up) give up
/// and reconnect likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_gone_silent_is_replaced_and_the_stream_goes_on() {
    let pg = Cluster::start_with("wal_sender_timeout = 2s");
    pg.migrate().await;
    let proxy = PgProxy::start(pg.port).await;
    let t = InProcess::start_named("silent", &pg, |c| {
        c.url = ConnectionUrl::new(proxy.url());
        c.network_timeout = Duration::from_secs(3);
    })
    .await;
    let admin = pg.sql().await;
    // Wait until the clean-up has deleted every published row; `what` says why it would not.
    let outbox_emptied = |what: &'static str| {
        let admin = &admin;
        async move {
            let deadline = Instant::now() + CATCH_UP;
            loop {
                let rows: i64 = admin
                    .query_one("SELECT count(*) FROM tidings.outbox", &[])
                    .await
                    .unwrap()
                    .get(0);
                if rows == 0 {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    write_txns(&pg.url(), "silent:1", 0, 1, 1).await;
    expect_messages(&t.http(), "silent:1", 1).await;
    assert_eq!(proxy.replication_bytes().len(), 1);

    // Idle for twice network_timeout: the keepalives keep the healthy session.
    let before = proxy.replication_bytes()[0];
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sessions = proxy.replication_bytes();
    assert_eq!(
        sessions.len(),
        1,
        "an idle but healthy replication session was replaced"
    );
    assert!(
        sessions[0] > before,
        "Postgres sent nothing on an idle session in 6 s: no keepalives ({sessions:?})"
    );
    outbox_emptied("the first row was never cleaned up").await;

    // Every connection open through the proxy stalls; a row is written straight to Postgres.
    proxy.stall();
    write_txns(&pg.url(), "silent:1", 1, 1, 1).await;
    let status = wait_for_status(&t.http(), "silent", |s| {
        s["reconnects"].as_u64() >= Some(1) && s["state"] == "running"
    })
    .await;
    // The replication session's silence, or (on the restart that follows) the stalled SQL
    // session of the channel tracker, whichever failed last.
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        (message.contains("sent nothing") && message.contains("keepalive"))
            || message.contains("did not answer within 3s (network_timeout)"),
        "the reconnect was not for silence: {status}"
    );
    let items = expect_messages(&t.http(), "silent:1", 2).await;
    assert_exactly_once_in_order(&items, 2, 1);
    assert!(
        proxy.replication_bytes().len() >= 2,
        "the row came without a new replication session"
    );
    // The clean-up's session stalled too; it is replaced and deletes the second row.
    outbox_emptied("outbox clean-up never recovered from its stalled session").await;
    t.server.shutdown();
    t.server.wait().await;
}

/// A network cut in the middle of a large transaction, twice: first while its first bytes
/// arrive (nothing of it in the log yet), then after the replay put its first parts in the
/// log. Each time the path stays down for a moment (connections reset, new ones refused),
/// then comes back: the connector reconnects with backoff, resumes from its checkpoint, and a
/// subscriber receives every row exactly once, in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_cut_mid_transaction_reconnects_and_delivers_every_row_exactly_once() {
    const ROWS: u64 = 100_000;
    const PART: usize = 2_000;
    let pg = Cluster::start();
    pg.migrate().await;
    let proxy = PgProxy::start(pg.port).await;
    let t = InProcess::start_named("netcut", &pg, |c| {
        c.url = ConnectionUrl::new(proxy.url());
        c.max_batch_messages = PART;
    })
    .await;
    write_txns(&pg.url(), "netcut:0", 0, 1, 1).await;
    expect_messages(&t.http(), "netcut:0", 1).await;
    assert_eq!(
        proxy.replication_bytes().len(),
        1,
        "the replication session goes through the proxy"
    );
    let ws = format!("ws://{}/v1/connect", t.server.addr());
    let mut subscriber = common::Client::connect(&ws, Some(KEY)).await;
    subscriber.attach("netcut:1", serde_json::json!({})).await;
    let receiver = tokio::spawn(async move { receive(&mut subscriber, ROWS as usize).await });

    // One transaction, written straight to Postgres (not through the proxy).
    proxy.cut_after(64 * 1024);
    let committed = pg
        .sql()
        .await
        .query_one(
            "WITH ins AS (
                 INSERT INTO tidings.outbox (id, channel, name, data)
                 SELECT id, 'netcut:1', 'row', jsonb_build_object('outbox_id', id, 'k', g, 'pad', repeat('p', 100))
                 FROM (SELECT nextval(pg_get_serial_sequence('tidings.outbox', 'id')) AS id, g
                       FROM generate_series(0, $1::bigint - 1) g) s
                 RETURNING id)
             SELECT min(id), max(id) FROM ins",
            &[&(ROWS as i64)],
        )
        .await
        .unwrap();
    let committed: (i64, i64) = (committed.get(0), committed.get(1));

    // First cut: fired by the proxy once 64 KiB of the transaction came through.
    let deadline = Instant::now() + CATCH_UP;
    while proxy.cuts() < 1 {
        assert!(Instant::now() < deadline, "the transaction never streamed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_first_cut = head(&t, "netcut:1");
    // While the path is down the connector says it is retrying, and why.
    let retrying = wait_for_status(&t.http(), "netcut", |s| s["state"] == "retrying").await;
    assert!(
        retrying["last_error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{retrying}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.refuse(false);

    // Second cut: once the replay put the transaction's first part in the log.
    let deadline = Instant::now() + CATCH_UP;
    while head(&t, "netcut:1") < PART as u64 {
        assert!(Instant::now() < deadline, "the transaction never resumed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.cut_now();
    let at_second_cut = head(&t, "netcut:1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.refuse(false);

    let frames = receiver.await.unwrap();
    assert_delivered_exactly_once(&frames, ROWS, committed);
    let items = expect_messages(&t.http(), "netcut:1", ROWS as usize).await;
    assert_eq!(
        items.iter().map(|m| &m["id"]).collect::<Vec<_>>(),
        frames.iter().map(|f| &f["id"]).collect::<Vec<_>>(),
        "the log holds what the subscriber got"
    );

    // Both cuts were in the middle of the transaction: the connections cut had received less
    // of it than the one that finally carried all of it.
    let bytes = proxy.replication_bytes();
    assert!(bytes.len() >= 3, "reconnected after each cut: {bytes:?}");
    let whole = *bytes.last().unwrap();
    assert!(
        bytes[..bytes.len() - 1].iter().all(|b| *b < whole),
        "cut mid-transaction: {bytes:?}"
    );
    assert!(at_first_cut < ROWS && at_second_cut < ROWS);
    assert!(at_second_cut >= PART as u64, "{at_second_cut}");
    assert!(
        proxy.refused() > 0,
        "connections were refused while the path was down"
    );
    let status = wait_for_status(&t.http(), "netcut", |s| s["state"] == "running").await;
    assert!(status["reconnects"].as_u64().unwrap() >= 2, "{status}");
    assert!(
        status["duplicates_dropped"].as_u64().unwrap() >= PART as u64,
        "the replay after the second cut repeated what the log held, and it was dropped: {status}"
    );
    assert_eq!(status["messages_published"], ROWS + 1, "{status}");
    eprintln!(
        "network cut: heads {at_first_cut} and {at_second_cut} at the cuts; replication bytes per connection {bytes:?}; {} refused; status {status}",
        proxy.refused()
    );
    t.server.shutdown();
    t.server.wait().await;
}

/// `GET /v1/connectors` needs an API key and tells an operator what a connector is doing:
/// `running`; `retrying` with the attempt and the last error while Postgres is down; `running`
/// again after it came back, with the reconnect counted and the checkpoint moving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connector_status_shows_running_then_retrying_with_the_error_then_running_again() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start_named("watched", &pg, |_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/connectors", t.http());
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "no credentials");
    let wrong = http
        .get(&url)
        .bearer_auth("test:wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "a wrong secret");
    let token: Value = http
        .post(format!("{}/v1/tokens", t.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let with_token = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(with_token.status(), 401, "a client token is not an API key");

    let running = wait_for_status(&t.http(), "watched", |s| s["state"] == "running").await;
    assert_eq!(running["type"], "postgres");
    assert!(
        running["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{running}"
    );
    assert!(running["last_error"].is_null(), "{running}");
    assert_eq!(
        (running["errors"].as_u64(), running["reconnects"].as_u64()),
        (Some(0), Some(0))
    );
    write_txns(&pg.url(), "watched:1", 0, 5, 2).await;
    expect_messages(&t.http(), "watched:1", 10).await;
    let before = wait_for_status(&t.http(), "watched", |s| {
        s["messages_published"] == 10 && s["checkpoint"]["at"].is_string()
    })
    .await;
    let position = |s: &Value| s["checkpoint"]["position"]["value"].as_u64().unwrap();
    assert_eq!(before["checkpoint"]["position"]["kind"], "postgres_lsn");
    assert!(before.get("slot_lag_bytes").is_some(), "{before}");

    pg.stop();
    let down = wait_for_status(&t.http(), "watched", |s| {
        s["state"] == "retrying" && s["attempt"].as_u64() >= Some(2)
    })
    .await;
    let error = &down["last_error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("connect")),
        "the last error says what failed: {down}"
    );
    assert!(
        error["at"].is_string() && down["retry_at"].is_string(),
        "{down}"
    );
    assert!(down["errors"].as_u64() >= Some(2), "{down}");
    assert_eq!(position(&down), position(&before), "the checkpoint stays");

    pg.start_again();
    let back = wait_for_status(&t.http(), "watched", |s| s["state"] == "running").await;
    assert!(back["reconnects"].as_u64() >= Some(1), "{back}");
    assert!(
        back["last_error"]["message"].is_string(),
        "the last error stays visible: {back}"
    );
    write_txns(&pg.url(), "watched:1", 5, 3, 2).await;
    expect_messages(&t.http(), "watched:1", 16).await;
    let after = wait_for_status(&t.http(), "watched", |s| s["messages_published"] == 16).await;
    assert!(position(&after) > position(&before), "{after}");
    let connectors = t.server.connectors();
    t.server.shutdown();
    t.server.wait().await;
    let all = connectors.status();
    let stopped = all["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "watched")
        .unwrap();
    assert_eq!(
        (stopped["state"].as_str(), stopped["reason"].as_str()),
        (Some("stopped"), Some("shut down")),
        "{stopped}"
    );
}

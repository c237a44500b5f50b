//! A lost replication slot: the connector stops saying what was lost and the fix (the server
//! goes on), or with `on_slot_lost = "recreate"` recovers and gives its channels a new epoch.

use std::time::{Duration, Instant};

use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::rest::channel_epoch;
use tidings_testkit::ws::Client;
use tidings_testkit::{tidings_exe, KEY};

use crate::in_process::InProcess;
use crate::outbox::{expect_messages, write_txns, Outbox};
use crate::status::{terminate, wait_stopped};
use crate::CATCH_UP;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_slot_stops_the_connector_with_what_was_lost_and_the_fix() {
    let pg = Cluster::start();
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let mut tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &url]).await;
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

    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &url]).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("does not exist"), "{reason}");
    assert!(reason.contains("can no longer be streamed"), "{reason}");
    assert!(reason.contains("on_slot_lost"), "{reason}");
    let lines = tidings.log();
    assert!(lines.contains("does not exist"), "{lines}");
    assert!(lines.contains("can no longer be streamed"), "{lines}");
    assert!(lines.contains("on_slot_lost"), "{lines}");
    terminate(tidings).await;
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
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &url]).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(
        reason.contains("but this connector's checkpoint is at LSN"),
        "{reason}"
    );
    assert!(reason.contains("on_slot_lost"), "{reason}");
    let lines = tidings.log();
    assert!(
        lines.contains("but this connector's checkpoint is at LSN"),
        "{lines}"
    );
    assert!(lines.contains("on_slot_lost"), "{lines}");
    // Still nothing streamed across the hole.
    let http = reqwest::Client::new();
    let items = tidings_testkit::rest::history(&http, &tidings.http(), "slot:1").await;
    assert_eq!(items.len(), 3, "{items:?}");
    terminate(tidings).await;
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
    let mut tidings = Process::serve(tidings_exe!(), data.path(), &["--config", config]).await;
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

    let tidings = Process::serve(tidings_exe!(), data.path(), &["--config", config]).await;
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
    let ws = format!("ws://{}/v1/connect", tidings.addr());
    let mut client = Client::connect(&ws, Some(KEY)).await;
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
        .await
        .unwrap()
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
            .await
            .unwrap()
            .epoch,
        before,
        "a new epoch"
    );
    t.server.shutdown();
    t.server.wait().await;
}

/// Postgres invalidates a stopped connector's slot for `max_slot_wal_keep_size`
/// (`wal_status = lost`): by default the connector stops saying so and the fix, and leaves the
/// slot alone; with `on_slot_lost = "recreate"` it drops the slot, creates it again, and gives its
/// channels a new epoch, as for a dropped slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_invalidated_for_max_slot_wal_keep_size_follows_on_slot_lost() {
    let pg = Cluster::start_with(KEEP_LITTLE_WAL);
    pg.migrate().await;
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let config = data.path().join("tidings.toml");
    let write_config = |policy: &str| {
        std::fs::write(
            &config,
            format!("[connectors.postgres]\ntype = \"postgres\"\nurl = \"{url}\"\non_slot_lost = \"{policy}\"\nstatus_interval = \"500ms\"\n"),
        )
        .unwrap();
    };
    write_config("fail");
    let config_arg = config.to_str().unwrap().to_owned();
    let args = ["--config", config_arg.as_str()];
    let tidings = Process::serve(tidings_exe!(), data.path(), &args).await;
    write_txns(&url, "lost:1", 0, 3, 1).await;
    write_txns(&url, "quiet:1", 0, 1, 1).await;
    expect_messages(&tidings.http(), "lost:1", 3).await;
    expect_messages(&tidings.http(), "quiet:1", 1).await;
    let before = channel_epoch(&tidings.http(), "lost:1").await;
    terminate(tidings).await;

    let admin = pg.sql().await;
    // Committed while the connector is down: its WAL is removed with the slot's reservation.
    write_txns(&url, "lost:1", 3, 2, 1).await;
    invalidate_slot(&admin, "tidings").await;

    let tidings = Process::serve(tidings_exe!(), data.path(), &args).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("was invalidated by Postgres"), "{reason}");
    assert!(reason.contains("max_slot_wal_keep_size"), "{reason}");
    assert!(reason.contains("on_slot_lost"), "{reason}");
    let lines = tidings.log();
    assert!(lines.contains("was invalidated by Postgres"), "{lines}");
    terminate(tidings).await;
    // It did not drop the slot and carry on.
    assert_eq!(wal_status(&admin, "tidings").await.as_deref(), Some("lost"));

    write_config("recreate");
    let tidings = Process::serve(tidings_exe!(), data.path(), &args).await;
    let deadline = Instant::now() + CATCH_UP;
    while wal_status(&admin, "tidings").await.as_deref() != Some("reserved") {
        assert!(Instant::now() < deadline, "the slot was not created again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_txns(&url, "lost:1", 5, 2, 1).await;
    let items = expect_messages(&tidings.http(), "lost:1", 2).await;
    let txns: Vec<u64> = items
        .iter()
        .map(|m| m["data"]["txn"].as_u64().unwrap())
        .collect();
    assert_eq!(
        txns,
        [5, 6],
        "the new history holds what came after recovery"
    );
    let after = channel_epoch(&tidings.http(), "lost:1").await;
    assert_ne!(before, after, "lost:1 has a new epoch");
    assert_ne!(
        channel_epoch(&tidings.http(), "quiet:1").await,
        before,
        "quiet:1 has a new epoch"
    );
    assert!(tidings
        .logged("replication slot lost changes; its channels get a new epoch and clients resync")
        .iter()
        .any(|l| l["loss"] == "invalidated"));
    terminate(tidings).await;
}

/// A cluster that lets a slot hold back almost no WAL beyond what checkpoints keep anyway.
const KEEP_LITTLE_WAL: &str =
    "max_slot_wal_keep_size = 1MB\nmax_wal_size = 32MB\nmin_wal_size = 32MB";

/// Write and switch WAL segments, and checkpoint, until Postgres invalidates `slot`.
async fn invalidate_slot(admin: &tokio_postgres::Client, slot: &str) {
    admin
        .execute("CREATE TABLE IF NOT EXISTS wal_filler (x int)", &[])
        .await
        .unwrap();
    let deadline = Instant::now() + CATCH_UP * 4;
    while wal_status(admin, slot).await.as_deref() != Some("lost") {
        assert!(
            Instant::now() < deadline,
            "Postgres did not invalidate the slot (wal_status {:?})",
            wal_status(admin, slot).await
        );
        admin
            .batch_execute(
                "INSERT INTO wal_filler SELECT generate_series(1, 1000); SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap();
    }
}

/// The slot's `wal_status`, or `None` when there is no such slot.
async fn wal_status(admin: &tokio_postgres::Client, slot: &str) -> Option<String> {
    admin
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
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

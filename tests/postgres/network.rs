//! The network between the connector and Postgres failing under it: a connection gone
//! silent, and cuts in the middle of a transaction.

use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_connector_postgres::ConnectionUrl;
use tidings_testkit::postgres::Cluster;
use tidings_testkit::proxy::Proxy;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;

use crate::in_process::{head, InProcess};
use crate::outbox::{assert_exactly_once_in_order, expect_messages, write_txns, Outbox};
use crate::status::wait_for_status;
use crate::CATCH_UP;

/// A fault proxy in front of the cluster, for the connector to go through. It taps the
/// replication sessions (their startup packet asks for `replication`), counting the bytes
/// Postgres sends on each, so a reset can land in the middle of a transaction on the wire.
async fn replication_proxy(pg: &Cluster) -> Proxy {
    let proxy = Proxy::start(pg.addr()).await;
    proxy.tap(b"replication\0");
    proxy
}

/// Message frames a WebSocket subscriber receives until `n` arrived and then nothing more for
/// a while (heartbeats skipped); any other frame fails the test.
async fn receive(client: &mut Client, n: usize) -> Vec<Value> {
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
    let proxy = replication_proxy(&pg).await;
    let t = InProcess::start_named("silent", &pg, |c| {
        c.url = ConnectionUrl::new(pg.url_through(proxy.addr()));
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
    assert_eq!(proxy.tapped_bytes().len(), 1);

    // Idle for twice network_timeout: the keepalives keep the healthy session.
    let before = proxy.tapped_bytes()[0];
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sessions = proxy.tapped_bytes();
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
    proxy.freeze();
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
        proxy.tapped_bytes().len() >= 2,
        "the row came without a new replication session"
    );
    // The clean-up's session stalled too; it is replaced and deletes the second row.
    outbox_emptied("outbox clean-up never recovered from its stalled session").await;
    t.server.shutdown();
    t.server.wait().await;
}

/// Postgres sends a keepalive only once it has heard nothing from the connector for half its
/// `wal_sender_timeout`. With a `network_timeout` at or below that, the replication client's
/// own idle wake-ups (a status update every `network_timeout`) kept Postgres from ever sending
/// one, and the connector, hearing nothing, took a healthy idle session for dead and replaced it
/// every few seconds. Found by the fault soak (scripts/soak), whose settings were exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_session_is_kept_when_network_timeout_is_below_the_keepalive_interval() {
    // Keepalives every 2 s of quiet from the connector; the connector's timeout is 1 s.
    let pg = Cluster::start_with("wal_sender_timeout = 4s");
    pg.migrate().await;
    let proxy = replication_proxy(&pg).await;
    let t = InProcess::start_named("keepidle", &pg, |c| {
        c.url = ConnectionUrl::new(pg.url_through(proxy.addr()));
        c.network_timeout = Duration::from_secs(1);
    })
    .await;
    write_txns(&pg.url(), "keepidle:1", 0, 1, 1).await;
    expect_messages(&t.http(), "keepidle:1", 1).await;
    // Idle for five keepalive intervals.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = tidings_testkit::rest::connector_status(&t.http(), "keepidle").await;
    assert_eq!(
        (proxy.tapped_bytes().len(), status["reconnects"].as_u64()),
        (1, Some(0)),
        "a healthy idle replication session was replaced: {status}"
    );
    // And the session still carries changes.
    write_txns(&pg.url(), "keepidle:1", 1, 1, 1).await;
    let items = expect_messages(&t.http(), "keepidle:1", 2).await;
    assert_exactly_once_in_order(&items, 2, 1);
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
    let proxy = replication_proxy(&pg).await;
    let t = InProcess::start_named("netcut", &pg, |c| {
        c.url = ConnectionUrl::new(pg.url_through(proxy.addr()));
        c.max_batch_messages = PART;
    })
    .await;
    write_txns(&pg.url(), "netcut:0", 0, 1, 1).await;
    expect_messages(&t.http(), "netcut:0", 1).await;
    assert_eq!(
        proxy.tapped_bytes().len(),
        1,
        "the replication session goes through the proxy"
    );
    let ws = format!("ws://{}/v1/connect", t.server.addr());
    let mut subscriber = Client::connect(&ws, Some(KEY)).await;
    subscriber.attach("netcut:1", serde_json::json!({})).await;
    let receiver = tokio::spawn(async move { receive(&mut subscriber, ROWS as usize).await });

    // One transaction, written straight to Postgres (not through the proxy).
    proxy.reset_after(64 * 1024);
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
    while proxy.resets() < 1 {
        assert!(Instant::now() < deadline, "the transaction never streamed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_first_cut = head(&t, "netcut:1").await;
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
    while head(&t, "netcut:1").await < PART as u64 {
        assert!(Instant::now() < deadline, "the transaction never resumed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.reset();
    let at_second_cut = head(&t, "netcut:1").await;
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
    let bytes = proxy.tapped_bytes();
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

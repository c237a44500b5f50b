//! The connector in cluster mode: its batches and checkpoints go to NATS JetStream, and a node
//! killed mid-stream resumes from the checkpoint the stream holds, every row once.

use std::time::{Duration, Instant};

use tidings_testkit::nats;
use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::rest::{connector_status, history};
use tidings_testkit::tidings_exe;

use crate::outbox::{assert_exactly_once_in_order, expect_messages, write_txns, Outbox};
use crate::CATCH_UP;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_stream_resumes_from_the_streams_checkpoint_exactly_once() {
    let pg = Cluster::start();
    pg.migrate().await;
    let js = nats::Cluster::start().await.expect("a NATS cluster");
    let (url, urls) = (pg.url(), js.urls());
    // Node 1 runs the connector; node 2 only serves, reading what node 1 wrote.
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--postgres", &url, "--nats", &urls, "--node-id", "n1"];
    let mut n1 = Process::serve(tidings_exe!(), d1.path(), &args).await;
    let n2 = Process::serve(
        tidings_exe!(),
        d2.path(),
        &["--nats", &urls, "--node-id", "n2"],
    )
    .await;
    let (txns, rows) = (1500u64, 2u64);
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_txns(&url, "cl:1", 0, txns, rows).await }
    });
    let http = reqwest::Client::new();
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let n = history(&http, &n2.http(), "cl:1").await.len();
        if n >= 400 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} messages reached node 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n1.kill9().await;
    writer.await.unwrap();
    // A fresh data directory: the checkpoint lives in the stream, not on the node's disk.
    let d1 = tempfile::tempdir().unwrap();
    let _n1 = Process::serve(tidings_exe!(), d1.path(), &args).await;
    let items = expect_messages(&n2.http(), "cl:1", (txns * rows) as usize).await;
    assert_exactly_once_in_order(&items, txns, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_runs_the_connector_and_another_takes_over_when_it_dies() {
    let pg = Cluster::start();
    pg.migrate().await;
    let js = nats::Cluster::start().await.expect("a NATS cluster");
    let (url, urls) = (pg.url(), js.urls());
    // The same connector on both nodes, with a short lease so the test is quick.
    let lease = Duration::from_secs(4);
    let start = |id: &'static str| {
        let (url, urls) = (url.clone(), urls.clone());
        async move {
            let dir = tempfile::tempdir().unwrap();
            let p = Process::serve(
                tidings_exe!(),
                dir.path(),
                &[
                    "--postgres",
                    &url,
                    "--nats",
                    &urls,
                    "--node-id",
                    id,
                    "--lease-ttl",
                    "4s",
                ],
            )
            .await;
            (p, dir)
        }
    };
    let ((mut a, _da), (mut b, _db)) = (start("a").await, start("b").await);
    let state = |base: String| async move { connector_status(&base, "postgres").await };
    // Exactly one runs it; the other stands by naming the holder.
    let deadline = Instant::now() + CATCH_UP;
    let (holder, standby) = loop {
        let (sa, sb) = (state(a.http()).await, state(b.http()).await);
        match (sa["state"].as_str(), sb["state"].as_str()) {
            (Some("running"), Some("standby")) => break ("a", sb),
            (Some("standby"), Some("running")) => break ("b", sa),
            other => assert!(Instant::now() < deadline, "never settled: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(standby["holder"], holder, "{standby}");

    let (txns, rows) = (1500u64, 2u64);
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_txns(&url, "fo:1", 0, txns, rows).await }
    });
    let http = reqwest::Client::new();
    let (victim, survivor) = if holder == "a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let n = history(&http, &survivor.http(), "fo:1").await.len();
        if n >= 400 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} messages arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = history(&http, &survivor.http(), "fo:1").await.len();
    victim.kill9().await;
    let killed = Instant::now();
    // The survivor takes the lease once it lapses, and the stream goes on from the checkpoint.
    loop {
        let s = state(survivor.http()).await;
        if s["state"] == "running" {
            break;
        }
        assert!(
            killed.elapsed() < lease * 3,
            "no takeover after {:?}: {s}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = killed.elapsed();
    loop {
        if history(&http, &survivor.http(), "fo:1").await.len() > before {
            break;
        }
        assert!(
            killed.elapsed() < lease * 3 + CATCH_UP,
            "nothing new after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_message = killed.elapsed();
    writer.await.unwrap();
    let items = expect_messages(&survivor.http(), "fo:1", (txns * rows) as usize).await;
    assert_exactly_once_in_order(&items, txns, rows);
    assert!(
        took_over <= lease + Duration::from_secs(3),
        "took over after {took_over:?}"
    );
    eprintln!("lease {lease:?}: took over {took_over:?} after the kill, first new message after {first_message:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_cut_off_from_nats_loses_the_connector_and_writes_nothing_when_back() {
    let pg = Cluster::start();
    pg.migrate().await;
    let js = nats::Cluster::start().await.expect("a NATS cluster");
    let (url, urls) = (pg.url(), js.urls());
    // Node a reaches NATS only through a proxy that can freeze its connection (not close it).
    let member: std::net::SocketAddr = js.url(0).trim_start_matches("nats://").parse().unwrap();
    let proxy = tidings_testkit::proxy::Proxy::start(member).await;
    let through = format!("nats://{}", proxy.addr());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let common = ["--postgres", url.as_str(), "--lease-ttl", "4s"];
    let a_args = [&common[..], &["--nats", &through, "--node-id", "a"]].concat();
    let a = Process::serve(tidings_exe!(), da.path(), &a_args).await;
    let deadline = Instant::now() + CATCH_UP;
    while connector_status(&a.http(), "postgres").await["state"] != "running" {
        assert!(Instant::now() < deadline, "node a never ran the connector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_args = [&common[..], &["--nats", &urls, "--node-id", "b"]].concat();
    let b = Process::serve(tidings_exe!(), db.path(), &b_args).await;

    let (txns, rows) = (1500u64, 2u64);
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_txns(&url, "cut:1", 0, txns, rows).await }
    });
    let http = reqwest::Client::new();
    let deadline = Instant::now() + CATCH_UP;
    while history(&http, &b.http(), "cut:1").await.len() < 400 {
        assert!(Instant::now() < deadline, "the stream never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.freeze();
    let frozen = Instant::now();
    // Node b takes over once a's lease lapses; a stops by itself (it cannot renew), so the
    // slot is free for b.
    let deadline = Instant::now() + CATCH_UP;
    while connector_status(&b.http(), "postgres").await["state"] != "running" {
        assert!(Instant::now() < deadline, "node b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = frozen.elapsed();
    let before = history(&http, &b.http(), "cut:1").await.len();
    let deadline = Instant::now() + CATCH_UP;
    while history(&http, &b.http(), "cut:1").await.len() <= before {
        assert!(Instant::now() < deadline, "node b streams nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Node a comes back: whatever it still had in flight is refused, and it stands by.
    proxy.cut();
    writer.await.unwrap();
    let items = expect_messages(&b.http(), "cut:1", (txns * rows) as usize).await;
    assert_exactly_once_in_order(&items, txns, rows);
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let s = connector_status(&a.http(), "postgres").await;
        if s["state"] == "standby" && s["holder"] == "b" {
            break;
        }
        assert!(Instant::now() < deadline, "node a does not stand by: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !a.logged("lost the connector's lease; standing by")
            .is_empty(),
        "node a knew it lost the lease"
    );
    eprintln!("frozen node: b took over {took_over:?} after the freeze");
}

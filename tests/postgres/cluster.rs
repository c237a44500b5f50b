//! The connector in cluster mode: its batches and checkpoints go to NATS JetStream, and a node
//! killed mid-stream resumes from the checkpoint the stream holds, every row once.

use std::time::{Duration, Instant};

use tidings_testkit::nats;
use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::rest::history;
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

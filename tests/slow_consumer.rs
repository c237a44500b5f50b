//! A stalled client hurts only itself: the others keep their latency, it is closed with a
//! resumable reason, and it resumes without loss.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings_testkit::rest::{metric, publish, serials};
use tidings_testkit::server::TestServer;
use tidings_testkit::ws::Client;
use tidings_testkit::{KEY, WAIT};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SEND_TIMEOUT: Duration = Duration::from_millis(1500);

/// Publish `n` large messages one by one; returns, per message, the time from the publish
/// being sent to the healthy client receiving it.
async fn stream_and_measure(
    http: &reqwest::Client,
    base: &str,
    healthy: &mut Client,
    first: u64,
    n: u64,
) -> Vec<Duration> {
    let payload = "x".repeat(60_000);
    let mut latencies = Vec::new();
    for i in 0..n {
        let sent = Instant::now();
        publish(
            http,
            base,
            "wide",
            json!({"data": {"i": first + i, "pad": payload}}),
        )
        .await;
        let m = healthy.messages(1).await;
        assert_eq!(m[0]["data"]["i"], first + i);
        latencies.push(sent.elapsed());
    }
    latencies
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_closed_and_resumes_without_slowing_others() {
    let t = TestServer::start_with(|c| c.session.send_timeout = SEND_TIMEOUT).await;
    let http = reqwest::Client::new();
    let mut healthy = Client::connect(&t.ws_url(), Some(KEY)).await;
    let epoch = healthy.attach("wide", json!({})).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Baseline: only the healthy client.
    let baseline = stream_and_measure(&http, &t.http(), &mut healthy, 0, 50).await;

    // A client that attaches and then never reads: its socket buffers fill up.
    let mut stalled = Client::connect(&t.ws_url(), Some(KEY)).await;
    stalled
        .attach("wide", json!({"from": {"epoch": &epoch, "serial": 50}}))
        .await;
    // 400 x 60 KB = 24 MB, far more than loopback socket buffers hold.
    let with_stall = stream_and_measure(&http, &t.http(), &mut healthy, 50, 400).await;

    let (base_p99, stall_p99) = (p99(baseline), p99(with_stall.clone()));
    let worst = *with_stall.iter().max().unwrap();
    eprintln!("healthy client p99: {base_p99:?} alone, {stall_p99:?} beside a stalled client (max {worst:?})");
    // Had the hub waited on the stalled socket, the healthy client would have waited the whole
    // send timeout at least once.
    assert!(
        worst < SEND_TIMEOUT,
        "a stalled client delayed another by {worst:?} (send timeout {SEND_TIMEOUT:?})"
    );

    // The server gave up on the stalled client with the slow-consumer reason.
    let deadline = Instant::now() + WAIT;
    while metric(
        &http,
        &t.http(),
        "tidings_sessions_closed_total{reason=\"slow_consumer\"}",
    )
    .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stalled client was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The stalled client now reads what reached it, then sees the close (or the socket end).
    let (frames, code) = stalled.drain_until_closed().await;
    if let Some(code) = code {
        assert_eq!(code, CloseCode::from(tidings_protocol::CLOSE_SLOW_CONSUMER));
    }
    let got: Vec<&Value> = frames.iter().filter(|f| f["type"] == "message").collect();
    let last = got.last().map_or(50, |f| f["serial"].as_u64().unwrap());
    assert!(
        last < 450,
        "the stalled client cannot have received everything"
    );
    let owned: Vec<Value> = got.into_iter().cloned().collect();
    assert_eq!(
        serials(&owned),
        (51..=last).collect::<Vec<_>>(),
        "what it got has no hole"
    );

    // It resumes from its last serial and gets exactly the rest.
    let mut back = Client::connect(&t.ws_url(), Some(KEY)).await;
    let a = back
        .attach("wide", json!({"from": {"epoch": &epoch, "serial": last}}))
        .await;
    assert_eq!(a["resumed"], true, "{a}");
    let rest = back.messages((450 - last) as usize).await;
    assert_eq!(serials(&rest), (last + 1..=450).collect::<Vec<_>>());
}

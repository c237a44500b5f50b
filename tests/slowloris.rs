//! Connections that never finish a request: a slow-loris attack does not keep real clients
//! out, its connections are closed at the head deadline, an idle keep-alive connection is
//! closed after its timeout, and WebSocket sessions and SSE streams, requests in progress, are
//! never cut by either.

use std::time::{Duration, Instant};

use serde_json::json;
use tidings_testkit::rest::{metric, publish_data};
use tidings_testkit::server::TestServer;
use tidings_testkit::sse::SseClient;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slow connections opened; more than the pending cap, far below the open-files limit.
const SLOW: usize = 300;
const HEAD_TIMEOUT: Duration = Duration::from_millis(1500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PENDING: usize = 100;
/// Room for a loaded machine on top of a deadline; the head deadline plus this is still short
/// of the idle timeout, so the two cannot be mistaken for each other.
const MARGIN: Duration = Duration::from_millis(2500);

/// Whether the server closed `tcp` (EOF or reset) within `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Anything the server says before closing (nothing, for a slow head).
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `tcp` is still open: nothing to read, no EOF, for a moment.
async fn still_open(tcp: &mut TcpStream) -> bool {
    !closed_within(tcp, Duration::from_millis(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_do_not_keep_real_clients_out() {
    let t = TestServer::start_with(|c| {
        c.limits.request_head_timeout = HEAD_TIMEOUT;
        c.limits.http_idle_timeout = IDLE_TIMEOUT;
        c.limits.max_pending_connections = MAX_PENDING;
    })
    .await;
    let attack_started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
        // A request head without its blank line: the server waits for the rest.
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }

    // Real clients, during the attack: a WebSocket subscriber and a REST publisher.
    let http = reqwest::Client::new();
    let mut ws = Client::connect(&t.ws_url(), Some(KEY)).await;
    ws.attach("news:1", json!({})).await;
    let mut sse = SseClient::open(&format!("{}/v1/sse?channel=news:1", t.http()), None).await;
    assert_eq!(sse.next().await.unwrap().event, "connected");
    assert_eq!(sse.next().await.unwrap().event, "attached");
    publish_data(&http, &t.http(), "news:1", &[json!("during the attack")]).await;
    assert_eq!(ws.messages(1).await[0]["data"], "during the attack");
    assert_eq!(sse.messages(1).await[0].json()["data"], "during the attack");
    // It was during the attack: the newest slow connections are still waiting for their
    // deadline (the oldest made room for the newer and the real clients).
    let served_after = attack_started.elapsed();
    let mut open = 0;
    for tcp in slow.iter_mut().rev().take(MAX_PENDING / 2) {
        if still_open(tcp).await {
            open += 1;
        }
    }
    assert!(
        open > 0,
        "the real clients were served only once the slow connections had gone ({served_after:?})"
    );

    // Every slow connection is closed by the head deadline (the oldest earlier, to make room).
    let limit = HEAD_TIMEOUT + MARGIN;
    for (i, tcp) in slow.iter_mut().enumerate() {
        let left = limit.saturating_sub(attack_started.elapsed()) + Duration::from_millis(100);
        assert!(
            closed_within(tcp, left).await,
            "slow connection {i} still open {:?} after the attack began",
            attack_started.elapsed()
        );
    }
    let closed = metric(
        &http,
        &t.http(),
        "tidings_http_connections_closed_total{reason=\"head_timeout\"}",
    )
    .await
        + metric(
            &http,
            &t.http(),
            "tidings_http_connections_closed_total{reason=\"pending_limit\"}",
        )
        .await;
    assert!(closed >= SLOW as f64, "{closed} of {SLOW} counted");
    assert!(
        metric(
            &http,
            &t.http(),
            "tidings_http_connections_closed_total{reason=\"pending_limit\"}",
        )
        .await
            >= (SLOW - MAX_PENDING) as f64,
        "the oldest made room"
    );

    // The real clients' streams were never cut: past the idle timeout, they still deliver.
    tokio::time::sleep(
        IDLE_TIMEOUT.saturating_sub(attack_started.elapsed()) + Duration::from_millis(500),
    )
    .await;
    publish_data(&http, &t.http(), "news:1", &[json!("later")]).await;
    assert_eq!(ws.messages(1).await[0]["data"], "later");
    assert_eq!(sse.messages(1).await[0].json()["data"], "later");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    let t = TestServer::start_with(|c| {
        c.limits.request_head_timeout = HEAD_TIMEOUT;
        c.limits.http_idle_timeout = IDLE_TIMEOUT;
    })
    .await;
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok\n") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let answered = Instant::now();
    // Kept alive past the head deadline: only the idle timeout closes it.
    assert!(
        !closed_within(&mut tcp, HEAD_TIMEOUT + Duration::from_millis(500)).await,
        "closed before the idle timeout"
    );
    assert!(
        closed_within(&mut tcp, IDLE_TIMEOUT + MARGIN).await,
        "still open {:?} after its last answer",
        answered.elapsed()
    );
    assert!(answered.elapsed() >= IDLE_TIMEOUT - Duration::from_millis(100));
    let http = reqwest::Client::new();
    assert_eq!(
        metric(
            &http,
            &t.http(),
            "tidings_http_connections_closed_total{reason=\"idle_timeout\"}"
        )
        .await,
        1.0
    );
    t.stop().await;
}

//! Tokens from a callback: renewed in-band before expiry on WebSocket, replaced after the
//! server says they expired (close 4001, SSE `token_expired`, a 401 on long-poll) or were
//! revoked (close 4002, `token_revoked`), without losing or repeating a message. Refused credentials stop the client with a typed error.

mod subscriber;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use serde_json::{json, Value};
use subscriber::{messages, wait_state};
use tidings_client::{
    Client, ConnectionState, Error, ErrorCode, Event, Start, Stats, Token, Transport,
};
use tidings_testkit::rest::publish_data;
use tidings_testkit::server::TestServer;
use tidings_testkit::{KEY, WAIT};

/// A token source that asks the server for `ttl` tokens. `honest: false` claims a far expiry,
/// so the client never renews in-band and meets the server's 4001 instead.
fn source(
    base: String,
    ttl: &'static str,
    caps: Option<Value>,
    honest: bool,
    calls: Arc<AtomicU64>,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Token, reqwest::Error>> + Send>,
> + Send
       + Sync
       + 'static {
    move || {
        let (base, calls, caps) = (base.clone(), calls.clone(), caps.clone());
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut body = json!({"ttl": ttl, "subject": "device-1"});
            if let Some(caps) = caps {
                body["caps"] = caps;
            }
            let v: Value = reqwest::Client::new()
                .post(format!("{base}/v1/tokens"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let token = v["token"].as_str().unwrap().to_owned();
            Ok(if honest {
                Token::with_expiry_ms(token, v["expires_at"].as_u64().unwrap())
            } else {
                Token::with_expiry(token, SystemTime::now() + Duration::from_secs(3600))
            })
        })
    }
}

/// Subscribe with short-lived tokens and publish for `run`; every message must arrive once,
/// in order. Returns the client's counters and the number of tokens fetched.
async fn across_expiries(transport: Transport, honest: bool, run: Duration) -> (Stats, u64) {
    let t = TestServer::start().await;
    let calls = Arc::new(AtomicU64::new(0));
    let c = Client::builder(t.http())
        .token_source(source(t.http(), "2s", None, honest, calls.clone()))
        .transports(&[transport])
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .poll_wait(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut sub = c.attach("tok", Start::Now).await.unwrap();
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        publish_data(&http, &t.http(), "tok", &[json!(sent)]).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = messages(&mut sub, sent as usize).await;
    let data: Vec<u64> = got.iter().map(|m| m.data_as::<u64>().unwrap()).collect();
    assert_eq!(
        data,
        (0..sent).collect::<Vec<_>>(),
        "{transport}: once, in order"
    );
    subscriber::assert_quiet(&mut sub).await;
    let stats = c.stats();
    c.close().await;
    (stats, calls.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_renews_tokens_in_band_before_they_expire() {
    let (stats, calls) = across_expiries(Transport::WebSocket, true, Duration::from_secs(4)).await;
    assert!(calls >= 3, "tokens fetched: {calls}");
    assert_eq!(
        stats.connections, 1,
        "renewed on the same connection: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_reconnects_with_a_fresh_token_after_close_4001() {
    let (stats, calls) = across_expiries(Transport::WebSocket, false, Duration::from_secs(4)).await;
    assert!(calls >= 2, "tokens fetched: {calls}");
    assert!(stats.connections >= 2, "closed at expiry: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reconnects_with_a_fresh_token_when_the_stream_expires() {
    let (stats, calls) = across_expiries(Transport::Sse, true, Duration::from_secs(4)).await;
    assert!(calls >= 2, "tokens fetched: {calls}");
    assert!(
        stats.connections >= 2,
        "the stream ends at expiry: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_uses_fresh_tokens() {
    let (_, calls) = across_expiries(Transport::LongPoll, true, Duration::from_secs(4)).await;
    assert!(calls >= 2, "tokens fetched: {calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_client_with_the_code() {
    let t = TestServer::start().await;
    for builder in [
        Client::builder(t.http()).api_key("test:wrong-secret"),
        Client::builder(t.http()).token("not.a.token"),
    ] {
        let c = builder.build().unwrap();
        let e = tokio::time::timeout(WAIT, c.attach("a", Start::Now))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
        let state = wait_state(&c, |s| matches!(s, ConnectionState::Closed { .. })).await;
        match state {
            ConnectionState::Closed { error: Some(e) } => {
                assert_eq!(e.code(), Some(ErrorCode::Unauthorized))
            }
            other => panic!("{other:?}"),
        }
        let e = c
            .publish("a", tidings_client::Publish::data(json!(1)))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Stopped(_)), "{e:?}");
        assert_eq!(e.code(), Some(ErrorCode::Unauthorized));
    }
}

/// A channel the token does not allow is refused with `forbidden`; the others work.
async fn forbidden_channel(transport: Transport) {
    let t = TestServer::start().await;
    let calls = Arc::new(AtomicU64::new(0));
    let caps = json!({"a:*": ["subscribe"]});
    let c = Client::builder(t.http())
        .token_source(source(t.http(), "1h", Some(caps), true, calls))
        .transports(&[transport])
        .build()
        .unwrap();
    // Rewinding needs `history`, which the token lacks. (First, while nothing else is attached:
    // on SSE and long-poll the server currently demands `history` on every channel of a
    // request that carries `rewind`, and blames the first one; reported to the server's owner.)
    let e = c.attach("a:2", Start::Rewind(1)).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::Forbidden),
        "{transport}: rewind needs history"
    );
    assert!(e.to_string().contains("history"), "{e}");
    let mut ok = c.attach("a:1", Start::Now).await.unwrap();
    let e = c.attach("b:1", Start::Now).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{transport}: {e}");
    publish_data(&reqwest::Client::new(), &t.http(), "a:1", &[json!(1)]).await;
    match tokio::time::timeout(WAIT, ok.next()).await.unwrap() {
        Some(Ok(Event::Message(m))) => assert_eq!(m.serial, 1),
        other => panic!("{transport}: {other:?}"),
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_channels_are_refused_on_every_transport() {
    for transport in Transport::ALL {
        forbidden_channel(transport).await;
    }
}

/// Subscribe with a token source on `transport`, publish, revoke the subject's tokens halfway,
/// publish on: the client fetches a new token and resumes, every message once, in order.
async fn across_a_revocation(transport: Transport) {
    let t = TestServer::start().await;
    let calls = Arc::new(AtomicU64::new(0));
    let c = Client::builder(t.http())
        .token_source(source(t.http(), "10m", None, true, calls.clone()))
        .transports(&[transport])
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .poll_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut sub = c.attach("tok", Start::Now).await.unwrap();
    let http = reqwest::Client::new();
    let base = t.http();
    for i in 0..20u64 {
        publish_data(&http, &base, "tok", &[json!(i)]).await;
    }
    let before = messages(&mut sub, 20).await;
    let resp = http
        .post(format!("{base}/v1/tokens/revoke"))
        .bearer_auth(KEY)
        .json(&json!({"subject": "device-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Published while the client is being cut off and fetches its new token.
    for i in 20..40u64 {
        publish_data(&http, &base, "tok", &[json!(i)]).await;
    }
    let after = messages(&mut sub, 20).await;
    let data: Vec<u64> = before
        .iter()
        .chain(&after)
        .map(|m| m.data_as::<u64>().unwrap())
        .collect();
    assert_eq!(
        data,
        (0..40).collect::<Vec<_>>(),
        "{transport}: once, in order"
    );
    subscriber::assert_quiet(&mut sub).await;
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "{transport}: a new token was fetched"
    );
    if transport != Transport::WebSocket {
        // An SSE stream ends with a `token_revoked` event; a poll is answered 401 with it.
        let refused = tidings_testkit::rest::metric(
            &http,
            &base,
            r#"tidings_errors_total{code="token_revoked"}"#,
        )
        .await;
        assert!(
            refused >= 1.0,
            "{transport}: the server refused the old token"
        );
    }
    if transport != Transport::LongPoll {
        // A stream is open all along, so the revocation closed it.
        let closed = tidings_testkit::rest::metric(
            &http,
            &base,
            r#"tidings_sessions_closed_total{reason="token_revoked"}"#,
        )
        .await;
        assert_eq!(closed, 1.0, "{transport}");
        assert!(c.stats().connections >= 2, "{transport}: {:?}", c.stats());
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_fetches_a_new_token_after_close_4002() {
    across_a_revocation(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_fetches_a_new_token_after_token_revoked() {
    across_a_revocation(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetches_a_new_token_after_token_revoked() {
    across_a_revocation(Transport::LongPoll).await;
}

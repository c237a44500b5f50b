//! Bad input gets its documented error code, and the server keeps serving everyone.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tidings_testkit::rest::{publish, serials};
use tidings_testkit::server::TestServer;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(c: &mut Client, code: &str) -> Value {
    let v = c.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some(code)),
        "{v}"
    );
    assert!(!v["message"].as_str().unwrap().is_empty());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_bad_frames_get_codes_and_the_connection_lives_on() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut bystander = Client::connect(&t.ws_url(), Some(KEY)).await;
    bystander.attach("ok", json!({})).await;

    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    c.send_text("{not json").await;
    expect_error(&mut c, "malformed_frame").await;
    c.send_text("[1,2]").await;
    expect_error(&mut c, "malformed_frame").await;
    c.send(json!({"type": "subscribe", "channel": "ok"})).await;
    expect_error(&mut c, "unknown_frame_type").await;
    c.send(json!({"type": "attach"})).await;
    expect_error(&mut c, "malformed_frame").await;
    c.send(json!({"type": "attach", "channel": "bad channel"}))
        .await;
    let e = expect_error(&mut c, "invalid_channel").await;
    assert_eq!(e["channel"], "bad channel");
    c.send(json!({"type": "attach", "channel": "a::b"})).await;
    expect_error(&mut c, "invalid_channel").await;
    c.send(
        json!({"type": "publish", "channel": "ok", "data": "x".repeat(70 * 1024), "ref": "big"}),
    )
    .await;
    let e = expect_error(&mut c, "message_too_large").await;
    assert_eq!(
        (e["ref"].as_str(), e["channel"].as_str()),
        (Some("big"), Some("ok"))
    );
    c.send(json!({"type": "publish", "channel": "ok", "ref": "empty"}))
        .await;
    expect_error(&mut c, "invalid_message").await;
    c.send(json!({"type": "detach", "channel": "never-attached"}))
        .await;
    expect_error(&mut c, "not_attached").await;
    c.ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    expect_error(&mut c, "malformed_frame").await;

    // The same connection still works, and the bystander never noticed.
    c.attach("ok", json!({})).await;
    publish(&http, &t.http(), "ok", json!({"data": 1})).await;
    assert_eq!(serials(&c.messages(1).await), vec![1]);
    assert_eq!(serials(&bystander.messages(1).await), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_beyond_the_hard_limit_close_only_that_connection() {
    let t = TestServer::start().await;
    let mut bystander = Client::connect(&t.ws_url(), Some(KEY)).await;
    bystander.attach("ok", json!({})).await;
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    // Far beyond twice the message limit: the frame itself is refused. The server may close
    // while the client is still writing it (it reads the header first): then the write fails.
    let sent = c
        .try_send(json!({"type": "publish", "channel": "ok", "data": "x".repeat(1 << 20)}))
        .await;
    match sent {
        Ok(()) => {
            let (_, code) = c.drain_until_closed().await;
            if let Some(code) = code {
                assert_eq!(code, CloseCode::Size);
            }
        }
        Err(e) => assert!(
            matches!(
                e,
                tokio_tungstenite::tungstenite::Error::Io(_)
                    | tokio_tungstenite::tungstenite::Error::ConnectionClosed
                    | tokio_tungstenite::tungstenite::Error::AlreadyClosed
            ),
            "the server closed the connection: {e}"
        ),
    }
    assert_eq!(bystander.publish("ok", json!("still here")).await, 1);
    assert_eq!(serials(&bystander.messages(1).await), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bad_requests_get_codes() {
    let t = TestServer::start_with(|c| c.limits.max_message_bytes = 4096).await;
    let http = reqwest::Client::new();
    let url = |ch: &str| format!("{}/v1/channels/{ch}/messages", t.http());
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    };
    let post = |ch: &str, body: &str| {
        http.post(url(ch))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    check(post("c", "{oops").await.unwrap(), 400, "malformed_frame").await;
    check(post("c", "42").await.unwrap(), 400, "malformed_frame").await;
    check(
        post("c", r#"{"data":1,"extra":true}"#).await.unwrap(),
        400,
        "malformed_frame",
    )
    .await;
    check(post("c", "[]").await.unwrap(), 400, "invalid_request").await;
    check(
        post("c", r#"{"id":"only-id"}"#).await.unwrap(),
        400,
        "invalid_message",
    )
    .await;
    check(
        post("c%20d", r#"{"data":1}"#).await.unwrap(),
        400,
        "invalid_channel",
    )
    .await;
    let big = json!({"data": "x".repeat(5000)}).to_string();
    check(post("c", &big).await.unwrap(), 413, "message_too_large").await;
    // A body beyond what the server reads at all (4 KiB x 2 x 1000 batch = 8 MB; floor 1 MiB).
    // (Its own client: the server closes a connection whose body it refused to read.)
    let huge = json!([{"data": "x".repeat(9 << 20)}]).to_string();
    let resp = reqwest::Client::new()
        .post(url("c"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    check(resp, 413, "request_too_large").await;
    let history = |q: &str| http.get(format!("{}{q}", url("c"))).bearer_auth(KEY).send();
    check(history("?after=-1").await.unwrap(), 400, "invalid_request").await;
    check(history("?limit=0").await.unwrap(), 400, "invalid_request").await;
    check(
        history("?limit=100000").await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let resp = http
        .get(format!("{}/v2/nothing", t.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // After all that, a good request still succeeds.
    assert_eq!(
        publish(&http, &t.http(), "c", json!({"data": 1})).await,
        vec![1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_keys_are_refused() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/channels/c/messages", t.http());
    for auth in [
        None,
        Some("Bearer test:wrong-secret"),
        Some("Bearer nobody:x"),
        Some("Basic abc"),
    ] {
        let mut req = http.post(&url).json(&json!({"data": 1}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
    // WebSocket upgrades are refused before the upgrade, with the same code.
    for key in [None, Some("test:wrong-secret")] {
        let err = Client::try_connect(&t.ws_url(), key)
            .await
            .err()
            .expect("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized");
            }
            other => panic!("expected an HTTP 401, got {other}"),
        }
    }
    // The access_token query parameter works for browsers that cannot set headers.
    let ok = http
        .get(format!("{url}?access_token={KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

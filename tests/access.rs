//! Every path is authorised: capabilities per key, public namespaces, heartbeats and health.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tidings::config::{ApiKeyConfig, Secret};
use tidings::grant::Operation;
use tidings_testkit::rest::{metric, publish};
use tidings_testkit::server::TestServer;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;

const READER: &str = "reader:reader-secret";

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.api_keys.push(ApiKeyConfig {
            id: "reader".into(),
            secret: Secret::new("reader-secret"),
            capabilities: Some(BTreeMap::from([(
                "store:*".to_string(),
                vec![Operation::Subscribe],
            )])),
        });
        c.namespaces.entry("news".into()).or_default().public = true;
        c.session.heartbeat_interval = Duration::from_millis(200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_checked_per_channel_and_operation() {
    let t = server().await;
    let http = reqwest::Client::new();
    let mut c = Client::connect(&t.ws_url(), Some(READER)).await;
    c.attach("store:1", json!({})).await;
    for frame in [
        json!({"type": "attach", "channel": "storefront:1"}),
        json!({"type": "attach", "channel": "store"}),
        json!({"type": "attach", "channel": "store:1", "rewind": 5}),
        json!({"type": "publish", "channel": "store:1", "data": 1}),
    ] {
        c.send(frame.clone()).await;
        let v = c.recv().await;
        assert_eq!(v["code"], "forbidden", "{frame} -> {v}");
    }
    // Denials read the same whether or not the channel exists.
    publish(&http, &t.http(), "storefront:1", json!({"data": 1})).await;
    c.send(json!({"type": "attach", "channel": "storefront:1"}))
        .await;
    let exists = c.recv().await;
    c.send(json!({"type": "attach", "channel": "storefront:999"}))
        .await;
    let missing = c.recv().await;
    assert_eq!(exists["message"], missing["message"]);
    // REST: history needs the history capability.
    let resp = http
        .get(format!("{}/v1/channels/store:1/messages", t.http()))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    let resp = http
        .post(format!("{}/v1/channels/store:1/messages", t.http()))
        .bearer_auth(READER)
        .json(&json!({"data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_namespaces_need_no_key_but_publishing_does() {
    let t = server().await;
    let http = reqwest::Client::new();
    let mut anon = Client::connect(&t.ws_url(), None).await;
    anon.attach("news:today", json!({})).await;
    anon.send(json!({"type": "attach", "channel": "private:1"}))
        .await;
    assert_eq!(anon.recv().await["code"], "forbidden");
    anon.send(json!({"type": "publish", "channel": "news:today", "data": 1}))
        .await;
    assert_eq!(anon.recv().await["code"], "forbidden");
    publish(&http, &t.http(), "news:today", json!({"data": "hello"})).await;
    assert_eq!(anon.messages(1).await[0]["data"], "hello");
    let page: Value = http
        .get(format!("{}/v1/channels/news:today/messages", t.http()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_connections_get_heartbeats_and_health_answers() {
    let t = server().await;
    let http = reqwest::Client::new();
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    assert_eq!(c.recv_any().await["type"], "heartbeat");
    assert_eq!(c.recv_any().await["type"], "heartbeat");
    for path in ["/healthz", "/readyz"] {
        let resp = http
            .get(format!("{}{path}", t.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(
        metric(
            &http,
            &t.http(),
            "tidings_connections{transport=\"websocket\"}"
        )
        .await,
        1.0
    );
    publish(&http, &t.http(), "m", json!({"data": 1})).await;
    assert_eq!(
        metric(&http, &t.http(), "tidings_messages_appended_total").await,
        1.0
    );
    t.server.shutdown();
    let (_, code) = c.drain_until_closed().await;
    assert_eq!(code, Some(tidings_protocol::CLOSE_GOING_AWAY.into()));
}

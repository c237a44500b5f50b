//! Fallback from WebSocket to SSE to long-polling when a proxy blocks a transport.

mod subscriber;

use serde_json::{json, Value};
use subscriber::{client, messages};
use tidings_client::{ConnectionState, Publish, Start, Transport};
use tidings_testkit::proxy::Proxy;
use tidings_testkit::rest::publish_data;
use tidings_testkit::server::TestServer;

fn transport(state: &ConnectionState) -> Option<Transport> {
    match state {
        ConnectionState::Connected { transport } => Some(*transport),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_sse_when_websocket_is_blocked() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.addr()).await;
    proxy.block(&["/v1/connect"]);
    let http = reqwest::Client::new();
    let c = client(&proxy.http()).build().unwrap();
    let mut sub = c.attach("fb:sse", Start::Now).await.unwrap();
    assert_eq!(transport(&c.state().borrow()), Some(Transport::Sse));
    assert!(
        proxy
            .refused_paths()
            .iter()
            .any(|p| p.starts_with("/v1/connect")),
        "WebSocket was tried first: {:?}",
        proxy.refused_paths()
    );
    publish_data(&http, &t.http(), "fb:sse", &[json!("a"), json!("b")]).await;
    // Publishing goes over REST on this transport.
    let serial = c
        .publish("fb:sse", Publish::data(json!("c")).name("n"))
        .await
        .unwrap();
    assert_eq!(serial, 3);
    let got = messages(&mut sub, 3).await;
    assert_eq!(
        got.iter()
            .map(|m| m.data_as::<Value>().unwrap())
            .collect::<Vec<_>>(),
        vec![json!("a"), json!("b"), json!("c")]
    );
    assert_eq!(got[2].name.as_deref(), Some("n"));

    // A second channel joins the same stream (a reconnect that resumes the first).
    let mut other = c.attach("fb:other", Start::Rewind(10)).await.unwrap();
    publish_data(&http, &t.http(), "fb:sse", &[json!("d")]).await;
    publish_data(&http, &t.http(), "fb:other", &[json!("x")]).await;
    assert_eq!(messages(&mut sub, 1).await[0].serial, 4);
    assert_eq!(
        messages(&mut other, 1).await[0]
            .data_as::<String>()
            .unwrap(),
        "x"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_long_polling_when_websocket_and_sse_are_blocked() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.addr()).await;
    proxy.block(&["/v1/connect", "/v1/sse"]);
    let http = reqwest::Client::new();
    publish_data(&http, &t.http(), "fb:poll", &[json!(1), json!(2)]).await;
    let c = client(&proxy.http()).build().unwrap();
    let mut sub = c.attach("fb:poll", Start::Rewind(1)).await.unwrap();
    assert_eq!(transport(&c.state().borrow()), Some(Transport::LongPoll));
    let refused = proxy.refused_paths();
    assert!(
        refused.iter().any(|p| p.starts_with("/v1/connect"))
            && refused.iter().any(|p| p.starts_with("/v1/sse")),
        "{refused:?}"
    );
    assert_eq!(messages(&mut sub, 1).await[0].serial, 2, "rewind 1");
    publish_data(&http, &t.http(), "fb:poll", &[json!(3)]).await;
    assert_eq!(
        c.publish("fb:poll", Publish::data(json!(4))).await.unwrap(),
        4
    );
    let got = messages(&mut sub, 2).await;
    assert_eq!(got.iter().map(|m| m.serial).collect::<Vec<_>>(), vec![3, 4]);
    c.close().await;
}

/// Once WebSocket works again, a client that fell back stays on the transport that worked;
/// a new client takes WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_preferred_when_it_works() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.addr()).await;
    let c = client(&proxy.http()).build().unwrap();
    let _sub = c.attach("fb:ws", Start::Now).await.unwrap();
    assert_eq!(transport(&c.state().borrow()), Some(Transport::WebSocket));
    assert!(proxy.refused_paths().is_empty());
}

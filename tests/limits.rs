//! Each limit, when hit, gives its own error code and metric, and the server keeps serving
//! everyone else. Also: browsers on other origins, and idle connections.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::rest::{metric, publish, serials};
use tidings_testkit::server::TestServer;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn refused_status(err: tokio_tungstenite::tungstenite::Error) -> (u16, Value) {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => (
            resp.status().as_u16(),
            serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap(),
        ),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_total_and_per_subject() {
    let t = TestServer::start_with(|c| {
        c.limits.max_connections = 3;
        c.limits.max_connections_per_subject = 2;
        c.add_api_key("other:other-secret").unwrap();
    })
    .await;
    let http = reqwest::Client::new();
    let a1 = Client::connect(&t.ws_url(), Some(KEY)).await;
    let _a2 = Client::connect(&t.ws_url(), Some(KEY)).await;
    let (status, body) = refused_status(
        Client::try_connect(&t.ws_url(), Some(KEY))
            .await
            .err()
            .unwrap(),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections"))
    );
    let _b1 = Client::connect(&t.ws_url(), Some("other:other-secret")).await;
    let (_, body) = refused_status(
        Client::try_connect(&t.ws_url(), Some("other:other-secret"))
            .await
            .err()
            .unwrap(),
    );
    assert_eq!(body["error"]["code"], "too_many_connections", "total limit");
    // SSE counts too.
    let resp = http
        .get(format!("{}/v1/sse?channel=x", t.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(
        metric(
            &http,
            &t.http(),
            "tidings_errors_total{code=\"too_many_connections\"}"
        )
        .await
            >= 3.0
    );
    // A slot frees when a connection closes.
    drop(a1);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = Client::try_connect(&t.ws_url(), Some(KEY)).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = again.expect("the freed slot is reusable");
    again.attach("ok", json!({})).await;
    publish(&http, &t.http(), "ok", json!({"data": 1})).await;
    assert_eq!(serials(&again.messages(1).await), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_per_connection_and_publish_rate() {
    let t = TestServer::start_with(|c| {
        c.limits.max_channels_per_connection = 2;
        c.limits.publish_rate = 5;
    })
    .await;
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    c.attach("a", json!({})).await;
    c.attach("b", json!({})).await;
    c.attach("b", json!({})).await; // re-attaching an attached channel is not a new one
    c.send(json!({"type": "attach", "channel": "c"})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["channel"].as_str()),
        (Some("too_many_channels"), Some("c"))
    );
    c.send(json!({"type": "detach", "channel": "a"})).await;
    assert_eq!(c.recv().await["type"], "detached");
    c.attach("c", json!({})).await;

    let mut pubr = Client::connect(&t.ws_url(), Some(KEY)).await;
    for i in 0..8 {
        pubr.send(json!({"type": "publish", "channel": "rate", "data": i, "ref": format!("r{i}")}))
            .await;
    }
    let (mut acks, mut limited) = (0, 0);
    for _ in 0..8 {
        let v = pubr.recv().await;
        match v["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                assert!(v["ref"].as_str().unwrap().starts_with('r'));
                limited += 1;
            }
            _ => panic!("{v}"),
        }
    }
    assert_eq!(
        (acks, limited),
        (5, 3),
        "a burst of the rate, then refusals"
    );
    // After a pause the bucket refills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pubr.publish("rate", json!("later")).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_for_browsers() {
    let t =
        TestServer::start_with(|c| c.cors.allowed_origins = vec!["https://app.example.com".into()])
            .await;
    let ws = |origin: &str| {
        let mut req = t.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    assert!(ws("https://app.example.com").await.is_ok());
    let (status, body) = refused_status(ws("https://evil.example.com").await.err().unwrap());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );

    // CORS preflight for REST answers the allowed origin, and nothing for others.
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/channels/c/messages", t.http()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let no = preflight("https://evil.example.com").await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());
}

/// A WebSocket upgrade with these extra headers (`Origin`, `Host`, ...), as a browser sends it.
async fn upgrade(t: &TestServer, headers: &[(&'static str, &str)]) -> Result<(), (u16, Value)> {
    let mut req = t.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(e) => Err(refused_status(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_origin_needs_no_cors_entry() {
    // No cors.allowed_origins: only Tidings' own origin (a page it served) may upgrade.
    let t = TestServer::start().await;
    let addr = t.addr();
    let own = format!("http://{addr}");
    assert_eq!(upgrade(&t, &[("origin", &own)]).await, Ok(()));
    assert_eq!(upgrade(&t, &[]).await, Ok(()), "no Origin still passes");
    // Host names compare ignoring case; a missing port is the scheme's default.
    let host = [
        ("host", "Tidings.Example"),
        ("origin", "http://tidings.example"),
    ];
    assert_eq!(upgrade(&t, &host).await, Ok(()));
    let host = [
        ("host", "tidings.example:80"),
        ("origin", "http://tidings.example"),
    ];
    assert_eq!(upgrade(&t, &host).await, Ok(()));
    // Behind a proxy that terminates TLS and says so, the https page is the own origin.
    let proxied = [
        ("host", "tidings.example"),
        ("x-forwarded-proto", "https"),
        ("origin", "https://tidings.example"),
    ];
    assert_eq!(upgrade(&t, &proxied).await, Ok(()));

    let refused = |origin: &str| {
        Err((
            403,
            json!({"error": {
                "code": "origin_not_allowed",
                "message": format!("origin {origin:?} is not allowed; add it to cors.allowed_origins"),
            }}),
        ))
    };
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
    let other_host = format!("http://localhost:{}", addr.port());
    let other_scheme = format!("https://{addr}");
    for origin in [
        &other_port,
        &other_host,
        &other_scheme,
        "null",
        "http://127.0.0.1",
    ] {
        assert_eq!(
            upgrade(&t, &[("origin", origin)]).await,
            refused(origin),
            "{origin}"
        );
    }
    // A plain-http page is not the origin of one the proxy served over TLS, nor the other way.
    let downgraded = [
        ("host", "tidings.example"),
        ("x-forwarded-proto", "https"),
        ("origin", "http://tidings.example"),
    ];
    assert_eq!(
        upgrade(&t, &downgraded).await,
        refused("http://tidings.example")
    );
    let unsaid = [
        ("host", "tidings.example"),
        ("origin", "https://tidings.example"),
    ];
    assert_eq!(
        upgrade(&t, &unsaid).await,
        refused("https://tidings.example")
    );
    let series = "tidings_errors_total{code=\"origin_not_allowed\"}";
    let counted = metric(&reqwest::Client::new(), &t.http(), series).await;
    assert_eq!(counted, 7.0, "each refusal is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_as_idle() {
    let t = TestServer::start_with(|c| {
        c.session.ping_interval = Duration::from_millis(100);
        c.session.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // tungstenite answers pings only while the client reads; a client that stops reading
    // entirely looks dead to the server.
    let c = Client::connect(&t.ws_url(), Some(KEY)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = c;
    let (_, code) = c.drain_until_closed().await;
    assert_eq!(code, Some(CloseCode::from(tidings_protocol::CLOSE_IDLE)));
    // A client that keeps reading answers the pings and stays.
    let mut live = Client::connect(&t.ws_url(), Some(KEY)).await;
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        while tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(
                Duration::from_millis(50),
                futures_util::StreamExt::next(&mut live.ws),
            )
            .await;
        }
        live
    });
    let mut live = reader.await.unwrap();
    live.send(json!({"type": "ping", "ref": "still"})).await;
    assert_eq!(live.recv().await["type"], "pong");
}

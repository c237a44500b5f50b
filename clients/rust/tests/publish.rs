//! Publishing through the client, and bad input refused before anything is sent.

mod subscriber;

use serde_json::json;
use subscriber::{client, messages};
use tidings_client::{Error, ErrorCode, Publish, Start, Transport};
use tidings_testkit::server::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_the_serial_on_every_transport() {
    let t = TestServer::start_with(|c| c.limits.max_message_bytes = 1024).await;
    for transport in Transport::ALL {
        let channel = format!("pub:{}", transport.to_string().replace('-', ""));
        let c = client(&t.http()).transports(&[transport]).build().unwrap();
        let mut sub = c.attach(&channel, Start::Now).await.unwrap();
        let first = c
            .publish(&channel, Publish::data(json!({"n": 1})).name("created"))
            .await
            .unwrap();
        assert_eq!(first, 1, "{transport}");
        // The same id again appends nothing and answers the same serial.
        let a = c
            .publish(&channel, Publish::data(json!(2)).id("k"))
            .await
            .unwrap();
        let b = c
            .publish(&channel, Publish::data(json!(2)).id("k"))
            .await
            .unwrap();
        assert_eq!((a, b), (2, 2), "{transport}");
        let got = messages(&mut sub, 2).await;
        assert_eq!(got[0].name.as_deref(), Some("created"));
        assert_eq!(got[1].id.as_deref(), Some("k"));

        // Over the limit: refused by the server (REST) or before sending (WebSocket knows the
        // limit from `connected`).
        let big = Publish::data(json!("x".repeat(2000)));
        match c.publish(&channel, big).await.unwrap_err() {
            Error::MessageTooLarge { limit, .. } => assert_eq!(limit, 1024),
            e => assert_eq!(
                e.code(),
                Some(ErrorCode::MessageTooLarge),
                "{transport}: {e}"
            ),
        }
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_clear_errors() {
    let t = TestServer::start().await;
    let c = client(&t.http()).build().unwrap();
    for name in ["", "a::b", "a b", "é"] {
        assert!(
            matches!(
                c.attach(name, Start::Now).await,
                Err(Error::InvalidChannel { .. })
            ),
            "{name:?}"
        );
        assert!(matches!(
            c.publish(name, Publish::data(json!(1))).await,
            Err(Error::InvalidChannel { .. })
        ));
    }
    assert!(matches!(
        c.publish("a", Publish::default()).await,
        Err(Error::InvalidMessage(_))
    ));
    for epoch in ["", "a,b", "a=b", "a b"] {
        let from = tidings_client::Position {
            epoch: epoch.into(),
            serial: 1,
        };
        assert!(
            matches!(
                c.attach("a", Start::From(from)).await,
                Err(Error::InvalidPosition(_))
            ),
            "{epoch:?}"
        );
    }
    assert!(matches!(
        c.publish("a", Publish::data(json!(1)).headers(json!("h")))
            .await,
        Err(Error::InvalidMessage(_))
    ));
    for url in ["ftp://x", "localhost:8080", "https://example.com"] {
        assert!(
            matches!(
                tidings_client::Client::builder(url).build(),
                Err(Error::InvalidUrl { .. })
            ),
            "{url}"
        );
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_answers_the_epoch_and_messages() {
    let t = TestServer::start().await;
    let c = client(&t.http()).build().unwrap();
    for i in 0..3 {
        c.publish("h", Publish::data(json!(i))).await.unwrap();
    }
    let page = c.history("h", 1, 10).await.unwrap();
    assert!(!page.epoch.is_empty());
    assert_eq!(
        page.items.iter().map(|m| m.serial).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let e = tidings_client::Client::builder(t.http())
        .build()
        .unwrap()
        .history("h", 0, 1)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
}

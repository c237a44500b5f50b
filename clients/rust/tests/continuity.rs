//! Continuity lost surfaces as a typed event, on every transport, never as a silent gap.

mod subscriber;

use std::time::Duration;

use serde_json::{json, Value};
use subscriber::{client, messages, next_event};
use tidings::channel::ChannelName;
use tidings_client::{ContinuityLost, Event, Position, Start, Transport};
use tidings_testkit::proxy::Proxy;
use tidings_testkit::rest::publish_data;
use tidings_testkit::server::TestServer;

async fn stale_epoch_is_reported(transport: Transport) {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    publish_data(&http, &t.http(), "c", &[json!(1), json!(2), json!(3)]).await;
    let c = client(&t.http()).transports(&[transport]).build().unwrap();
    let stale = Position {
        epoch: "0123456789abcdef".into(),
        serial: 2,
    };
    let mut sub = c.attach("c", Start::From(stale)).await.unwrap();
    let epoch = match next_event(&mut sub).await {
        Event::ContinuityLost {
            channel,
            reason,
            position,
        } => {
            assert_eq!(channel, "c");
            assert_eq!(reason, ContinuityLost::EpochChanged);
            assert_eq!(position.serial, 3, "delivery continues after the head");
            assert_ne!(position.epoch, "0123456789abcdef");
            position.epoch
        }
        other => panic!("{transport}: expected continuity lost, got {other:?}"),
    };
    assert_eq!(sub.position().unwrap().epoch, epoch);
    publish_data(&http, &t.http(), "c", &[json!(4)]).await;
    assert_eq!(messages(&mut sub, 1).await[0].serial, 4);
    assert_eq!(
        sub.position(),
        Some(&Position {
            epoch: epoch.clone(),
            serial: 4
        }),
        "the position follows what was yielded"
    );

    // One subscription per channel.
    assert!(matches!(
        c.attach("c", Start::Now).await,
        Err(tidings_client::Error::AlreadyAttached(_))
    ));
    // A position ahead of the head is reported too. Dropping the subscription detaches the
    // channel before the next command runs.
    drop(sub);
    let ahead = Position { epoch, serial: 99 };
    let mut sub = c.attach("c", Start::From(ahead)).await.unwrap();
    match next_event(&mut sub).await {
        Event::ContinuityLost { reason, .. } => assert_eq!(reason, ContinuityLost::PositionAhead),
        other => panic!("{transport}: expected continuity lost, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_a_typed_event_on_websocket() {
    stale_epoch_is_reported(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_a_typed_event_on_sse() {
    stale_epoch_is_reported(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_a_typed_event_on_long_poll() {
    stale_epoch_is_reported(Transport::LongPoll).await;
}

/// The server's data directory is wiped while the client is away: on reconnect it resumes
/// with the old epoch and is told, then continues in the new history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_server_is_reported_after_a_reconnect() {
    let a = TestServer::start().await;
    let proxy = Proxy::start(a.addr()).await;
    let http = reqwest::Client::new();
    let c = client(&proxy.http()).build().unwrap();
    let mut sub = c.attach("w", Start::Now).await.unwrap();
    publish_data(&http, &a.http(), "w", &[json!(1), json!(2)]).await;
    assert_eq!(messages(&mut sub, 2).await[1].serial, 2);
    let old_epoch = sub.position().unwrap().epoch.clone();

    // Another server with an empty data directory takes over the address.
    let b = TestServer::start().await;
    proxy.retarget(b.addr());
    a.stop().await; // closes the connection with 1001: the client reconnects, to `b`
    match next_event(&mut sub).await {
        Event::ContinuityLost {
            reason, position, ..
        } => {
            assert_eq!(reason, ContinuityLost::EpochChanged);
            assert_ne!(position.epoch, old_epoch);
        }
        other => panic!("expected continuity lost, got {other:?}"),
    }
    publish_data(&http, &b.http(), "w", &[json!("new")]).await;
    let m = messages(&mut sub, 1).await;
    assert_eq!(m[0].data_as::<Value>().unwrap(), json!("new"));
    c.close().await;
}

/// A channel's history restarts while the client is attached (the server resets its epoch):
/// the client says so, then keeps delivering.
async fn reset_while_attached(transport: Transport) {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let c = client(&t.http()).transports(&[transport]).build().unwrap();
    let mut sub = c.attach("r", Start::Now).await.unwrap();
    publish_data(&http, &t.http(), "r", &[json!(1)]).await;
    assert_eq!(messages(&mut sub, 1).await[0].serial, 1);
    let before = sub.position().unwrap().clone();
    // Reset while the connection is established (on long-poll: while a poll waits; a poll
    // arriving with a stale `from` is answered only when its wait ends, a server deviation
    // reported separately).
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.server
        .log()
        .reset(vec![ChannelName::parse("r").unwrap()])
        .await
        .unwrap();
    match next_event(&mut sub).await {
        Event::ContinuityLost {
            reason, position, ..
        } => {
            assert_eq!(reason, ContinuityLost::EpochChanged);
            assert_ne!(position.epoch, before.epoch);
        }
        other => panic!("{transport}: expected continuity lost, got {other:?}"),
    }
    publish_data(&http, &t.http(), "r", &[json!(2)]).await;
    assert_eq!(messages(&mut sub, 1).await[0].data_as::<u64>().unwrap(), 2);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_while_attached_is_reported_on_websocket() {
    reset_while_attached(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_while_attached_is_reported_on_sse() {
    reset_while_attached(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_while_attached_is_reported_on_long_poll() {
    reset_while_attached(Transport::LongPoll).await;
}

/// `position()` is the attach point as soon as `attach` returns (it used to stay `None` until the
/// stream was first read, so an application that saved it before any message came had nothing
/// to resume from, attached `Now` again, and lost what came meanwhile without a word: found by
/// the fault soak, scripts/soak). A subscriber resuming from it after retention removed
/// messages after it is told (`history_expired`) and continues after the head, on every
/// transport, whether the saved position is a message's or a channel's that had none yet.
async fn resume_past_retention_is_reported(transport: Transport, before: usize) {
    let t = TestServer::start_with(|c| {
        c.retention.max_messages = Some(3);
        c.retention.interval = Duration::from_millis(50);
    })
    .await;
    let http = reqwest::Client::new();
    let data: Vec<Value> = (0..before).map(|i| json!(i)).collect();
    if before > 0 {
        publish_data(&http, &t.http(), "trim", &data).await;
    }
    let c = client(&t.http()).transports(&[transport]).build().unwrap();
    let sub = c.attach("trim", Start::Now).await.unwrap();
    let saved = sub.position().cloned().expect("attached");
    assert_eq!(saved.serial, before as u64);
    drop(sub);
    c.close().await;
    let data: Vec<Value> = (0..10).map(|i| json!(i)).collect();
    publish_data(&http, &t.http(), "trim", &data).await;
    let head = before as u64 + 10;
    // Retention keeps the last 3.
    let channel = ChannelName::parse("trim").unwrap();
    let deadline = tokio::time::Instant::now() + tidings_testkit::WAIT;
    loop {
        let state = t.server.log().state(&channel).await.unwrap();
        if state.trimmed == head - 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran: {state:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let c = client(&t.http()).transports(&[transport]).build().unwrap();
    let mut sub = c.attach("trim", Start::From(saved)).await.unwrap();
    match next_event(&mut sub).await {
        Event::ContinuityLost {
            reason, position, ..
        } => {
            assert_eq!(reason, ContinuityLost::HistoryExpired, "{transport}");
            assert_eq!(
                position.serial, head,
                "{transport}: continues after the head"
            );
        }
        other => panic!("{transport}, saved at {before}: expected continuity lost, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_retention_is_a_typed_event_on_every_transport() {
    for transport in Transport::ALL {
        for before in [0, 2] {
            resume_past_retention_is_reported(transport, before).await;
        }
    }
}

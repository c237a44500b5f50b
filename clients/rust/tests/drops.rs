//! The client against the real server through a proxy that drops connections at random while
//! messages are published: every message arrives exactly once, in order.

mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use subscriber::{assert_quiet, client, messages};
use tidings_client::{Client, Event, Start, Transport};
use tidings_testkit::proxy::Proxy;
use tidings_testkit::rest::publish_data;
use tidings_testkit::server::TestServer;
use tidings_testkit::WAIT;

/// Publish continuously, cut the client's connection `drops` times at random moments (each
/// time once it is connected again), then check that what the client received is exactly what
/// was published, in order.
async fn survives_random_drops(transport: Transport, drops: usize) {
    let t = TestServer::start().await;
    let proxy = Arc::new(Proxy::start(t.addr()).await);
    let c = client(&proxy.http())
        .transports(&[transport])
        .poll_wait(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut sub = c.attach("drops:1", Start::Now).await.unwrap();
    let started = Instant::now();

    // Publisher: small batches straight to the server, until the cutter is done.
    let done = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (done, published, base) = (done.clone(), published.clone(), t.http());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !done.load(Ordering::SeqCst) {
                let from = published.load(Ordering::SeqCst);
                let batch: Vec<Value> = (from..from + 5).map(|i| json!(i)).collect();
                publish_data(&http, &base, "drops:1", &batch).await;
                published.fetch_add(5, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Cutter: let the connection live a random while, cut it, and count the drop once the
    // client has noticed and reconnected (a cut that only hit an idle pooled HTTP connection
    // forces nothing and is not counted).
    let cutter = {
        let (proxy, c) = (proxy.clone(), c.clone());
        tokio::spawn(async move {
            let mut forced = 0;
            while forced < drops {
                let before = c.stats().connections;
                let life = rand::rng().random_range(0..25);
                tokio::time::sleep(Duration::from_millis(life)).await;
                if proxy.cut() == 0 {
                    continue;
                }
                let reconnected = tokio::time::timeout(Duration::from_secs(2), async {
                    while c.stats().connections <= before {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                if reconnected.await.is_ok() {
                    forced += 1;
                }
            }
            forced
        })
    };

    // Receiver: read while all this happens, until everything published arrived.
    let finished = Arc::new(AtomicBool::new(false));
    let reader = async {
        let mut received = Vec::new();
        let mut finished_at = None;
        loop {
            if finished.load(Ordering::SeqCst) {
                let total = published.load(Ordering::SeqCst);
                if received.len() as u64 >= total {
                    return received;
                }
                let since = *finished_at.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < WAIT,
                    "{transport}: {} of {total} messages arrived",
                    received.len()
                );
            }
            match tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                Ok(Some(Ok(Event::Message(m)))) => received.push(m),
                Ok(other) => panic!("expected a message, got {other:?}"),
                Err(_) => {}
            }
        }
    };
    let cutting = async {
        let forced = tokio::time::timeout(Duration::from_secs(60), cutter)
            .await
            .expect("the drops are done within a minute")
            .unwrap();
        done.store(true, Ordering::SeqCst);
        publisher.await.unwrap();
        finished.store(true, Ordering::SeqCst);
        forced
    };
    let (forced, received) = tokio::join!(cutting, async {
        tokio::time::timeout(Duration::from_secs(90), reader)
            .await
            .expect("every message arrives")
    });
    assert_quiet(&mut sub).await;

    let total = published.load(Ordering::SeqCst);
    let data: Vec<u64> = received
        .iter()
        .map(|m| m.data_as::<u64>().unwrap())
        .collect();
    assert_eq!(
        data,
        (0..total).collect::<Vec<u64>>(),
        "every message exactly once, in order"
    );
    let serials: Vec<u64> = received.iter().map(|m| m.serial).collect();
    assert_eq!(serials, (1..=total).collect::<Vec<u64>>());
    assert_eq!(forced, drops);
    let stats = c.stats();
    assert!(
        stats.connections > drops as u64,
        "each drop forced a reconnect: {stats:?}"
    );
    eprintln!(
        "{transport}: {total} messages across {drops} drops in {:?} ({stats:?})",
        started.elapsed()
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_delivers_every_message_once_in_order_across_100_drops() {
    survives_random_drops(Transport::WebSocket, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_every_message_once_in_order_across_drops() {
    survives_random_drops(Transport::Sse, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_delivers_every_message_once_in_order_across_drops() {
    survives_random_drops(Transport::LongPoll, 30).await;
}

/// A connection that goes silent (packets dropped, socket open) is detected by its missing
/// heartbeats and replaced; what was published meanwhile arrives.
async fn silent_connection_is_replaced(transport: Transport) {
    let t = TestServer::start_with(|c| {
        c.session.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    let proxy = Proxy::start(t.addr()).await;
    let http = reqwest::Client::new();
    // WebSocket learns the interval from `connected`; SSE is told.
    let c = client(&proxy.http())
        .transports(&[transport])
        .heartbeat(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut sub = c.attach("quiet", Start::Now).await.unwrap();
    publish_data(&http, &t.http(), "quiet", &[json!(1)]).await;
    assert_eq!(messages(&mut sub, 1).await[0].serial, 1);

    proxy.freeze();
    let frozen = Instant::now();
    publish_data(&http, &t.http(), "quiet", &[json!(2), json!(3)]).await;
    let late = messages(&mut sub, 2).await;
    assert_eq!(
        late.iter().map(|m| m.serial).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let took = frozen.elapsed();
    // 2.5 heartbeats of 200 ms, plus a reconnect.
    assert!(
        took >= Duration::from_millis(450) && took < WAIT,
        "{transport}: detected after {took:?}"
    );
    assert_eq!(c.stats().connections, 2, "{transport}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_detected_by_missing_heartbeats() {
    silent_connection_is_replaced(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sse_stream_is_detected_by_missing_keep_alives() {
    silent_connection_is_replaced(Transport::Sse).await;
}

/// Closing ends every subscription and says so in the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_subscriptions() {
    let t = TestServer::start().await;
    let c: Client = client(&t.http()).build().unwrap();
    let mut sub = c.attach("x", Start::Now).await.unwrap();
    c.close().await;
    assert!(sub.next().await.is_none());
    assert!(matches!(
        *c.state().borrow(),
        tidings_client::ConnectionState::Closed { error: None }
    ));
    assert!(matches!(
        c.attach("y", Start::Now).await,
        Err(tidings_client::Error::Closed)
    ));
}

/// A subscription read slowly (a tiny queue, left unread while hundreds of messages arrive)
/// still gets everything in order: the client stops reading the network instead of dropping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_everything_in_order() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    for transport in Transport::ALL {
        let channel = format!("slow:{}", transport.to_string().replace('-', ""));
        let c = client(&t.http())
            .transports(&[transport])
            .buffer(4)
            .build()
            .unwrap();
        let mut sub = c.attach(&channel, Start::Now).await.unwrap();
        let mut fast = c.attach("slow:other", Start::Now).await.unwrap();
        let data: Vec<Value> = (0..500).map(|i| json!(i)).collect();
        publish_data(&http, &t.http(), &channel, &data).await;
        publish_data(&http, &t.http(), "slow:other", &[json!("x")]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = messages(&mut sub, 500).await;
        let serials: Vec<u64> = got.iter().map(|m| m.serial).collect();
        assert_eq!(serials, (1..=500).collect::<Vec<_>>(), "{transport}");
        assert_eq!(
            messages(&mut fast, 1).await[0].data_as::<String>().unwrap(),
            "x"
        );
        assert_quiet(&mut sub).await;
        c.close().await;
    }
}

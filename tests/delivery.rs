//! Order and resume: the delivery invariants, against a real server and real WebSocket clients.

use std::collections::HashSet;

use serde_json::json;
use tidings_testkit::rest::{history, metric, publish, serials};
use tidings_testkit::server::TestServer;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_one_order_for_every_subscriber() {
    let t = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
        c.attach("orders:1", json!({})).await;
        subs.push(c);
    }
    // Eight publishers, half over REST and half over WebSocket, 50 messages each.
    let mut tasks = Vec::new();
    for p in 0..8 {
        let (http, base, url) = (reqwest::Client::new(), t.http(), t.ws_url());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut ws = if p % 2 == 0 {
                Some(Client::connect(&url, Some(KEY)).await)
            } else {
                None
            };
            for i in 0..50 {
                let data = json!({"p": p, "i": i});
                let serial = match ws.as_mut() {
                    Some(c) => c.publish("orders:1", data).await,
                    None => publish(&http, &base, "orders:1", json!({ "data": data })).await[0],
                };
                acked.push((serial, p, i));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert_eq!(acked.len(), 400);
    let acked_serials: HashSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(acked_serials.len(), 400, "every publish got its own serial");

    let mut seen = Vec::new();
    for c in &mut subs {
        let frames = c.messages(400).await;
        let s = serials(&frames);
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "serials strictly increase: {s:?}"
        );
        assert_eq!(s.iter().copied().collect::<HashSet<_>>(), acked_serials);
        // Each publisher's own messages arrive in the order it published them.
        for p in 0..8 {
            let mine: Vec<i64> = frames
                .iter()
                .filter(|f| f["data"]["p"] == p)
                .map(|f| f["data"]["i"].as_i64().unwrap())
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>());
        }
        // The data carried under each serial is the data acknowledged with it.
        for f in &frames {
            let serial = f["serial"].as_u64().unwrap();
            let a = acked.iter().find(|a| a.0 == serial).unwrap();
            assert_eq!(
                (f["data"]["p"].as_i64(), f["data"]["i"].as_i64()),
                (Some(a.1), Some(a.2))
            );
        }
        seen.push(
            frames
                .iter()
                .map(|f| (f["serial"].clone(), f["data"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(seen[0], seen[1], "subscribers see the same sequence");
    assert_eq!(seen[1], seen[2], "subscribers see the same sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_delivers_exactly_the_missed_messages_then_live() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    let attached = c.attach("room:7", json!({})).await;
    let epoch = attached["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        (attached["serial"].as_u64(), attached["resumed"].as_bool()),
        (Some(0), Some(false))
    );
    for i in 0..5 {
        publish(&http, &t.http(), "room:7", json!({"data": {"i": i}})).await;
    }
    let first = c.messages(5).await;
    assert_eq!(serials(&first), vec![1, 2, 3, 4, 5]);
    drop(c); // the phone goes into a tunnel

    let missed = publish(
        &http,
        &t.http(),
        "room:7",
        json!((5..15)
            .map(|i| json!({"data": {"i": i}}))
            .collect::<Vec<_>>()),
    )
    .await;
    assert_eq!(missed, (6..=15).collect::<Vec<_>>());

    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    let attached = c
        .attach("room:7", json!({"from": {"epoch": epoch, "serial": 5}}))
        .await;
    assert_eq!(attached["resumed"], true, "{attached}");
    assert_eq!(attached["serial"], 5);
    let caught_up = c.messages(10).await;
    assert_eq!(serials(&caught_up), (6..=15).collect::<Vec<_>>());
    assert_eq!(caught_up[0]["data"]["i"], 5);
    assert_eq!(first[4]["data"]["i"], 4);
    for i in 15..20 {
        publish(&http, &t.http(), "room:7", json!({"data": {"i": i}})).await;
    }
    let live = c.messages(5).await;
    assert_eq!(serials(&live), (16..=20).collect::<Vec<_>>());
    // Nothing else is pending: a ping is answered next, not a duplicate message.
    c.send(json!({"type": "ping", "ref": "end"})).await;
    let pong = c.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["ref"].as_str()),
        (Some("pong"), Some("end"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_races_with_live_publishing_without_gap_or_duplicate() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    publish(
        &http,
        &t.http(),
        "race",
        json!((0..500).map(|i| json!({"data": i})).collect::<Vec<_>>()),
    )
    .await;
    let epoch = history(&http, &t.http(), "race").await.len();
    assert_eq!(epoch, 500);
    let state = t
        .server
        .log()
        .state(&tidings::channel::ChannelName::parse("race").unwrap())
        .await
        .unwrap();
    // Publish continuously while a client resumes from serial 10.
    let (base, h2) = (t.http(), http.clone());
    let publisher = tokio::spawn(async move {
        for i in 0..200 {
            publish(&h2, &base, "race", json!({"data": 500 + i})).await;
        }
    });
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    let attached = c
        .attach(
            "race",
            json!({"from": {"epoch": &*state.epoch, "serial": 10}}),
        )
        .await;
    assert_eq!(attached["resumed"], true);
    publisher.await.unwrap();
    let frames = c.messages(690).await;
    assert_eq!(serials(&frames), (11..=700).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_replays_the_last_messages() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    publish(
        &http,
        &t.http(),
        "feed",
        json!((1..=10).map(|i| json!({"data": i})).collect::<Vec<_>>()),
    )
    .await;
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    let attached = c.attach("feed", json!({"rewind": 3})).await;
    assert_eq!(attached["serial"], 7);
    assert_eq!(serials(&c.messages(3).await), vec![8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuity_lost_is_said_never_silent() {
    let t = TestServer::start_with(|c| {
        c.namespaces.entry("short".into()).or_default().max_messages = Some(5);
        // The test applies retention itself, at a known moment.
        c.retention.interval = std::time::Duration::from_secs(3600);
    })
    .await;
    let http = reqwest::Client::new();
    publish(
        &http,
        &t.http(),
        "short:1",
        json!((1..=20).map(|i| json!({"data": i})).collect::<Vec<_>>()),
    )
    .await;
    let epoch = {
        let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
        c.attach("short:1", json!({})).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let removed = t
        .server
        .log()
        .apply_retention(&t.config.retention_policy())
        .await
        .unwrap();
    assert_eq!(removed.messages_removed, 15);

    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    // Older than retention: serials 4..15 are gone.
    let a = c
        .attach("short:1", json!({"from": {"epoch": &epoch, "serial": 3}}))
        .await;
    assert_eq!(
        (a["resumed"].as_bool(), a["reason"].as_str()),
        (Some(false), Some("history_expired")),
        "{a}"
    );
    assert_eq!(a["serial"], 20, "continues from the head");
    // Exactly at the retention boundary: everything after 15 is still there.
    let a = c
        .attach("short:1", json!({"from": {"epoch": &epoch, "serial": 15}}))
        .await;
    assert_eq!(a["resumed"], true, "{a}");
    assert_eq!(serials(&c.messages(5).await), vec![16, 17, 18, 19, 20]);
    // Another history (data directory wiped, or a reset channel).
    let a = c
        .attach(
            "short:1",
            json!({"from": {"epoch": "0000000000000000", "serial": 3}}),
        )
        .await;
    assert_eq!(
        (a["resumed"].as_bool(), a["reason"].as_str()),
        (Some(false), Some("epoch_changed"))
    );
    // A position the channel never reached.
    let a = c
        .attach("short:1", json!({"from": {"epoch": &epoch, "serial": 99}}))
        .await;
    assert_eq!(
        (a["resumed"].as_bool(), a["reason"].as_str()),
        (Some(false), Some("position_ahead"))
    );
    // After any of these, live messages flow from the head.
    publish(&http, &t.http(), "short:1", json!({"data": 21})).await;
    assert_eq!(serials(&c.messages(1).await), vec![21]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_overflows_the_live_ring_catches_up_from_the_log() {
    // A tiny ring: any burst overflows it, so delivery must fall back to the log.
    let t = TestServer::start_with(|c| c.session.live_buffer = 4).await;
    let http = reqwest::Client::new();
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    c.attach("burst", json!({})).await;
    for chunk in 0..10 {
        let batch: Vec<_> = (0..100).map(|i| json!({"data": chunk * 100 + i})).collect();
        publish(&http, &t.http(), "burst", json!(batch)).await;
    }
    let frames = c.messages(1000).await;
    assert_eq!(serials(&frames), (1..=1000).collect::<Vec<_>>());
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["data"], i as u64);
    }
    let log = metric(&http, &t.http(), "tidings_catch_up_log_pages_total").await;
    assert!(
        log >= 1.0,
        "past the recent messages, the log ({log} pages)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_overruns_the_ring_catches_up_from_memory_not_the_log() {
    // The broadcast ring holds 128 messages, the recent messages 1,024 (the default): a batch
    // of 1,000 appended at once overruns the ring before the subscriber runs, and every message
    // comes from memory, in order, without one read of the log.
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    c.attach("overrun", json!({})).await;
    let batch: Vec<_> = (0..1000).map(|i| json!({"data": i})).collect();
    publish(&http, &t.http(), "overrun", json!(batch)).await;
    let frames = c.messages(1000).await;
    assert_eq!(serials(&frames), (1..=1000).collect::<Vec<_>>());
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["data"], i as u64);
    }
    let memory = metric(&http, &t.http(), "tidings_catch_up_from_memory_total").await;
    let log = metric(&http, &t.http(), "tidings_catch_up_log_pages_total").await;
    assert!(
        memory >= 1.0,
        "the overrun was served from memory ({memory})"
    );
    assert_eq!(log, 0.0, "and never from the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_acknowledged_once() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let a = publish(
        &http,
        &t.http(),
        "idem",
        json!({"id": "order-1", "data": 1}),
    )
    .await;
    let b = publish(
        &http,
        &t.http(),
        "idem",
        json!([{"id": "order-1", "data": 1}, {"id": "order-2", "data": 2}]),
    )
    .await;
    assert_eq!(a, vec![1]);
    assert_eq!(b, vec![1, 2]);
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    c.send(json!({"type": "publish", "channel": "idem", "id": "order-2", "data": 2, "ref": "x"}))
        .await;
    let ack = c.recv().await;
    assert_eq!(
        (ack["serial"].as_u64(), ack["duplicate"].as_bool()),
        (Some(2), Some(true)),
        "{ack}"
    );
    assert_eq!(history(&http, &t.http(), "idem").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_follow_next() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    publish(
        &http,
        &t.http(),
        "h",
        json!((1..=25)
            .map(|i| json!({"name": "n", "data": i}))
            .collect::<Vec<_>>()),
    )
    .await;
    let page: serde_json::Value = http
        .get(format!(
            "{}/v1/channels/h/messages?after=5&limit=10",
            t.http()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        serials(page["items"].as_array().unwrap()),
        (6..=15).collect::<Vec<_>>()
    );
    assert_eq!(page["next"], 15);
    assert_eq!(page["items"][0]["name"], "n");
    assert!(page["epoch"].as_str().unwrap().len() >= 8);
    let all = history(&http, &t.http(), "h").await;
    assert_eq!(serials(&all), (1..=25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_reset_is_announced_to_attached_and_resuming_clients() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let ch = tidings::channel::ChannelName::parse("inv:1").unwrap();
    publish(&http, &t.http(), "inv:1", json!([{"data": 1}, {"data": 2}])).await;
    let mut c = Client::connect(&t.ws_url(), Some(KEY)).await;
    let old = c.attach("inv:1", json!({"rewind": 10})).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(serials(&c.messages(2).await), vec![1, 2]);

    // The source lost its history and re-snapshots: the channel restarts under a new epoch.
    t.server.log().reset(vec![ch.clone()]).await.unwrap();
    let v = c.recv().await;
    assert_eq!(
        (
            v["type"].as_str(),
            v["resumed"].as_bool(),
            v["reason"].as_str()
        ),
        (Some("attached"), Some(false), Some("epoch_changed")),
        "{v}"
    );
    let new = v["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(v["serial"], 2, "serials keep increasing across epochs");
    publish(&http, &t.http(), "inv:1", json!({"data": "snapshot"})).await;
    let m = c.messages(1).await;
    assert_eq!(
        (m[0]["serial"].as_u64(), m[0]["data"].as_str()),
        (Some(3), Some("snapshot"))
    );

    // A client coming back with the old epoch is told, not resumed into the new history.
    let mut back = Client::connect(&t.ws_url(), Some(KEY)).await;
    let a = back
        .attach("inv:1", json!({"from": {"epoch": old, "serial": 2}}))
        .await;
    assert_eq!(
        (a["resumed"].as_bool(), a["reason"].as_str()),
        (Some(false), Some("epoch_changed"))
    );
    // With the new epoch it resumes normally.
    let a = back
        .attach("inv:1", json!({"from": {"epoch": new, "serial": 2}}))
        .await;
    assert_eq!(a["resumed"], true);
    assert_eq!(serials(&back.messages(1).await), vec![3]);
}

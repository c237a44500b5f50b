//! Every transport resumes after its connection is cut mid-stream, with no loss and no
//! duplicate, and says so when continuity was lost.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings_testkit::proxy::Proxy;
use tidings_testkit::rest::{publish, serials};
use tidings_testkit::server::TestServer;
use tidings_testkit::sse::SseClient;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;

async fn publish_range(http: &reqwest::Client, base: &str, channel: &str, from: u64, to: u64) {
    let batch: Vec<Value> = (from..to).map(|i| json!({"data": i})).collect();
    publish(http, base, channel, json!(batch)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_across_a_cut() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.server.addr()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sse?channel=a&channel=b:1", proxy.http());
    let mut sse = SseClient::open(&url, None).await;
    let hello = sse.next().await.unwrap();
    assert_eq!(hello.event, "connected");
    assert!(hello.json()["heartbeat_ms"].as_u64().unwrap() > 0);
    for _ in 0..2 {
        let ev = sse.next().await.unwrap();
        assert_eq!(ev.event, "attached");
        assert_eq!(ev.json()["resumed"], false);
    }
    publish_range(&http, &t.http(), "a", 0, 5).await;
    publish_range(&http, &t.http(), "b:1", 0, 3).await;
    let got = sse.messages(8).await;
    let last_id = got.last().unwrap().id.clone().unwrap();
    assert!(
        last_id.contains("a=") && last_id.contains("b:1="),
        "{last_id}"
    );

    proxy.cut();
    assert!(
        sse.next().await.is_none(),
        "the stream ends when the connection is cut"
    );
    publish_range(&http, &t.http(), "a", 5, 10).await;
    publish_range(&http, &t.http(), "b:1", 3, 6).await;

    // The browser reconnects to the same URL with Last-Event-ID.
    let mut sse = SseClient::open(&url, Some(&last_id)).await;
    assert_eq!(sse.next().await.unwrap().event, "connected");
    for _ in 0..2 {
        let ev = sse.next().await.unwrap();
        assert_eq!(
            (ev.event.as_str(), ev.json()["resumed"].as_bool()),
            ("attached", Some(true))
        );
    }
    let rest = sse.messages(8).await;
    let frames: Vec<Value> = rest.iter().map(|e| e.json()).collect();
    let a: Vec<u64> = frames
        .iter()
        .filter(|f| f["channel"] == "a")
        .map(|f| f["serial"].as_u64().unwrap())
        .collect();
    let b: Vec<u64> = frames
        .iter()
        .filter(|f| f["channel"] == "b:1")
        .map(|f| f["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(a, vec![6, 7, 8, 9, 10]);
    assert_eq!(b, vec![4, 5, 6]);
    // The id of the last event carries both channels' new positions.
    let id = rest.last().unwrap().id.clone().unwrap();
    assert!(id.contains(":10") && id.contains(":6"), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_carries_data_published_over_several_lines() {
    // A publisher may send pretty-printed JSON; messages keep it as sent, so the SSE stream
    // must frame data that spans lines (one `data:` field per line) or the event breaks.
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let body = "[{\"name\": \"n\",\r\n \"data\": {\n  \"a\": [1,\n 2],\r  \"b\": \"x\"\n},\n \"headers\": {\"h\":\n\"v\"}}]";
    let resp = http
        .post(format!("{}/v1/channels/lines/messages", t.http()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let mut sse =
        SseClient::open(&format!("{}/v1/sse?channel=lines&rewind=1", t.http()), None).await;
    assert_eq!(sse.next().await.unwrap().event, "connected");
    assert_eq!(sse.next().await.unwrap().event, "attached");
    let got = sse.messages(1).await[0].json();
    assert_eq!(got["data"], json!({"a": [1, 2], "b": "x"}), "{got}");
    assert_eq!(got["headers"], json!({"h": "v"}));
    assert_eq!(got["serial"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_says_when_continuity_is_lost() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    publish_range(&http, &t.http(), "a", 0, 3).await;
    let url = format!("{}/v1/sse?channel=a", t.http());
    let mut sse = SseClient::open(&url, Some("a=0123456789abcdef:2")).await;
    assert_eq!(sse.next().await.unwrap().event, "connected");
    let ev = sse.next().await.unwrap();
    let v = ev.json();
    assert_eq!(
        (v["resumed"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("epoch_changed")),
        "{v}"
    );
    assert_eq!(v["serial"], 3);
    let resp = http
        .get(format!("{}/v1/sse", t.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "no channel named");
    let resp = http
        .get(format!("{url}&from=garbage"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

async fn poll(http: &reqwest::Client, base: &str, query: &str) -> Value {
    let resp = http
        .get(format!("{base}/v1/poll?{query}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_at_once_waits_and_resumes() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    publish_range(&http, &t.http(), "p", 0, 3).await;
    // First poll from the start of history: answers at once.
    let epoch = t
        .server
        .log()
        .state(&tidings::channel::ChannelName::parse("p").unwrap())
        .await
        .unwrap()
        .epoch;
    let r = poll(&http, &t.http(), &format!("channel=p&from=p={epoch}:0")).await;
    assert_eq!(serials(r["messages"].as_array().unwrap()), vec![1, 2, 3]);
    assert_eq!(r["attached"][0]["resumed"], true);
    let next = r["next"].as_str().unwrap().to_owned();
    assert_eq!(next, format!("p={epoch}:3"));

    // Nothing new: it waits, and answers with the first message that arrives.
    let (h2, base) = (http.clone(), t.http());
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&h2, &base, "p", json!({"data": "late"})).await;
    });
    let started = Instant::now();
    let r = poll(&http, &t.http(), &format!("channel=p&from={next}&wait=10s")).await;
    publisher.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited for the message"
    );
    assert_eq!(serials(r["messages"].as_array().unwrap()), vec![4]);
    assert_eq!(r["messages"][0]["data"], "late");

    // Nothing at all: it answers empty with the same position when the wait ends.
    let next = r["next"].as_str().unwrap().to_owned();
    let r = poll(
        &http,
        &t.http(),
        &format!("channel=p&from={next}&wait=200ms"),
    )
    .await;
    assert_eq!(r["messages"].as_array().unwrap().len(), 0);
    assert_eq!(r["next"].as_str().unwrap(), next);

    // A stale epoch is reported at once, never skipped silently and never after a long wait.
    let started = Instant::now();
    let r = poll(
        &http,
        &t.http(),
        "channel=p&from=p=0000000000000000:1&wait=10s",
    )
    .await;
    assert_eq!(r["attached"][0]["reason"], "epoch_changed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "continuity lost is answered at once"
    );
    // A first poll without a position answers at once with the position to poll from.
    let started = Instant::now();
    let r = poll(&http, &t.http(), "channel=p&wait=10s").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r["next"].as_str().unwrap(), format!("p={epoch}:4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_through_cuts_loses_nothing() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.server.addr()).await;
    let http = reqwest::Client::new();
    let epoch = t
        .server
        .log()
        .state(&tidings::channel::ChannelName::parse("q").unwrap())
        .await
        .unwrap()
        .epoch;
    let (h2, base) = (http.clone(), t.http());
    let publisher = tokio::spawn(async move {
        for i in 0..300u64 {
            publish(&h2, &base, "q", json!({"data": i})).await;
        }
    });
    let mut next = format!("q={epoch}:0");
    let mut got = Vec::new();
    let mut cuts = 0;
    while got.len() < 300 {
        if got.len() / 50 > cuts {
            proxy.cut();
            cuts += 1;
        }
        // A poll cut mid-flight fails; the client simply polls again from the same position.
        let Ok(resp) = http
            .get(format!(
                "{}/v1/poll?channel=q&from={next}&wait=2s",
                proxy.http()
            ))
            .bearer_auth(KEY)
            .send()
            .await
        else {
            continue;
        };
        let Ok(r) = resp.json::<Value>().await else {
            continue;
        };
        got.extend(serials(r["messages"].as_array().unwrap()));
        next = r["next"].as_str().unwrap().to_owned();
    }
    publisher.await.unwrap();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
}

/// While others follow a channel, the hub keeps its recent messages: polls (and reconnects) a
/// little behind the head catch up from memory. Joined to live messages arriving at the same
/// time, nothing may be lost, repeated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_behind_the_head_while_publishing_get_everything_once_in_order() {
    let t = TestServer::start_with(|c| c.session.live_buffer = 64).await;
    let http = reqwest::Client::new();
    // A WebSocket subscriber keeps the channel live in the hub.
    let mut keeper = Client::connect(&t.ws_url(), Some(KEY)).await;
    let attached = keeper.attach("mem", json!({})).await;
    let epoch = attached["epoch"].as_str().unwrap().to_owned();
    let (h2, base) = (http.clone(), t.http());
    const N: u64 = 3000;
    let publisher = tokio::spawn(async move {
        let mut i = 0;
        while i < N {
            // Batches of 1 to 7: polls land in the middle of batches too.
            let n = (i % 7 + 1).min(N - i);
            let body: Vec<Value> = (i..i + n).map(|k| json!({ "data": k })).collect();
            publish(&h2, &base, "mem", json!(body)).await;
            i += n;
        }
    });
    let mut next = format!("mem={epoch}:0");
    let mut got = Vec::new();
    let mut polls = 0;
    while (got.len() as u64) < N {
        let r = poll(
            &http,
            &t.http(),
            &format!("channel=mem&from={next}&wait=5s"),
        )
        .await;
        assert_eq!(r["attached"][0]["resumed"], true, "{r}");
        for m in r["messages"].as_array().unwrap() {
            got.push(m["serial"].as_u64().unwrap());
            assert_eq!(
                m["data"].as_u64().unwrap() + 1,
                m["serial"].as_u64().unwrap()
            );
        }
        next = r["next"].as_str().unwrap().to_owned();
        polls += 1;
    }
    publisher.await.unwrap();
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
    assert!(polls > 20, "many polls joined memory and live ({polls})");
    // The keeper saw the same, live.
    assert_eq!(
        serials(&keeper.messages(N as usize).await),
        (1..=N).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_resumes_through_repeated_cuts() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.server.addr()).await;
    let http = reqwest::Client::new();
    let (h2, base) = (http.clone(), t.http());
    let publisher = tokio::spawn(async move {
        for i in 0..300u64 {
            publish(&h2, &base, "w", json!({"data": i})).await;
        }
    });
    let mut last: Option<(String, u64)> = None;
    let mut got = Vec::new();
    'outer: while got.len() < 300 {
        let mut c = Client::connect(&proxy.ws_url(), Some(KEY)).await;
        let extra = match &last {
            Some((epoch, serial)) => json!({"from": {"epoch": epoch, "serial": serial}}),
            None => json!({"rewind": 1000}),
        };
        let a = c.attach("w", extra).await;
        if last.is_some() {
            assert_eq!(a["resumed"], true, "{a}");
        }
        let epoch = a["epoch"].as_str().unwrap().to_owned();
        let mut this_round = 0;
        while got.len() < 300 {
            let next = tokio::time::timeout(
                Duration::from_secs(5),
                futures_util::StreamExt::next(&mut c.ws),
            )
            .await;
            match next {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "message" {
                        let s = v["serial"].as_u64().unwrap();
                        got.push(s);
                        last = Some((epoch.clone(), s));
                        this_round += 1;
                        if this_round == 40 {
                            proxy.cut();
                        }
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => continue 'outer, // cut: reconnect and resume
            }
        }
    }
    publisher.await.unwrap();
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_sse_streams_get_keep_alive_comments() {
    let t =
        TestServer::start_with(|c| c.session.heartbeat_interval = Duration::from_millis(200)).await;
    let mut resp = reqwest::Client::new()
        .get(format!("{}/v1/sse?channel=quiet", t.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !text.contains(": keep-alive\n\n") {
        assert!(
            Instant::now() < deadline,
            "no keep-alive comment in {text:?}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: connected\n"), "{text}");
    assert!(text.contains("event: attached\n"), "{text}");
}

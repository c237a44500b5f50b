//! How many messages per second one client receives.
//!
//! ```sh
//! cargo run --release -p tidings-client --example receive_rate -- 2000000
//! cargo run --release -p tidings-client --example receive_rate -- 200000 --server http://127.0.0.1:8080 --key ID:SECRET
//! ```
//!
//! Without `--server` (**client alone**): a stand-in WebSocket server on loopback sends
//! `message` frames as fast as it can, the client delivers them through a subscription. This
//! measures the client alone (parsing, duplicate check, delivery), not the server. Both run on
//! one thread (a current-thread runtime), so the figure is the client's processing cost plus the
//! stand-in's; on a multi-thread runtime, cross-thread wake-ups cost about half of it.
//!
//! With `--server URL --key KEY` (**against a real Tidings server**): N messages (the stand-in's
//! frames' data) are published into a fresh channel over REST first, in batches of 1,000. Each
//! reader then receives all of them from the start of the channel's history (`from` serial 0 of
//! its epoch), one reader after the other, timed from the attach to the last message. An
//! untimed pass comes first, so the first timed reader does not pay for the server's cold
//! caches alone. The readers:
//!
//! 1. a bare WebSocket reader (`tokio-tungstenite`) that counts the `message` frames without
//!    parsing them: what the server and the socket deliver at most;
//! 2. `tidings-client` on a current-thread runtime (as the client-alone figure);
//! 3. `tidings-client` on a multi-thread runtime (tokio's default, as `#[tokio::main]` builds
//!    it; its worker count follows the CPUs the process may use).
//!
//! Catch-up from the log is the fastest path the server has (no publisher in the loop), so the
//! server bounds the client here only where the bare reader is not much faster than the client.
//! The clients check that serials increase and that all N messages came.
//!
//! `--json` prints one JSON object per measurement (`scenario`, `system`, the figures, `ok`,
//! `problems`) on stdout and the human lines on stderr, as `tidings-bench --json` does.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidings_client::{Client, Event, Position, Start, Transport};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Messages per REST request while filling the channel.
const FILL_BATCH: u64 = 1_000;
/// A reader that has not received everything by then has failed.
const TIMEOUT: Duration = Duration::from_secs(120);

struct Args {
    total: u64,
    server: Option<String>,
    key: Option<String>,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        total: 1_000_000,
        server: None,
        key: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--server" => a.server = Some(it.next().expect("--server URL")),
            "--key" => a.key = Some(it.next().expect("--key ID:SECRET")),
            n => a.total = n.parse().expect("N (messages) is a number"),
        }
    }
    a
}

/// One measurement: printed as a line for people, or as JSON with the human line on stderr.
fn report(json_out: bool, system: &str, label: &str, received: u64, took: Duration, extra: Value) {
    let rate = received as f64 / took.as_secs_f64();
    let human = format!("{label:<44} {received} messages in {took:.2?}: {rate:.0} msg/s");
    if !json_out {
        println!("{human}");
        return;
    }
    eprintln!("{human}");
    let mut m = json!({
        "scenario": "sdk-rust-receive",
        "system": system,
        "messages": received,
        "secs": (took.as_secs_f64() * 1e6).round() / 1e6,
        "msgs_per_s": rate.round(),
        "ok": true,
        "problems": [],
    });
    if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
    println!("{m}");
}

fn main() {
    let a = args();
    match &a.server {
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let took = rt.block_on(stand_in(a.total));
            report(
                a.json,
                "client-alone",
                "client alone (stand-in server, one thread)",
                a.total,
                took,
                json!({"runtime": "current-thread"}),
            );
        }
        Some(server) => {
            let key = a.key.clone().expect("--key ID:SECRET goes with --server");
            against_server(&a, server, &key);
        }
    }
}

/// The stand-in server and the client on one current-thread runtime: the client's own cost.
async fn stand_in(total: u64) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = r#"{"type":"connected","connection_id":"c","protocol":1,"max_message_bytes":65536,"heartbeat_ms":15000}"#;
        ws.send(Message::Text(hello.into())).await.unwrap();
        let _attach = ws.next().await;
        let attached =
            r#"{"type":"attached","channel":"bench","epoch":"e","serial":0,"resumed":false}"#;
        ws.send(Message::Text(attached.into())).await.unwrap();
        for serial in 1..=total {
            let frame = format!(
                r#"{{"type":"message","channel":"bench","serial":{serial},"id":null,"name":"tick","data":{{"sku":"A1","qty":{serial}}},"headers":null,"timestamp":1795815158849}}"#
            );
            ws.feed(Message::Text(frame.into())).await.unwrap();
            if serial % 256 == 0 {
                ws.flush().await.unwrap();
            }
        }
        ws.flush().await.unwrap();
        // Keep the connection open until the client is done.
        while ws.next().await.is_some() {}
    });
    let client = Client::builder(format!("http://{addr}")).build().unwrap();
    let mut sub = client.attach("bench", Start::Now).await.unwrap();
    let start = Instant::now();
    let mut received = 0u64;
    while received < total {
        match sub.next().await {
            Some(Ok(Event::Message(_))) => received += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = start.elapsed();
    client.close().await;
    took
}

/// Fill a fresh channel over REST, then time the bare reader and the client on both runtimes.
fn against_server(a: &Args, server: &str, key: &str) {
    let base = server.trim_end_matches('/').to_owned();
    let channel = format!(
        "bench:sdk-receive-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let filled = current.block_on(fill(&base, key, channel, a.total));
    let fill_rate = a.total as f64 / filled.took.as_secs_f64();
    eprintln!(
        "filled {} with {} messages over REST in {:.2?} ({fill_rate:.0} msg/s)",
        filled.channel, a.total, filled.took
    );
    let common = json!({"server": true, "fill_msgs_per_s": fill_rate.round()});
    // Once untimed, so every timed reader finds the server in the same state (the log's pages
    // read once, its caches warm) instead of the first paying for it.
    current.block_on(bare_reader(&base, key, &filled, a.total));

    let took = current.block_on(bare_reader(&base, key, &filled, a.total));
    report(
        a.json,
        "bare-websocket",
        "bare WebSocket reader, frames counted only",
        a.total,
        took,
        common.clone(),
    );

    let took = current.block_on(client_reader(&base, key, &filled, a.total));
    let mut extra = common.clone();
    extra["runtime"] = json!("current-thread");
    report(
        a.json,
        "client-current-thread",
        "tidings-client, current-thread runtime",
        a.total,
        took,
        extra,
    );
    drop(current);

    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let workers = multi.metrics().num_workers();
    let took = multi.block_on(client_reader(&base, key, &filled, a.total));
    let mut extra = common;
    extra["runtime"] = json!("multi-thread");
    extra["worker_threads"] = json!(workers);
    report(
        a.json,
        "client-multi-thread",
        &format!("tidings-client, multi-thread runtime ({workers} workers)"),
        a.total,
        took,
        extra,
    );
}

/// The channel the readers replay.
struct Filled {
    channel: String,
    epoch: String,
    /// The serial of the last message published.
    last_serial: u64,
    /// How long publishing took.
    took: Duration,
}

/// Publish `total` messages into `channel` in batches.
async fn fill(base: &str, key: &str, channel: String, total: u64) -> Filled {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/channels/{channel}/messages");
    let t = Instant::now();
    let (mut next, mut last_serial) = (1u64, 0u64);
    while next <= total {
        let last = (next + FILL_BATCH - 1).min(total);
        let batch: Vec<Value> = (next..=last)
            .map(|i| json!({"name": "tick", "data": {"sku": "A1", "qty": i}}))
            .collect();
        let resp = http
            .post(&url)
            .bearer_auth(key)
            .json(&batch)
            .send()
            .await
            .expect("the server answers the publish");
        let status = resp.status();
        assert_eq!(
            status.as_u16(),
            201,
            "publish answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
        let answer: Value = resp.json().await.expect("a publish answer");
        let serials = answer["serials"].as_array().expect("serials");
        assert_eq!(
            serials.len() as u64,
            last + 1 - next,
            "one serial per message"
        );
        last_serial = serials
            .iter()
            .filter_map(Value::as_u64)
            .max()
            .unwrap_or(last_serial);
        next = last + 1;
    }
    let took = t.elapsed();
    let page: Value = http
        .get(format!("{url}?limit=1"))
        .bearer_auth(key)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("the history answers")
        .json()
        .await
        .expect("a history page");
    let epoch = page["epoch"].as_str().expect("the page names its epoch");
    Filled {
        channel,
        epoch: epoch.to_owned(),
        last_serial,
        took,
    }
}

/// A WebSocket that attaches from serial 0 and counts `message` frames without parsing them.
async fn bare_reader(base: &str, key: &str, filled: &Filled, total: u64) -> Duration {
    let (channel, epoch) = (&filled.channel, &filled.epoch);
    let url = format!("{}/v1/connect", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let attach =
        json!({"type": "attach", "channel": channel, "from": {"epoch": epoch, "serial": 0}});
    let t = Instant::now();
    ws.send(Message::Text(attach.to_string().into()))
        .await
        .unwrap();
    let mut received = 0u64;
    let read = async {
        while received < total {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"message""#) => {
                    received += 1
                }
                Some(Ok(Message::Close(c))) => panic!("the server closed: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("the socket ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("the bare reader received every message in time");
    let took = t.elapsed();
    let _ = ws.close(None).await;
    took
}

/// `tidings-client` attached from serial 0 of the epoch, until the last published serial;
/// checks that serials increase and that `total` messages came.
async fn client_reader(base: &str, key: &str, filled: &Filled, total: u64) -> Duration {
    let (channel, epoch, last_serial) = (&filled.channel, &filled.epoch, filled.last_serial);
    let client = Client::builder(base)
        .api_key(key)
        .transports(&[Transport::WebSocket])
        .build()
        .unwrap();
    let from = Start::From(Position {
        epoch: epoch.to_owned(),
        serial: 0,
    });
    let t = Instant::now();
    let mut sub = client.attach(channel, from).await.unwrap();
    let read = async {
        let (mut received, mut last) = (0u64, 0u64);
        while last < last_serial {
            match sub.next().await {
                Some(Ok(Event::Message(m))) => {
                    assert!(m.serial > last, "serial {} after {last}", m.serial);
                    (received, last) = (received + 1, m.serial);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, total, "every message once");
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("the client received every message in time");
    let took = t.elapsed();
    client.close().await;
    took
}

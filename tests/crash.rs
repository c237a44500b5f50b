//! Crash safety and graceful shutdown of the real binary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tidings_testkit::process::Process;
use tidings_testkit::rest::history;
use tidings_testkit::tidings_exe;
use tidings_testkit::ws::Client;
use tidings_testkit::{KEY, WAIT};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_message_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let base = proc.http();

    // Four publishers stream messages with ids, batches of 1 to 3, as fast as acks come back.
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (acked, base) = (acked.clone(), base.clone());
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0.. {
                let batch: Vec<Value> = (0..(i % 3 + 1))
                    .map(|k| json!({"id": format!("p{p}-{i}-{k}"), "data": {"p": p, "i": i, "k": k}}))
                    .collect();
                let ids: Vec<String> = batch.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
                let resp = http
                    .post(format!("{base}/v1/channels/crash:1/messages"))
                    .bearer_auth(KEY)
                    .json(&batch)
                    .send()
                    .await;
                let Ok(resp) = resp else { return }; // the server died: stop
                if resp.status() != 201 {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else { return };
                let mut acked = acked.lock().unwrap();
                for (id, serial) in ids.into_iter().zip(body["serials"].as_array().unwrap()) {
                    acked.insert(id, serial.as_u64().unwrap());
                }
            }
        }));
    }
    // Let a good number of acknowledgements through, then kill -9 in the middle of the stream.
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if acked.lock().unwrap().len() >= 600 {
            break;
        }
    }
    proc.child.start_kill().unwrap(); // SIGKILL
    proc.child.wait().await.unwrap();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 600);

    // Restart on the same data directory: it opens cleanly and holds every ack exactly once.
    let proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let items = history(&http, &proc.http(), "crash:1").await;
    let serials: Vec<u64> = items
        .iter()
        .map(|i| i["serial"].as_u64().unwrap())
        .collect();
    assert!(
        serials.windows(2).all(|w| w[0] < w[1]),
        "history is in strictly increasing serial order"
    );
    let mut by_id: HashMap<String, u64> = HashMap::new();
    for item in &items {
        let id = item["id"].as_str().unwrap().to_owned();
        assert!(
            by_id
                .insert(id.clone(), item["serial"].as_u64().unwrap())
                .is_none(),
            "{id} stored twice"
        );
    }
    for (id, serial) in &acked {
        assert_eq!(
            by_id.get(id),
            Some(serial),
            "acknowledged message {id} must be present with its serial"
        );
    }
    // Each publisher's messages are in its own order, with no holes among the acknowledged.
    for p in 0..4 {
        let mine: Vec<(i64, i64)> = items
            .iter()
            .filter(|i| i["data"]["p"] == p)
            .map(|i| {
                (
                    i["data"]["i"].as_i64().unwrap(),
                    i["data"]["k"].as_i64().unwrap(),
                )
            })
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "publisher {p} order kept"
        );
    }
    // Appending continues after the highest serial, and a retried id deduplicates.
    let (some_id, some_serial) = acked.iter().next().unwrap();
    let resp: Value = http
        .post(format!("{}/v1/channels/crash:1/messages", proc.http()))
        .bearer_auth(KEY)
        .json(&json!([{"id": some_id, "data": "retry"}, {"data": "after"}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["serials"][0].as_u64(), Some(*some_serial));
    assert_eq!(
        resp["serials"][1].as_u64(),
        Some(serials.last().unwrap() + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_going_away_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let mut c = Client::connect(&proc.ws_url(), Some(KEY)).await;
    c.attach("bye", json!({})).await;
    assert_eq!(c.publish("bye", json!("before the stop")).await, 1);
    let pid = proc.child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (_, code) = c.drain_until_closed().await;
    assert_eq!(
        code,
        Some(CloseCode::Away),
        "sessions close with 1001 going away"
    );
    let status = tokio::time::timeout(WAIT, proc.child.wait())
        .await
        .expect("exits within the wait")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Nothing acknowledged before is lost across the graceful stop.
    let proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let items = history(&reqwest::Client::new(), &proc.http(), "bye").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["data"], "before the stop");
}

/// Clients that stop reading (a frozen tab, a phone in a tunnel) must not keep the server from
/// stopping: SIGTERM with a stuck SSE stream and a stuck WebSocket, both with full socket
/// buffers, still exits, within the drain timeout plus a little.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_even_when_clients_stopped_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    // An SSE subscriber that reads the response head and then nothing more.
    let mut sse = tokio::net::TcpStream::connect(proc.addr()).await.unwrap();
    sse.write_all(
        format!(
            "GET /v1/sse?channel=stuck HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 512];
    let n = sse.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // A WebSocket subscriber that stops reading after its attach.
    let mut ws = Client::connect(&proc.ws_url(), Some(KEY)).await;
    ws.attach("stuck", json!({})).await;
    // Far more than loopback socket buffers hold: both subscribers' sockets fill up.
    let http = reqwest::Client::new();
    let big = "x".repeat(60 * 1024);
    for _ in 0..40 {
        let batch: Vec<Value> = (0..10).map(|_| json!({"data": big})).collect();
        let resp = http
            .post(format!("{}/v1/channels/stuck/messages", proc.http()))
            .bearer_auth(KEY)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let started = std::time::Instant::now();
    let pid = proc.child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(25), proc.child.wait())
        .await
        .expect("the server exits although two clients stopped reading")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "stopped after {:?}",
        started.elapsed()
    );
    drop((sse, ws));
}

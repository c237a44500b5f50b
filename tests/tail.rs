//! `tidings tail`, the real binary, against a real server: it prints what is published.

use std::process::Stdio;

use serde_json::{json, Value};
use tidings_testkit::rest::publish;
use tidings_testkit::server::TestServer;
use tidings_testkit::{KEY, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, Command};

fn tail(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .arg("tail")
        .args(args)
        .env_remove("TIDINGS_URL")
        .env_remove("TIDINGS_API_KEY")
        .env_remove("TIDINGS_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the tidings binary starts")
}

async fn line<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line within the wait")
        .unwrap()
        .expect("the output is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_published_messages_as_json_lines() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let base = t.http();
    publish(
        &http,
        &base,
        "orders:1",
        json!([{"name": "created", "data": {"id": 1}}, {"data": 2, "id": "two"}]),
    )
    .await;
    let mut child = tail(&[
        "orders:1",
        "--from",
        "0",
        "--json",
        "--url",
        &base,
        "--api-key",
        KEY,
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&line(&mut out).await).unwrap();
    let second: Value = serde_json::from_str(&line(&mut out).await).unwrap();
    assert_eq!(first["channel"], "orders:1");
    assert_eq!(first["serial"], 1);
    assert_eq!(first["name"], "created");
    assert_eq!(first["data"], json!({"id": 1}));
    assert_eq!(second["serial"], 2);
    assert_eq!(second["id"], "two");
    // Then live messages, as they are published.
    publish(&http, &base, "orders:1", json!({"name": "paid", "data": 3})).await;
    let live: Value = serde_json::from_str(&line(&mut out).await).unwrap();
    assert_eq!(
        (live["serial"].as_u64(), live["name"].as_str()),
        (Some(3), Some("paid"))
    );
    assert!(live["timestamp"].as_u64().unwrap() > 0);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_text_from_the_environment_settings_and_reports_lost_continuity() {
    let t = TestServer::start().await;
    let http = reqwest::Client::new();
    let base = t.http();
    publish(&http, &base, "a", json!([{"data": "x"}, {"data": "y"}])).await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["tail", "a", "b", "--from", "1"])
        .env("TIDINGS_URL", &base)
        .env("TIDINGS_API_KEY", KEY)
        .env_remove("TIDINGS_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    assert_eq!(line(&mut out).await, r#"a 2 - "y""#);
    // `b` is empty: serial 1 was never issued there.
    let note = line(&mut err).await;
    assert!(
        note.contains("b: continuity lost (position_ahead)"),
        "{note}"
    );
    publish(
        &http,
        &base,
        "b",
        json!({"name": "hello", "data": {"k": [1]}}),
    )
    .await;
    assert_eq!(line(&mut out).await, r#"b 1 hello {"k":[1]}"#);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_exits_with_the_reason_when_refused() {
    let t = TestServer::start().await;
    let out = tail(&["a", "--url", &t.http(), "--api-key", "test:wrong"])
        .wait_with_output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unauthorized"), "{err}");
}

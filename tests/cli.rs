//! The binary's start-up: defaults, environment variables, and errors that name what to fix.

use std::process::Command;

use serde_json::json;
use tidings_testkit::process::Process;
use tidings_testkit::KEY;

#[test]
fn invalid_configuration_exits_nonzero_naming_the_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--max-message-bytes", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_message_bytes"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[session]\nsend_timout = \"5s\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("send_timout"),
        "the unknown field is named: {err}"
    );
}

#[test]
fn an_address_in_use_is_reported_with_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("--listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    child
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TIDINGS_API_KEYS", format!("{KEY},other:other-secret"));
    let proc = Process::start(child).await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/v1/channels/env/messages", proc.http()))
        .bearer_auth("other:other-secret")
        .json(&json!({"data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

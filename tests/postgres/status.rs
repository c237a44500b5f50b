//! What the connector tells an operator: slot lag as a metric, its status through running,
//! retrying and running again, and a connector stopped by an error while the server goes on.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::rest::{connector_status, metric, publish_data};
use tidings_testkit::KEY;

use crate::in_process::InProcess;
use crate::outbox::{expect_messages, write_txns, Outbox};
use crate::CATCH_UP;

/// `tidings_postgres_slot_lag_bytes{connector}` from `GET /metrics`.
async fn slot_lag(base: &str, connector: &str) -> Option<i64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("tidings_postgres_slot_lag_bytes{{connector=\"{connector}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}

/// Wait until connector `name` of the server at `base` is `stopped` by an error only the
/// operator can fix, while the server goes on: `/readyz` names it (and stays ready, the
/// default), the metric counts it, a REST publish is still acknowledged. Returns the reason.
pub async fn wait_stopped(base: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = connector_status(base, name).await;
        if status["state"] == "stopped" {
            break status;
        }
        assert!(Instant::now() < deadline, "{name} did not stop: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = status["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("; to fix: "),
        "the reason says the fix: {reason}"
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    assert!(body.contains(&format!("stopped: {name};")), "{body}");
    let http = reqwest::Client::new();
    let series = format!("tidings_connectors_stopped_total{{connector=\"{name}\"}}");
    assert_eq!(metric(&http, base, &series).await, 1.0, "{series}");
    publish_data(&http, base, "alive:1", &[json!("still serving")]).await;
    reason
}

/// SIGTERM, and expect a clean exit within the drain time. Returns everything it logged.
pub async fn terminate(mut tidings: Process) -> String {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &tidings.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), tidings.child.wait())
        .await
        .expect("tidings stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "a clean shutdown: {status:?}");
    tidings.log()
}

/// Slot lag is reported, grows while the connector cannot confirm, and falls once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slot_lag_is_a_metric_that_grows_while_behind_and_falls_after() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start_named("lagged", &pg, |_| {}).await;
    write_txns(&pg.url(), "lag:1", 0, 1, 1).await;
    expect_messages(&t.http(), "lag:1", 1).await;
    let first = wait_for_lag(&t.http(), |_| true).await;
    assert!(first < 1 << 20, "caught up, yet {first} bytes behind");
    // The same reading in the connector's status.
    let me = connector_status(&t.http(), "lagged").await;
    assert_eq!(me["type"], "postgres");
    assert!(me["slot_lag_bytes"].as_i64().is_some(), "{me}");
    assert!(me["retained_wal_bytes"].as_i64().is_some(), "{me}");

    // Hold the connector back: it records a new channel before handing out its first
    // message, and that table is locked. Meanwhile other tables write 8 MB of WAL.
    let mut blocker = pg.sql().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE tidings.connector_channels IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    write_txns(&pg.url(), "lag:2", 0, 1, 1).await;
    let c = pg.sql().await;
    c.batch_execute(
        "CREATE TABLE filler (x text); INSERT INTO filler SELECT repeat('f', 1000) FROM generate_series(1, 8000)",
    )
    .await
    .unwrap();
    let behind = wait_for_lag(&t.http(), |lag| lag > 8_000_000).await;
    let status = connector_status(&t.http(), "lagged").await;
    assert!(
        status["slot_lag_bytes"]
            .as_i64()
            .is_some_and(|l| l > 8_000_000),
        "the status shows the lag too: {status}"
    );
    lock.rollback().await.unwrap();
    expect_messages(&t.http(), "lag:2", 1).await;
    let caught_up = wait_for_lag(&t.http(), |lag| lag < 1 << 20).await;
    eprintln!("slot lag: {first} B caught up, {behind} B held back, {caught_up} B after");
    t.server.shutdown();
    t.server.wait().await;
}

/// A slot held back past `retained_wal_warning` says so in the status, and stops saying so once
/// the connector catches up and the slot lets the WAL go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_wal_above_the_warning_threshold_shows_in_the_status() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start_named("walwarn", &pg, |c| {
        c.retained_wal_warning = tidings_connector_postgres::ByteSize::Text("4MiB".into());
        c.status_interval = Duration::from_millis(200);
    })
    .await;
    write_txns(&pg.url(), "warn:1", 0, 1, 1).await;
    expect_messages(&t.http(), "warn:1", 1).await;
    let calm = wait_for_status(&t.http(), "walwarn", |s| s["retained_wal_bytes"].is_i64()).await;
    assert_eq!(calm["retained_wal_warning"], false, "{calm}");

    let mut blocker = pg.sql().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE tidings.connector_channels IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    write_txns(&pg.url(), "warn:2", 0, 1, 1).await;
    let c = pg.sql().await;
    c.batch_execute(
        "CREATE TABLE filler (x text); INSERT INTO filler SELECT repeat('f', 1000) FROM generate_series(1, 8000)",
    )
    .await
    .unwrap();
    let warned = wait_for_status(&t.http(), "walwarn", |s| s["retained_wal_warning"] == true).await;
    assert!(
        warned["retained_wal_bytes"]
            .as_i64()
            .is_some_and(|b| b > 4 << 20),
        "{warned}"
    );
    lock.rollback().await.unwrap();
    expect_messages(&t.http(), "warn:2", 1).await;
    wait_for_status(&t.http(), "walwarn", |s| s["retained_wal_warning"] == false).await;
    t.server.shutdown();
    t.server.wait().await;
}

/// Poll the `lagged` connector's lag until `ok` holds; returns that reading.
async fn wait_for_lag(base: &str, ok: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + CATCH_UP;
    let mut last = None;
    while Instant::now() < deadline {
        last = slot_lag(base, "lagged").await;
        if let Some(lag) = last.filter(|l| ok(*l)) {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slot lag never reached the expected value; last reading {last:?}");
}

/// Poll connector `name`'s status until `ok` holds; returns it.
pub async fn wait_for_status(base: &str, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let status = connector_status(base, name).await;
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "connector {name} never reached the expected status; last {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/connectors` needs an API key and tells an operator what a connector is doing:
/// `running`; `retrying` with the attempt and the last error while Postgres is down; `running`
/// again after it came back, with the reconnect counted and the checkpoint moving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connector_status_shows_running_then_retrying_with_the_error_then_running_again() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start_named("watched", &pg, |_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/connectors", t.http());
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "no credentials");
    let wrong = http
        .get(&url)
        .bearer_auth("test:wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "a wrong secret");
    let token: Value = http
        .post(format!("{}/v1/tokens", t.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let with_token = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(with_token.status(), 401, "a client token is not an API key");

    let running = wait_for_status(&t.http(), "watched", |s| s["state"] == "running").await;
    assert_eq!(running["type"], "postgres");
    assert!(
        running["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{running}"
    );
    assert!(running["last_error"].is_null(), "{running}");
    assert_eq!(
        (running["errors"].as_u64(), running["reconnects"].as_u64()),
        (Some(0), Some(0))
    );
    write_txns(&pg.url(), "watched:1", 0, 5, 2).await;
    expect_messages(&t.http(), "watched:1", 10).await;
    let before = wait_for_status(&t.http(), "watched", |s| {
        s["messages_published"] == 10 && s["checkpoint"]["at"].is_string()
    })
    .await;
    let position = |s: &Value| s["checkpoint"]["position"]["value"].as_u64().unwrap();
    assert_eq!(before["checkpoint"]["position"]["kind"], "postgres_lsn");
    assert!(before.get("slot_lag_bytes").is_some(), "{before}");

    pg.stop();
    let down = wait_for_status(&t.http(), "watched", |s| {
        s["state"] == "retrying" && s["attempt"].as_u64() >= Some(2)
    })
    .await;
    let error = &down["last_error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("connect")),
        "the last error says what failed: {down}"
    );
    assert!(
        error["at"].is_string() && down["retry_at"].is_string(),
        "{down}"
    );
    assert!(down["errors"].as_u64() >= Some(2), "{down}");
    assert_eq!(position(&down), position(&before), "the checkpoint stays");

    pg.start_again();
    let back = wait_for_status(&t.http(), "watched", |s| s["state"] == "running").await;
    assert!(back["reconnects"].as_u64() >= Some(1), "{back}");
    assert!(
        back["last_error"]["message"].is_string(),
        "the last error stays visible: {back}"
    );
    write_txns(&pg.url(), "watched:1", 5, 3, 2).await;
    expect_messages(&t.http(), "watched:1", 16).await;
    let after = wait_for_status(&t.http(), "watched", |s| s["messages_published"] == 16).await;
    assert!(position(&after) > position(&before), "{after}");
    let connectors = t.server.connectors();
    t.server.shutdown();
    t.server.wait().await;
    let all = connectors.status();
    let stopped = all["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "watched")
        .unwrap();
    assert_eq!(
        (stopped["state"].as_str(), stopped["reason"].as_str()),
        (Some("stopped"), Some("shut down")),
        "{stopped}"
    );
}

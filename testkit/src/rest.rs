//! The REST calls a test makes beside the client under test: publish, read history, read a
//! metric or a connector's status, all with the test key.

use serde_json::{json, Value};

use crate::KEY;

/// `GET url` with the test key: the JSON answer.
pub async fn get_json(url: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A channel's current epoch, as REST history reports it.
pub async fn channel_epoch(base: &str, channel: &str) -> String {
    let page = get_json(&format!(
        "{base}/v1/channels/{channel}/messages?after=0&limit=1"
    ))
    .await;
    page["epoch"]
        .as_str()
        .expect("history names its epoch")
        .to_owned()
}

/// Connector `name`'s entry in `GET /v1/connectors` (with the test key).
pub async fn connector_status(base: &str, name: &str) -> Value {
    let status = get_json(&format!("{base}/v1/connectors")).await;
    status["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for connector {name}: {status}"))
}

/// REST publish of `body` (one message object or an array of them) with the test key;
/// returns the serials. Fails the test unless the server answers 201.
pub async fn publish(http: &reqwest::Client, base: &str, channel: &str, body: Value) -> Vec<u64> {
    let resp = http
        .post(format!("{base}/v1/channels/{channel}/messages"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let v: Value = resp.json().await.unwrap();
    v["serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

/// [`publish`] one message per value, each value its `data`: the common case of a test that
/// only cares what arrives.
pub async fn publish_data(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    data: &[Value],
) -> Vec<u64> {
    let body: Vec<Value> = data.iter().map(|d| json!({ "data": d })).collect();
    publish(http, base, channel, Value::Array(body)).await
}

/// Every message of a channel through REST history, following `next`.
pub async fn history(http: &reqwest::Client, base: &str, channel: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let v: Value = http
            .get(format!(
                "{base}/v1/channels/{channel}/messages?after={after}&limit=1000"
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        items.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next"].as_u64() {
            Some(n) => after = n,
            None => return items,
        }
    }
}

/// The serials of messages, as WebSocket frames and history items both carry them.
pub fn serials(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["serial"].as_u64().unwrap())
        .collect()
}

/// Read a counter or gauge from `/metrics` (0 when absent).
pub async fn metric(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

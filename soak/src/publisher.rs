//! REST publishers: each publishes one message at a time with an id (`WRITER-SEQ`) and its key
//! in the data, through the clients' proxy, and retries the same id (errors, timeouts, a
//! server down) until it is acknowledged with 201. An acknowledged id is the ground truth of
//! what must be delivered; the one in flight when the soak stops, if it never got its answer,
//! is "unacknowledged": it may be delivered, but at most once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tidings_testkit::KEY;
use tokio_util::sync::CancellationToken;

use crate::ledger::Key;
use crate::outbox::PAD;

/// What the publishers know at the end.
#[derive(Default)]
pub struct Outcome {
    /// Acknowledged publishes: key to channel.
    pub acked: BTreeMap<Key, String>,
    /// Attempted and never acknowledged: key to channel.
    pub unacked: BTreeMap<Key, String>,
    /// The serial each acknowledged publish got (from the 201 answer): where it was in the log
    /// even after retention removed it.
    pub serials: HashMap<Key, u64>,
    /// Refusals that retrying cannot cure (a 4xx other than 429): a bug, reported.
    pub refused: Vec<String>,
}

pub struct Publisher {
    pub name: String,
    pub base: String,
    pub channels: Vec<String>,
    /// Publishes per second it aims at.
    pub rate: f64,
    pub seed: u64,
    pub acks: Arc<AtomicU64>,
    pub outcome: Arc<Mutex<Outcome>>,
}

impl Publisher {
    /// Publish until `stop`; the publish in flight then gets until `drain` to be acknowledged.
    pub async fn run(self, stop: CancellationToken, drain: Duration) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client builds");
        let pause = Duration::from_secs_f64(1.0 / self.rate);
        let pad = "x".repeat(PAD);
        let mut seq = 0u64;
        while !stop.is_cancelled() {
            seq += 1;
            let key = Key {
                writer: self.name.clone(),
                seq,
            };
            let channel = self.channels[rng.random_range(0..self.channels.len())].clone();
            let body = json!({
                "id": format!("{}-{seq}", self.name),
                "name": "soak",
                "data": {"w": self.name, "s": seq, "pad": pad},
            });
            let url = format!("{}/v1/channels/{channel}/messages", self.base);
            let mut give_up: Option<Instant> = None;
            let acked: Option<Vec<u64>> = loop {
                if stop.is_cancelled() && give_up.is_none() {
                    give_up = Some(Instant::now() + drain);
                }
                if give_up.is_some_and(|g| Instant::now() > g) {
                    break None;
                }
                let sent = http.post(&url).bearer_auth(KEY).json(&body).send().await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => match serials(r).await {
                        Some(s) => break Some(s),
                        // Acknowledged, but the answer was cut: ask again (the id deduplicates).
                        None => continue,
                    },
                    Ok(r)
                        if r.status().is_client_error()
                            && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
                    {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        self.outcome
                            .lock()
                            .unwrap()
                            .refused
                            .push(format!("{key} on {channel}: {status} {text}"));
                        break None;
                    }
                    // A 5xx, a 429, a timeout, a refused or cut connection: the same id again.
                    _ => tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await,
                }
            };
            {
                let mut outcome = self.outcome.lock().unwrap();
                match acked.as_deref() {
                    Some(&[serial]) => {
                        outcome.serials.insert(key.clone(), serial);
                        outcome.acked.insert(key, channel);
                        self.acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(other) => outcome.refused.push(format!(
                        "{key} on {channel}: 201 with serials {other:?} for one message"
                    )),
                    None => {
                        outcome.unacked.insert(key, channel);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pause.mul_f64(rng.random_range(0.5..1.5))) => {}
            }
        }
    }
}

/// A burst: `n` messages at once on `channel` (REST batches of [`BURST_BATCH`], each retried
/// with the same ids until acknowledged), keys `WRITER#1` to `WRITER#n`. Sent while a
/// subscriber stalls, so what it missed overruns the server's live ring and recent buffer and
/// its socket's buffers: the slow-consumer paths (catch-up from the log, the send timeout).
pub async fn burst(
    base: &str,
    channel: &str,
    writer: &str,
    n: u64,
    acks: &AtomicU64,
    outcome: &Mutex<Outcome>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client builds");
    let pad = "x".repeat(BURST_PAD);
    let url = format!("{base}/v1/channels/{channel}/messages");
    let mut seq = 1;
    while seq <= n {
        let keys: Vec<Key> = (seq..(seq + BURST_BATCH).min(n + 1))
            .map(|s| Key {
                writer: writer.to_owned(),
                seq: s,
            })
            .collect();
        seq += keys.len() as u64;
        let body: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| json!({"id": format!("{writer}-{}", k.seq), "name": "soak", "data": {"w": writer, "s": k.seq, "pad": pad}}))
            .collect();
        let give_up = Instant::now() + Duration::from_secs(60);
        let acked: Option<Vec<u64>> = loop {
            if Instant::now() > give_up {
                break None;
            }
            match http.post(&url).bearer_auth(KEY).json(&body).send().await {
                Ok(r) if r.status().as_u16() == 201 => match serials(r).await {
                    Some(s) => break Some(s),
                    None => continue,
                },
                Ok(r)
                    if r.status().is_client_error()
                        && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    outcome
                        .lock()
                        .unwrap()
                        .refused
                        .push(format!("{writer} on {channel}: {status} {text}"));
                    break None;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut outcome = outcome.lock().unwrap();
        match acked {
            Some(serials) if serials.len() == keys.len() => {
                for (k, serial) in keys.into_iter().zip(serials) {
                    outcome.serials.insert(k.clone(), serial);
                    outcome.acked.insert(k, channel.to_owned());
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(serials) => outcome.refused.push(format!(
                "{writer} on {channel}: 201 with {} serials for {} messages",
                serials.len(),
                keys.len()
            )),
            None => {
                for k in keys {
                    outcome.unacked.insert(k, channel.to_owned());
                }
            }
        }
    }
}

/// The serials of a 201 answer; `None` if its body did not arrive whole.
async fn serials(answer: reqwest::Response) -> Option<Vec<u64>> {
    let body: serde_json::Value = answer.json().await.ok()?;
    body["serials"]
        .as_array()?
        .iter()
        .map(|s| s.as_u64())
        .collect()
}

/// Messages per REST request of a burst.
const BURST_BATCH: u64 = 250;
/// Bytes of filler in each message of a burst.
const BURST_PAD: usize = 2048;

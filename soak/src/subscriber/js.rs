//! A subscriber on the JS SDK (`clients/js`): `soak/js/subscriber.mjs` in Node, held to one
//! transport, writing what it receives as JSON lines that this side records as they come.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings_protocol::Position;
use tidings_testkit::KEY;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::ledger::{Delivery, Key, Shared};
use crate::topology::HEARTBEAT;

/// How long a (re)start may take until every channel was attached once.
const ATTACH_WITHIN: Duration = Duration::from_secs(60);

pub struct JsSubscriber {
    pub name: String,
    pub ledger: Shared,
    /// `websocket`, `sse` or `poll`, as the SDK names them.
    transport: &'static str,
    base: String,
    channels: Vec<String>,
    script: PathBuf,
    dist: PathBuf,
    stderr: Arc<Mutex<VecDeque<String>>>,
    running: Option<Running>,
}

struct Running {
    child: Child,
    reader: JoinHandle<()>,
}

impl JsSubscriber {
    pub fn new(
        name: String,
        transport: &'static str,
        base: String,
        channels: Vec<String>,
        script: PathBuf,
        dist: PathBuf,
    ) -> Self {
        JsSubscriber {
            name,
            ledger: Shared::default(),
            transport,
            base,
            channels,
            script,
            dist,
            stderr: Arc::default(),
            running: None,
        }
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let from: serde_json::Map<String, Value> = self
            .ledger
            .lock()
            .unwrap()
            .positions
            .iter()
            .map(|(c, p)| (c.clone(), json!({"epoch": p.epoch, "serial": p.serial})))
            .collect();
        let mut child = Command::new("node")
            .arg("--experimental-websocket")
            .arg("--no-warnings")
            .arg(&self.script)
            .args([
                self.base.as_str(),
                KEY,
                self.transport,
                &serde_json::to_string(&self.channels)?,
                &Value::Object(from).to_string(),
                &HEARTBEAT.as_millis().to_string(),
            ])
            .env("TIDINGS_JS_DIST", &self.dist)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start node for {}: {e} (is Node 20+ installed?)",
                    self.name
                )
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let keep = self.stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut keep = keep.lock().unwrap();
                keep.push_back(line);
                if keep.len() > 20 {
                    keep.pop_front();
                }
            }
        });
        let ledger = self.ledger.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                record(&ledger, &line);
            }
        });
        self.running = Some(Running { child, reader });
        // Every channel attached once (a restart resumes from positions it already has).
        let deadline = Instant::now() + ATTACH_WITHIN;
        loop {
            let attached = {
                let l = self.ledger.lock().unwrap();
                self.channels.iter().all(|c| l.positions.contains_key(c))
            };
            if attached {
                return Ok(());
            }
            let exited = match self.running.as_mut() {
                Some(r) => r.child.try_wait()?.is_some(),
                None => true,
            };
            if exited || Instant::now() > deadline {
                let why = if exited {
                    "exited"
                } else {
                    "did not attach every channel in time"
                };
                let stderr = self
                    .stderr
                    .lock()
                    .unwrap()
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n");
                self.stop().await;
                anyhow::bail!(
                    "{}: the Node subscriber {why}; its stderr:\n{stderr}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.start_kill();
            let _ = running.child.wait().await;
            // Everything it wrote before it died is in the pipe: read it all.
            let _ = running.reader.await;
        }
    }

    pub async fn stall(&self, pause: Duration) {
        let Some(pid) = self.running.as_ref().and_then(|r| r.child.id()) else {
            return;
        };
        signal(pid, "-STOP");
        tokio::time::sleep(pause).await;
        signal(pid, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// One line of the Node subscriber into the ledger.
fn record(ledger: &Shared, line: &str) {
    let mut ledger = ledger.lock().unwrap();
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        ledger.errors.push(format!("not a JSON line: {line}"));
        return;
    };
    let channel = v["c"].as_str().unwrap_or_default().to_owned();
    let position = |p: &Value| -> Option<Position> {
        Some(Position {
            epoch: p["epoch"].as_str()?.to_owned(),
            serial: p["serial"].as_u64()?,
        })
    };
    match v["t"].as_str() {
        Some("m") => ledger.message(Delivery {
            channel,
            epoch: v["e"].as_str().unwrap_or_default().to_owned(),
            serial: v["s"].as_u64().unwrap_or_default(),
            id: v["id"].as_str().map(str::to_owned),
            key: Key::of(&v["d"]),
        }),
        Some("a") => {
            if let (Some(epoch), Some(serial)) = (v["e"].as_str(), v["s"].as_u64()) {
                ledger.attached(
                    &channel,
                    Position {
                        epoch: epoch.to_owned(),
                        serial,
                    },
                );
            }
        }
        Some("lost") => match position(&v["position"]) {
            Some(p) => {
                let reason = v["reason"].as_str().unwrap_or_default().to_owned();
                ledger.lost(&channel, reason, p);
            }
            None => ledger
                .errors
                .push(format!("a continuity_lost without a position: {line}")),
        },
        Some("err") => ledger.errors.push(format!(
            "{channel}: {} {}",
            v["code"].as_str().unwrap_or_default(),
            v["message"].as_str().unwrap_or_default()
        )),
        _ => ledger.errors.push(format!("unknown line: {line}")),
    }
}

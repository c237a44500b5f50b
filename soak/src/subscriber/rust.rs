//! A subscriber on the Rust SDK (`tidings-client`), held to one transport: a client, one
//! reading task per channel that records each event as it is yielded.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tidings_client::{Client, Event, Start, Subscription, Transport};
use tidings_testkit::KEY;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Delivery, Key, Shared};
use crate::topology::HEARTBEAT;

/// How long a (re)start may take to attach every channel (Tidings may be down meanwhile).
const ATTACH_WITHIN: Duration = Duration::from_secs(60);
/// Each subscription's queue: small, so a reader that stops fills it, and then the client
/// stops reading its connection, within seconds.
const BUFFER: usize = 16;

pub struct RustSubscriber {
    pub name: String,
    pub ledger: Shared,
    transport: Transport,
    base: String,
    channels: Vec<String>,
    paused: watch::Sender<bool>,
    running: Option<Running>,
}

struct Running {
    client: Client,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RustSubscriber {
    pub fn new(name: String, transport: Transport, base: String, channels: Vec<String>) -> Self {
        RustSubscriber {
            name,
            ledger: Shared::default(),
            transport,
            base,
            channels,
            paused: watch::channel(false).0,
            running: None,
        }
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let client = Client::builder(&self.base)
            .api_key(KEY)
            .transports(&[self.transport])
            .backoff(Duration::from_millis(100), Duration::from_secs(2))
            .heartbeat(HEARTBEAT)
            .connect_timeout(Duration::from_secs(3))
            .request_timeout(Duration::from_secs(10))
            .poll_wait(Duration::from_secs(5))
            .buffer(BUFFER)
            .build()?;
        let stop = CancellationToken::new();
        let mut running = Running {
            client: client.clone(),
            stop: stop.clone(),
            tasks: Vec::new(),
        };
        for channel in &self.channels {
            let saved = self.ledger.lock().unwrap().positions.get(channel).cloned();
            let start = saved.map_or(Start::Now, Start::From);
            let sub = match tokio::time::timeout(ATTACH_WITHIN, client.attach(channel, start)).await
            {
                Ok(Ok(sub)) => sub,
                Ok(Err(e)) => {
                    running.end().await;
                    anyhow::bail!("{}: attaching {channel} failed: {e}", self.name)
                }
                Err(_) => {
                    running.end().await;
                    anyhow::bail!(
                        "{}: attaching {channel} took over {ATTACH_WITHIN:?}",
                        self.name
                    )
                }
            };
            if let Some(p) = sub.position() {
                self.ledger.lock().unwrap().attached(channel, p.clone());
            }
            running.tasks.push(tokio::spawn(read(
                sub,
                self.ledger.clone(),
                self.paused.subscribe(),
                stop.clone(),
            )));
        }
        self.running = Some(running);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.end().await;
        }
    }

    pub async fn stall(&self, pause: Duration) {
        self.paused.send_replace(true);
        tokio::time::sleep(pause).await;
        self.paused.send_replace(false);
    }
}

impl Running {
    /// Stop the readers (each records nothing after it stopped), then close the client.
    async fn end(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.client.close().await;
    }
}

/// Record each event of one channel as it is yielded, until `stop`; ask for none while
/// `paused`.
async fn read(
    mut sub: Subscription,
    ledger: Shared,
    mut paused: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let channel = sub.channel().to_owned();
    loop {
        // Priorities: stopping first; then a stalled reader waits before asking for more.
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = paused.wait_for(|p| !*p) => {}
        }
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            item = sub.next() => item,
        };
        let mut ledger = ledger.lock().unwrap();
        match item {
            Some(Ok(Event::Message(m))) => {
                let epoch = sub.position().map(|p| p.epoch.clone()).unwrap_or_default();
                let key = m.data_as::<Value>().ok().as_ref().and_then(Key::of);
                ledger.message(Delivery {
                    channel: channel.clone(),
                    epoch,
                    serial: m.serial,
                    id: m.id.clone(),
                    key,
                });
            }
            Some(Ok(Event::ContinuityLost {
                reason, position, ..
            })) => {
                // As the protocol spells it (`history_expired`), like the JS SDK reports it.
                let reason = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{reason:?}"));
                ledger.lost(&channel, reason, position)
            }
            Some(Ok(other)) => ledger.errors.push(format!(
                "{channel}: an event the soak does not know: {other:?}"
            )),
            Some(Err(e)) => {
                ledger
                    .errors
                    .push(format!("{channel}: the subscription failed: {e}"));
                return;
            }
            None => {
                ledger
                    .errors
                    .push(format!("{channel}: the subscription ended"));
                return;
            }
        }
    }
}

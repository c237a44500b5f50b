//! Live fan-out of what the log just appended.
//!
//! Per channel with subscribers, a bounded broadcast ring of [`Live`] messages. Each message is
//! encoded into its wire frame once, in the log's writer right after the commit, and shared by
//! every connection (`Utf8Bytes` is reference-counted). Publishing never waits for subscribers:
//! a subscriber that falls more than the ring's capacity behind gets `Lagged` and catches up
//! from the log, so slow consumers hurt only themselves.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::channel::ChannelName;
use crate::log::{AppendObserver, StoredMessage};
use crate::metrics::Metrics;

/// One live message, as every subscriber receives it.
#[derive(Debug)]
pub struct Live {
    /// The message's serial.
    pub serial: u64,
    /// Serial of the message before it in the channel (0 if none): a subscriber whose last
    /// delivered serial is below this has missed something and reads the log.
    pub prev: u64,
    /// The encoded `message` frame (empty for a reset).
    pub frame: Utf8Bytes,
    /// Set when the channel's history restarted under this new epoch at `serial` (the head):
    /// subscribers must be told continuity was lost.
    pub reset: Option<Arc<str>>,
}

/// The fan-out hub.
pub struct Hub {
    channels: RwLock<HashMap<Arc<str>, broadcast::Sender<Arc<Live>>>>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// A hub whose per-channel rings hold `capacity` messages.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            channels: RwLock::new(HashMap::new()),
            capacity,
            metrics,
        }
    }

    /// Start receiving live messages of `channel`. Call before reading the log's head, so that
    /// nothing appended in between is missed.
    pub fn subscribe(&self, channel: &ChannelName) -> broadcast::Receiver<Arc<Live>> {
        if let Some(tx) = self.channels.read().get(channel.as_arc()) {
            return tx.subscribe();
        }
        let mut channels = self.channels.write();
        let tx = channels.entry(channel.as_arc().clone()).or_insert_with(|| {
            self.metrics.channels_active.inc();
            broadcast::channel(self.capacity).0
        });
        tx.subscribe()
    }

    /// A subscriber of `channel` dropped its receiver; forget the channel if it was the last.
    pub fn release(&self, channel: &ChannelName) {
        let mut channels = self.channels.write();
        if let Some(tx) = channels.get(channel.as_arc()) {
            if tx.receiver_count() == 0 {
                channels.remove(channel.as_arc());
                self.metrics.channels_active.dec();
            }
        }
    }
}

impl AppendObserver for Hub {
    fn appended(&self, channel: &ChannelName, prev: u64, messages: &[StoredMessage]) {
        self.metrics.messages_appended.inc_by(messages.len() as u64);
        let Some(tx) = self.channels.read().get(channel.as_arc()).cloned() else {
            return;
        };
        let mut prev = prev;
        for m in messages {
            let live = Live {
                serial: m.serial,
                prev,
                frame: Utf8Bytes::from(encode_message(channel.as_str(), m)),
                reset: None,
            };
            prev = m.serial;
            // An error only means nobody is subscribed any more.
            let _ = tx.send(Arc::new(live));
        }
    }

    fn reset(&self, channel: &ChannelName, epoch: &Arc<str>, head: u64) {
        let Some(tx) = self.channels.read().get(channel.as_arc()).cloned() else {
            return;
        };
        let _ = tx.send(Arc::new(Live {
            serial: head,
            prev: head,
            frame: Utf8Bytes::from_static(""),
            reset: Some(epoch.clone()),
        }));
    }
}

#[derive(Serialize)]
struct MessageOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    serial: u64,
    id: Option<&'a str>,
    name: Option<&'a str>,
    data: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
    timestamp: u64,
}

/// Encode a stored message as a `message` frame.
pub fn encode_message(channel: &str, m: &StoredMessage) -> String {
    serde_json::to_string(&MessageOut {
        kind: "message",
        channel,
        serial: m.serial,
        id: m.id.as_deref(),
        name: m.name.as_deref(),
        data: m.data.as_deref(),
        headers: m.headers.as_deref(),
        timestamp: m.timestamp,
    })
    .expect("a message of valid JSON parts always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_frames_parse_as_protocol_messages() {
        let m = StoredMessage {
            serial: 9,
            id: Some("x".into()),
            name: None,
            data: Some(RawValue::from_string(r#"{"a":[1,2]}"#.into()).unwrap()),
            headers: None,
            timestamp: 5,
        };
        let frame: tidings_protocol::ServerFrame =
            serde_json::from_str(&encode_message("c:1", &m)).unwrap();
        match frame {
            tidings_protocol::ServerFrame::Message(f) => {
                assert_eq!((f.serial, f.channel.as_str()), (9, "c:1"));
                assert_eq!(f.data.unwrap()["a"][1], 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn subscribers_share_one_encoding_and_see_prev_serials() {
        let hub = Hub::new(16, Arc::new(Metrics::new()));
        let ch = ChannelName::parse("c").unwrap();
        let mut a = hub.subscribe(&ch);
        let mut b = hub.subscribe(&ch);
        let msgs: Vec<StoredMessage> = (4..=5)
            .map(|serial| StoredMessage {
                serial,
                id: None,
                name: Some("n".into()),
                data: None,
                headers: None,
                timestamp: 0,
            })
            .collect();
        hub.appended(&ch, 3, &msgs);
        let (a1, b1) = (a.recv().await.unwrap(), b.recv().await.unwrap());
        assert!(
            Arc::ptr_eq(&a1, &b1),
            "one encoding shared by all subscribers"
        );
        assert_eq!((a1.serial, a1.prev), (4, 3));
        assert_eq!(a.recv().await.unwrap().prev, 4);
        drop((a, b));
        hub.release(&ch);
        assert!(hub.channels.read().is_empty());
    }
}

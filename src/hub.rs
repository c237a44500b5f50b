//! Live fan-out of what the log just appended.
//!
//! Per channel with subscribers, a small broadcast ring of [`Live`] messages that wakes the
//! subscribers. Each message is encoded into its wire frame once, in the log's writer right
//! after the commit, and shared by every connection (`Utf8Bytes` is reference-counted).
//! Publishing never waits for subscribers, so slow consumers hurt only themselves.
//!
//! Beside the ring, each channel keeps its most recent messages (up to `capacity`, the same
//! shared frames, so only a pointer each, and only as many as were published): a client a
//! little behind the head, which is what every long-poll request, most reconnects and a
//! subscriber that overran the ring are, catches up from memory; only one further behind reads
//! the log. The ring itself is allocated in full for every channel, so it stays at
//! [`RING_SLOTS`]: 10,000 channels cost a few megabytes, not half a gigabyte. A channel stays in
//! the hub for [`IDLE_GRACE`] after its last subscriber leaves, so the gap between two polls, or
//! a reconnect, does not lose it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::{Mutex, RwLock};
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
    /// Set when messages may have been lost before this point (no message of its own): every
    /// subscriber checks the log for anything after what it delivered.
    pub resync: bool,
}

/// Slots of each channel's broadcast ring (at most `capacity`). A subscriber further behind
/// than this catches up from the channel's recent messages, which hold `capacity`.
pub const RING_SLOTS: usize = 128;

/// How long a channel without subscribers keeps its ring and recent messages.
pub const IDLE_GRACE: Duration = Duration::from_secs(30);

/// One channel with subscribers (or had some within [`IDLE_GRACE`]).
struct Channel {
    tx: broadcast::Sender<Arc<Live>>,
    /// The last `capacity` messages in serial order, each linked to the one before by `prev`;
    /// emptied when the history restarts. A message enters before it is sent on `tx`.
    recent: Mutex<VecDeque<Arc<Live>>>,
    /// Since when nobody subscribes (set by `release`, cleared by `subscribe`).
    idle_since: Mutex<Option<Instant>>,
}

impl Channel {
    /// A subscriber arrived: count the channel as active again if it was idle.
    fn wake(&self, metrics: &Metrics) {
        if self.idle_since.lock().take().is_some() {
            metrics.channels_active.inc();
        }
    }
}

/// The fan-out hub.
pub struct Hub {
    channels: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
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
        if let Some(c) = self.channels.read().get(channel.as_arc()) {
            let rx = c.tx.subscribe();
            c.wake(&self.metrics);
            return rx;
        }
        let mut channels = self.channels.write();
        let c = channels.entry(channel.as_arc().clone()).or_insert_with(|| {
            self.metrics.channels_active.inc();
            Arc::new(Channel {
                tx: broadcast::channel(self.capacity.min(RING_SLOTS)).0,
                recent: Mutex::new(VecDeque::new()),
                idle_since: Mutex::new(None),
            })
        });
        let rx = c.tx.subscribe();
        c.wake(&self.metrics);
        rx
    }

    /// The recent messages of `channel` after serial `after`, if memory holds every one of them
    /// from `after` on (`None`: read the log). Call after [`Hub::subscribe`]: a message not yet
    /// here when this reads is sent to that receiver afterwards. The answer may stop short of
    /// the log's head; the rest arrives live.
    pub fn recent_after(&self, channel: &ChannelName, after: u64) -> Option<Vec<Arc<Live>>> {
        let c = self.channels.read().get(channel.as_arc()).cloned()?;
        let recent = c.recent.lock();
        if recent.front()?.prev > after {
            return None;
        }
        let start = recent.partition_point(|l| l.serial <= after);
        Some(recent.range(start..).cloned().collect())
    }

    /// A subscriber of `channel` dropped its receiver. If it was the last, the channel is idle:
    /// [`Hub::sweep`] forgets it once idle longer than the grace period.
    pub fn release(&self, channel: &ChannelName) {
        // The write lock: no subscribe runs meanwhile, so the count is settled.
        let channels = self.channels.write();
        if let Some(c) = channels.get(channel.as_arc()) {
            if c.tx.receiver_count() == 0 {
                let mut idle = c.idle_since.lock();
                if idle.is_none() {
                    *idle = Some(Instant::now());
                    self.metrics.channels_active.dec();
                }
            }
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Forget the channels nobody has subscribed to for `grace`; returns how many.
    pub fn sweep(&self, grace: Duration) -> usize {
        let mut channels = self.channels.write();
        let before = channels.len();
        channels.retain(|_, c| {
            let idle = *c.idle_since.lock();
            !(c.tx.receiver_count() == 0 && idle.is_some_and(|t| t.elapsed() >= grace))
        });
        before - channels.len()
    }
}

impl AppendObserver for Hub {
    fn appended(&self, channel: &ChannelName, prev: u64, messages: &[StoredMessage]) {
        self.metrics.messages_appended.inc_by(messages.len() as u64);
        let Some(c) = self.channels.read().get(channel.as_arc()).cloned() else {
            return;
        };
        let mut prev = prev;
        let lives: Vec<Arc<Live>> = messages
            .iter()
            .map(|m| {
                let live = Live {
                    serial: m.serial,
                    prev,
                    frame: Utf8Bytes::from(encode_message(channel.as_str(), m)),
                    reset: None,
                    resync: false,
                };
                prev = m.serial;
                Arc::new(live)
            })
            .collect();
        {
            let mut recent = c.recent.lock();
            // Recent messages link by `prev` without a hole: one that does not follow the
            // newest held (the cluster feed lost one) starts them afresh.
            let follows = match (recent.back(), lives.first()) {
                (Some(b), Some(f)) => b.serial == f.prev,
                _ => true,
            };
            if !follows {
                recent.clear();
            }
            for live in &lives {
                if recent.len() == self.capacity {
                    recent.pop_front();
                }
                recent.push_back(live.clone());
            }
        }
        for live in lives {
            // An error only means nobody is subscribed any more.
            let _ = c.tx.send(live);
        }
    }

    fn reset(&self, channel: &ChannelName, epoch: &Arc<str>, head: u64) {
        let Some(c) = self.channels.read().get(channel.as_arc()).cloned() else {
            return;
        };
        c.recent.lock().clear();
        let _ = c.tx.send(Arc::new(Live {
            serial: head,
            prev: head,
            frame: Utf8Bytes::from_static(""),
            reset: Some(epoch.clone()),
            resync: false,
        }));
    }

    fn resync(&self) {
        let channels: Vec<Arc<Channel>> = self.channels.read().values().cloned().collect();
        for c in channels {
            // Memory may have a hole now: only the log can bridge it.
            c.recent.lock().clear();
            let _ = c.tx.send(Arc::new(Live {
                serial: 0,
                prev: 0,
                frame: Utf8Bytes::from_static(""),
                reset: None,
                resync: true,
            }));
        }
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
                assert_eq!(f.data.unwrap().get(), r#"{"a":[1,2]}"#);
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
        assert_eq!(hub.sweep(Duration::from_secs(60)), 0, "kept while recent");
        let _again = hub.subscribe(&ch);
        hub.release(&ch);
        assert_eq!(hub.sweep(Duration::ZERO), 0, "a subscriber is back");
        drop(_again);
        hub.release(&ch);
        assert_eq!(hub.sweep(Duration::ZERO), 1, "forgotten once idle");
        assert!(hub.channels.read().is_empty());
    }

    fn stored(serials: std::ops::RangeInclusive<u64>) -> Vec<StoredMessage> {
        serials
            .map(|serial| StoredMessage {
                serial,
                id: None,
                name: None,
                data: None,
                headers: None,
                timestamp: 0,
            })
            .collect()
    }

    #[test]
    fn recent_messages_answer_only_what_they_hold_without_a_gap() {
        let hub = Hub::new(4, Arc::new(Metrics::new()));
        let ch = ChannelName::parse("c").unwrap();
        // Nothing is kept for a channel nobody follows.
        hub.appended(&ch, 0, &stored(1..=2));
        let _rx = hub.subscribe(&ch);
        assert!(hub.recent_after(&ch, 2).is_none(), "empty: read the log");
        hub.appended(&ch, 2, &stored(3..=5));
        let serials = |after| {
            hub.recent_after(&ch, after)
                .map(|v| v.iter().map(|l| l.serial).collect::<Vec<_>>())
        };
        assert_eq!(serials(2), Some(vec![3, 4, 5]), "3's predecessor is 2");
        assert_eq!(serials(4), Some(vec![5]));
        assert_eq!(serials(5), Some(vec![]), "at the head: the rest comes live");
        assert_eq!(serials(1), None, "2 was never held: read the log");
        // Between two polls nobody subscribes: the channel and its messages stay.
        drop(_rx);
        hub.release(&ch);
        hub.appended(&ch, 5, &stored(6..=6));
        let _rx = hub.subscribe(&ch);
        assert_eq!(serials(4), Some(vec![5, 6]));
        // Past capacity the oldest go.
        hub.appended(&ch, 6, &stored(7..=7));
        assert_eq!(serials(2), None, "3 was dropped");
        assert_eq!(serials(3), Some(vec![4, 5, 6, 7]));
        // A restarted history forgets them all.
        hub.reset(&ch, &Arc::from("e2"), 7);
        assert_eq!(serials(7), None);
    }

    #[tokio::test]
    async fn a_hole_in_the_feed_is_never_bridged_from_memory() {
        let hub = Hub::new(8, Arc::new(Metrics::new()));
        let ch = ChannelName::parse("c").unwrap();
        let mut rx = hub.subscribe(&ch);
        hub.appended(&ch, 0, &stored(3..=4));
        // The cluster feed lost 7 (between 4 and 9): memory starts afresh at 9.
        hub.appended(&ch, 7, &stored(9..=9));
        assert!(
            hub.recent_after(&ch, 4).is_none(),
            "7 is not held: read the log"
        );
        assert_eq!(hub.recent_after(&ch, 7).map(|v| v.len()), Some(1));
        // A possible loss anywhere: memory is dropped and every subscriber is told to check.
        hub.resync();
        assert!(hub.recent_after(&ch, 9).is_none());
        let mut last = None;
        while let Ok(live) = rx.try_recv() {
            last = Some(live);
        }
        assert!(last.expect("a resync notice").resync);
    }
}

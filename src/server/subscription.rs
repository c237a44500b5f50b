//! A set of attached channels and the ordered, gap-free delivery of their messages, shared by
//! every transport (WebSocket, SSE, long-polling).
//!
//! For each channel it remembers the last serial delivered and joins catch-up from the log with
//! live messages from the hub without a gap or a duplicate: it subscribes to the hub first, then
//! reads the log from the client's position up to the head, then takes live messages, skipping
//! serials already delivered and going back to the log whenever a live message's predecessor
//! was not delivered (the live ring overflowed, or messages arrived during catch-up). A client
//! only a little behind (a long-poll request, a quick reconnect) catches up from the hub's
//! recent messages, already encoded, without reading the log.
//!
//! [`Subscription::next`] is cancel-safe: a delivery's state changes only once it returns, so a
//! transport may race it against other work in `select!`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::{FutureExt, StreamExt};
use tidings_protocol::{ContinuityLost, ErrorCode, Position};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamMap;

use crate::channel::ChannelName;
use crate::error::ApiError;
use crate::hub::{encode_message, Hub, Live};
use crate::log::ChannelLog;

/// Messages read from the log per catch-up page.
pub const CATCH_UP_PAGE: usize = 1000;

/// Where an attach starts, and whether it continues the client's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub channel: ChannelName,
    pub epoch: Arc<str>,
    /// Delivery continues with the messages after this serial.
    pub serial: u64,
    pub resumed: bool,
    pub reason: Option<ContinuityLost>,
}

/// What a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `message` frame.
    Message,
    /// An `attached` frame with `resumed: false` while attached: the channel's history
    /// restarted (`epoch_changed`; delivery continues in the new epoch), or retention removed
    /// messages the client had not received yet (`history_expired`; delivery continues after
    /// what the log still holds).
    Reattached,
}

/// One delivery: its channel, serial and encoded frame.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub channel: ChannelName,
    pub serial: u64,
    pub kind: Kind,
    pub frame: Utf8Bytes,
}

impl Delivery {
    fn reattached(
        channel: &ChannelName,
        epoch: &str,
        serial: u64,
        reason: ContinuityLost,
    ) -> Delivery {
        let frame = tidings_protocol::ServerFrame::Attached {
            channel: channel.to_string(),
            epoch: epoch.to_owned(),
            serial,
            resumed: false,
            reason: Some(reason),
        };
        Delivery {
            channel: channel.clone(),
            serial,
            kind: Kind::Reattached,
            frame: Utf8Bytes::from(serde_json::to_string(&frame).expect("frames encode")),
        }
    }
}

/// What [`Subscription::next`] produced.
#[derive(Debug)]
pub enum Event {
    /// Messages in delivery order (per channel, ascending serials).
    Messages(Vec<Delivery>),
    /// A channel could not be served (the log failed) and was detached.
    Failed(ApiError),
}

struct Attachment {
    channel: ChannelName,
    epoch: Arc<str>,
    /// Serial of the last message delivered (or the attach point).
    last: u64,
}

/// The attached channels of one client.
pub struct Subscription {
    log: Arc<dyn ChannelLog>,
    hub: Arc<Hub>,
    attachments: HashMap<Arc<str>, Attachment>,
    live: StreamMap<Arc<str>, BroadcastStream<Arc<Live>>>,
    /// Channels whose next messages must come from the log.
    behind: VecDeque<Arc<str>>,
    /// Catch-up taken from the hub's recent messages at attach, delivered before anything else
    /// (an attachment's `last` counts them once delivered).
    ready: VecDeque<Delivery>,
}

impl Subscription {
    /// An empty subscription.
    pub fn new(log: Arc<dyn ChannelLog>, hub: Arc<Hub>) -> Self {
        Subscription {
            log,
            hub,
            attachments: HashMap::new(),
            live: StreamMap::new(),
            behind: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Attach `channel` (re-attaching restarts it): resume after `from`, rewind `rewind`
    /// messages, or start at the head. Authorisation is the caller's job.
    pub async fn attach(
        &mut self,
        channel: &ChannelName,
        from: Option<&Position>,
        rewind: Option<u64>,
    ) -> Result<Attached, ApiError> {
        self.detach(channel);
        // Subscribe before reading the head: anything appended after this point arrives live.
        let receiver = self.hub.subscribe(channel);
        let state = match self.log.state(channel).await {
            Ok(state) => state,
            Err(e) => {
                self.hub.release(channel);
                drop(receiver);
                return Err(ApiError::from_log(&e).on(channel.as_str()));
            }
        };
        let (serial, resumed, reason) = match (from, rewind) {
            (Some(pos), _) => {
                if *pos.epoch != *state.epoch {
                    (state.head, false, Some(ContinuityLost::EpochChanged))
                } else if pos.serial > state.head {
                    (state.head, false, Some(ContinuityLost::PositionAhead))
                } else if pos.serial < state.trimmed {
                    (state.head, false, Some(ContinuityLost::HistoryExpired))
                } else {
                    (pos.serial, true, None)
                }
            }
            (None, Some(n)) => (state.head.saturating_sub(n).max(state.trimmed), false, None),
            (None, None) => (state.head, false, None),
        };
        let key = channel.as_arc().clone();
        if serial < state.head {
            // From memory when it holds everything after `serial` and the history did not
            // restart meanwhile (the log's epoch changes before the hub forgets); else the log.
            let recent = match self.hub.recent_after(channel, serial) {
                Some(lives) if self.same_epoch(channel, &state.epoch).await => Some(lives),
                _ => None,
            };
            match recent {
                Some(lives) => {
                    self.hub.metrics().catch_up_from_memory.inc();
                    for live in lives {
                        self.ready.push_back(Delivery {
                            channel: channel.clone(),
                            serial: live.serial,
                            kind: Kind::Message,
                            frame: live.frame.clone(),
                        });
                    }
                }
                None => self.behind.push_back(key.clone()),
            }
        }
        self.attachments.insert(
            key.clone(),
            Attachment {
                channel: channel.clone(),
                epoch: state.epoch.clone(),
                last: serial,
            },
        );
        self.live
            .insert(key.clone(), BroadcastStream::new(receiver));
        Ok(Attached {
            channel: channel.clone(),
            epoch: state.epoch,
            serial,
            resumed,
            reason,
        })
    }

    /// Whether `channel`'s history is still `epoch` (false when the log cannot say: the caller
    /// then reads the log, which reports the failure).
    async fn same_epoch(&self, channel: &ChannelName, epoch: &Arc<str>) -> bool {
        self.log
            .state(channel)
            .await
            .is_ok_and(|s| *s.epoch == **epoch)
    }

    /// Detach `channel`; false if it was not attached.
    pub fn detach(&mut self, channel: &ChannelName) -> bool {
        let key = channel.as_arc();
        if self.attachments.remove(key).is_none() {
            return false;
        }
        self.live.remove(key);
        self.behind.retain(|k| k != key);
        self.ready.retain(|d| d.channel != *channel);
        self.hub.release(channel);
        true
    }

    /// Number of attached channels.
    pub fn len(&self) -> usize {
        self.attachments.len()
    }

    /// The position reached on each attached channel.
    pub fn positions(&self) -> impl Iterator<Item = (&ChannelName, &str, u64)> {
        self.attachments
            .values()
            .map(|a| (&a.channel, &*a.epoch, a.last))
    }

    /// Whether some channel has messages waiting in the log (the next call returns at once).
    pub fn is_behind(&self) -> bool {
        !self.behind.is_empty() || !self.ready.is_empty()
    }

    /// The next messages: a log page for a channel that is behind, else live messages (as
    /// many as are ready, up to `max`). Waits while there is nothing; pending forever when no
    /// channel is attached.
    pub async fn next(&mut self, max: usize) -> Event {
        if !self.ready.is_empty() {
            // Live messages are only read once this is empty, so `last` is up to date by then.
            let n = self.ready.len().min(max.max(1));
            let batch: Vec<Delivery> = self.ready.drain(..n).collect();
            for d in &batch {
                if let Some(att) = self.attachments.get_mut(d.channel.as_arc()) {
                    att.last = att.last.max(d.serial);
                }
            }
            return Event::Messages(batch);
        }
        loop {
            if let Some(key) = self.behind.front().cloned() {
                // Boxed: catching up is the rarer path, and its reads would otherwise make
                // every idle session's future larger (`an_idle_session_future_stays_small`).
                match Box::pin(self.read_page(&key)).await {
                    Ok(Some(batch)) if !batch.is_empty() => return Event::Messages(batch),
                    Ok(_) => continue,
                    Err(e) => return Event::Failed(e),
                }
            }
            let Some((key, item)) = self.live.next().await else {
                return std::future::pending().await;
            };
            let mut out = Vec::new();
            self.take_live(key, item, &mut out);
            while out.len() < max && self.behind.is_empty() {
                match self.live.next().now_or_never() {
                    Some(Some((key, item))) => self.take_live(key, item, &mut out),
                    _ => break,
                }
            }
            if !out.is_empty() {
                return Event::Messages(out);
            }
        }
    }

    fn take_live(
        &mut self,
        key: Arc<str>,
        item: Result<Arc<Live>, BroadcastStreamRecvError>,
        out: &mut Vec<Delivery>,
    ) {
        let Some(att) = self.attachments.get_mut(&key) else {
            return;
        };
        match item {
            Ok(live) if live.reset.is_some() => {
                let epoch = live.reset.clone().expect("checked");
                att.epoch = epoch.clone();
                att.last = live.serial;
                self.behind.retain(|k| *k != key);
                out.push(Delivery::reattached(
                    &att.channel,
                    &epoch,
                    live.serial,
                    ContinuityLost::EpochChanged,
                ));
            }
            Ok(live) if live.resync => {
                if !self.behind.contains(&key) {
                    self.behind.push_back(key);
                }
            }
            Ok(live) if live.serial <= att.last => {}
            Ok(live) if live.prev <= att.last && !self.behind.contains(&key) => {
                att.last = live.serial;
                out.push(Delivery {
                    channel: att.channel.clone(),
                    serial: live.serial,
                    kind: Kind::Message,
                    frame: live.frame.clone(),
                });
            }
            // A predecessor was not delivered (or the ring overflowed): the hub's recent
            // messages have it when it is not far behind, else the log (`read_page`, which
            // can ask the log whether the history restarted meanwhile).
            _ => {
                if !self.behind.contains(&key) {
                    self.behind.push_back(key);
                }
            }
        }
    }

    /// Read one page for a channel that is behind. `Ok(None)` when it caught up.
    async fn read_page(&mut self, key: &Arc<str>) -> Result<Option<Vec<Delivery>>, ApiError> {
        let Some(att) = self.attachments.get(key) else {
            self.behind.retain(|k| k != key);
            return Ok(None);
        };
        let (channel, after, epoch) = (att.channel.clone(), att.last, att.epoch.clone());
        // Recent messages first, then the epoch: the log moves to a new epoch before the hub
        // forgets the old one's messages, so an unchanged epoch means what was read belongs to
        // this history. What memory holds reaches the newest message the hub has, so the
        // channel has caught up.
        if let Some(lives) = self.hub.recent_after(&channel, after) {
            if self.same_epoch(&channel, &epoch).await {
                self.hub.metrics().catch_up_from_memory.inc();
                self.behind.retain(|k| k != key);
                let att = self.attachments.get_mut(key).expect("attached");
                let mut out = Vec::with_capacity(lives.len());
                for live in lives {
                    att.last = live.serial;
                    out.push(Delivery {
                        channel: att.channel.clone(),
                        serial: live.serial,
                        kind: Kind::Message,
                        frame: live.frame.clone(),
                    });
                }
                return Ok(Some(out));
            }
        }
        self.hub.metrics().catch_up_log_pages.inc();
        let page = match self.log.read(&channel, after, CATCH_UP_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                // Without the log this attachment cannot keep its promise: end it, say why.
                self.detach(&channel);
                return Err(ApiError::from_log(&e).on(channel.as_str()));
            }
        };
        if *page.state.epoch != *self.attachments[key].epoch {
            // The history restarted while this client was behind: never bridge two histories
            // silently. Say so, and continue in the new epoch from its start.
            let restart = page.state.trimmed;
            if let Some(att) = self.attachments.get_mut(key) {
                att.epoch = page.state.epoch.clone();
                att.last = restart;
            }
            return Ok(Some(vec![Delivery::reattached(
                &channel,
                &page.state.epoch,
                restart,
                ContinuityLost::EpochChanged,
            )]));
        }
        // Retention removed messages after `after` that this client has not received: say so,
        // and continue after what the log still holds, never from the first message left as if
        // nothing were missing. The state is read again after the page: retention raises
        // `trimmed` before its delete commits, so a page read without those rows sees it here.
        let now = match self.log.state(&channel).await {
            Ok(state) => state,
            Err(e) => {
                self.detach(&channel);
                return Err(ApiError::from_log(&e).on(channel.as_str()));
            }
        };
        let trimmed = page.state.trimmed.max(now.trimmed);
        if after < trimmed {
            if let Some(att) = self.attachments.get_mut(key) {
                att.last = trimmed;
            }
            return Ok(Some(vec![Delivery::reattached(
                &channel,
                &page.state.epoch,
                trimmed,
                ContinuityLost::HistoryExpired,
            )]));
        }
        let caught_up = page.messages.len() < CATCH_UP_PAGE;
        let batch: Vec<Delivery> = page
            .messages
            .iter()
            .filter(|m| m.serial > after)
            .map(|m| Delivery {
                channel: channel.clone(),
                serial: m.serial,
                kind: Kind::Message,
                frame: Utf8Bytes::from(encode_message(channel.as_str(), m)),
            })
            .collect();
        if let (Some(last), Some(att)) = (batch.last(), self.attachments.get_mut(key)) {
            att.last = att.last.max(last.serial);
        }
        if caught_up {
            self.behind.retain(|k| k != key);
        }
        Ok(Some(batch))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let channels: Vec<ChannelName> = self
            .attachments
            .values()
            .map(|a| a.channel.clone())
            .collect();
        self.live = StreamMap::new();
        self.attachments.clear();
        for channel in &channels {
            self.hub.release(channel);
        }
    }
}

/// Parse positions written as `channel=epoch:serial` pairs joined by `,` (the SSE event id and
/// the `from` query parameter). Channel names never contain `,`; the last `=` splits.
pub fn parse_positions(text: &str) -> Result<Vec<(ChannelName, Position)>, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("positions must look like `channel=epoch:serial,other=epoch:serial`: {why}"),
        )
    };
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (channel, pos) = pair.rsplit_once('=').ok_or_else(|| bad("missing `=`"))?;
            let (epoch, serial) = pos.rsplit_once(':').ok_or_else(|| bad("missing `:`"))?;
            let channel = ChannelName::parse(channel).map_err(|e| bad(&e.to_string()))?;
            let serial = serial
                .parse()
                .map_err(|_| bad("the serial is not a number"))?;
            if epoch.is_empty() {
                return Err(bad("the epoch is empty"));
            }
            Ok((
                channel,
                Position {
                    epoch: epoch.to_owned(),
                    serial,
                },
            ))
        })
        .collect()
}

/// Write positions in the form [`parse_positions`] reads.
pub fn format_positions<'a>(
    positions: impl Iterator<Item = (&'a ChannelName, &'a str, u64)>,
) -> String {
    let mut out = String::new();
    for (channel, epoch, serial) in positions {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(channel.as_str());
        out.push('=');
        out.push_str(epoch);
        out.push(':');
        out.push_str(&serial.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;

    use super::*;
    use crate::log::embedded::{EmbeddedLog, EmbeddedOptions};
    use crate::log::{NewMessage, Retention, RetentionPolicy};
    use crate::metrics::Metrics;

    /// Serials of the messages of an event, and the attached frames in it as `(serial, frame)`.
    fn split(event: Event) -> (Vec<u64>, Vec<(u64, String)>) {
        let Event::Messages(batch) = event else {
            panic!("a delivery failed: {event:?}");
        };
        let mut messages = Vec::new();
        let mut attached = Vec::new();
        for d in batch {
            match d.kind {
                Kind::Message => messages.push(d.serial),
                Kind::Reattached => attached.push((d.serial, d.frame.to_string())),
            }
        }
        (messages, attached)
    }

    /// A subscriber reading a long catch-up from the log, page by page, while retention removes
    /// messages it has not read yet: it is told (an `attached` frame, `history_expired`) and
    /// continues after what the log still holds, instead of going on from the first message
    /// left as if nothing were missing. Found by the fault soak (scripts/soak), whose bursts
    /// overran a namespace that keeps 300 messages.
    #[tokio::test]
    async fn retention_overtaking_a_catch_up_is_said_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::new(4, Arc::new(Metrics::new())));
        let options = EmbeddedOptions {
            dedup_window: Duration::from_secs(3600),
        };
        let log: Arc<dyn ChannelLog> =
            Arc::new(EmbeddedLog::open(dir.path(), options, hub.clone()).unwrap());
        let channel = ChannelName::parse("trim:1").unwrap();
        let mut sub = Subscription::new(log.clone(), hub.clone());
        sub.attach(&channel, None, None).await.unwrap();
        let batch = (0..3000)
            .map(|i| NewMessage {
                channel: channel.clone(),
                id: None,
                name: None,
                data: Some(RawValue::from_string(i.to_string()).unwrap()),
                headers: None,
            })
            .collect();
        log.append(batch, None).await.unwrap();
        // The live ring holds 4: the first page comes from the log.
        let (first, attached) = split(sub.next(usize::MAX).await);
        assert!(attached.is_empty());
        assert_eq!(first, (1..=1000).collect::<Vec<_>>());
        // Retention keeps the last 300: 1001 to 2700 are gone before the subscriber read them.
        let keep = Retention {
            max_age: None,
            max_messages: Some(300),
        };
        let policy = RetentionPolicy {
            default: keep,
            namespaces: Vec::new(),
        };
        log.apply_retention(&policy).await.unwrap();
        let mut messages = Vec::new();
        let mut told = Vec::new();
        while messages.last() != Some(&3000) {
            let (m, a) = split(sub.next(usize::MAX).await);
            messages.extend(m);
            told.extend(a);
        }
        assert_eq!(told.len(), 1, "told once: {told:?}");
        let (serial, frame) = &told[0];
        assert_eq!(*serial, 2700, "continues after what the log holds");
        assert!(frame.contains("\"history_expired\""), "{frame}");
        assert!(frame.contains("\"resumed\":false"), "{frame}");
        assert_eq!(messages, (2701..=3000).collect::<Vec<_>>());
    }

    #[test]
    fn positions_round_trip() {
        let a = ChannelName::parse("a=b:c").unwrap();
        let d = ChannelName::parse("d").unwrap();
        let text = format_positions([(&a, "e1", 5u64), (&d, "e2", 0u64)].into_iter());
        assert_eq!(text, "a=b:c=e1:5,d=e2:0");
        let parsed = parse_positions(&text).unwrap();
        assert_eq!(parsed[0].0, a);
        assert_eq!(
            parsed[0].1,
            Position {
                epoch: "e1".into(),
                serial: 5
            }
        );
        assert_eq!(parsed[1].1.serial, 0);
        for bad in ["a", "a=5", "a=e:x", "a b=e:1", "a=:1"] {
            assert!(parse_positions(bad).is_err(), "{bad:?}");
        }
    }
}

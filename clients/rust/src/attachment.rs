//! The channels a client has attached, each with the position it reached, and delivery to their
//! subscriptions: duplicates dropped, continuity loss turned into an event, bounded queues.
//!
//! Delivery never blocks the connection on one slow subscription: an item that does not fit in
//! a subscription's queue waits in that channel's backlog, and the connection stops reading
//! from the network until every backlog drained (the server then serves the reader from its
//! log, or closes with a resumable reason). A backlog therefore holds at most what one read
//! produced (one frame, one SSE chunk, one poll answer).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;

use tidings_protocol::{ContinuityLost, MessageFrame, Position};
use tokio::sync::mpsc;

use crate::command::Confirm;
use crate::error::Error;
use crate::event::{Event, Item};
use crate::start::Start;
use crate::state::Counters;

/// One attached channel.
pub(crate) struct Attachment {
    /// Tells this attachment from a later one of the same channel.
    pub id: u64,
    /// How the application asked to start; used until the first `attached`.
    pub start: Start,
    /// The epoch and the serial of the last message delivered (or of the attach point).
    /// `None` until the server first attached the channel.
    pub position: Option<Position>,
    /// Included in the current connection (attach sent, or in the SSE/poll request).
    pub live: bool,
    confirm: Option<Confirm>,
    events: mpsc::Sender<Item>,
    backlog: VecDeque<Item>,
    /// The subscription was dropped: detach at the next opportunity.
    gone: bool,
}

/// What to put in an SSE or long-poll request: `channel=..` (repeated), `from=..`, `rewind=..`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Request {
    pub channels: Vec<String>,
    pub from: Vec<(String, Position)>,
    pub rewind: Option<u64>,
}

impl Request {
    /// `from` as the protocol writes positions: `channel=epoch:serial,...`.
    pub fn positions(&self) -> Option<String> {
        if self.from.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (c, p) in &self.from {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{c}={}:{}", p.epoch, p.serial));
        }
        Some(out)
    }
}

/// Every attached channel of a client.
pub(crate) struct Attachments {
    map: BTreeMap<String, Attachment>,
    /// Channels whose backlog is not empty (so that checking costs nothing per frame).
    backlogged: BTreeSet<String>,
    /// Channels found with a dropped subscription while delivering.
    gone: BTreeSet<String>,
    counters: Arc<Counters>,
}

impl Attachments {
    pub fn new(counters: Arc<Counters>) -> Attachments {
        Attachments {
            map: BTreeMap::new(),
            backlogged: BTreeSet::new(),
            gone: BTreeSet::new(),
            counters,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Attachment)> {
        self.map.iter()
    }

    /// Register a new attachment. A channel already attached by a live subscription is refused.
    pub fn insert(
        &mut self,
        channel: String,
        id: u64,
        start: Start,
        events: mpsc::Sender<Item>,
        confirm: Confirm,
    ) -> Result<(), (Error, Confirm)> {
        if let Some(a) = self.map.get(&channel) {
            if !a.gone && !a.events.is_closed() {
                return Err((Error::AlreadyAttached(channel), confirm));
            }
        }
        self.backlogged.remove(&channel);
        self.gone.remove(&channel);
        self.map.insert(
            channel,
            Attachment {
                id,
                start,
                position: None,
                live: false,
                confirm: Some(confirm),
                events,
                backlog: VecDeque::new(),
                gone: false,
            },
        );
        Ok(())
    }

    /// Forget attachment `id` of `channel` (its subscription was dropped). True if it was there.
    pub fn remove(&mut self, channel: &str, id: u64) -> bool {
        match self.map.get(channel) {
            Some(a) if a.id == id => {
                self.map.remove(channel);
                self.backlogged.remove(channel);
                self.gone.remove(channel);
                true
            }
            _ => false,
        }
    }

    /// The start of the attach frame for `channel`: resume from its position when it has one.
    pub fn attach_args(a: &Attachment) -> (Option<Position>, Option<u64>) {
        match (&a.position, &a.start) {
            (Some(p), _) => (Some(p.clone()), None),
            (None, Start::From(p)) => (Some(p.clone()), None),
            (None, Start::Rewind(n)) => (None, Some(*n)),
            (None, Start::Now) => (None, None),
        }
    }

    /// Mark every attachment as not part of a connection (the connection ended).
    pub fn all_down(&mut self) {
        for a in self.map.values_mut() {
            a.live = false;
        }
    }

    /// Mark every attachment as included in the connection (WebSocket: attach frames sent).
    pub fn set_live(&mut self, channel: &str) {
        if let Some(a) = self.map.get_mut(channel) {
            a.live = true;
        }
    }

    /// Plan an SSE or long-poll request and mark its channels live. Channels with a position
    /// (or asked to start from one) resume with `from`; of the channels starting fresh, one
    /// request can only carry one `rewind`, so those with another start wait for the next
    /// request ([`Attachments::waiting`] tells).
    pub fn plan(&mut self) -> Request {
        let fresh = |a: &Attachment| a.position.is_none() && !matches!(a.start, Start::From(_));
        let now_wanted = self
            .map
            .values()
            .any(|a| fresh(a) && matches!(a.start, Start::Now));
        let rewind = if now_wanted {
            None
        } else {
            self.map.values().find(|a| fresh(a)).and_then(|a| match a {
                Attachment {
                    start: Start::Rewind(n),
                    ..
                } => Some(*n),
                _ => None,
            })
        };
        let mut request = Request {
            rewind,
            ..Request::default()
        };
        for (name, a) in self.map.iter_mut() {
            let (from, r) = Self::attach_args(a);
            a.live = match (&from, r) {
                (Some(p), _) => {
                    request.from.push((name.clone(), p.clone()));
                    true
                }
                (None, r) => r == rewind,
            };
            if a.live {
                request.channels.push(name.clone());
            }
        }
        request
    }

    /// Whether some attachment waits for a later request (see [`Attachments::plan`]).
    pub fn waiting(&self) -> bool {
        self.map.values().any(|a| !a.live)
    }

    /// Whether some attachment of the connection still waits for its first `attached`.
    pub fn unconfirmed(&self) -> bool {
        self.map.values().any(|a| a.live && a.confirm.is_some())
    }

    /// Whether every attachment of the connection has been attached by the server.
    pub fn all_confirmed(&self) -> bool {
        self.map
            .values()
            .all(|a| !a.live || (a.confirm.is_none() && a.position.is_some()))
    }

    /// The server attached `channel`. Records the position, reports lost continuity, and
    /// completes the application's `attach` call the first time.
    pub fn on_attached(
        &mut self,
        channel: &str,
        epoch: String,
        serial: u64,
        resumed: bool,
        reason: Option<ContinuityLost>,
    ) {
        let Some(a) = self.map.get_mut(channel) else {
            return;
        };
        let position = Position { epoch, serial };
        let attach_point = match reason {
            Some(reason) if !resumed => {
                push(
                    a,
                    Item::Event(Event::ContinuityLost {
                        channel: channel.to_owned(),
                        reason,
                        position: position.clone(),
                    }),
                );
                None
            }
            _ => {
                push(a, Item::Attached(position.clone()));
                Some(position.clone())
            }
        };
        a.position = Some(position);
        if let Some(confirm) = a.confirm.take() {
            let _ = confirm.send(Ok(attach_point));
        }
        self.note(channel);
    }

    /// A message arrived. Dropped when its serial is not above the last one delivered, or when
    /// its channel is not attached (any more).
    pub fn on_message(&mut self, message: MessageFrame) {
        // The name borrowed from the map, so the usual delivery copies nothing.
        let only = message.channel.as_str();
        let Some((channel, a)) = self
            .map
            .range_mut::<str, _>((Bound::Included(only), Bound::Included(only)))
            .next()
        else {
            return;
        };
        let Some(position) = a.position.as_mut() else {
            return; // not attached yet: a leftover of an earlier attachment
        };
        if message.serial <= position.serial {
            Counters::add(&self.counters.duplicates_dropped, 1);
            return;
        }
        position.serial = message.serial;
        Counters::add(&self.counters.messages_delivered, 1);
        push(a, Item::Event(Event::Message(message)));
        if !a.backlog.is_empty() && !self.backlogged.contains(channel) {
            self.backlogged.insert(channel.clone());
        }
        if a.gone && !self.gone.contains(channel) {
            self.gone.insert(channel.clone());
        }
    }

    /// The server refused or dropped `channel`: the application's `attach` fails, or the
    /// subscription yields the error and ends.
    pub fn fail(&mut self, channel: &str, error: Error) {
        self.backlogged.remove(channel);
        self.gone.remove(channel);
        if let Some(a) = self.map.remove(channel) {
            retire(a, Some(error));
        }
    }

    /// End every subscription, with `error` (a fatal error) or without (closed).
    pub fn end_all(&mut self, error: Option<&Arc<Error>>) {
        self.backlogged.clear();
        self.gone.clear();
        for (_, a) in std::mem::take(&mut self.map) {
            let e = error.map(shared_error);
            retire(a, e);
        }
    }

    /// Record what a delivery to `channel` left behind: a backlog, or a dropped subscription.
    fn note(&mut self, channel: &str) {
        if let Some(a) = self.map.get(channel) {
            if !a.backlog.is_empty() {
                self.backlogged.insert(channel.to_owned());
            }
            if a.gone {
                self.gone.insert(channel.to_owned());
            }
        }
    }

    /// Channels found with a dropped subscription while delivering (normally the dropped
    /// subscription's detach command comes first); they are removed.
    pub fn take_gone(&mut self) -> Vec<String> {
        if self.gone.is_empty() {
            return Vec::new();
        }
        let gone: Vec<String> = std::mem::take(&mut self.gone).into_iter().collect();
        for c in &gone {
            self.map.remove(c);
            self.backlogged.remove(c);
        }
        gone
    }

    /// Whether some delivery waits for room in a subscription's queue.
    pub fn backlogged(&self) -> bool {
        !self.backlogged.is_empty()
    }

    /// A future that resolves when the first backlogged subscription has room again; pending
    /// forever when nothing is backlogged. Owns what it needs, so it borrows nothing.
    pub fn room(&self) -> impl Future<Output = Option<String>> + Send + 'static {
        let waiting = self
            .backlogged
            .first()
            .and_then(|c| Some((c.clone(), self.map.get(c)?.events.clone())));
        async move {
            match waiting {
                None => std::future::pending().await,
                Some((channel, events)) => {
                    // Reserve and release: the slot is taken again by `drain` right away.
                    let _ = events.reserve().await;
                    Some(channel)
                }
            }
        }
    }

    /// Move as much of `channel`'s backlog as fits into its queue.
    pub fn drain(&mut self, channel: &str) {
        match self.map.get_mut(channel) {
            Some(a) => {
                drain(a);
                if a.backlog.is_empty() {
                    self.backlogged.remove(channel);
                }
                if a.gone {
                    self.gone.insert(channel.to_owned());
                }
            }
            None => {
                self.backlogged.remove(channel);
            }
        }
    }
}

/// Queue an item for a subscription, in order behind its backlog.
fn push(a: &mut Attachment, item: Item) {
    a.backlog.push_back(item);
    drain(a);
}

fn drain(a: &mut Attachment) {
    while let Some(item) = a.backlog.pop_front() {
        match a.events.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                a.backlog.push_front(item);
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                a.gone = true;
                a.backlog.clear();
                return;
            }
        }
    }
}

/// Hand an attachment's last items (and a final error) to its subscription, without making the
/// connection wait for a slow reader, then let its stream end.
fn retire(mut a: Attachment, error: Option<Error>) {
    if let Some(confirm) = a.confirm.take() {
        let _ = confirm.send(Err(error.unwrap_or(Error::Closed)));
        return;
    }
    if let Some(e) = error {
        a.backlog.push_back(Item::Failed(e));
    }
    drain(&mut a);
    if !a.backlog.is_empty() {
        let Attachment {
            events, backlog, ..
        } = a;
        tokio::spawn(async move {
            for item in backlog {
                if events.send(item).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A copy of a shared fatal error for one subscription.
fn shared_error(e: &Arc<Error>) -> Error {
    Error::Stopped(e.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, serial: u64) -> MessageFrame {
        MessageFrame {
            channel: channel.into(),
            serial,
            id: None,
            name: None,
            data: Some(serde_json::value::to_raw_value(&serial).unwrap()),
            headers: None,
            timestamp: 0,
        }
    }

    fn attach(
        atts: &mut Attachments,
        channel: &str,
        start: Start,
        capacity: usize,
    ) -> (
        mpsc::Receiver<Item>,
        tokio::sync::oneshot::Receiver<Result<Option<Position>, Error>>,
    ) {
        let (tx, rx) = mpsc::channel(capacity);
        let (ctx, crx) = tokio::sync::oneshot::channel();
        atts.insert(channel.into(), 1, start, tx, ctx).ok().unwrap();
        (rx, crx)
    }

    fn serials(rx: &mut mpsc::Receiver<Item>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            if let Item::Event(Event::Message(m)) = item {
                out.push(m.serial);
            }
        }
        out
    }

    #[test]
    fn duplicates_and_replays_are_dropped() {
        let counters = Arc::new(Counters::default());
        let mut atts = Attachments::new(counters.clone());
        let (mut rx, mut confirm) = attach(&mut atts, "a", Start::Now, 16);
        atts.on_message(message("a", 1)); // before attached: ignored
        atts.on_attached("a", "e".into(), 3, false, None);
        assert!(confirm.try_recv().unwrap().is_ok());
        for s in [4, 5, 5, 3, 6, 2, 7] {
            atts.on_message(message("a", s));
        }
        assert_eq!(serials(&mut rx), vec![4, 5, 6, 7]);
        assert_eq!(counters.snapshot().duplicates_dropped, 3);
        // A reconnect resumes from 7: the server may replay nothing, or (buggy) something.
        atts.on_attached("a", "e".into(), 7, true, None);
        atts.on_message(message("a", 7));
        atts.on_message(message("a", 8));
        assert_eq!(serials(&mut rx), vec![8]);
        assert_eq!(atts.map["a"].position.as_ref().unwrap().serial, 8);
    }

    #[test]
    fn continuity_lost_is_an_event_and_moves_the_position() {
        let mut atts = Attachments::new(Default::default());
        let (mut rx, _c) = attach(&mut atts, "a", Start::Now, 16);
        atts.on_attached("a", "e1".into(), 0, false, None);
        atts.on_message(message("a", 1));
        atts.on_attached(
            "a",
            "e2".into(),
            10,
            false,
            Some(ContinuityLost::EpochChanged),
        );
        let _ = rx.try_recv(); // attached
        let _ = rx.try_recv(); // message 1
        match rx.try_recv().unwrap() {
            Item::Event(Event::ContinuityLost {
                reason, position, ..
            }) => {
                assert_eq!(reason, ContinuityLost::EpochChanged);
                assert_eq!(position.epoch, "e2");
                assert_eq!(position.serial, 10);
            }
            other => panic!("{other:?}"),
        }
        atts.on_message(message("a", 11));
        assert_eq!(serials(&mut rx), vec![11]);
    }

    #[test]
    fn a_full_queue_backlogs_in_order() {
        let mut atts = Attachments::new(Default::default());
        let (mut rx, _c) = attach(&mut atts, "a", Start::Now, 2);
        atts.on_attached("a", "e".into(), 0, false, None);
        for s in 1..=4 {
            atts.on_message(message("a", s));
        }
        assert!(atts.backlogged());
        let mut got = Vec::new();
        while atts.backlogged() || !rx.is_empty() {
            got.extend(serials(&mut rx));
            atts.drain("a");
        }
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_dropped_subscription_is_detached_at_the_next_delivery() {
        let mut atts = Attachments::new(Default::default());
        let (rx, _c) = attach(&mut atts, "a", Start::Now, 4);
        atts.on_attached("a", "e".into(), 0, false, None);
        assert!(atts.take_gone().is_empty());
        drop(rx);
        atts.on_message(message("a", 1));
        assert_eq!(atts.take_gone(), vec!["a".to_owned()]);
        assert!(atts.is_empty());
        assert!(!atts.backlogged());
    }

    #[test]
    fn plans_group_fresh_starts_by_rewind() {
        let mut atts = Attachments::new(Default::default());
        let _a = attach(&mut atts, "a", Start::Rewind(5), 4);
        let _b = attach(&mut atts, "b", Start::Rewind(2), 4);
        let _c = attach(
            &mut atts,
            "c",
            Start::From(Position {
                epoch: "e".into(),
                serial: 3,
            }),
            4,
        );
        let r = atts.plan();
        assert_eq!(r.channels, vec!["a", "c"]);
        assert_eq!(r.rewind, Some(5));
        assert_eq!(r.positions().unwrap(), "c=e:3");
        assert!(atts.waiting());
        atts.on_attached("a", "e".into(), 10, false, None);
        let r = atts.plan();
        assert_eq!(r.channels, vec!["a", "b", "c"]);
        assert_eq!(r.rewind, Some(2));
        assert_eq!(r.positions().unwrap(), "a=e:10,c=e:3");
        let _d = attach(&mut atts, "d", Start::Now, 4);
        let r = atts.plan();
        assert_eq!(r.rewind, None);
        assert_eq!(r.channels, vec!["a", "c", "d"]);
    }
}

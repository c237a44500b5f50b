//! What each subscriber received, in the order it received it: every message (channel, epoch,
//! serial, id, and the writer's key from its data) and every continuity-lost signal. Written as
//! the SDK yields each item, before the next is asked for, so a subscriber restarted from its
//! ledger's positions resumes exactly after what was recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tidings_protocol::Position;

/// Who wrote a message and its sequence number: `{"w": WRITER, "s": SEQ}` in its data. Every
/// outbox row and every publish of the soak carries one, unique across the run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The writer (`db0`, `rest1`, ...).
    pub writer: String,
    /// Its sequence number, increasing in the order the writer wrote.
    pub seq: u64,
}

impl Key {
    /// The key a message's data carries, if it is one of ours.
    pub fn of(data: &Value) -> Option<Key> {
        Some(Key {
            writer: data.get("w")?.as_str()?.to_owned(),
            seq: data.get("s")?.as_u64()?,
        })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.writer, self.seq)
    }
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub channel: String,
    pub epoch: String,
    pub serial: u64,
    pub id: Option<String>,
    pub key: Option<Key>,
}

/// One continuity-lost signal: the subscriber was at `previous` (if it had a position) and
/// delivery continues after `position`.
#[derive(Debug, Clone)]
pub struct Lost {
    pub channel: String,
    pub reason: String,
    pub previous: Option<Position>,
    pub position: Position,
}

/// One item a subscriber recorded.
#[derive(Debug, Clone)]
pub enum Record {
    Message(Delivery),
    Lost(Lost),
}

/// A subscriber's ledger: its records, its position per channel, and the errors its SDK
/// reported (a stream that failed, a client error event).
#[derive(Default)]
pub struct Ledger {
    pub records: Vec<Record>,
    pub positions: BTreeMap<String, Position>,
    pub errors: Vec<String>,
    pub messages: u64,
}

impl Ledger {
    /// A delivered message; its epoch is the subscription's.
    pub fn message(&mut self, d: Delivery) {
        self.positions.insert(
            d.channel.clone(),
            Position {
                epoch: d.epoch.clone(),
                serial: d.serial,
            },
        );
        self.messages += 1;
        self.records.push(Record::Message(d));
    }

    /// A continuity-lost signal; `previous` is the position the ledger held for the channel.
    pub fn lost(&mut self, channel: &str, reason: String, position: Position) {
        let previous = self.positions.insert(channel.to_owned(), position.clone());
        self.records.push(Record::Lost(Lost {
            channel: channel.to_owned(),
            reason,
            previous,
            position,
        }));
    }

    /// Where a channel was attached, the first time: the position to resume from if no
    /// message comes before the subscriber is dropped.
    pub fn attached(&mut self, channel: &str, position: Position) {
        self.positions.entry(channel.to_owned()).or_insert(position);
    }
}

/// A ledger shared between the tasks that fill it and the soak that reads it.
pub type Shared = Arc<Mutex<Ledger>>;

//! Change stream cursors: which entries a stream sees, the events it turns them into (shaped as
//! MongoDB documents them), resume tokens, and when a stream is invalidated.
//!
//! Resume tokens are `{_data: "<hex>"}` like MongoDB's, and just as opaque to clients. Inside:
//! the entry's cluster time, its index in its transaction, its oplog position and a kind (event,
//! invalidate, or a post-batch "high-water mark").

use bson::{doc, Bson, Document, Timestamp};

use crate::pipeline::{apply, CommandError};
use crate::store::{Entry, Op, Store};

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Event = 0,
    Invalidate = 1,
    HighWater = 2,
}

/// A decoded resume token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub ts: Timestamp,
    pub txn_index: u32,
    pub seq: u64,
    pub kind: TokenKind,
}

impl Token {
    pub fn encode(&self) -> Document {
        doc! {"_data": format!(
            "82{:08X}{:08X}{:08X}{:016X}{:02X}",
            self.ts.time, self.ts.increment, self.txn_index, self.seq, self.kind as u8
        )}
    }

    pub fn decode(token: &Bson) -> Result<Token, CommandError> {
        let bad = || {
            CommandError::new(
                260,
                "InvalidResumeToken",
                format!("invalid resume token: {token}"),
            )
        };
        let data = match token {
            Bson::Document(d) => d.get_str("_data").map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if data.len() != 44 || !data.starts_with("82") {
            return Err(bad());
        }
        let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&data[r], 16).map_err(|_| bad());
        let kind = match hex(42..44)? {
            0 => TokenKind::Event,
            1 => TokenKind::Invalidate,
            2 => TokenKind::HighWater,
            _ => return Err(bad()),
        };
        Ok(Token {
            ts: Timestamp {
                time: hex(2..10)? as u32,
                increment: hex(10..18)? as u32,
            },
            txn_index: hex(18..26)? as u32,
            seq: hex(26..42)?,
            kind,
        })
    }
}

/// What a stream watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Collection(String, String),
    Database(String),
    Cluster,
}

impl Scope {
    fn sees(&self, e: &Entry) -> bool {
        match self {
            Scope::Collection(db, coll) => &e.db == db && (&e.coll == coll),
            Scope::Database(db) => &e.db == db,
            Scope::Cluster => !matches!(e.db.as_str(), "admin" | "config" | "local"),
        }
    }

    /// Does this entry end the stream (after its own event)?
    fn invalidated_by(&self, e: &Entry) -> bool {
        match self {
            Scope::Collection(..) => matches!(e.op, Op::Drop | Op::Rename { .. }),
            Scope::Database(_) => matches!(e.op, Op::DropDatabase),
            Scope::Cluster => false,
        }
    }

    /// The namespace cursor replies name.
    pub fn cursor_ns(&self) -> String {
        match self {
            Scope::Collection(db, coll) => format!("{db}.{coll}"),
            Scope::Database(db) => format!("{db}.$cmd.aggregate"),
            Scope::Cluster => "admin.$cmd.aggregate".to_owned(),
        }
    }
}

/// An open change stream.
#[derive(Debug, Clone)]
pub struct ChangeCursor {
    pub scope: Scope,
    /// Entries up to this sequence number have been delivered (or skipped).
    pub after_seq: u64,
    /// An invalidate to deliver first (resumed with `resumeAfter` the event that caused it).
    pub pending_invalidate: Option<Document>,
    pub full_document: String,
    pub before_change: String,
    pub stages: Vec<Document>,
    pub batch_size: Option<usize>,
    /// The stream delivered its invalidate: the cursor is gone.
    pub closed: bool,
}

/// Most events in one batch when the client sets no `batchSize`.
pub const DEFAULT_BATCH: usize = 2000;

/// One batch of a stream: events and the post-batch resume token.
pub struct StreamBatch {
    pub events: Vec<Document>,
    pub post_batch_token: Document,
}

fn ns(e: &Entry) -> Document {
    if e.coll.is_empty() {
        doc! {"db": &e.db}
    } else {
        doc! {"db": &e.db, "coll": &e.coll}
    }
}

fn event(c: &ChangeCursor, store: &Store, e: &Entry) -> Result<Document, CommandError> {
    let token = Token {
        ts: e.ts,
        txn_index: e.txn_index,
        seq: e.seq,
        kind: TokenKind::Event,
    };
    let op_type = match &e.op {
        Op::Insert { .. } => "insert",
        Op::Update { .. } => "update",
        Op::Replace { .. } => "replace",
        Op::Delete { .. } => "delete",
        Op::Drop => "drop",
        Op::Rename { .. } => "rename",
        Op::DropDatabase => "dropDatabase",
    };
    let mut d = doc! {
        "_id": token.encode(),
        "operationType": op_type,
        "clusterTime": e.ts,
        "wallTime": e.wall,
    };
    let post_image = |after: &Document, key: &Bson| -> Option<Bson> {
        match c.full_document.as_str() {
            "updateLookup" => Some(
                store
                    .find_by_id(&e.db, &e.coll, key)
                    .map_or(Bson::Null, Bson::Document),
            ),
            "whenAvailable" | "required" => Some(Bson::Document(after.clone())),
            _ => None,
        }
    };
    let pre_image = |before: &Document| -> Option<Bson> {
        match c.before_change.as_str() {
            "whenAvailable" | "required" => Some(Bson::Document(before.clone())),
            _ => None,
        }
    };
    match &e.op {
        Op::Insert { doc } => {
            d.insert("fullDocument", doc.clone());
            d.insert("ns", ns(e));
            d.insert(
                "documentKey",
                doc! {"_id": doc.get("_id").cloned().unwrap_or(Bson::Null)},
            );
        }
        Op::Update {
            key,
            updated,
            removed,
            before,
            after,
        } => {
            d.insert("ns", ns(e));
            d.insert("documentKey", doc! {"_id": key.clone()});
            d.insert(
                "updateDescription",
                doc! {
                    "updatedFields": updated.clone(),
                    "removedFields": removed.iter().map(|r| Bson::String(r.clone())).collect::<Vec<_>>(),
                    "truncatedArrays": [],
                },
            );
            if let Some(full) = post_image(after, key) {
                d.insert("fullDocument", full);
            }
            if let Some(pre) = pre_image(before) {
                d.insert("fullDocumentBeforeChange", pre);
            }
        }
        Op::Replace { key, before, after } => {
            d.insert("fullDocument", after.clone());
            d.insert("ns", ns(e));
            d.insert("documentKey", doc! {"_id": key.clone()});
            if let Some(pre) = pre_image(before) {
                d.insert("fullDocumentBeforeChange", pre);
            }
        }
        Op::Delete { key, before } => {
            d.insert("ns", ns(e));
            d.insert("documentKey", doc! {"_id": key.clone()});
            if let Some(pre) = pre_image(before) {
                d.insert("fullDocumentBeforeChange", pre);
            }
        }
        Op::Drop | Op::DropDatabase => {
            d.insert("ns", ns(e));
        }
        Op::Rename { to_db, to_coll } => {
            d.insert("ns", ns(e));
            d.insert("to", doc! {"db": to_db, "coll": to_coll});
        }
    }
    if let Some(txn) = &e.txn {
        d.insert("lsid", txn.lsid.clone());
        d.insert("txnNumber", txn.txn_number);
    }
    Ok(d)
}

fn checked(stages: &[Document], ev: Document) -> Result<Option<Document>, CommandError> {
    let id = ev.get("_id").cloned();
    let out = apply(stages, ev)?;
    if let Some(out) = &out {
        if out.get("_id") != id.as_ref() {
            let mut err = CommandError::new(
                280,
                "ChangeStreamFatalError",
                "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
            );
            err.labels.push("NonResumableChangeStreamError".into());
            return Err(err);
        }
    }
    Ok(out)
}

impl ChangeCursor {
    /// The events available now after the cursor's position; advances the position.
    pub fn next_batch(&mut self, store: &Store) -> Result<StreamBatch, CommandError> {
        let limit = self.batch_size.filter(|b| *b > 0).unwrap_or(DEFAULT_BATCH);
        let mut events = Vec::new();
        let mut last_event_token: Option<Document> = None;
        if self.after_seq + 1 < store.first_retained {
            return Err(history_lost());
        }
        if let Some(inv) = self.pending_invalidate.take() {
            self.closed = true;
            return Ok(StreamBatch {
                post_batch_token: inv.get_document("_id").cloned().unwrap_or_default(),
                events: vec![inv],
            });
        }
        for e in store.entries_after(self.after_seq) {
            if self.closed || events.len() >= limit {
                break;
            }
            self.after_seq = e.seq;
            last_event_token = None;
            if !self.scope.sees(e) {
                continue;
            }
            if let Some(ev) = checked(&self.stages, event(self, store, e)?)? {
                last_event_token = ev.get_document("_id").ok().cloned();
                events.push(ev);
            }
            if self.scope.invalidated_by(e) {
                let inv = self.invalidate(e);
                if let Some(inv) = checked(&self.stages, inv)? {
                    last_event_token = inv.get_document("_id").ok().cloned();
                    events.push(inv);
                }
                self.closed = true;
            }
        }
        // A cursor resumed with `startAfter` an invalidate starts right after it; one resumed
        // with `resumeAfter` the invalidate gets it again (handled at open).
        let post_batch_token = last_event_token.unwrap_or_else(|| {
            let ts = store
                .entries_after(self.after_seq.saturating_sub(1))
                .next()
                .filter(|e| e.seq == self.after_seq)
                .map_or(store.last_ts(), |e| e.ts);
            let kind = if self.closed {
                TokenKind::Invalidate
            } else {
                TokenKind::HighWater
            };
            Token {
                ts,
                txn_index: 0,
                seq: self.after_seq,
                kind,
            }
            .encode()
        });
        Ok(StreamBatch {
            events,
            post_batch_token,
        })
    }

    /// The invalidate event `e` causes for this stream, if it ends it.
    pub fn invalidate_for(&self, e: &Entry) -> Option<Document> {
        self.scope.invalidated_by(e).then(|| self.invalidate(e))
    }

    fn invalidate(&self, e: &Entry) -> Document {
        let token = Token {
            ts: e.ts,
            txn_index: e.txn_index,
            seq: e.seq,
            kind: TokenKind::Invalidate,
        };
        doc! {
            "_id": token.encode(),
            "operationType": "invalidate",
            "clusterTime": e.ts,
            "wallTime": e.wall,
        }
    }
}

/// Error 286, as MongoDB sends it when the resume point fell off the oplog.
pub fn history_lost() -> CommandError {
    let mut err = CommandError::new(
        286,
        "ChangeStreamHistoryLost",
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    );
    err.labels.push("NonResumableChangeStreamError".into());
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = Token {
            ts: Timestamp {
                time: 1_700_000_000,
                increment: 7,
            },
            txn_index: 2,
            seq: 99,
            kind: TokenKind::Invalidate,
        };
        assert_eq!(Token::decode(&Bson::Document(t.encode())).unwrap(), t);
        assert!(Token::decode(&Bson::Document(doc! {"_data": "00"})).is_err());
    }
}

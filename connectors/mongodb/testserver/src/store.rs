//! The server's data: collections keyed by `_id`, and the oplog every write appends to, with
//! cluster times that strictly increase (`Timestamp { time: unix seconds, increment }`; one
//! transaction shares one time, as MongoDB's `applyOps` entry does).

use std::collections::{BTreeMap, VecDeque};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, Timestamp};

use crate::order::Key;
use crate::pipeline::{remove_path, set_path, CommandError};

/// What one oplog entry did.
#[derive(Debug, Clone)]
pub enum Op {
    Insert {
        doc: Document,
    },
    Update {
        key: Bson,
        updated: Document,
        removed: Vec<String>,
        before: Document,
        after: Document,
    },
    Replace {
        key: Bson,
        before: Document,
        after: Document,
    },
    Delete {
        key: Bson,
        before: Document,
    },
    Drop,
    Rename {
        to_db: String,
        to_coll: String,
    },
    DropDatabase,
}

/// The transaction an entry belongs to.
#[derive(Debug, Clone)]
pub struct TxnInfo {
    pub lsid: Document,
    pub txn_number: i64,
}

/// One oplog entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the oplog; strictly increasing from 1.
    pub seq: u64,
    pub ts: Timestamp,
    pub wall: DateTime,
    pub db: String,
    /// Empty for database-level entries (`dropDatabase`).
    pub coll: String,
    pub op: Op,
    pub txn: Option<TxnInfo>,
    /// Index of the operation inside its transaction (0 outside one).
    pub txn_index: u32,
}

type Collection = BTreeMap<Key, Document>;

/// Collections and the oplog.
#[derive(Debug)]
pub struct Store {
    dbs: BTreeMap<String, BTreeMap<String, Collection>>,
    pub oplog: VecDeque<Entry>,
    /// Sequence number the next entry gets.
    pub next_seq: u64,
    /// Oldest sequence number still in the oplog (== `next_seq` when truncated to nothing).
    pub first_retained: u64,
    last_ts: Timestamp,
    txn_counter: i64,
    lsid: Document,
}

/// Split `db.coll`.
pub fn split_ns(ns: &str) -> (String, String) {
    match ns.split_once('.') {
        Some((db, coll)) if !db.is_empty() && !coll.is_empty() => (db.to_owned(), coll.to_owned()),
        _ => panic!("namespace {ns:?} must look like db.collection"),
    }
}

/// A write staged for one transaction.
#[derive(Debug, Clone)]
pub enum Write {
    Insert(Document),
    Update(Bson, Document),
    Replace(Bson, Document),
    Delete(Bson),
}

fn apply_update(
    doc: &Document,
    update: &Document,
) -> Result<(Document, Document, Vec<String>), CommandError> {
    let mut after = doc.clone();
    let mut updated = Document::new();
    let mut removed = Vec::new();
    for (op, fields) in update {
        let Bson::Document(fields) = fields else {
            return Err(CommandError::bad_value(format!("{op} needs a document")));
        };
        for (path, value) in fields {
            if path == "_id" || path.starts_with("_id.") {
                return Err(CommandError::new(
                    66,
                    "ImmutableField",
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
            match op.as_str() {
                "$set" => {
                    set_path(&mut after, path, value.clone());
                    updated.insert(path, value.clone());
                }
                "$unset" => {
                    if remove_path(&mut after, path) {
                        removed.push(path.clone());
                    }
                }
                "$inc" => {
                    let cur = crate::pipeline::get_path(&after, path).cloned();
                    let new = match (cur, value.clone()) {
                        (None, v) => v,
                        (Some(Bson::Int32(a)), Bson::Int32(b)) => Bson::Int32(a + b),
                        (Some(Bson::Int64(a)), Bson::Int64(b)) => Bson::Int64(a + b),
                        (Some(Bson::Int32(a)), Bson::Int64(b))
                        | (Some(Bson::Int64(b)), Bson::Int32(a)) => Bson::Int64(i64::from(a) + b),
                        (Some(Bson::Double(a)), Bson::Double(b)) => Bson::Double(a + b),
                        _ => {
                            return Err(CommandError::new(
                                14,
                                "TypeMismatch",
                                "Cannot apply $inc to a value of non-numeric type",
                            ))
                        }
                    };
                    set_path(&mut after, path, new.clone());
                    updated.insert(path, new);
                }
                other => {
                    return Err(CommandError::new(
                        9,
                        "FailedToParse",
                        format!("Unknown modifier: {other}"),
                    ))
                }
            }
        }
    }
    Ok((after, updated, removed))
}

impl Store {
    pub fn new() -> Self {
        Store {
            dbs: BTreeMap::new(),
            oplog: VecDeque::new(),
            next_seq: 1,
            first_retained: 1,
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            txn_counter: 0,
            lsid: doc! {
                "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: ObjectId::new().bytes().iter().chain(&[0u8; 4]).copied().collect() },
                "uid": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0x5a; 32] },
            },
        }
    }

    /// The latest cluster time handed out.
    pub fn last_ts(&self) -> Timestamp {
        self.last_ts
    }

    /// Sequence number of the newest entry (0 when none was ever written).
    pub fn head_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn tick(&mut self) -> Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        self.last_ts = if now > self.last_ts.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last_ts.time,
                increment: self.last_ts.increment + 1,
            }
        };
        self.last_ts
    }

    fn push(
        &mut self,
        ts: Timestamp,
        db: &str,
        coll: &str,
        op: Op,
        txn: Option<TxnInfo>,
        txn_index: u32,
    ) {
        let entry = Entry {
            seq: self.next_seq,
            ts,
            wall: DateTime::now(),
            db: db.to_owned(),
            coll: coll.to_owned(),
            op,
            txn,
            txn_index,
        };
        self.next_seq += 1;
        self.oplog.push_back(entry);
    }

    fn coll_mut(&mut self, db: &str, coll: &str) -> &mut Collection {
        self.dbs
            .entry(db.to_owned())
            .or_default()
            .entry(coll.to_owned())
            .or_default()
    }

    /// Current documents of a collection, in `_id` order.
    pub fn documents(&self, db: &str, coll: &str) -> Vec<Document> {
        self.dbs
            .get(db)
            .and_then(|d| d.get(coll))
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The collection, if it exists.
    pub fn collection(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db)?.get(coll)
    }

    /// Names of the collections of `db`.
    pub fn collection_names(&self, db: &str) -> Vec<String> {
        self.dbs
            .get(db)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Names of the databases.
    pub fn database_names(&self) -> Vec<String> {
        self.dbs.keys().cloned().collect()
    }

    /// Look a document up by `_id`.
    pub fn find_by_id(&self, db: &str, coll: &str, id: &Bson) -> Option<Document> {
        self.collection(db, coll)?.get(&Key(id.clone())).cloned()
    }

    fn write_one(
        &mut self,
        ts: Timestamp,
        db: &str,
        coll: &str,
        write: Write,
        txn: Option<TxnInfo>,
        index: u32,
    ) -> Result<Bson, CommandError> {
        match write {
            Write::Insert(mut doc) => {
                if !doc.contains_key("_id") {
                    let mut with_id = doc! {"_id": ObjectId::new()};
                    with_id.extend(doc);
                    doc = with_id;
                }
                let id = doc.get("_id").cloned().expect("has _id");
                let c = self.coll_mut(db, coll);
                if c.contains_key(&Key(id.clone())) {
                    return Err(CommandError::new(11000, "DuplicateKey", format!("E11000 duplicate key error collection: {db}.{coll} index: _id_ dup key: {{ _id: {id} }}")));
                }
                c.insert(Key(id.clone()), doc.clone());
                self.push(ts, db, coll, Op::Insert { doc }, txn, index);
                Ok(id)
            }
            Write::Update(id, update) => {
                let before = self.find_by_id(db, coll, &id).ok_or_else(|| {
                    CommandError::bad_value(format!("no document with _id {id} in {db}.{coll}"))
                })?;
                let (after, updated, removed) = apply_update(&before, &update)?;
                self.coll_mut(db, coll)
                    .insert(Key(id.clone()), after.clone());
                self.push(
                    ts,
                    db,
                    coll,
                    Op::Update {
                        key: id.clone(),
                        updated,
                        removed,
                        before,
                        after,
                    },
                    txn,
                    index,
                );
                Ok(id)
            }
            Write::Replace(id, mut doc) => {
                let before = self.find_by_id(db, coll, &id).ok_or_else(|| {
                    CommandError::bad_value(format!("no document with _id {id} in {db}.{coll}"))
                })?;
                doc.remove("_id");
                let mut after = doc! {"_id": id.clone()};
                after.extend(doc);
                self.coll_mut(db, coll)
                    .insert(Key(id.clone()), after.clone());
                self.push(
                    ts,
                    db,
                    coll,
                    Op::Replace {
                        key: id.clone(),
                        before,
                        after,
                    },
                    txn,
                    index,
                );
                Ok(id)
            }
            Write::Delete(id) => {
                let before = self
                    .coll_mut(db, coll)
                    .remove(&Key(id.clone()))
                    .ok_or_else(|| {
                        CommandError::bad_value(format!("no document with _id {id} in {db}.{coll}"))
                    })?;
                self.push(
                    ts,
                    db,
                    coll,
                    Op::Delete {
                        key: id.clone(),
                        before,
                    },
                    txn,
                    index,
                );
                Ok(id)
            }
        }
    }

    /// One write outside a transaction.
    pub fn write(&mut self, db: &str, coll: &str, write: Write) -> Result<Bson, CommandError> {
        let ts = self.tick();
        self.write_one(ts, db, coll, write, None, 0)
    }

    /// Writes of one transaction: all or nothing, one cluster time, one `lsid` + `txnNumber`.
    pub fn transaction(
        &mut self,
        writes: Vec<(String, String, Write)>,
    ) -> Result<Vec<Bson>, CommandError> {
        // Validate against a copy first, so a failing write leaves nothing behind.
        let saved_dbs = self.dbs.clone();
        let saved_len = self.oplog.len();
        let saved_seq = self.next_seq;
        let ts = self.tick();
        self.txn_counter += 1;
        let txn = TxnInfo {
            lsid: self.lsid.clone(),
            txn_number: self.txn_counter,
        };
        let mut ids = Vec::new();
        for (index, (db, coll, w)) in writes.into_iter().enumerate() {
            match self.write_one(ts, &db, &coll, w, Some(txn.clone()), index as u32) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.dbs = saved_dbs;
                    self.oplog.truncate(saved_len);
                    self.next_seq = saved_seq;
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }

    /// Drop a collection (one `drop` entry).
    pub fn drop_collection(&mut self, db: &str, coll: &str) {
        if let Some(d) = self.dbs.get_mut(db) {
            d.remove(coll);
        }
        let ts = self.tick();
        self.push(ts, db, coll, Op::Drop, None, 0);
    }

    /// Rename a collection (one `rename` entry).
    pub fn rename_collection(&mut self, db: &str, coll: &str, to_db: &str, to_coll: &str) {
        let docs = self
            .dbs
            .get_mut(db)
            .and_then(|d| d.remove(coll))
            .unwrap_or_default();
        self.dbs
            .entry(to_db.to_owned())
            .or_default()
            .insert(to_coll.to_owned(), docs);
        let ts = self.tick();
        self.push(
            ts,
            db,
            coll,
            Op::Rename {
                to_db: to_db.to_owned(),
                to_coll: to_coll.to_owned(),
            },
            None,
            0,
        );
    }

    /// Drop a database: a `drop` entry per collection, then `dropDatabase`.
    pub fn drop_database(&mut self, db: &str) {
        for coll in self.collection_names(db) {
            self.drop_collection(db, &coll);
        }
        self.dbs.remove(db);
        let ts = self.tick();
        self.push(ts, db, "", Op::DropDatabase, None, 0);
    }

    /// Forget every entry written so far: resuming from before now fails with error 286.
    pub fn truncate_history(&mut self) {
        self.oplog.clear();
        self.first_retained = self.next_seq;
    }

    /// Entries after `seq`, oldest first.
    pub fn entries_after(&self, seq: u64) -> impl Iterator<Item = &Entry> {
        let skip = seq.saturating_add(1).saturating_sub(self.first_retained) as usize;
        self.oplog.iter().skip(skip)
    }

    /// The newest entry whose cluster time is before `ts` (for `startAtOperationTime`).
    pub fn seq_before(&self, ts: Timestamp) -> u64 {
        self.oplog
            .iter()
            .take_while(|e| (e.ts.time, e.ts.increment) < (ts.time, ts.increment))
            .last()
            .map_or(self.first_retained - 1, |e| e.seq)
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

//! Connections and commands: the handshake, change stream `aggregate`, `getMore`, `killCursors`,
//! `endSessions`, `find`, `count`, `listCollections`, `listDatabases`, `ping`, `buildInfo`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::order::Key;
use crate::pipeline::{matches, CommandError};
use crate::store::Store;
use crate::stream::{history_lost, ChangeCursor, Scope, Token, TokenKind};
use crate::wire::{self, Request, MORE_TO_COME};

/// The highest wire version announced (MongoDB 7.0).
pub const MAX_WIRE_VERSION: i32 = 21;
/// `getMore` on a change stream waits this long for events when the client sets no `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_millis(1000);
/// `find` batch size when the client sets none.
const DEFAULT_FIND_BATCH: usize = 101;

/// A server-side cursor.
#[derive(Debug)]
pub enum Cursor {
    Change(ChangeCursor),
    Find {
        ns: String,
        docs: VecDeque<Document>,
        batch_size: usize,
    },
}

/// Faults to inject into the next change stream `getMore`s.
#[derive(Debug, Default)]
pub struct Faults {
    /// Close the connection instead of answering, this many times.
    pub drop_get_mores: u32,
    /// Never answer and keep the connection open (nothing more is read from it either), this
    /// many times: a peer that froze, or a NAT that dropped the connection's state.
    pub stall_get_mores: u32,
    /// Answer with these errors, in order.
    pub fail_get_mores: VecDeque<CommandError>,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
pub struct State {
    pub store: Store,
    pub cursors: HashMap<i64, Cursor>,
    pub faults: Faults,
    /// Commands received, by name.
    pub commands: HashMap<String, u64>,
    /// Every `$changeStream` stage received, in order.
    pub change_streams: Vec<Document>,
}

/// State shared by the API and every connection.
#[derive(Debug)]
pub struct Shared {
    pub state: Mutex<State>,
    /// Carries the newest oplog sequence number; `getMore`s wait on it.
    pub head: watch::Sender<u64>,
    pub set_name: String,
    pub me: String,
    next_cursor: AtomicI64,
    election_id: ObjectId,
}

impl Shared {
    pub fn new(me: String) -> Self {
        Shared {
            state: Mutex::new(State::default()),
            head: watch::channel(0).0,
            set_name: "rs0".into(),
            me,
            next_cursor: AtomicI64::new(0x1000),
            election_id: ObjectId::new(),
        }
    }

    /// Tell waiting streams something was written.
    pub fn notify(&self, head: u64) {
        self.head.send_replace(head);
    }
}

/// Accept connections until the task is aborted.
pub async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    let mut conn_id = 0i32;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conn_id += 1;
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(stream, shared.clone(), conn_id));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mongo test server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

enum Action {
    Reply(Document),
    Close,
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, conn_id: i32) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let req = match wire::read_request(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(?e, "mongo test server: closing connection");
                return;
            }
        };
        let (bytes, silent) = match req {
            Request::Msg {
                request_id,
                flags,
                command,
            } => match handle(&shared, conn_id, command, false).await {
                Action::Close => return,
                Action::Reply(r) => (wire::encode_msg(request_id, &r), flags & MORE_TO_COME != 0),
            },
            Request::Query {
                request_id,
                collection,
                mut command,
            } => {
                if !collection.ends_with(".$cmd") {
                    let err = doc! {"$err": "OP_QUERY is only served for commands", "code": 352, "ok": 0.0};
                    (wire::encode_reply(request_id, &err), false)
                } else {
                    let db = collection.trim_end_matches(".$cmd").to_owned();
                    command.insert("$db", db);
                    match handle(&shared, conn_id, command, true).await {
                        Action::Close => return,
                        Action::Reply(r) => (wire::encode_reply(request_id, &r), false),
                    }
                }
            }
        };
        if !silent && wire::write_all(&mut wr, &bytes).await.is_err() {
            return;
        }
    }
}

fn error_reply(e: &CommandError) -> Document {
    let mut d = doc! {"ok": 0.0, "errmsg": &e.message, "code": e.code, "codeName": e.code_name};
    if !e.labels.is_empty() {
        d.insert(
            "errorLabels",
            e.labels
                .iter()
                .map(|l| Bson::String(l.clone()))
                .collect::<Vec<_>>(),
        );
    }
    d
}

async fn handle(shared: &Arc<Shared>, conn_id: i32, command: Document, legacy: bool) -> Action {
    let Some(name) = command.keys().next().cloned() else {
        return Action::Reply(error_reply(&CommandError::bad_value("empty command")));
    };
    *shared
        .state
        .lock()
        .commands
        .entry(name.clone())
        .or_default() += 1;
    let db = command.get_str("$db").unwrap_or("admin").to_owned();
    let result = match name.as_str() {
        "hello" | "isMaster" | "ismaster" => Ok(hello(shared, conn_id, legacy || name != "hello")),
        "ping" | "endSessions" => Ok(Document::new()),
        "buildInfo" | "buildinfo" => Ok(doc! {"version": "7.0.0", "versionArray": [7, 0, 0, 0], "maxBsonObjectSize": 16_777_216}),
        "aggregate" => aggregate(shared, &db, &command),
        "getMore" => match get_more(shared, &command).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => return Action::Close,
            Err(e) => Err(e),
        },
        "killCursors" => kill_cursors(shared, &command),
        "find" => find(shared, &db, &command),
        "count" => count(shared, &db, &command),
        "listCollections" => list_collections(shared, &db, &command),
        "listDatabases" => Ok(list_databases(shared)),
        other => Err(CommandError::new(59, "CommandNotFound", format!("no such command: '{other}' (the Tidings MongoDB test server serves the handshake, change streams, find, count and listings; write through its Rust API)"))),
    };
    let op_time = shared.state.lock().store.last_ts();
    let mut reply = match result {
        Ok(mut d) => {
            d.insert("ok", 1.0);
            d
        }
        Err(e) => error_reply(&e),
    };
    reply.insert("operationTime", op_time);
    Action::Reply(reply)
}

fn hello(shared: &Shared, conn_id: i32, legacy: bool) -> Document {
    let ts = shared.state.lock().store.last_ts();
    let now = DateTime::now();
    let mut d = doc! {"helloOk": true};
    d.insert(
        if legacy {
            "ismaster"
        } else {
            "isWritablePrimary"
        },
        true,
    );
    d.extend(doc! {
        "maxBsonObjectSize": 16_777_216,
        "maxMessageSizeBytes": wire::MAX_MESSAGE_BYTES as i32,
        "maxWriteBatchSize": 100_000,
        "localTime": now,
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": conn_id,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
        "setName": &shared.set_name,
        "setVersion": 1,
        "hosts": [&shared.me],
        "primary": &shared.me,
        "me": &shared.me,
        "secondary": false,
        "electionId": shared.election_id,
        "lastWrite": {
            "opTime": {"ts": ts, "t": 1i64},
            "lastWriteDate": now,
            "majorityOpTime": {"ts": ts, "t": 1i64},
            "majorityWriteDate": now,
        },
    });
    d
}

fn int(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) => Some(*d as i64),
        _ => None,
    }
}

fn cursor_reply(
    id: i64,
    ns: &str,
    first: bool,
    batch: Vec<Document>,
    pbrt: Option<Document>,
) -> Document {
    let mut c = Document::new();
    c.insert(if first { "firstBatch" } else { "nextBatch" }, batch);
    if let Some(t) = pbrt {
        c.insert("postBatchResumeToken", t);
    }
    c.insert("id", id);
    c.insert("ns", ns);
    doc! {"cursor": c}
}

fn aggregate(shared: &Shared, db: &str, cmd: &Document) -> Result<Document, CommandError> {
    let pipeline: Vec<Document> = cmd
        .get_array("pipeline")
        .map_err(|_| {
            CommandError::new(
                9,
                "FailedToParse",
                "'pipeline' option must be specified as an array",
            )
        })?
        .iter()
        .map(|s| match s {
            Bson::Document(d) => Ok(d.clone()),
            _ => Err(CommandError::new(
                14,
                "TypeMismatch",
                "Each element of the 'pipeline' array must be an object",
            )),
        })
        .collect::<Result<_, _>>()?;
    let Some(spec) = pipeline
        .first()
        .and_then(|s| s.get_document("$changeStream").ok())
        .cloned()
    else {
        return Err(CommandError::new(40324, "Location40324", "the Tidings MongoDB test server only runs change stream aggregations ($changeStream first)"));
    };
    crate::pipeline::validate(&pipeline[1..])?;
    let mut full_document = "default".to_owned();
    let mut before_change = "off".to_owned();
    let mut resume_after = None;
    let mut start_after = None;
    let mut start_at = None;
    let mut all_changes = false;
    for (k, v) in &spec {
        match (k.as_str(), v) {
            ("fullDocument", Bson::String(s))
                if ["default", "updateLookup", "whenAvailable", "required"]
                    .contains(&s.as_str()) =>
            {
                full_document = s.clone()
            }
            ("fullDocumentBeforeChange", Bson::String(s))
                if ["off", "whenAvailable", "required"].contains(&s.as_str()) =>
            {
                before_change = s.clone()
            }
            ("resumeAfter", t) => resume_after = Some(Token::decode(t)?),
            ("startAfter", t) => start_after = Some(Token::decode(t)?),
            ("startAtOperationTime", Bson::Timestamp(ts)) => start_at = Some(*ts),
            ("allChangesForCluster", Bson::Boolean(b)) => all_changes = *b,
            ("showExpandedEvents", Bson::Boolean(_)) => {}
            ("fullDocument" | "fullDocumentBeforeChange", other) => {
                return Err(CommandError::bad_value(format!(
                    "unsupported value for $changeStream.{k}: {other}"
                )))
            }
            (other, _) => {
                return Err(CommandError::new(
                    40415,
                    "Location40415",
                    format!("BSON field '$changeStream.{other}' is an unknown field."),
                ))
            }
        }
    }
    if [
        resume_after.is_some(),
        start_after.is_some(),
        start_at.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count()
        > 1
    {
        return Err(CommandError::new(
            40674,
            "Location40674",
            "Only one type of resume option is allowed, but multiple were found.",
        ));
    }
    let scope = match cmd.get("aggregate") {
        Some(Bson::String(coll)) => Scope::Collection(db.to_owned(), coll.clone()),
        Some(v) if int(Some(v)) == Some(1) => {
            if db == "admin" {
                if !all_changes {
                    return Err(CommandError::new(
                        73,
                        "InvalidNamespace",
                        "$changeStream may not be opened on the internal admin database",
                    ));
                }
                Scope::Cluster
            } else {
                Scope::Database(db.to_owned())
            }
        }
        _ => {
            return Err(CommandError::new(
                14,
                "TypeMismatch",
                "aggregate needs a collection name or 1",
            ))
        }
    };
    let batch_size = cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| int(c.get("batchSize")))
        .map(|b| b as usize);
    let mut state = shared.state.lock();
    state.change_streams.push(spec.clone());
    let store = &state.store;
    let mut cursor = ChangeCursor {
        scope,
        after_seq: store.head_seq(),
        pending_invalidate: None,
        full_document,
        before_change,
        stages: pipeline[1..].to_vec(),
        batch_size,
        closed: false,
    };
    if let Some(t) = resume_after {
        if t.kind == TokenKind::Invalidate {
            return Err(CommandError::new(260, "InvalidResumeToken", "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification; use 'startAfter'"));
        }
        cursor.after_seq = t.seq;
        if t.kind == TokenKind::Event {
            let caused = store
                .entries_after(t.seq.saturating_sub(1))
                .next()
                .filter(|e| e.seq == t.seq)
                .cloned();
            cursor.pending_invalidate = caused.and_then(|e| cursor.invalidate_for(&e));
        }
    } else if let Some(t) = start_after {
        cursor.after_seq = t.seq;
    } else if let Some(ts) = start_at {
        cursor.after_seq = store.seq_before(ts);
    }
    if cursor.after_seq + 1 < store.first_retained {
        return Err(history_lost());
    }
    let ts = store
        .entries_after(cursor.after_seq.saturating_sub(1))
        .next()
        .filter(|e| e.seq == cursor.after_seq)
        .map_or(store.last_ts(), |e| e.ts);
    let pbrt = Token {
        ts,
        txn_index: 0,
        seq: cursor.after_seq,
        kind: TokenKind::HighWater,
    }
    .encode();
    let ns = cursor.scope.cursor_ns();
    let id = shared.next_cursor.fetch_add(1, Ordering::Relaxed);
    state.cursors.insert(id, Cursor::Change(cursor));
    Ok(cursor_reply(id, &ns, true, Vec::new(), Some(pbrt)))
}

/// `Ok(None)`: drop the connection (an injected fault).
async fn get_more(shared: &Shared, cmd: &Document) -> Result<Option<Document>, CommandError> {
    let id = int(cmd.get("getMore"))
        .ok_or_else(|| CommandError::new(14, "TypeMismatch", "getMore needs a cursor id"))?;
    let max_time = int(cmd.get("maxTimeMS"))
        .map(|ms| Duration::from_millis(ms.max(0) as u64))
        .unwrap_or(DEFAULT_AWAIT);
    let batch_size = int(cmd.get("batchSize"))
        .filter(|b| *b > 0)
        .map(|b| b as usize);
    let deadline = tokio::time::Instant::now() + max_time;
    let mut head = shared.head.subscribe();
    loop {
        head.mark_unchanged();
        let mut stall = false;
        {
            let mut state = shared.state.lock();
            let not_found =
                || CommandError::new(43, "CursorNotFound", format!("cursor id {id} not found"));
            let Some(mut cursor) = state.cursors.remove(&id) else {
                return Err(not_found());
            };
            match &mut cursor {
                Cursor::Find {
                    ns,
                    docs,
                    batch_size: default,
                } => {
                    let n = batch_size.unwrap_or(*default).min(docs.len());
                    let batch: Vec<Document> = docs.drain(..n).collect();
                    let ns = ns.clone();
                    let done = docs.is_empty();
                    if !done {
                        state.cursors.insert(id, cursor);
                    }
                    return Ok(Some(cursor_reply(
                        if done { 0 } else { id },
                        &ns,
                        false,
                        batch,
                        None,
                    )));
                }
                Cursor::Change(_) if state.faults.stall_get_mores > 0 => {
                    state.faults.stall_get_mores -= 1;
                    state.cursors.insert(id, cursor);
                    stall = true;
                }
                Cursor::Change(c) => {
                    if state.faults.drop_get_mores > 0 {
                        state.faults.drop_get_mores -= 1;
                        state.cursors.insert(id, cursor);
                        return Ok(None);
                    }
                    if let Some(e) = state.faults.fail_get_mores.pop_front() {
                        // The server kills the cursor along with a resumable error, as a
                        // stepped-down primary does.
                        return Err(e);
                    }
                    if let Some(b) = batch_size {
                        c.batch_size = Some(b);
                    }
                    let batch = c.next_batch(&state.store)?;
                    let waited_out = tokio::time::Instant::now() >= deadline;
                    if !batch.events.is_empty() || c.closed || waited_out {
                        let ns = c.scope.cursor_ns();
                        let closed = c.closed;
                        if !closed {
                            state.cursors.insert(id, cursor);
                        }
                        return Ok(Some(cursor_reply(
                            if closed { 0 } else { id },
                            &ns,
                            false,
                            batch.events,
                            Some(batch.post_batch_token),
                        )));
                    }
                    state.cursors.insert(id, cursor);
                }
            }
        }
        if stall {
            // Hold the connection: no answer, and nothing more read from it.
            return std::future::pending().await;
        }
        // Nothing yet: wait for a write or the deadline, then look again.
        let _ = tokio::time::timeout_at(deadline, head.changed()).await;
    }
}

fn kill_cursors(shared: &Shared, cmd: &Document) -> Result<Document, CommandError> {
    let ids = cmd
        .get_array("cursors")
        .map_err(|_| CommandError::bad_value("killCursors needs 'cursors'"))?;
    let mut state = shared.state.lock();
    let (mut killed, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        let Some(id) = int(Some(id)) else { continue };
        if state.cursors.remove(&id).is_some() {
            killed.push(Bson::Int64(id));
        } else {
            missing.push(Bson::Int64(id));
        }
    }
    Ok(
        doc! {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": []},
    )
}

fn find(shared: &Shared, db: &str, cmd: &Document) -> Result<Document, CommandError> {
    let coll = cmd
        .get_str("find")
        .map_err(|_| CommandError::bad_value("find needs a collection name"))?;
    let filter = cmd.get_document("filter").cloned().unwrap_or_default();
    let descending = match cmd.get_document("sort") {
        Ok(sort) if sort.is_empty() => false,
        Ok(sort) if sort.len() == 1 && sort.contains_key("_id") => int(sort.get("_id")) == Some(-1),
        Ok(_) => return Err(CommandError::bad_value("the test server sorts by _id only")),
        Err(_) => false,
    };
    // `min` is an inclusive index bound: unlike `$gte` it crosses type brackets. MongoDB
    // requires a `hint` naming the index it bounds; the test server has only `_id`'s.
    let min = match cmd.get("min") {
        None => None,
        Some(Bson::Document(m)) if m.len() == 1 && m.contains_key("_id") => {
            let id_index = match cmd.get("hint") {
                Some(Bson::Document(h)) => h.len() == 1 && int(h.get("_id")) == Some(1),
                Some(Bson::String(h)) => h == "_id_",
                _ => {
                    return Err(CommandError::new(
                        51173,
                        "Location51173",
                        "When using min()/max() a hint of which index to use must be provided",
                    ))
                }
            };
            if !id_index || descending {
                return Err(CommandError::new(51174, "Location51174", "The index chosen is not valid for min/max: the test server serves min with hint {_id: 1} and an ascending sort"));
            }
            m.get("_id").cloned()
        }
        Some(_) => {
            return Err(CommandError::new(
                51176,
                "Location51176",
                "min() must be a document naming the fields of the hinted index ({_id: value})",
            ))
        }
    };
    if cmd.contains_key("max") {
        return Err(CommandError::bad_value(
            "the test server does not serve max()",
        ));
    }
    let limit = int(cmd.get("limit")).filter(|l| *l > 0).map(|l| l as usize);
    let skip = int(cmd.get("skip")).unwrap_or(0).max(0) as usize;
    let batch_size = int(cmd.get("batchSize"))
        .filter(|b| *b > 0)
        .map_or(DEFAULT_FIND_BATCH, |b| b as usize);
    let single = matches!(cmd.get("singleBatch"), Some(Bson::Boolean(true)));
    let mut state = shared.state.lock();
    let mut docs: VecDeque<Document> = VecDeque::new();
    if let Some(c) = state.store.collection(db, coll) {
        let iter: Box<dyn Iterator<Item = &Document>> = match (&min, descending) {
            (Some(min), _) => Box::new(c.range(Key(min.clone())..).map(|(_, d)| d)),
            (None, true) => Box::new(c.values().rev()),
            (None, false) => Box::new(c.values()),
        };
        // Skip and limit while scanning: a page of a large collection copies only its page.
        let (mut skipped, limit) = (0, limit.unwrap_or(usize::MAX));
        for d in iter {
            if docs.len() >= limit {
                break;
            }
            if matches(d, &filter)? {
                if skipped < skip {
                    skipped += 1;
                } else {
                    docs.push_back(d.clone());
                }
            }
        }
    }
    let first: Vec<Document> = docs.drain(..batch_size.min(docs.len())).collect();
    let ns = format!("{db}.{coll}");
    let id = if docs.is_empty() || single {
        0
    } else {
        let id = shared.next_cursor.fetch_add(1, Ordering::Relaxed);
        state.cursors.insert(
            id,
            Cursor::Find {
                ns: ns.clone(),
                docs,
                batch_size,
            },
        );
        id
    };
    Ok(cursor_reply(id, &ns, true, first, None))
}

fn count(shared: &Shared, db: &str, cmd: &Document) -> Result<Document, CommandError> {
    let coll = cmd
        .get_str("count")
        .map_err(|_| CommandError::bad_value("count needs a collection name"))?;
    let query = cmd.get_document("query").cloned().unwrap_or_default();
    let state = shared.state.lock();
    let mut n = 0i64;
    if let Some(c) = state.store.collection(db, coll) {
        for d in c.values() {
            if matches(d, &query)? {
                n += 1;
            }
        }
    }
    Ok(doc! {"n": n})
}

fn list_collections(shared: &Shared, db: &str, cmd: &Document) -> Result<Document, CommandError> {
    let filter = cmd.get_document("filter").cloned().unwrap_or_default();
    let state = shared.state.lock();
    let mut batch = Vec::new();
    for name in state.store.collection_names(db) {
        let d = doc! {"name": &name, "type": "collection", "options": {}, "info": {"readOnly": false}, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}};
        if matches(&d, &filter)? {
            batch.push(d);
        }
    }
    Ok(cursor_reply(
        0,
        &format!("{db}.$cmd.listCollections"),
        true,
        batch,
        None,
    ))
}

fn list_databases(shared: &Shared) -> Document {
    let state = shared.state.lock();
    let dbs: Vec<Document> = state
        .store
        .database_names()
        .into_iter()
        .map(|name| doc! {"name": name, "sizeOnDisk": 4096i64, "empty": false})
        .collect();
    doc! {"databases": dbs, "totalSize": 4096i64}
}

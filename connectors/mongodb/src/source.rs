//! [`MongoSource`]: the [`Source`] that reads a change stream.
//!
//! One task owns the driver's `ChangeStream` and only ever awaits `next_if_any` to completion
//! (never cancelled mid-`getMore`, which could lose a batch the server already sent); it hands
//! events, and the post-batch resume token of every empty `getMore`, to the source through a
//! bounded queue. `next_batch` turns what is queued into one batch: the events available now
//! (up to `max_batch_events`), never splitting a transaction (same `lsid` + `txnNumber`), with
//! the resume token of the last one as the position. On a quiet stream it returns a batch with
//! no messages whose position is the newer post-batch resume token, at most once per
//! `checkpoint_interval`, so the stored token never falls off the oplog.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{ChangeStreamOptions, FullDocumentBeforeChangeType, FullDocumentType, Hint};
use mongodb::Client;
use serde_json::json;
use tidings_connectors_core::{Batch, Publish, Source, SourceError, SourcePosition};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{
    BeforeChange, ConfigProblem, FullDocument, MongoConfig, OnHistoryLost, OnInvalidate, Scope,
    SnapshotMode,
};
use crate::event::{digest, txn_key, Router};
use crate::position::{Position, SnapshotProgress, SnapshotReason};
use crate::progress::{Display, SnapshotMeter};

/// Items queued between the stream task and the source. Bounded: the task waits when full.
const QUEUE: usize = 4096;

/// A change event as the stream task converted it: converting there (from the driver's raw
/// bytes, never decoded to a `Document`) overlaps the conversion of the next events with the
/// runner's append of the last batch.
#[derive(Debug)]
struct Event {
    /// The resume token (`None` only when `messages` is the error saying it is missing).
    token: Option<Bson>,
    invalidate: bool,
    /// `(lsid, txnNumber)` for an event of a transaction.
    txn: Option<(Bson, Bson)>,
    messages: Result<Vec<Publish>, SourceError>,
}

impl Event {
    fn convert(raw: &RawDocumentBuf, router: &Router, name: &str) -> Event {
        let token = raw
            .get("_id")
            .ok()
            .flatten()
            .and_then(|t| Bson::try_from(t).ok());
        let messages = match &token {
            Some(t) => router.change_raw(raw, t),
            None => Err(fatal(
                format!("connector {name}: a change event has no `_id` resume token"),
                format!("keep `_id` in `connectors.{name}.pipeline`"),
            )),
        };
        Event {
            token,
            invalidate: raw.get_str("operationType") == Ok("invalidate"),
            txn: txn_key(raw),
            messages,
        }
    }
}

/// What the stream task saw.
#[derive(Debug)]
enum Item {
    Event(Box<Event>),
    /// An empty `getMore`; the stream's resume token after it.
    Quiet(Option<Bson>),
    /// The cursor closed (after an invalidate).
    Closed,
    Failed(MongoError),
    /// A `getMore` went unanswered this long: the connection looks dead.
    Stalled(Duration),
}

struct Reader {
    rx: mpsc::Receiver<Item>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Dropping the stream inside the task kills its cursor on the server.
        self.task.abort();
    }
}

/// Read `stream` into `tx` until it closes or fails. A `getMore` unanswered for `limit` ends
/// it too: that is the one wait cut short, and the stream is given up whole (the source opens
/// a new one from its checkpoint), so no batch the server sent can be lost in between.
async fn read(
    mut stream: ChangeStream<RawDocumentBuf>,
    tx: mpsc::Sender<Item>,
    router: Router,
    name: String,
    limit: Duration,
) {
    // One timer for the whole stream, its deadline moved before each call: most calls return
    // an event of the batch in hand without waiting, and never register it.
    let stalled = tokio::time::sleep(limit);
    tokio::pin!(stalled);
    loop {
        stalled.as_mut().reset(tokio::time::Instant::now() + limit);
        let next = tokio::select! {
            biased;
            next = stream.next_if_any() => Some(next),
            () = &mut stalled => None,
        };
        let item = match next {
            Some(Ok(Some(ev))) => Item::Event(Box::new(Event::convert(&ev, &router, &name))),
            Some(Ok(None)) if !stream.is_alive() => Item::Closed,
            Some(Ok(None)) => {
                Item::Quiet(stream.resume_token().and_then(|t| bson::to_bson(&t).ok()))
            }
            Some(Err(e)) => Item::Failed(e),
            None => Item::Stalled(limit),
        };
        let last = matches!(item, Item::Closed | Item::Failed(_) | Item::Stalled(_));
        if tx.send(item).await.is_err() || last {
            return;
        }
    }
}

enum OpenError {
    HistoryLost(MongoError),
    Other(SourceError),
}

impl From<SourceError> for OpenError {
    fn from(e: SourceError) -> Self {
        OpenError::Other(e)
    }
}

enum Mode {
    Streaming,
    Snapshot(Box<SnapshotProgress>),
}

/// A MongoDB change stream as a [`Source`].
pub struct MongoSource {
    name: String,
    config: MongoConfig,
    scope: Scope,
    pipeline: Vec<Document>,
    router: Router,
    client: Option<Client>,
    reader: Option<Reader>,
    lookahead: Option<Item>,
    mode: Mode,
    /// Results to hand out before reading more (an initial checkpoint, a stop after invalidate).
    pending: VecDeque<Result<Batch, SourceError>>,
    /// Open the stream from here at the next `next_batch` (after a snapshot or an invalidate).
    reopen: Option<Position>,
    /// Token of the invalidate just delivered, when `on_invalidate = "start_after"`.
    invalidated: Option<Bson>,
    last_token: Option<Bson>,
    last_batch_at: Instant,
    snapshot_colls: Option<Vec<(String, String)>>,
    /// Progress of the snapshot running in this process.
    meter: Option<SnapshotMeter>,
    display: Display,
    /// The resume token of the history-lost re-snapshot this process is running, if any: the
    /// reset bookkeeping below belongs to it.
    resnapshot: Option<Bson>,
    /// Channels of that re-snapshot already given a new epoch (or about to be).
    reset_seen: HashSet<String>,
    /// Channels first met in the batch just returned; handed out by `take_resets`.
    reset_pending: Vec<String>,
    /// Channels handed out by `take_resets` whose batch is not committed yet: forgotten by
    /// `start`, so that a batch retried after a failure resets them again.
    reset_uncommitted: Vec<String>,
}

fn fatal(what: impl Into<String>, fix: impl Into<String>) -> SourceError {
    SourceError::Fatal {
        what: what.into(),
        fix: fix.into(),
    }
}

fn transient(what: String, e: MongoError) -> SourceError {
    SourceError::Transient {
        what: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
}

fn token_of(b: &Bson) -> Result<ResumeToken, SourceError> {
    bson::from_bson(b.clone()).map_err(|e| {
        fatal(
            format!("the stored resume token {b} is unreadable: {e}"),
            "rename the connector to start it from scratch",
        )
    })
}

impl MongoSource {
    /// A source named `name` (its checkpoint key) for validated settings; the dead-letter and
    /// control channels are the ones the server resolved.
    pub fn new(
        name: impl Into<String>,
        config: MongoConfig,
        dead_letter: &str,
        control_channel: &str,
    ) -> Result<Self, ConfigProblem> {
        config.validate()?;
        let name = name.into();
        let template = config.template()?;
        let router = Router {
            connector: name.clone(),
            template,
            payload: config.payload,
            json: config.json,
            control_channel: control_channel.to_owned(),
            dead_letter: dead_letter.to_owned(),
            on_poison: config.on_poison,
        };
        Ok(MongoSource {
            name,
            scope: config.scope()?,
            pipeline: config.pipeline_bson()?,
            config,
            router,
            client: None,
            reader: None,
            lookahead: None,
            mode: Mode::Streaming,
            pending: VecDeque::new(),
            reopen: None,
            invalidated: None,
            last_token: None,
            last_batch_at: Instant::now(),
            snapshot_colls: None,
            meter: None,
            display: Display::detect(),
            resnapshot: None,
            reset_seen: HashSet::new(),
            reset_pending: Vec::new(),
            reset_uncommitted: Vec::new(),
        })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("start() connects first")
    }

    /// Sort an error from the driver: history lost, a fatal misconfiguration, or transient.
    fn classify(&self, e: MongoError, doing: &str) -> OpenError {
        let name = &self.name;
        match &*e.kind {
            ErrorKind::Command(ce) if ce.code == 286 || ce.code == 136 => OpenError::HistoryLost(e),
            ErrorKind::Command(ce) => {
                let msg = format!("connector {name}: MongoDB refused to {doing}: {} (code {} {})", ce.message, ce.code, ce.code_name);
                match ce.code {
                    40573 => fatal(msg, "change streams need a replica set or sharded cluster: start mongod with --replSet and run rs.initiate() (docker-compose.yml has one)").into(),
                    13 | 18 => fatal(msg, "grant the connector's user the changeStream and find actions on the watched scope (the built-in `read` role), or fix the credentials in the uri").into(),
                    280 => fatal(msg, format!("the pipeline must keep each event's `_id` (the resume token): remove the stage of `connectors.{name}.pipeline` that changes or drops it")).into(),
                    260 => fatal(msg, format!("the stored resume token does not fit this deployment; rename connector {name} to start from scratch")).into(),
                    2 | 9 | 14 | 168 | 40323 | 40324 | 40415 | 31249 | 31250 => fatal(msg, format!("correct `connectors.{name}.pipeline` or the full_document settings")).into(),
                    _ => OpenError::Other(transient(format!("connector {name}: cannot {doing}"), e)),
                }
            }
            ErrorKind::Authentication { message, .. } => {
                fatal(format!("connector {name}: MongoDB authentication failed: {message}"), format!("fix the user and password in `connectors.{name}.uri`")).into()
            }
            ErrorKind::InvalidArgument { message, .. } => {
                fatal(format!("connector {name}: invalid setting: {message}"), format!("correct `connectors.{name}`")).into()
            }
            ErrorKind::MissingResumeToken => fatal(
                format!("connector {name}: a change event arrived without its `_id` resume token"),
                format!("the pipeline must keep each event's `_id`: remove the stage of `connectors.{name}.pipeline` that drops it"),
            )
            .into(),
            _ => OpenError::Other(transient(format!("connector {name}: cannot {doing}"), e)),
        }
    }

    /// Open the change stream from `from` (`None`: from now); returns the stream's token.
    async fn open(&mut self, from: Option<&Position>) -> Result<Bson, OpenError> {
        self.reader = None;
        self.lookahead = None;
        let mut opts = ChangeStreamOptions::default();
        opts.full_document = match self.config.full_document {
            FullDocument::Off => None,
            FullDocument::UpdateLookup => Some(FullDocumentType::UpdateLookup),
            FullDocument::WhenAvailable => Some(FullDocumentType::WhenAvailable),
            FullDocument::Required => Some(FullDocumentType::Required),
        };
        opts.full_document_before_change = match self.config.full_document_before_change {
            BeforeChange::Off => None,
            BeforeChange::WhenAvailable => Some(FullDocumentBeforeChangeType::WhenAvailable),
            BeforeChange::Required => Some(FullDocumentBeforeChangeType::Required),
        };
        opts.max_await_time = Some(self.config.max_await);
        match from {
            Some(Position::Token(t)) => opts.resume_after = Some(token_of(t)?),
            Some(Position::StartAfter(t)) => opts.start_after = Some(token_of(t)?),
            Some(Position::Snapshot(_)) | None => {}
        }
        enum Target<'a> {
            Coll(&'a str, &'a str),
            Db(&'a str),
            All,
        }
        let mut pipeline = Vec::new();
        let target = match &self.scope {
            Scope::Collection { db, coll } => Target::Coll(db, coll),
            Scope::Database(db) => Target::Db(db),
            Scope::Deployment => Target::All,
            Scope::Collections(list) => {
                let lifecycle = doc! {"operationType": {"$in": ["invalidate", "dropDatabase"]}};
                let first_db = &list[0].0;
                if list.iter().all(|(db, _)| db == first_db) {
                    let colls: Vec<Bson> =
                        list.iter().map(|(_, c)| Bson::String(c.clone())).collect();
                    pipeline
                        .push(doc! {"$match": {"$or": [{"ns.coll": {"$in": colls}}, lifecycle]}});
                    Target::Db(first_db)
                } else {
                    let nss: Vec<Bson> = list
                        .iter()
                        .map(|(db, c)| Bson::Document(doc! {"db": db, "coll": c}))
                        .collect();
                    pipeline.push(doc! {"$match": {"$or": [{"ns": {"$in": nss}}, lifecycle]}});
                    Target::All
                }
            }
        };
        pipeline.extend(self.pipeline.iter().cloned());
        let client = self.client();
        let opened = match target {
            Target::Coll(db, coll) => {
                let c = client.database(db).collection::<Document>(coll);
                c.watch().pipeline(pipeline).with_options(opts).await
            }
            Target::Db(db) => {
                let d = client.database(db);
                d.watch().pipeline(pipeline).with_options(opts).await
            }
            Target::All => client.watch().pipeline(pipeline).with_options(opts).await,
        };
        let stream = match opened {
            Ok(s) => s.with_type::<RawDocumentBuf>(),
            Err(e) => return Err(self.classify(e, "open the change stream")),
        };
        let token = match stream.resume_token() {
            Some(t) => bson::to_bson(&t).map_err(|e| {
                fatal(
                    format!("cannot read the stream's resume token: {e}"),
                    "report this as a bug",
                )
            })?,
            None => match from {
                Some(Position::Token(t) | Position::StartAfter(t)) => t.clone(),
                _ => {
                    return Err(fatal(
                        format!(
                        "connector {}: MongoDB returned no resume token for the new change stream",
                        self.name
                    ),
                        "use MongoDB 4.0.7 or newer (postBatchResumeToken)",
                    )
                    .into())
                }
            },
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let limit = self.config.max_await + self.config.network_timeout;
        let task = tokio::spawn(read(
            stream,
            tx,
            self.router.clone(),
            self.name.clone(),
            limit,
        ));
        self.reader = Some(Reader { rx, task });
        self.mode = Mode::Streaming;
        tracing::info!(source = %self.name, from = ?from.map(Position::describe), "change stream open");
        Ok(token)
    }

    /// The stored position is gone from the oplog: fail, or re-snapshot, as configured.
    async fn history_lost(&mut self, lost: &Position, e: MongoError) -> Result<(), SourceError> {
        let name = &self.name;
        match self.config.on_history_lost {
            OnHistoryLost::Fail => Err(fatal(
                format!("connector {name}: MongoDB no longer has the change stream position {} in its oplog ({e}); the changes after it cannot be read, and skipping them silently would lose them", lost.describe()),
                format!("set `connectors.{name}.on_history_lost = \"resnapshot\"` to re-publish the current documents (their channels restart under a new epoch, so clients know to resync), or rename the connector to start from now; then enlarge the oplog (replSetResizeOplog) to cover the longest time the connector may be stopped"),
            )),
            OnHistoryLost::Resnapshot => {
                tracing::warn!(source = %name, lost = %lost.describe(), "change stream history lost; re-snapshotting the current documents");
                self.begin_snapshot(SnapshotReason::HistoryLost).await
            }
        }
    }

    /// Take the stream's position now, then read the existing documents.
    async fn begin_snapshot(&mut self, reason: SnapshotReason) -> Result<(), SourceError> {
        let resume = match self.open(None).await {
            Ok(t) => t,
            Err(OpenError::Other(e)) => return Err(e),
            Err(OpenError::HistoryLost(e)) => {
                return Err(transient(
                    format!("connector {}: cannot open a change stream", self.name),
                    e,
                ))
            }
        };
        // The position is kept; the stream reopens from it once the snapshot is published.
        self.reader = None;
        let progress = SnapshotProgress {
            resume,
            ns: None,
            after: None,
            reason,
        };
        if reason == SnapshotReason::HistoryLost {
            let data = json!({"reason": "history_lost", "source": self.name, "detail": "the change stream's history was lost; every current document is published again, and each channel that holds one restarts under a new epoch first"});
            let id = format!(
                "mdbs-resync:{}",
                digest(&[progress
                    .resume
                    .clone()
                    .into_canonical_extjson()
                    .to_string()
                    .as_bytes()])
            );
            let message =
                self.router
                    .control("resync", tidings_connectors_core::json_text(&data), id);
            self.pending.push_back(Ok(Batch {
                messages: vec![message],
                position: Position::Snapshot(progress.clone()).to_source(),
            }));
        }
        if reason == SnapshotReason::HistoryLost {
            self.resnapshot = Some(progress.resume.clone());
            self.reset_seen.clear();
        }
        self.mode = Mode::Snapshot(Box::new(progress));
        self.snapshot_colls = None;
        Ok(())
    }

    async fn snapshot_collections(&mut self) -> Result<Vec<(String, String)>, SourceError> {
        if let Some(c) = &self.snapshot_colls {
            return Ok(c.clone());
        }
        let client = self.client().clone();
        let err = |s: &Self, e: MongoError| match s.classify(e, "list collections for the snapshot")
        {
            OpenError::Other(e) => e,
            OpenError::HistoryLost(e) => transient("listing collections".into(), e),
        };
        let mut out = match &self.scope {
            Scope::Collection { db, coll } => vec![(db.clone(), coll.clone())],
            Scope::Collections(list) => list.clone(),
            Scope::Database(db) => {
                let names = client
                    .database(db)
                    .list_collection_names()
                    .await
                    .map_err(|e| err(self, e))?;
                names
                    .into_iter()
                    .filter(|n| !n.starts_with("system."))
                    .map(|n| (db.clone(), n))
                    .collect()
            }
            Scope::Deployment => {
                let mut out = Vec::new();
                for db in client
                    .list_database_names()
                    .await
                    .map_err(|e| err(self, e))?
                {
                    if ["admin", "config", "local"].contains(&db.as_str()) {
                        continue;
                    }
                    for n in client
                        .database(&db)
                        .list_collection_names()
                        .await
                        .map_err(|e| err(self, e))?
                    {
                        if !n.starts_with("system.") {
                            out.push((db.clone(), n));
                        }
                    }
                }
                out
            }
        };
        out.sort();
        self.snapshot_colls = Some(out.clone());
        Ok(out)
    }

    /// Read the next batch of snapshot documents.
    async fn snapshot_batch(&mut self, mut p: SnapshotProgress) -> Result<Batch, SourceError> {
        let colls = self.snapshot_collections().await?;
        // Continue with the collection in progress, or the first one sorting after it.
        let current = match &p.ns {
            None => colls.first().cloned(),
            Some(ns) => colls.iter().find(|c| *c >= ns).cloned(),
        };
        let Some((db, coll)) = current else {
            return Ok(self.finish_snapshot(p, Vec::new()));
        };
        if p.ns.as_ref() != Some(&(db.clone(), coll.clone())) {
            p.after = None;
        }
        if self.meter.is_none() {
            self.meter = Some(self.start_meter(&colls, &(db.clone(), coll.clone())).await);
        }
        // Documents stay as the driver received them: converted to JSON without decoding.
        let collection = self
            .client()
            .database(&db)
            .collection::<RawDocumentBuf>(&coll);
        if p.after.is_none() {
            tracing::debug!(source = %self.name, ns = %format!("{db}.{coll}"), "snapshot of collection starting");
        }
        let batch = self.config.snapshot_batch_size;
        // Page by an index bound on `_id`, not by `{_id: {$gt: last}}`: a range filter compares
        // within one BSON type bracket only, so after the last number it would never reach the
        // strings, ObjectIds or dates of a collection whose `_id`s mix types. The bound follows
        // the index's order, which is MongoDB's order across types. `min` is inclusive: the page
        // asks for one more document and drops the one it starts at.
        let find = collection.find(doc! {}).sort(doc! {"_id": 1});
        let find = match &p.after {
            Some(after) => find
                .min(doc! {"_id": after.clone()})
                .hint(Hint::Keys(doc! {"_id": 1}))
                .limit(i64::from(batch) + 1)
                .batch_size(batch.saturating_add(1)),
            None => find.limit(i64::from(batch)).batch_size(batch),
        };
        let mut cursor = find.await.map_err(|e| {
            transient(
                format!(
                    "connector {}: snapshot read of {db}.{coll} failed",
                    self.name
                ),
                e,
            )
        })?;
        let mut docs = Vec::new();
        while cursor.advance().await.map_err(|e| {
            transient(
                format!(
                    "connector {}: snapshot read of {db}.{coll} failed",
                    self.name
                ),
                e,
            )
        })? {
            docs.push(cursor.deserialize_current().map_err(|e| {
                transient(
                    format!(
                        "connector {}: snapshot document of {db}.{coll} unreadable",
                        self.name
                    ),
                    e,
                )
            })?);
        }
        let id_of = |d: &RawDocumentBuf| {
            d.get("_id")
                .ok()
                .flatten()
                .and_then(|v| Bson::try_from(v).ok())
        };
        if p.after.is_some() && docs.first().and_then(id_of).as_ref() == p.after.as_ref() {
            docs.remove(0);
        }
        docs.truncate(batch as usize);
        let full = docs.len() == batch as usize;
        let last_id = docs.last().and_then(id_of);
        let read = docs.len();
        let mut messages = Vec::with_capacity(docs.len());
        for d in docs {
            for m in self.router.snapshot_raw(&db, &coll, &d, &p.resume)? {
                self.note_reset(&m.channel, &p);
                messages.push(m);
            }
        }
        if let Some(meter) = &mut self.meter {
            meter.add(read as u64, &format!("{db}.{coll}"));
        }
        if full {
            p.ns = Some((db, coll));
            p.after = last_id;
            self.mode = Mode::Snapshot(Box::new(p.clone()));
            return Ok(Batch {
                messages,
                position: Position::Snapshot(p).to_source(),
            });
        }
        // This collection is done: on to the next, or to the stream.
        match colls.iter().find(|c| **c > (db.clone(), coll.clone())) {
            Some(next) => {
                p.ns = Some(next.clone());
                p.after = None;
                self.mode = Mode::Snapshot(Box::new(p.clone()));
                Ok(Batch {
                    messages,
                    position: Position::Snapshot(p).to_source(),
                })
            }
            None => Ok(self.finish_snapshot(p, messages)),
        }
    }

    /// After a history loss, each channel restarts under a new epoch just before its first
    /// re-published document: the runner resets it (see [`Source::take_resets`]) before
    /// appending the batch that holds that document.
    fn note_reset(&mut self, channel: &str, p: &SnapshotProgress) {
        if p.reason != SnapshotReason::HistoryLost
            || channel == self.router.control_channel
            || channel == self.router.dead_letter
            || !self.reset_seen.insert(channel.to_owned())
        {
            return;
        }
        self.reset_pending.push(channel.to_owned());
    }

    /// Meter a snapshot run: the estimated documents of every collection, those of the
    /// collections sorting before `current` counted as done (a run resumed after a restart).
    async fn start_meter(
        &self,
        colls: &[(String, String)],
        current: &(String, String),
    ) -> SnapshotMeter {
        let (mut total, mut done) = (0, 0);
        for (db, coll) in colls {
            // An estimate from collection metadata (no scan); progress is not worth failing for.
            let n = match self
                .client()
                .database(db)
                .collection::<Document>(coll)
                .estimated_document_count()
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(source = %self.name, ns = %format!("{db}.{coll}"), error = %e, "no document count estimate");
                    0
                }
            };
            total += n;
            if (db, coll) < (&current.0, &current.1) {
                done += n;
            }
        }
        SnapshotMeter::new(&self.name, total, done, self.display)
    }

    fn finish_snapshot(&mut self, p: SnapshotProgress, messages: Vec<Publish>) -> Batch {
        if let Some(mut meter) = self.meter.take() {
            meter.finish();
        }
        tracing::info!(source = %self.name, "snapshot done; streaming changes from the position taken before it");
        let position = Position::Token(p.resume);
        self.reopen = Some(position.clone());
        self.mode = Mode::Streaming;
        Batch {
            messages,
            position: position.to_source(),
        }
    }

    async fn next_item(&mut self) -> Result<Item, SourceError> {
        if let Some(i) = self.lookahead.take() {
            return Ok(i);
        }
        let reader = self
            .reader
            .as_mut()
            .expect("a stream is open while streaming");
        reader
            .rx
            .recv()
            .await
            .ok_or_else(|| SourceError::Transient {
                what: format!("connector {}: the change stream task stopped", self.name),
                source: None,
            })
    }

    fn try_item(&mut self) -> Option<Item> {
        if let Some(i) = self.lookahead.take() {
            return Some(i);
        }
        self.reader.as_mut()?.rx.try_recv().ok()
    }

    /// Open (or reopen) the stream at `position`, applying the history-lost policy.
    async fn open_at(&mut self, position: Position) -> Result<(), SourceError> {
        match self.open(Some(&position)).await {
            Ok(_) => Ok(()),
            Err(OpenError::Other(e)) => Err(e),
            Err(OpenError::HistoryLost(e)) => self.history_lost(&position, e).await,
        }
    }

    /// The events available now, as one batch.
    async fn stream_batch(&mut self, first: Box<Event>) -> Result<Batch, SourceError> {
        let max = self.config.max_batch_events;
        let mut messages = Vec::new();
        let mut events = 0usize;
        let mut current = first;
        let (position, invalidated) = loop {
            let Event {
                token,
                invalidate,
                txn,
                messages: converted,
            } = *current;
            messages.extend(converted?);
            let token = token.expect("an event without a token carries that error");
            events += 1;
            if invalidate {
                break (token, true);
            }
            // Inside a transaction, wait to see what follows: the batch may not end inside it.
            let next = if txn.is_some() {
                Some(self.next_item().await?)
            } else if events >= max {
                None
            } else {
                self.try_item()
            };
            match next {
                None => break (token, false),
                Some(Item::Event(ev)) => {
                    if events >= max && (txn.is_none() || ev.txn != txn) {
                        self.lookahead = Some(Item::Event(ev));
                        break (token, false);
                    }
                    current = ev;
                }
                // Nothing happened after the last event up to this newer token.
                Some(Item::Quiet(Some(t))) => break (t, false),
                Some(other) => {
                    self.lookahead = Some(other);
                    break (token, false);
                }
            }
        };
        if invalidated {
            let position = Position::StartAfter(position);
            match self.config.on_invalidate {
                OnInvalidate::Fail => self.pending.push_back(Err(fatal(
                    format!("connector {}: the change stream was invalidated (the watched collection or database was dropped or renamed); the `invalidate` control message is published", self.name),
                    format!("restart to continue after the invalidate (the checkpoint resumes with startAfter), or set `connectors.{}.on_invalidate = \"start_after\"` to continue on its own", self.name),
                ))),
                OnInvalidate::StartAfter => {
                    if let Position::StartAfter(t) = &position {
                        self.invalidated = Some(t.clone());
                    }
                }
            }
            return Ok(Batch {
                messages,
                position: position.to_source(),
            });
        }
        Ok(Batch {
            messages,
            position: Position::Token(position).to_source(),
        })
    }

    fn note(&mut self, batch: &Batch) {
        self.last_batch_at = Instant::now();
        if let Ok(Position::Token(t)) = Position::from_source(&batch.position) {
            self.last_token = Some(t);
        }
    }

    async fn next_batch_inner(&mut self) -> Result<Batch, SourceError> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return r;
            }
            if let Mode::Snapshot(p) = &self.mode {
                let p = SnapshotProgress::clone(p);
                return self.snapshot_batch(p).await;
            }
            if let Some(position) = self.reopen.take() {
                self.open_at(position).await?;
                continue;
            }
            let item = self.next_item().await?;
            match item {
                Item::Event(ev) => return self.stream_batch(ev).await,
                Item::Quiet(Some(t)) => {
                    let interval: Duration = self.config.checkpoint_interval;
                    if self.last_token.as_ref() != Some(&t)
                        && self.last_batch_at.elapsed() >= interval
                    {
                        return Ok(Batch {
                            messages: Vec::new(),
                            position: Position::Token(t).to_source(),
                        });
                    }
                }
                Item::Quiet(None) => {}
                Item::Closed => match self.invalidated.take() {
                    Some(t) => self.reopen = Some(Position::StartAfter(t)),
                    None => {
                        return Err(SourceError::Transient {
                            what: format!("connector {}: the change stream closed", self.name),
                            source: None,
                        });
                    }
                },
                Item::Stalled(limit) => {
                    self.reader = None;
                    return Err(SourceError::Transient {
                        what: format!(
                            "connector {}: MongoDB did not answer a getMore within {limit:?} (max_await + network_timeout): the connection looks dead (a NAT or firewall that dropped it, a frozen host); opening the change stream again from the checkpoint",
                            self.name
                        ),
                        source: None,
                    });
                }
                Item::Failed(e) => match self.classify(e, "read the change stream") {
                    OpenError::Other(e) => return Err(e),
                    OpenError::HistoryLost(e) => {
                        let lost = self
                            .last_token
                            .clone()
                            .map_or_else(|| Position::Token(Bson::Null), Position::Token);
                        self.reader = None;
                        self.history_lost(&lost, e).await?;
                    }
                },
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for MongoSource {
    async fn start(&mut self, from: Option<SourcePosition>) -> Result<(), SourceError> {
        self.reader = None;
        self.lookahead = None;
        self.pending.clear();
        self.reopen = None;
        self.invalidated = None;
        self.mode = Mode::Streaming;
        self.last_batch_at = Instant::now();
        self.meter = None;
        // Resets whose batch never became durable happen again when it is read again.
        for channel in self
            .reset_uncommitted
            .drain(..)
            .chain(self.reset_pending.drain(..))
        {
            self.reset_seen.remove(&channel);
        }
        if self.client.is_none() {
            let client = Client::with_uri_str(self.config.uri.expose())
                .await
                .map_err(|e| match self.classify(e, "connect") {
                    OpenError::Other(e) => e,
                    OpenError::HistoryLost(e) => transient("connect".into(), e),
                })?;
            self.client = Some(client);
        }
        let from = from
            .map(|p| Position::from_source(&p))
            .transpose()
            .map_err(|e| {
                fatal(
                    format!(
                        "connector {}: the stored checkpoint is unreadable: {e}",
                        self.name
                    ),
                    "rename the connector to start it from scratch",
                )
            })?;
        self.last_token = match &from {
            Some(Position::Token(t)) => Some(t.clone()),
            _ => None,
        };
        match from {
            None => match self.config.snapshot {
                SnapshotMode::Initial => self.begin_snapshot(SnapshotReason::Initial).await?,
                SnapshotMode::Never => {
                    // Store where "now" is at once, so a restart never skips what happened since.
                    let token = match self.open(None).await {
                        Ok(t) => t,
                        Err(OpenError::Other(e)) => return Err(e),
                        Err(OpenError::HistoryLost(e)) => {
                            return Err(transient("open the change stream".into(), e))
                        }
                    };
                    self.pending.push_back(Ok(Batch {
                        messages: Vec::new(),
                        position: Position::Token(token).to_source(),
                    }));
                }
            },
            Some(Position::Snapshot(mut p)) => {
                if p.reason == SnapshotReason::HistoryLost
                    && self.resnapshot.as_ref() != Some(&p.resume)
                {
                    // Which channels this re-snapshot already reset is known only to the process
                    // that ran it; resuming halfway would append the rest of a reset channel's
                    // documents without the ones before. Start over: every channel is reset
                    // again and gets all its documents in its newest epoch.
                    tracing::warn!(source = %self.name, ns = ?p.ns, "restarting the interrupted re-snapshot after history loss from its first collection");
                    p.ns = None;
                    p.after = None;
                    self.resnapshot = Some(p.resume.clone());
                    self.reset_seen.clear();
                } else {
                    tracing::info!(source = %self.name, ns = ?p.ns, "resuming the snapshot in progress");
                }
                self.mode = Mode::Snapshot(Box::new(p));
            }
            Some(p) => self.open_at(p).await?,
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        let batch = self.next_batch_inner().await?;
        self.note(&batch);
        Ok(batch)
    }

    async fn committed(&mut self, position: &SourcePosition) -> Result<(), SourceError> {
        // The log stores the token; MongoDB keeps no per-consumer state to confirm.
        tracing::trace!(source = %self.name, ?position, "checkpoint durable");
        self.reset_uncommitted.clear();
        Ok(())
    }

    fn take_resets(&mut self) -> Vec<String> {
        let resets = std::mem::take(&mut self.reset_pending);
        self.reset_uncommitted.extend(resets.iter().cloned());
        resets
    }
}

//! The change stream itself: opening it with the connector's options, and the one task that owns
//! the driver's `ChangeStream` and only ever awaits `next_if_any` to completion (never cancelled
//! mid-`getMore`, which could lose a batch the server already sent). The task converts each
//! event and hands it, and the post-batch resume token of every empty `getMore`, to the source
//! through a bounded queue.

use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::error::Error as MongoError;
use mongodb::options::{ChangeStreamOptions, FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::Client;
use tidings_connectors_core::{Publish, SourceError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{BeforeChange, FullDocument, MongoConfig, Scope};
use crate::event::txn_key;
use crate::position::Position;
use crate::router::Router;

/// Items queued between the stream task and the source. Bounded: the task waits when full.
const QUEUE: usize = 4096;

/// A change event as the stream task converted it: converting there (from the driver's raw
/// bytes, never decoded to a `Document`) overlaps the conversion of the next events with the
/// runner's append of the last batch.
#[derive(Debug)]
pub(super) struct Event {
    /// The resume token (`None` only when `messages` is the error saying it is missing).
    pub(super) token: Option<Bson>,
    pub(super) invalidate: bool,
    /// `(lsid, txnNumber)` for an event of a transaction.
    pub(super) txn: Option<(Bson, Bson)>,
    pub(super) messages: Result<Vec<Publish>, SourceError>,
}

impl Event {
    pub(super) fn convert(raw: &RawDocumentBuf, router: &Router, name: &str) -> Event {
        let token = raw
            .get("_id")
            .ok()
            .flatten()
            .and_then(|t| Bson::try_from(t).ok());
        let messages = match &token {
            Some(t) => router.change_raw(raw, t),
            None => Err(SourceError::fatal(
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
pub(super) enum Item {
    Event(Box<Event>),
    /// An empty `getMore`; the stream's resume token after it.
    Quiet(Option<Bson>),
    /// The cursor closed (after an invalidate).
    Closed,
    Failed(MongoError),
    /// A `getMore` went unanswered this long: the connection looks dead.
    Stalled(Duration),
}

pub(super) struct Reader {
    pub(super) rx: mpsc::Receiver<Item>,
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

/// Why a change stream did not open: the driver refused (the source sorts out what that means),
/// or the source's own error.
pub(super) enum OpenFailure {
    Driver(MongoError),
    Source(SourceError),
}

impl From<SourceError> for OpenFailure {
    fn from(e: SourceError) -> Self {
        OpenFailure::Source(e)
    }
}

fn token_of(b: &Bson) -> Result<ResumeToken, SourceError> {
    bson::from_bson(b.clone()).map_err(|e| {
        SourceError::fatal(
            format!("the stored resume token {b} is unreadable: {e}"),
            "rename the connector to start it from scratch",
        )
    })
}

/// Open the change stream on `scope` from `from` (`None`: from now), with `config`'s options
/// and the connector's `stages` after the scope's own; returns the task reading it and the
/// stream's token.
pub(super) async fn open(
    client: &Client,
    config: &MongoConfig,
    scope: &Scope,
    stages: &[Document],
    from: Option<&Position>,
    router: &Router,
    name: &str,
) -> Result<(Reader, Bson), OpenFailure> {
    let mut opts = ChangeStreamOptions::default();
    opts.full_document = match config.full_document {
        FullDocument::Off => None,
        FullDocument::UpdateLookup => Some(FullDocumentType::UpdateLookup),
        FullDocument::WhenAvailable => Some(FullDocumentType::WhenAvailable),
        FullDocument::Required => Some(FullDocumentType::Required),
    };
    opts.full_document_before_change = match config.full_document_before_change {
        BeforeChange::Off => None,
        BeforeChange::WhenAvailable => Some(FullDocumentBeforeChangeType::WhenAvailable),
        BeforeChange::Required => Some(FullDocumentBeforeChangeType::Required),
    };
    opts.max_await_time = Some(config.max_await);
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
    let target = match scope {
        Scope::Collection { db, coll } => Target::Coll(db, coll),
        Scope::Database(db) => Target::Db(db),
        Scope::Deployment => Target::All,
        Scope::Collections(list) => {
            let lifecycle = doc! {"operationType": {"$in": ["invalidate", "dropDatabase"]}};
            let first_db = &list[0].0;
            if list.iter().all(|(db, _)| db == first_db) {
                let colls: Vec<Bson> = list.iter().map(|(_, c)| Bson::String(c.clone())).collect();
                pipeline.push(doc! {"$match": {"$or": [{"ns.coll": {"$in": colls}}, lifecycle]}});
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
    pipeline.extend(stages.iter().cloned());
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
        Err(e) => return Err(OpenFailure::Driver(e)),
    };
    let token = match stream.resume_token() {
        Some(t) => bson::to_bson(&t).map_err(|e| {
            SourceError::fatal(
                format!("cannot read the stream's resume token: {e}"),
                "report this as a bug",
            )
        })?,
        None => match from {
            Some(Position::Token(t) | Position::StartAfter(t)) => t.clone(),
            _ => {
                return Err(SourceError::fatal(
                    format!(
                    "connector {name}: MongoDB returned no resume token for the new change stream"
                ),
                    "use MongoDB 4.0.7 or newer (postBatchResumeToken)",
                )
                .into())
            }
        },
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let limit = config.max_await + config.network_timeout;
    let task = tokio::spawn(read(stream, tx, router.clone(), name.to_owned(), limit));
    Ok((Reader { rx, task }, token))
}

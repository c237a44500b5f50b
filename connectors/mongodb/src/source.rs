//! [`MongoSource`]: the [`Source`] that reads a change stream (opened and read by the task of
//! `change_stream`), after an initial snapshot of the existing documents, or a re-snapshot after
//! history loss (`snapshot`).
//!
//! `next_batch` turns what the stream task queued into one batch: the events available now
//! (up to `max_batch_events`), never splitting a transaction (same `lsid` + `txnNumber`), with
//! the resume token of the last one as the position. On a quiet stream it returns a batch with
//! no messages whose position is the newer post-batch resume token, at most once per
//! `checkpoint_interval`, so the stored token never falls off the oplog.

mod change_stream;
mod snapshot;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::Client;
use tidings_connectors_core::{Batch, Source, SourceError, SourcePosition};

use self::change_stream::{Event, Item, OpenFailure, Reader};
use crate::config::{ConfigProblem, MongoConfig, OnHistoryLost, OnInvalidate, Scope, SnapshotMode};
use crate::position::{Position, SnapshotProgress, SnapshotReason};
use crate::progress::{Display, SnapshotMeter};
use crate::router::Router;

pub(crate) enum OpenError {
    HistoryLost(MongoError),
    Other(SourceError),
}

impl From<SourceError> for OpenError {
    fn from(e: SourceError) -> Self {
        OpenError::Other(e)
    }
}

pub(crate) enum Mode {
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

fn transient(what: String, e: MongoError) -> SourceError {
    SourceError::Transient {
        what: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
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
        Self::prepared(name, config, dead_letter, control_channel)
    }

    /// [`MongoSource::new`] for settings [`MongoConfig::validate`] already accepted.
    pub(crate) fn prepared(
        name: impl Into<String>,
        config: MongoConfig,
        dead_letter: &str,
        control_channel: &str,
    ) -> Result<Self, ConfigProblem> {
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
                    40573 => SourceError::fatal(msg, "change streams need a replica set or sharded cluster: start mongod with --replSet and run rs.initiate() (docker-compose.yml has one)").into(),
                    13 | 18 => SourceError::fatal(msg, "grant the connector's user the changeStream and find actions on the watched scope (the built-in `read` role), or fix the credentials in the uri").into(),
                    280 => SourceError::fatal(msg, format!("the pipeline must keep each event's `_id` (the resume token): remove the stage of `connectors.{name}.pipeline` that changes or drops it")).into(),
                    260 => SourceError::fatal(msg, format!("the stored resume token does not fit this deployment; rename connector {name} to start from scratch")).into(),
                    2 | 9 | 14 | 168 | 40323 | 40324 | 40415 | 31249 | 31250 => SourceError::fatal(msg, format!("correct `connectors.{name}.pipeline` or the full_document settings")).into(),
                    _ => OpenError::Other(transient(format!("connector {name}: cannot {doing}"), e)),
                }
            }
            ErrorKind::Authentication { message, .. } => {
                SourceError::fatal(format!("connector {name}: MongoDB authentication failed: {message}"), format!("fix the user and password in `connectors.{name}.uri`")).into()
            }
            ErrorKind::InvalidArgument { message, .. } => {
                SourceError::fatal(format!("connector {name}: invalid setting: {message}"), format!("correct `connectors.{name}`")).into()
            }
            ErrorKind::MissingResumeToken => SourceError::fatal(
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
        let opened = change_stream::open(
            self.client(),
            &self.config,
            &self.scope,
            &self.pipeline,
            from,
            &self.router,
            &self.name,
        )
        .await;
        let (reader, token) = match opened {
            Ok(opened) => opened,
            Err(OpenFailure::Driver(e)) => return Err(self.classify(e, "open the change stream")),
            Err(OpenFailure::Source(e)) => return Err(OpenError::Other(e)),
        };
        self.reader = Some(reader);
        self.mode = Mode::Streaming;
        tracing::info!(source = %self.name, from = ?from.map(Position::describe), "change stream open");
        Ok(token)
    }

    /// The stored position is gone from the oplog: fail, or re-snapshot, as configured.
    async fn history_lost(&mut self, lost: &Position, e: MongoError) -> Result<(), SourceError> {
        let name = &self.name;
        match self.config.on_history_lost {
            OnHistoryLost::Fail => Err(SourceError::fatal(
                format!("connector {name}: MongoDB no longer has the change stream position {} in its oplog ({e}); the changes after it cannot be read, and skipping them silently would lose them", lost.describe()),
                format!("set `connectors.{name}.on_history_lost = \"resnapshot\"` to re-publish the current documents (their channels restart under a new epoch, so clients know to resync), or rename the connector to start from now; then enlarge the oplog (replSetResizeOplog) to cover the longest time the connector may be stopped"),
            )),
            OnHistoryLost::Resnapshot => {
                tracing::warn!(source = %name, lost = %lost.describe(), "change stream history lost; re-snapshotting the current documents");
                self.begin_snapshot(SnapshotReason::HistoryLost).await
            }
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
                OnInvalidate::Fail => self.pending.push_back(Err(SourceError::fatal(
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
                SourceError::fatal(
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

    async fn stop(&mut self) {
        // Close the change stream; the next start opens it again from the checkpoint.
        self.reader = None;
        self.lookahead = None;
        self.pending.clear();
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

//! The Postgres [`Source`]: outbox rows, `pg_logical_emit_message` messages and (with a
//! channel template) row changes of the publication's other tables, read from a logical
//! replication slot in commit order.
//!
//! Batches. Each transaction is handed out whole (unless over the memory budget, below).
//! Transactions that have already arrived when one is complete go out in the same batch, so
//! the log syncs once for all of them; the source never waits for more to arrive.
//!
//! Positions. A batch's position is its transaction's *end* LSN (just past the commit record):
//! Postgres skips, on `START_REPLICATION` at that LSN, every transaction whose commit lies
//! before it, so a restart from the checkpoint resumes right after the last durable
//! transaction. Message ids are `pg:<commit LSN>:<index in the transaction>` (or the row's own
//! `message_id`), stable across replays, so anything replayed deduplicates in the log.
//!
//! Confirmation. Postgres hears (standby status update) only positions passed to
//! [`Source::committed`], so the slot's `confirmed_flush_lsn` never passes the stored
//! checkpoint. When nothing is open and everything handed out is durable, the end of a
//! transaction without outbox rows, or a keepalive's `wal_end`, is handed out as an empty
//! batch (at most once per status interval), so an idle outbox on a busy database does not
//! make the slot hold back WAL, and the invariant still holds.
//!
//! Slot loss. Because of that invariant, a slot that is missing, invalidated, or whose
//! confirmed position is past the checkpoint lost changes Tidings never read. By default the
//! connector stops and says how to recover; with `on_slot_lost = "recreate"` it continues from
//! a new slot and its first batch (empty, at the new slot's position) asks the server to give
//! every channel it ever published to (recorded in `tidings.connector_channels`, see
//! [`crate::tracking`]) a new epoch.
//!
//! Memory budget. A transaction with more than `max_batch_messages` rows is handed out in
//! parts: each part but the last carries the previous checkpoint as its position (a crash in
//! between replays the whole transaction and the ids deduplicate); the last part carries the
//! end LSN. Readers may see such a transaction's messages before all of it is in the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn as PgLsn, PgWireError, ReplicationClient, ReplicationEvent};
use tidings_connectors_core::route::ChannelTemplate;
use tidings_connectors_core::{
    json_text, Batch, Context, Publish, Source, SourceError, SourcePosition,
};

use crate::capture::{self, Op, Table};
use crate::cleanup::Cleanup;
use crate::config::{ConfigProblem, OnPoison, OnSlotLost, PostgresConfig};
use crate::connection::{within, Settings};
use crate::lag::{LagReader, LagReport};
use crate::outbox::{self, OutboxColumns};
use crate::pgoutput::{self, format_lsn, Lsn};
use crate::slot;
use crate::tracking::Tracker;

/// A Postgres outbox connector.
pub struct PostgresSource {
    name: String,
    config: PostgresConfig,
    settings: Settings,
    dead_letter: String,
    stream: Option<ReplicationClient>,
    /// Relations of this session, by oid.
    relations: HashMap<u32, Rel>,
    /// Plain table capture: the channel template, when configured.
    template: Option<ChannelTemplate>,
    /// Channel of table-level events (truncate).
    control_channel: String,
    txn: Option<Txn>,
    /// The last position known durable (checkpoint, slot start, or `committed`).
    durable: Lsn,
    /// The position of the last batch handed out; equal to `durable` once it is committed.
    handed: Option<Lsn>,
    /// Outbox row ids of the batch handed out, deleted once it is committed.
    handed_rows: Vec<i64>,
    /// Highest position confirmed to Postgres.
    confirmed: Lsn,
    cleanup: Option<Cleanup>,
    tracker: Tracker,
    /// Whole transactions received and not handed out yet: consecutive transactions that are
    /// already here go to the log in one append (group commit), never waiting for more.
    ready: Option<Ready>,
    /// A slot loss was recovered from: hand out an empty batch resetting these channels.
    pending_reset: Option<Vec<String>>,
    /// Channels to reset with the batch just handed out.
    resets: Vec<String>,
    /// The latest position with nothing for the log (empty transaction, keepalive).
    idle: Option<Lsn>,
    /// When the last idle position was handed out.
    idle_handed: Instant,
    /// Where the slot's lag readings go.
    lag_report: LagReport,
    lag: Option<LagReader>,
    /// How often Postgres sends keepalives while it hears nothing from the connector (half
    /// its `wal_sender_timeout`, read at each start); `None` when it sends none.
    keepalive_every: Option<Duration>,
    /// When the session last received anything.
    last_heard: Instant,
    /// When a position was last confirmed (the status update follows within
    /// `status_interval`, and Postgres' keepalive clock starts again from it).
    last_confirmed: Instant,
}

/// Complete transactions waiting to be handed out together.
struct Ready {
    messages: Vec<Publish>,
    rows: Vec<i64>,
    /// End LSN of the last of them.
    end: Lsn,
}

/// What a relation of the publication is to this connector.
#[derive(Debug, Clone)]
enum Rel {
    /// The outbox table, with its columns.
    Outbox(OutboxColumns),
    /// A captured table (a channel template is configured).
    Table(Box<Table>),
    /// Not captured.
    Ignored,
}

/// The transaction being read.
struct Txn {
    /// Its commit LSN (`final_lsn` of Begin): the base of its message ids.
    commit_lsn: Lsn,
    /// Its commit time, microseconds since 2000-01-01.
    commit_time: i64,
    next_index: u64,
    messages: Vec<Publish>,
    rows: Vec<i64>,
    /// Parts of it were already handed out.
    split: bool,
}

/// Why building the source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connector {name}: {problem}")]
pub struct BuildError {
    pub name: String,
    pub problem: ConfigProblem,
}

impl PostgresSource {
    /// A source named `name` (its checkpoint key) with validated `config`. Poison rows it
    /// cannot even decode go to `dead_letter` (or stop it, per `config.on_poison`). Its status
    /// and lag gauges go nowhere: the server builds it from a [`Context`] instead.
    pub fn new(
        name: impl Into<String>,
        config: PostgresConfig,
        dead_letter: impl Into<String>,
    ) -> Result<Self, BuildError> {
        let name = name.into();
        let fail = |problem| BuildError {
            name: name.clone(),
            problem,
        };
        config.validate().map_err(fail)?;
        let ctx = Context::detached(&name, &dead_letter.into());
        Self::from_context(ctx, config).map_err(fail)
    }

    /// The source of `ctx.name` with `config` as [`PostgresConfig::validate`] accepted it,
    /// reporting its slot's lag to `ctx`'s status and gauges; table-level events go to the
    /// configured control channel, `postgres:NAME` by default.
    pub fn from_context(ctx: Context, config: PostgresConfig) -> Result<Self, ConfigProblem> {
        let settings = crate::connection::Settings::parse(config.url.expose())
            .map_err(|e| ConfigProblem::new("url", e.to_string()))?;
        let template = config
            .channel
            .as_deref()
            .map(ChannelTemplate::parse)
            .transpose()
            .map_err(|e| ConfigProblem::new("channel", e.problem))?;
        let lag_report = LagReport::new(&ctx, config.retained_wal_warning_bytes());
        let Context {
            name, dead_letter, ..
        } = ctx;
        Ok(PostgresSource {
            template,
            control_channel: config.control_channel(&name),
            tracker: Tracker::new(&name, settings.clone(), config.network_timeout),
            ready: None,
            pending_reset: None,
            resets: Vec::new(),
            idle: None,
            idle_handed: Instant::now(),
            lag_report,
            lag: None,
            keepalive_every: None,
            last_heard: Instant::now(),
            last_confirmed: Instant::now(),
            name,
            config,
            settings,
            dead_letter,
            stream: None,
            relations: HashMap::new(),
            txn: None,
            durable: 0,
            handed: None,
            handed_rows: Vec::new(),
            confirmed: 0,
            cleanup: None,
        })
    }

    /// Publish table-level events (a truncate of a captured table) on `channel` instead of
    /// `postgres:NAME`.
    pub fn with_control_channel(mut self, channel: impl Into<String>) -> Self {
        self.control_channel = channel.into();
        self
    }

    fn confirm(&mut self, lsn: Lsn) {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.last_confirmed = Instant::now();
            if let Some(s) = &self.stream {
                s.update_applied_lsn(PgLsn::from_u64(lsn));
            }
        }
    }

    /// Nothing handed out is waiting for `committed`.
    fn all_durable(&self) -> bool {
        self.handed.is_none_or(|h| h <= self.durable) && self.handed_rows.is_empty()
    }

    fn poison(&self, problem: String, commit_lsn: Lsn, id: String) -> Result<Publish, SourceError> {
        tracing::warn!(source = %self.name, %problem, commit_lsn = %format_lsn(commit_lsn), "poison change");
        match self.config.on_poison {
            OnPoison::Stop => Err(SourceError::Fatal {
                what: format!(
                    "connector {} read an outbox change that cannot be published ({problem}) in the transaction committed at {}",
                    self.name,
                    format_lsn(commit_lsn)
                ),
                fix: "correct the writer; to skip such changes set on_poison = \"dead_letter\"".into(),
            }),
            OnPoison::DeadLetter => Ok(Publish {
                channel: self.dead_letter.clone(),
                name: Some("dead_letter".into()),
                data: Some(json_text(&serde_json::json!({
                    "error": problem,
                    "source": self.name,
                    "commit_lsn": format_lsn(commit_lsn),
                }))),
                headers: None,
                id: Some(id),
                key: None,
            }),
        }
    }

    /// Describe a relation: the outbox, a captured table, or neither.
    async fn relation(&mut self, rel: crate::pgoutput::Relation) -> Result<Rel, SourceError> {
        let (schema, table) = self.config.outbox();
        if rel.namespace == schema && rel.name == table {
            return Ok(Rel::Outbox(OutboxColumns::of(&rel)));
        }
        if self.template.is_none() {
            return Ok(Rel::Ignored);
        }
        // REPLICA IDENTITY FULL flags every column as key: clients know rows by the primary key.
        let full = rel.replica_identity == b'f';
        let oid = rel.oid;
        let mut table = Table::new(rel);
        if full {
            let pk = self.tracker.primary_key(oid).await?;
            table = table.with_key_columns(&pk);
        }
        Ok(Rel::Table(Box::new(table)))
    }

    fn relation_of(&self, oid: u32) -> Result<Rel, SourceError> {
        self.relations.get(&oid).cloned().ok_or_else(|| {
            protocol(format!(
                "a change to relation {oid} arrived before its description"
            ))
        })
    }

    /// The next message id of the open transaction.
    fn next_id(&mut self) -> Result<(String, capture::At), SourceError> {
        let Some(txn) = self.txn.as_mut() else {
            return Err(protocol("a change arrived outside a transaction".into()));
        };
        let id = outbox::derived_id(txn.commit_lsn, txn.next_index);
        txn.next_index += 1;
        Ok((
            id,
            capture::At {
                commit_lsn: txn.commit_lsn,
                commit_time: txn.commit_time,
            },
        ))
    }

    /// Add a message, or the poison it is, to the open transaction.
    fn push(
        &mut self,
        result: Result<Publish, String>,
        at: capture::At,
        id: String,
    ) -> Result<(), SourceError> {
        let p = match result {
            Ok(p) => p,
            Err(problem) => self.poison(problem, at.commit_lsn, id)?,
        };
        self.txn.as_mut().expect("open").messages.push(p);
        Ok(())
    }

    /// A row change of a captured table.
    fn table_change(
        &mut self,
        table: &Table,
        op: Op,
        old: Option<&pgoutput::Tuple>,
        new: Option<&pgoutput::Tuple>,
    ) -> Result<(), SourceError> {
        let (id, at) = self.next_id()?;
        let template = self
            .template
            .as_ref()
            .expect("tables are captured with a template");
        let result = capture::change(table, op, old, new, template, at, id.clone());
        self.push(result, at, id)
    }

    /// Apply one pgoutput change of the open transaction.
    async fn change(&mut self, message: pgoutput::Message) -> Result<(), SourceError> {
        use pgoutput::Message as M;
        match message {
            M::Relation(rel) => {
                let oid = rel.oid;
                let described = self.relation(rel).await?;
                self.relations.insert(oid, described);
            }
            M::Insert { relation, new } => match self.relation_of(relation)? {
                Rel::Outbox(cols) => {
                    let (id, at) = self.next_id()?;
                    match outbox::row(&cols, &new, id.clone()) {
                        Ok(row) => {
                            let txn = self.txn.as_mut().expect("open");
                            txn.rows.extend(row.row_id);
                            txn.messages.push(row.publish);
                        }
                        Err(problem) => self.push(Err(problem), at, id)?,
                    }
                }
                Rel::Table(table) => self.table_change(&table, Op::Insert, None, Some(&new))?,
                // Another table of the publication: not captured.
                Rel::Ignored => {}
            },
            M::Update { relation, old, new } => {
                // The outbox publishes inserts; its updates are not messages.
                if let Rel::Table(table) = self.relation_of(relation)? {
                    self.table_change(&table, Op::Update, old.as_ref(), Some(&new))?;
                }
            }
            M::Delete { relation, old } => {
                if let Rel::Table(table) = self.relation_of(relation)? {
                    self.table_change(&table, Op::Delete, Some(&old), None)?;
                }
            }
            M::Truncate { relations, .. } => {
                for oid in relations {
                    if let Some(Rel::Table(table)) = self.relations.get(&oid).cloned() {
                        let (id, at) = self.next_id()?;
                        let p = Publish {
                            channel: self.control_channel.clone(),
                            name: Some("truncate".into()),
                            data: Some(json_text(&serde_json::json!({
                                "op": "truncate",
                                "ns": {"schema": table.relation.namespace, "table": table.relation.name},
                                "commit_lsn": format_lsn(at.commit_lsn),
                                "commit_time": capture::commit_time(at.commit_time),
                            }))),
                            headers: None,
                            id: Some(id.clone()),
                            key: None,
                        };
                        self.push(Ok(p), at, id)?;
                    }
                }
            }
            M::Type { .. } | M::Origin { .. } => {}
            M::Begin { .. } | M::Commit { .. } | M::Message { .. } => {
                return Err(protocol(
                    "a transaction boundary or logical message arrived as raw data".into(),
                ))
            }
        }
        Ok(())
    }

    fn emitted(
        &mut self,
        transactional: bool,
        lsn: Lsn,
        content: &[u8],
    ) -> Result<Option<(Publish, Lsn)>, SourceError> {
        if transactional {
            let Some(txn) = self.txn.as_mut() else {
                return Err(protocol(
                    "a transactional message arrived outside a transaction".into(),
                ));
            };
            let id = outbox::derived_id(txn.commit_lsn, txn.next_index);
            txn.next_index += 1;
            let commit_lsn = txn.commit_lsn;
            let p = match outbox::emitted(content, id.clone()) {
                Ok(p) => p,
                Err(problem) => self.poison(problem, commit_lsn, id)?,
            };
            self.txn.as_mut().expect("open").messages.push(p);
            return Ok(None);
        }
        // A non-transactional message is its own batch at its own LSN.
        let id = outbox::derived_id(lsn, 0);
        let p = match outbox::emitted(content, id.clone()) {
            Ok(p) => p,
            Err(problem) => self.poison(problem, lsn, id)?,
        };
        let position = lsn.max(self.durable);
        Ok(Some((p, position)))
    }

    /// Add whole transactions (or a non-transactional message) to what is ready.
    fn add_ready(&mut self, messages: Vec<Publish>, rows: Vec<i64>, end: Lsn) {
        match self.ready.as_mut() {
            Some(r) => {
                r.messages.extend(messages);
                r.rows.extend(rows);
                r.end = r.end.max(end);
            }
            None => {
                self.ready = Some(Ready {
                    messages,
                    rows,
                    end,
                })
            }
        }
    }

    /// When the session's silence proves it dead: `network_timeout` after it last received
    /// anything, and never before a keepalive was due. Postgres sends one once it has heard
    /// nothing from the connector for half its `wal_sender_timeout`, and the connector is
    /// quiet between confirmations, the last of which went out at most `status_interval`
    /// after it was made. `None` without keepalives: then silence proves nothing.
    fn silent_at(&self) -> Option<Instant> {
        let keepalive_every = self.keepalive_every?;
        let heard_from_us = self
            .last_heard
            .max(self.last_confirmed + self.config.status_interval);
        let keepalive_due = heard_from_us + keepalive_every + Duration::from_secs(1);
        Some((self.last_heard + self.config.network_timeout).max(keepalive_due))
    }

    /// The session received nothing for longer than a healthy one can be silent: drop it.
    fn gone_silent(&mut self) -> SourceError {
        if let Some(old) = self.stream.take() {
            old.stop();
        }
        let silent_for = self.last_heard.elapsed();
        tracing::warn!(source = %self.name, ?silent_for, "replication connection silent; reconnecting");
        SourceError::Transient {
            what: format!(
                "Postgres sent nothing on the replication connection for {:.1?}, not even the keepalive it sends every {:?} (half its wal_sender_timeout): the connection looks dead (a NAT or firewall that dropped it, a frozen host); reconnecting",
                silent_for,
                self.keepalive_every.unwrap_or_default()
            ),
            source: None,
        }
    }

    /// Apply one replication event; whole transactions go to `ready`.
    async fn on_event(
        &mut self,
        received: Result<Option<ReplicationEvent>, PgWireError>,
    ) -> Result<(), SourceError> {
        self.last_heard = Instant::now();
        let event = match received {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                self.stream = None;
                return Err(SourceError::Transient {
                    what: "the replication stream ended".into(),
                    source: None,
                });
            }
            Err(e) => {
                self.stream = None;
                return Err(stream_error(
                    &self.config.slot,
                    self.config.on_slot_lost == OnSlotLost::Recreate,
                    e,
                ));
            }
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                if self.txn.is_some() {
                    return Err(protocol("a transaction began inside another".into()));
                }
                self.txn = Some(Txn {
                    commit_lsn: final_lsn.as_u64(),
                    commit_time: commit_time_micros,
                    next_index: 0,
                    messages: Vec::new(),
                    rows: Vec::new(),
                    split: false,
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                let message = pgoutput::decode(&data).map_err(|e| protocol(e.to_string()))?;
                self.change(message).await?;
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                if prefix == self.config.message_prefix {
                    if let Some((p, position)) =
                        self.emitted(transactional, lsn.as_u64(), &content)?
                    {
                        self.add_ready(vec![p], Vec::new(), position);
                    }
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let Some(txn) = self.txn.take() else {
                    return Err(protocol("a commit arrived without a transaction".into()));
                };
                let end = end_lsn.as_u64();
                if txn.messages.is_empty() && !txn.split {
                    if self.ready.is_some() {
                        // Committed after what is ready and nothing for the log: covered by it.
                        self.add_ready(Vec::new(), Vec::new(), end);
                    } else {
                        // Nothing for the log: its end is handed out as an idle position.
                        self.idle_at(end);
                    }
                } else {
                    self.add_ready(txn.messages, txn.rows, end);
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // The walsender has sent everything before wal_end: with no transaction
                // open and nothing waiting to become durable, there is nothing to lose.
                self.idle_at(wal_end.as_u64());
            }
            ReplicationEvent::StoppedAt { .. } => {
                self.stream = None;
                return Err(SourceError::Transient {
                    what: "the replication stream stopped".into(),
                    source: None,
                });
            }
        }
        Ok(())
    }

    async fn hand_out_ready(&mut self) -> Result<Batch, SourceError> {
        let r = self.ready.take().expect("something is ready");
        self.hand_out(r.messages, r.rows, r.end).await
    }

    async fn hand_out(
        &mut self,
        messages: Vec<Publish>,
        rows: Vec<i64>,
        position: Lsn,
    ) -> Result<Batch, SourceError> {
        // Recorded before the messages can reach the log: a slot loss later resets them.
        self.tracker.record(&messages).await?;
        tracing::debug!(source = %self.name, messages = messages.len(), position = %format_lsn(position), "batch handed out");
        self.handed = Some(position);
        self.handed_rows = rows;
        Ok(Batch {
            messages,
            position: SourcePosition::PostgresLsn(position),
        })
    }

    /// Nothing for the log up to `end`: remember it, to be handed out as an empty batch.
    fn idle_at(&mut self, end: Lsn) {
        if self.txn.is_none() && self.all_durable() && end > self.durable {
            self.idle = Some(self.idle.map_or(end, |i| i.max(end)));
        }
    }

    /// When the remembered idle position may be handed out.
    fn idle_due(&self) -> Option<Instant> {
        self.idle.filter(|i| *i > self.durable)?;
        (self.txn.is_none() && self.ready.is_none() && self.all_durable())
            .then(|| self.idle_handed + self.config.status_interval)
    }
}

/// What ended a wait for the replication stream.
enum Woke {
    Received(Result<Option<ReplicationEvent>, PgWireError>),
    IdleDue,
    Silent,
}

/// Sleep until `at`; never wake without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn protocol(what: String) -> SourceError {
    SourceError::Transient {
        what: format!("unexpected replication data: {what}; reconnecting"),
        source: None,
    }
}

fn lsn_of(position: &SourcePosition) -> Result<Lsn, SourceError> {
    match position {
        SourcePosition::PostgresLsn(l) => Ok(*l),
        other => Err(SourceError::Fatal {
            what: format!("the stored checkpoint {other:?} is not a Postgres position"),
            fix: "give this connector a name no other kind of connector used before".into(),
        }),
    }
}

/// Map a replication session error to a retry decision.
fn stream_error(slot_name: &str, recreate: bool, e: PgWireError) -> SourceError {
    let text = e.to_string();
    let slot_gone = match &e {
        PgWireError::Server(msg) => {
            (msg.contains("42704") && msg.contains("replication slot"))
                || msg.contains("can no longer get changes")
                || msg.contains("invalidated")
        }
        _ => false,
    };
    if slot_gone && recreate {
        // The restart finds the slot missing or lost and recovers (on_slot_lost = "recreate").
        return SourceError::Transient {
            what: format!("replication slot {slot_name:?} was lost while streaming ({text}); recovering from a new slot"),
            source: Some(Box::new(e)),
        };
    }
    match &e {
        PgWireError::Server(msg) if msg.contains("42704") && msg.contains("replication slot") => {
            SourceError::Fatal {
                what: format!("replication slot {slot_name:?} disappeared while streaming ({msg}); changes committed after the last checkpoint that Tidings had not read can no longer be streamed"),
                fix: "set `on_slot_lost = \"recreate\"` on the connector and restart: Tidings creates the slot again, continues from it, and gives every channel it published to a new epoch so clients resync; re-insert the outbox rows clients must see".into(),
            }
        }
        PgWireError::Server(msg)
            if msg.contains("can no longer get changes") || msg.contains("invalidated") =>
        {
            slot::lost(slot_name)
        }
        PgWireError::Auth(msg) => SourceError::Fatal {
            what: format!("the replication session could not authenticate: {msg}"),
            fix: "check the user and password in the URL, and that pg_hba.conf lets this user connect to this database".into(),
        },
        PgWireError::Tls(msg) => SourceError::Fatal {
            what: format!("TLS to Postgres failed: {msg}"),
            fix: "check sslmode and sslrootcert in the URL, and the server's certificate".into(),
        },
        _ => SourceError::Transient {
            what: format!("replication stream failed: {text}"),
            source: Some(Box::new(e)),
        },
    }
}

#[async_trait::async_trait]
impl Source for PostgresSource {
    async fn start(&mut self, from: Option<SourcePosition>) -> Result<(), SourceError> {
        // A restart: forget the previous session entirely.
        if let Some(old) = self.stream.take() {
            old.stop();
        }
        self.relations.clear();
        self.txn = None;
        self.handed = None;
        self.handed_rows.clear();
        self.resets.clear();
        self.ready = None;
        self.pending_reset = None;
        self.idle = None;
        let from = from.as_ref().map(lsn_of).transpose()?;
        let limit = self.config.network_timeout;
        let doing = format!("cannot connect to {}", self.settings.display());
        let sql = within(limit, self.settings.connect_sql())
            .await
            .map_err(|silent| silent.doing(&doing))?
            .map_err(|e| slot::sql_error(&doing, e))?;
        let state = slot::prepare(
            &sql,
            &self.config.slot,
            &self.config.publication,
            from,
            self.config.on_slot_lost == OnSlotLost::Recreate,
        )
        .await?;
        let wal_sender_timeout = within(
            limit,
            sql.query_one(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'",
                &[],
            ),
        )
        .await
        .map_err(|silent| silent.doing("cannot read wal_sender_timeout"))?
        .map_err(|e| slot::sql_error("cannot read wal_sender_timeout", e))?
        .get::<_, i64>(0);
        drop(sql);
        self.keepalive_every =
            (wal_sender_timeout > 0).then(|| Duration::from_millis(wal_sender_timeout as u64) / 2);
        if self.keepalive_every.is_none() {
            tracing::warn!(
                source = %self.name,
                "Postgres' wal_sender_timeout is 0, so it sends no keepalives: a replication connection that dies without a reset (a NAT or firewall that dropped it) is noticed only when TCP gives up, after many minutes; set wal_sender_timeout (the default is 60s)"
            );
        }
        self.tracker.check().await?;
        if let Some(loss) = state.lost {
            let channels = self.tracker.channels().await?;
            tracing::warn!(
                source = %self.name,
                slot = %self.config.slot,
                %loss,
                checkpoint = %format_lsn(from.unwrap_or(0)),
                resumes_at = %format_lsn(state.confirmed_flush),
                channels = channels.len(),
                "replication slot lost changes; its channels get a new epoch and clients resync"
            );
            self.pending_reset = Some(channels);
        }
        // Postgres starts at the later of our position and the slot's confirmed position.
        self.durable = from.unwrap_or(0).max(state.confirmed_flush);
        self.confirmed = self.durable;
        tracing::info!(
            source = %self.name,
            slot = %self.config.slot,
            from = %format_lsn(from.unwrap_or(0)),
            confirmed_flush = %format_lsn(state.confirmed_flush),
            slot_lag_bytes = state.lag_bytes,
            created = state.created,
            "postgres replication starting"
        );
        let mut cfg = self
            .settings
            .replication(&self.config.slot, &self.config.publication)
            .with_start_lsn(PgLsn::from_u64(from.unwrap_or(0)))
            .with_status_interval(self.config.status_interval)
            // With keepalives the connector stays quiet between confirmations, so that
            // Postgres sends them (it does once it has heard nothing for half its
            // wal_sender_timeout): the client's own idle status update must come later than
            // that, or it restarts Postgres' clock and no keepalive ever comes (as one every
            // `network_timeout` did when that was the shorter). Without keepalives it sends a
            // status update whenever idle this long.
            .with_wakeup_interval(match self.keepalive_every {
                Some(every) => limit.max(every * 2),
                None => self.config.status_interval,
            });
        if self.durable > 0 {
            cfg = cfg.with_ack_lsn(PgLsn::from_u64(self.durable));
        }
        let mut stream = ReplicationClient::connect(cfg).await.map_err(|e| {
            stream_error(
                &self.config.slot,
                self.config.on_slot_lost == OnSlotLost::Recreate,
                e,
            )
        })?;
        stream.wait_started().await.map_err(|e| {
            stream_error(
                &self.config.slot,
                self.config.on_slot_lost == OnSlotLost::Recreate,
                e,
            )
        })?;
        self.stream = Some(stream);
        self.last_heard = Instant::now();
        self.last_confirmed = self.last_heard;
        if self.lag.is_none() {
            self.lag = Some(LagReader::spawn(
                self.settings.clone(),
                self.config.slot.clone(),
                self.config.status_interval,
                self.config.network_timeout,
                self.lag_report.clone(),
            ));
        }
        if self.config.cleanup && self.cleanup.is_none() {
            self.cleanup = Some(Cleanup::spawn(
                self.settings.clone(),
                self.config.outbox(),
                self.config.cleanup_batch,
                self.config.cleanup_interval,
                self.config.network_timeout,
            ));
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        if let Some(channels) = self.pending_reset.take() {
            // The first batch after a recovered slot loss: nothing but the new position and
            // the channels whose history has a hole.
            self.resets = channels;
            let position = self.durable;
            return self.hand_out(Vec::new(), Vec::new(), position).await;
        }
        let limit = self.config.max_batch_messages;
        loop {
            // A transaction over the memory budget: what is ready goes first, then a part.
            if self.txn.as_ref().is_some_and(|t| t.messages.len() >= limit) {
                if self.ready.is_some() {
                    return self.hand_out_ready().await;
                }
                let txn = self.txn.as_mut().expect("checked");
                txn.split = true;
                let messages = std::mem::take(&mut txn.messages);
                let rows = std::mem::take(&mut txn.rows);
                let position = self.durable;
                return self.hand_out(messages, rows, position).await;
            }
            if let Some(ready) = &self.ready {
                // Take more only while it is already here; never wait with something ready.
                let full = ready.messages.len() >= limit;
                let stream = self.stream.as_mut().expect("ready implies a session");
                let more = if full {
                    None
                } else {
                    tokio::time::timeout(std::time::Duration::ZERO, stream.recv())
                        .await
                        .ok()
                };
                match more {
                    Some(received) => {
                        self.on_event(received).await?;
                        continue;
                    }
                    None => return self.hand_out_ready().await,
                }
            }
            if let Some(at) = self.idle.filter(|i| *i > self.durable) {
                if self.idle_due().is_some_and(|due| due <= Instant::now()) {
                    self.idle = None;
                    self.idle_handed = Instant::now();
                    return self.hand_out(Vec::new(), Vec::new(), at).await;
                }
            }
            let due = self.idle_due();
            let silent_at = self.silent_at();
            let Some(stream) = self.stream.as_mut() else {
                return Err(SourceError::Transient {
                    what: "the replication session is not started".into(),
                    source: None,
                });
            };
            let woke = tokio::select! {
                r = stream.recv() => Woke::Received(r),
                // Wake up to hand out the idle position if nothing else comes first.
                _ = sleep_until(due) => Woke::IdleDue,
                _ = sleep_until(silent_at) => Woke::Silent,
            };
            match woke {
                Woke::Received(received) => self.on_event(received).await?,
                Woke::IdleDue => continue,
                Woke::Silent => return Err(self.gone_silent()),
            }
        }
    }

    fn take_resets(&mut self) -> Vec<String> {
        std::mem::take(&mut self.resets)
    }

    async fn stop(&mut self) {
        // The replication connection holds the slot: close it, so another node can stream.
        if let Some(old) = self.stream.take() {
            old.stop();
        }
        self.ready = None;
        self.txn = None;
    }

    async fn committed(&mut self, position: &SourcePosition) -> Result<(), SourceError> {
        let lsn = lsn_of(position)?;
        self.durable = self.durable.max(lsn);
        let rows = std::mem::take(&mut self.handed_rows);
        if let Some(c) = &self.cleanup {
            c.durable(rows);
        }
        self.confirm(lsn);
        Ok(())
    }
}

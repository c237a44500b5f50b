//! Settings of one MongoDB connector (`[connectors.NAME]` with `type = "mongodb"`), and the one
//! `validate()` that names a bad field by its path under the connector.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tidings_connectors_core::route::ChannelTemplate;
pub use tidings_connectors_core::{ConfigProblem, OnPoison};

/// Default documents read per `find` batch of a snapshot.
pub const DEFAULT_SNAPSHOT_BATCH: u32 = 1000;
/// Default longest a quiet stream goes without storing a fresher checkpoint.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// Default most change events appended in one batch (a transaction is never split). Only a
/// backlog fills a batch (the connector appends what is ready), and then each append costs the
/// log one sync: 4096 took the runner and log alone from 22,697 to 41,056 events/s against
/// 1024 (`examples/mongodb_throughput.rs`, medians of 3 runs each, docs/mongodb.md).
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 4096;
/// Default longest a `getMore` waits on the server for new events (`maxAwaitTimeMS`).
pub const DEFAULT_MAX_AWAIT: Duration = Duration::from_millis(500);
/// Default longest wait for a `getMore` beyond `max_await` before the connection is taken for
/// dead.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

/// `full_document`: what update events carry as `fullDocument`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum FullDocument {
    /// Updates carry only their delta (`updateDescription`).
    #[serde(rename = "off")]
    Off,
    /// The document as it is when the event is read (null if deleted since).
    #[default]
    #[serde(rename = "updateLookup")]
    UpdateLookup,
    /// The post-image, when the collection records them (`changeStreamPreAndPostImages`).
    #[serde(rename = "whenAvailable")]
    WhenAvailable,
    /// The post-image; the stream fails if one is missing.
    #[serde(rename = "required")]
    Required,
}

/// `full_document_before_change`: whether events carry the document before the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum BeforeChange {
    #[default]
    #[serde(rename = "off")]
    Off,
    #[serde(rename = "whenAvailable")]
    WhenAvailable,
    #[serde(rename = "required")]
    Required,
}

/// `payload`: the shape of each message's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// `{op, ns, key, document, before, updated_fields, removed_fields, cluster_time, txn}`.
    #[default]
    Normalized,
    /// The change event itself as Extended JSON, as hosted connectors forward it.
    Raw,
}

/// `json`: which Extended JSON flavour BSON values become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JsonMode {
    /// Numbers as JSON numbers, dates as ISO-8601 `{"$date": "..."}`.
    #[default]
    Relaxed,
    /// Every type preserved (`{"$numberLong": "5"}`), for clients that convert back to BSON.
    Canonical,
}

/// `on_history_lost`: the stored resume token fell off the oplog (error 286).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnHistoryLost {
    /// Stop with an error naming the lost position and the ways to recover.
    #[default]
    Fail,
    /// Re-read the current documents and publish them, each channel that gets one restarting
    /// under a new epoch first (a `resync` control message says why); then go on.
    Resnapshot,
}

/// `on_invalidate`: the watched collection or database was dropped or renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalidate {
    /// Publish the control message, then stop with an error saying what happened.
    #[default]
    Fail,
    /// Publish the control message and open a new stream with `startAfter`.
    StartAfter,
}

/// `snapshot`: whether the first start publishes the existing documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Publish every existing document once, then stream.
    #[default]
    Initial,
    /// Stream changes from now on only.
    Never,
}

/// A connection string; its password never prints.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct MongoUri(String);

impl MongoUri {
    /// Wrap a connection string.
    pub fn new(uri: impl Into<String>) -> Self {
        MongoUri(uri.into())
    }

    /// The string itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MongoUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // mongodb://user:password@host/... → mongodb://user:<redacted>@host/...
        let s = &self.0;
        match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &s[scheme + 3..at];
                let user = creds.split(':').next().unwrap_or("");
                write!(f, "\"{}{user}:<redacted>{}\"", &s[..scheme + 3], &s[at..])
            }
            _ => fmt::Debug::fmt(s, f),
        }
    }
}

/// Settings of one MongoDB connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string (`mongodb://` or `mongodb+srv://`); change streams need a replica set
    /// or a sharded cluster.
    pub uri: MongoUri,
    /// Scope: one collection, `db.coll`.
    #[serde(default)]
    pub collection: Option<String>,
    /// Scope: several collections, each `db.coll`.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Scope: every collection of one database.
    #[serde(default)]
    pub database: Option<String>,
    /// Scope: the whole deployment.
    #[serde(default)]
    pub deployment: bool,
    /// Aggregation stages run server-side after `$changeStream`, as Extended JSON documents.
    #[serde(default)]
    pub pipeline: Vec<serde_json::Value>,
    #[serde(default)]
    pub full_document: FullDocument,
    #[serde(default)]
    pub full_document_before_change: BeforeChange,
    /// Channel template such as `store:{fullDocument.storeId}`; without one, each event must
    /// carry `_channel` (set by the pipeline), and may carry `_name` and `_headers`.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub payload: Payload,
    #[serde(default)]
    pub json: JsonMode,
    #[serde(default)]
    pub on_history_lost: OnHistoryLost,
    #[serde(default)]
    pub on_invalidate: OnInvalidate,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    #[serde(default = "default_snapshot_batch")]
    pub snapshot_batch_size: u32,
    /// Channel for lifecycle events (drop, rename, dropDatabase, invalidate, resync); default
    /// `mongodb:NAME`.
    #[serde(default)]
    pub control_channel: Option<String>,
    /// Channel that poison events go to; default `dead:NAME`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    #[serde(default)]
    pub on_poison: OnPoison,
    /// Longest a quiet stream goes without storing a fresher resume token.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// `maxAwaitTimeMS` of each `getMore`: the latency of noticing that a burst ended.
    #[serde(default = "default_max_await", with = "humantime_serde")]
    pub max_await: Duration,
    /// How long a `getMore` may go unanswered beyond `max_await` before its connection is
    /// taken for dead and the change stream is opened again from the checkpoint. A connection
    /// that dies without a reset (a NAT or firewall that dropped its state, a frozen host)
    /// would otherwise hang the stream forever: the driver sets no socket timeout.
    #[serde(default = "default_network_timeout", with = "humantime_serde")]
    pub network_timeout: Duration,
    /// Most events appended in one batch (transactions are never split).
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
}

fn default_snapshot_batch() -> u32 {
    DEFAULT_SNAPSHOT_BATCH
}
fn default_checkpoint_interval() -> Duration {
    DEFAULT_CHECKPOINT_INTERVAL
}
fn default_max_await() -> Duration {
    DEFAULT_MAX_AWAIT
}
fn default_network_timeout() -> Duration {
    DEFAULT_NETWORK_TIMEOUT
}
fn default_max_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}

fn problem(field: impl Into<String>, problem: impl Into<String>) -> ConfigProblem {
    ConfigProblem::new(field, problem)
}

/// What the connector watches, resolved from the scope fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Collection { db: String, coll: String },
    Collections(Vec<(String, String)>),
    Database(String),
    Deployment,
}

fn parse_ns(field: &str, ns: &str) -> Result<(String, String), ConfigProblem> {
    match ns.split_once('.') {
        Some((db, coll)) if valid_db(db) && !coll.is_empty() && !coll.contains('$') => {
            Ok((db.to_owned(), coll.to_owned()))
        }
        _ => Err(problem(
            field,
            format!("{ns:?} must be DATABASE.COLLECTION, for example \"shop.orders\""),
        )),
    }
}

fn valid_db(db: &str) -> bool {
    !db.is_empty() && db.len() < 64 && !db.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
}

impl MongoConfig {
    /// Settings with their defaults for `uri` watching `collection` (`db.coll`).
    pub fn for_collection(uri: MongoUri, collection: &str, channel: Option<String>) -> Self {
        MongoConfig {
            uri,
            collection: Some(collection.to_owned()),
            collections: Vec::new(),
            database: None,
            deployment: false,
            pipeline: Vec::new(),
            full_document: FullDocument::default(),
            full_document_before_change: BeforeChange::default(),
            channel,
            payload: Payload::default(),
            json: JsonMode::default(),
            on_history_lost: OnHistoryLost::default(),
            on_invalidate: OnInvalidate::default(),
            snapshot: SnapshotMode::default(),
            snapshot_batch_size: DEFAULT_SNAPSHOT_BATCH,
            control_channel: None,
            dead_letter: None,
            on_poison: OnPoison::default(),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            max_await: DEFAULT_MAX_AWAIT,
            network_timeout: DEFAULT_NETWORK_TIMEOUT,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
        }
    }

    /// The scope, from exactly one of `collection`, `collections`, `database`, `deployment`.
    pub fn scope(&self) -> Result<Scope, ConfigProblem> {
        let set = [
            self.collection.is_some(),
            !self.collections.is_empty(),
            self.database.is_some(),
            self.deployment,
        ];
        match set.iter().filter(|s| **s).count() {
            0 => {
                return Err(problem(
                    "collection",
                    "is missing: set one of `collection = \"db.coll\"`, `collections = [...]`, `database = \"db\"` or `deployment = true`",
                ))
            }
            1 => {}
            _ => {
                return Err(problem(
                    "collection",
                    "conflicts with another scope: set only one of `collection`, `collections`, `database`, `deployment`",
                ))
            }
        }
        if let Some(ns) = &self.collection {
            let (db, coll) = parse_ns("collection", ns)?;
            return Ok(Scope::Collection { db, coll });
        }
        if !self.collections.is_empty() {
            let mut out = Vec::new();
            for (i, ns) in self.collections.iter().enumerate() {
                let parsed = parse_ns(&format!("collections[{i}]"), ns)?;
                if out.contains(&parsed) {
                    return Err(problem(
                        format!("collections[{i}]"),
                        format!("{ns:?} is listed twice"),
                    ));
                }
                out.push(parsed);
            }
            return Ok(Scope::Collections(out));
        }
        if let Some(db) = &self.database {
            if !valid_db(db) {
                return Err(problem(
                    "database",
                    format!("{db:?} is not a valid database name"),
                ));
            }
            return Ok(Scope::Database(db.clone()));
        }
        Ok(Scope::Deployment)
    }

    /// The pipeline as BSON documents.
    pub fn pipeline_bson(&self) -> Result<Vec<bson::Document>, ConfigProblem> {
        self.pipeline
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let field = format!("pipeline[{i}]");
                let bson = bson::Bson::try_from(stage.clone())
                    .map_err(|e| problem(&field, format!("is not valid Extended JSON: {e}")))?;
                let bson::Bson::Document(d) = bson else {
                    return Err(problem(&field, "must be a table (one aggregation stage)"));
                };
                match d.keys().next() {
                    Some(k) if d.len() == 1 && k.starts_with('$') => Ok(d),
                    _ => Err(problem(
                        field,
                        "must hold exactly one stage such as { \"$match\" = { ... } }",
                    )),
                }
            })
            .collect()
    }

    /// The channel of lifecycle events (drop, rename, dropDatabase, invalidate, resync) of
    /// connector `name`: as configured, or `mongodb:NAME`.
    pub fn control_channel(&self, name: &str) -> String {
        self.control_channel
            .clone()
            .unwrap_or_else(|| format!("mongodb:{name}"))
    }

    /// The channel template, if routing by template.
    pub fn template(&self) -> Result<Option<ChannelTemplate>, ConfigProblem> {
        self.channel
            .as_deref()
            .map(|t| ChannelTemplate::parse(t).map_err(|e| problem("channel", e.to_string())))
            .transpose()
    }

    /// Check every setting; the first problem names its field.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        let uri = self.uri.expose();
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(problem(
                "uri",
                "must start with mongodb:// or mongodb+srv://, for example mongodb://localhost:27017/?replicaSet=rs0",
            ));
        }
        self.scope()?;
        self.pipeline_bson()?;
        if self.template()?.is_none() {
            for (field, needs) in [
                ("snapshot", self.snapshot == SnapshotMode::Initial),
                (
                    "on_history_lost",
                    self.on_history_lost == OnHistoryLost::Resnapshot,
                ),
            ] {
                if needs {
                    return Err(problem(field, "needs a `channel` template: snapshot documents do not pass through the pipeline that sets `_channel`; set `channel`, or `snapshot = \"never\"` and `on_history_lost = \"fail\"`"));
                }
            }
        }
        if self.snapshot_batch_size == 0 || self.snapshot_batch_size > 100_000 {
            return Err(problem(
                "snapshot_batch_size",
                format!(
                    "is {}; it must be between 1 and 100000",
                    self.snapshot_batch_size
                ),
            ));
        }
        if self.max_batch_events == 0 || self.max_batch_events > 8192 {
            return Err(problem(
                "max_batch_events",
                format!(
                    "is {}; it must be between 1 and 8192",
                    self.max_batch_events
                ),
            ));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(problem("checkpoint_interval", "must be longer than zero"));
        }
        if self.max_await.is_zero() || self.max_await > Duration::from_secs(60) {
            return Err(problem("max_await", "must be between 1ms and 60s"));
        }
        if self.network_timeout < Duration::from_secs(1)
            || self.network_timeout > Duration::from_secs(3600)
        {
            return Err(problem("network_timeout", "must be between 1s and 1h"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> MongoConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_full_table_parses() {
        let c = parse(
            r#"
            uri = "mongodb://app:s3cret@db1:27017/?replicaSet=rs0"
            collections = ["shop.orders", "shop.items"]
            pipeline = [ { "$match" = { "operationType" = { "$in" = ["insert", "update"] } } } ]
            full_document = "whenAvailable"
            full_document_before_change = "required"
            payload = "raw"
            json = "canonical"
            on_invalidate = "start_after"
            snapshot = "never"
            on_history_lost = "fail"
            checkpoint_interval = "2s"
            "#,
        );
        c.validate().unwrap();
        assert_eq!(
            c.scope().unwrap(),
            Scope::Collections(vec![
                ("shop".into(), "orders".into()),
                ("shop".into(), "items".into())
            ])
        );
        assert_eq!(c.full_document, FullDocument::WhenAvailable);
        assert_eq!(c.pipeline_bson().unwrap().len(), 1);
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert!(format!("{c:?}").contains("app:<redacted>@db1"), "{c:?}");
    }

    #[test]
    fn problems_name_their_field() {
        let field = |t: &str| parse(t).validate().unwrap_err().field;
        assert_eq!(field("uri = \"http://x\"\ncollection = \"a.b\""), "uri");
        assert_eq!(field("uri = \"mongodb://h\""), "collection");
        assert_eq!(
            field("uri = \"mongodb://h\"\ncollection = \"nodot\""),
            "collection"
        );
        assert_eq!(
            field("uri = \"mongodb://h\"\ncollection = \"a.b\"\ndatabase = \"a\""),
            "collection"
        );
        assert_eq!(
            field("uri = \"mongodb://h\"\ncollections = [\"a.b\", \"a\"]"),
            "collections[1]"
        );
        assert_eq!(
            field("uri = \"mongodb://h\"\ncollection = \"a.b\"\nchannel = \"s:{\""),
            "channel"
        );
        assert_eq!(
            field("uri = \"mongodb://h\"\ncollection = \"a.b\""),
            "snapshot",
            "field routing cannot route snapshots"
        );
        assert_eq!(field("uri = \"mongodb://h\"\ncollection = \"a.b\"\npipeline = [{ \"$match\" = {}, \"$set\" = {} }]"), "pipeline[0]");
        assert_eq!(
            field("uri = \"mongodb://h\"\ncollection = \"a.b\"\nchannel = \"s\"\nnetwork_timeout = \"100ms\""),
            "network_timeout"
        );
        let ok = parse("uri = \"mongodb://h\"\ncollection = \"a.b\"\nchannel = \"s\"");
        assert_eq!(ok.network_timeout, Duration::from_secs(60));
        ok.validate().unwrap();
        assert!(
            toml::from_str::<MongoConfig>("uri = \"mongodb://h\"\ncolection = \"a.b\"")
                .unwrap_err()
                .to_string()
                .contains("colection")
        );
        assert!(toml::from_str::<MongoConfig>(
            "uri = \"mongodb://h\"\ncollection = \"a.b\"\nfull_document = \"lookup\""
        )
        .is_err());
    }
}

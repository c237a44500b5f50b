//! Server configuration: a TOML file, overridden by `TIDINGS_*` environment variables and flags
//! (see [`crate::cli`]), checked once at start-up into a [`Resolved`] configuration.
//!
//! Every setting has a default that works out of the box: with no configuration at all the
//! server listens on `127.0.0.1:8080` and keeps its log in `./tidings-data`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tidings_connector_mongodb::MongoConfig;
use tidings_connector_postgres::PostgresConfig;
use tidings_connectors_core::{Connector, OnPoison};

use crate::channel::ChannelName;
use crate::grant::{ApiKey, ChannelPattern, Grant, Operation, Operations};
use crate::log::{Retention, RetentionPolicy};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./tidings-data";
/// Default largest message (name + data + headers + id), in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default most messages in one REST publish.
pub const DEFAULT_MAX_PUBLISH_BATCH: usize = 1000;
/// Default most publishes awaiting their ack on one connection.
pub const DEFAULT_MAX_INFLIGHT: usize = 256;
/// Default most connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default most connections per API key or token subject: as many as the server takes, because
/// anonymous clients of public namespaces, and browsers sharing one key, share a subject.
pub const DEFAULT_MAX_CONNECTIONS_PER_SUBJECT: usize = DEFAULT_MAX_CONNECTIONS;
/// Default most channels attached on one connection.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 1_000;
/// Default publishes per second per connection.
pub const DEFAULT_PUBLISH_RATE: u32 = 1_000;
/// Default longest time a new connection may take to send its first complete request head.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest time a keep-alive HTTP connection may wait for its next request head.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default most connections at once that have not yet sent a complete request head.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;
/// Default interval of WebSocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);
/// Default time without any frame from a client before its connection is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Default longest history page.
pub const DEFAULT_HISTORY_PAGE_MAX: usize = 1000;
/// Default time a connection may take to drain its socket before it is closed as slow.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval of heartbeat frames on an otherwise quiet connection.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default longest wait of a long-poll request with nothing to answer.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(25);
/// Default live messages buffered per channel for subscribers that fall behind.
pub const DEFAULT_LIVE_BUFFER: usize = 1024;
/// Default age after which messages are removed.
pub const DEFAULT_RETENTION_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Default interval between retention passes.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(30);
/// Default idempotency window for message ids.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A secret that never prints.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; only for comparison.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Directory of the embedded channel log.
    pub data_dir: PathBuf,
    /// Log output format.
    pub log_format: LogFormat,
    /// A directory of static files served at `/` (a web app beside its sync server); none by
    /// default. The API routes (`/v1/...`, `/healthz`, `/readyz`, `/metrics`) take precedence.
    pub web_root: Option<PathBuf>,
    /// API keys; without capabilities a key may do everything on every channel.
    pub api_keys: Vec<ApiKeyConfig>,
    pub limits: Limits,
    pub session: SessionConfig,
    pub retention: RetentionConfig,
    /// What `/readyz` answers.
    pub health: HealthConfig,
    /// Signed tokens: accepted public keys, audience and issuer.
    pub auth: AuthConfig,
    /// Browsers on other origins.
    pub cors: CorsConfig,
    /// Per-namespace settings, keyed by namespace (the part of a channel name before `:`).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Database connectors by name (`[connectors.NAME]`, see [`ConnectorConfig`]).
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// Cluster mode: the channel log on NATS JetStream (`[cluster]`); off while it names no
    /// server.
    pub cluster: ClusterConfig,
}

/// Replicas of the cluster log's stream unless configured.
pub const DEFAULT_CLUSTER_REPLICAS: usize = 3;

/// Cluster mode (`[cluster]`, `--nats`): every node keeps its channel log in one NATS JetStream
/// stream. Credentials and TLS for NATS are not settable yet (docs/cluster.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs, e.g. `["nats://h1:4222", "nats://h2:4222"]`; empty: single node.
    pub servers: Vec<String>,
    /// This node's id in logs and metrics; the host name when unset.
    pub node_id: Option<String>,
    /// Copies JetStream keeps of every message: 1, 3 or 5, at most the number of servers.
    pub replicas: usize,
    /// A connector runs on the node holding its lease; another node takes over at most this
    /// long after the holder stopped renewing it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

/// How long a connector lease lasts without renewal unless configured.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            servers: Vec::new(),
            node_id: None,
            replicas: DEFAULT_CLUSTER_REPLICAS,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl ClusterConfig {
    /// Whether the server runs in cluster mode.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// This node's id: configured, else the host name, else `node`.
    pub fn node(&self) -> String {
        self.node_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "node".to_owned())
    }
}

/// One API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    pub secret: Secret,
    /// Channel pattern to operations, e.g. `{ "store:*" = ["subscribe", "history"] }`.
    /// Absent: every operation on every channel.
    #[serde(default)]
    pub capabilities: Option<BTreeMap<String, Vec<Operation>>>,
}

/// Size and count limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_publish_batch: usize,
    pub max_inflight_publishes: usize,
    pub history_page_max: usize,
    pub max_connections: usize,
    pub max_connections_per_subject: usize,
    pub max_channels_per_connection: usize,
    /// Publishes per second per connection (bursts up to the same number).
    pub publish_rate: u32,
    /// A new connection that has not sent a complete request head within this is closed.
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// A keep-alive connection with no complete next request head within this is closed
    /// (WebSocket sessions, SSE streams and long-polls are requests in progress, never idle).
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// Most connections at once still waiting for their first complete request head; one more
    /// closes the oldest of them, so clients that send their request at once are served.
    pub max_pending_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_publish_batch: DEFAULT_MAX_PUBLISH_BATCH,
            max_inflight_publishes: DEFAULT_MAX_INFLIGHT,
            history_page_max: DEFAULT_HISTORY_PAGE_MAX,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_subject: DEFAULT_MAX_CONNECTIONS_PER_SUBJECT,
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            publish_rate: DEFAULT_PUBLISH_RATE,
            request_head_timeout: DEFAULT_REQUEST_HEAD_TIMEOUT,
            http_idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
        }
    }
}

/// Connection behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    pub live_buffer: usize,
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            send_timeout: DEFAULT_SEND_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            live_buffer: DEFAULT_LIVE_BUFFER,
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Retention for namespaces without their own, and how often it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    pub max_messages: Option<u64>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: Some(DEFAULT_RETENTION_MAX_AGE),
            max_messages: None,
            interval: DEFAULT_RETENTION_INTERVAL,
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }
}

/// What makes the node unready (`/readyz` answering 503) besides its shutdown.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A connector stopped by an error only the operator can fix makes the node unready, so a
    /// load balancer moves clients to nodes that still stream the database. Off by default: the
    /// node still serves its log, REST publishes and its other connectors, and where every node
    /// shares the broken configuration, unready nodes would be an outage of everything.
    pub unready_on_stopped_connector: bool,
}

/// Settings of one namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Anyone may subscribe and read history without credentials.
    pub public: bool,
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    pub max_messages: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: LogFormat::Text,
            web_root: None,
            api_keys: Vec::new(),
            limits: Limits::default(),
            session: SessionConfig::default(),
            retention: RetentionConfig::default(),
            health: HealthConfig::default(),
            namespaces: BTreeMap::new(),
            connectors: BTreeMap::new(),
            auth: AuthConfig::default(),
            cors: CorsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Default longest lifetime of a token a revocation must outlast: what `POST /v1/tokens` issues.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = crate::token::MAX_TTL;
/// Default most token revocations in force at once.
pub const DEFAULT_MAX_REVOCATIONS: usize = 10_000;

/// Token verification settings. HS256 tokens are verified with API key secrets (the token's
/// `kid` names the key) and need nothing here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// Public keys (PEM files) for RS256, ES256 and EdDSA tokens.
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JWKS document (JSON file) with more public keys; each key needs `alg`.
    pub jwks_file: Option<PathBuf>,
    /// The longest lifetime (`exp` - `iat`) of the tokens your issuer signs: a revocation is
    /// kept this long, then pruned. At least the 24 h `POST /v1/tokens` may issue.
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// Most revocations in force at once; `POST /v1/tokens/revoke` refuses beyond.
    pub max_revocations: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            audience: None,
            issuer: None,
            public_keys: Vec::new(),
            jwks_file: None,
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            max_revocations: DEFAULT_MAX_REVOCATIONS,
        }
    }
}

/// One public key for token verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// Matched against the token's `kid` when both are present.
    #[serde(default)]
    pub kid: Option<String>,
    /// `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// PEM file holding the public key.
    pub pem_file: PathBuf,
}

/// Cross-origin access for browsers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) allowed to call REST, SSE and long-poll, and to open
    /// WebSockets; `*` allows any. None by default.
    pub allowed_origins: Vec<String>,
}

/// A configuration problem, naming the field by its dotted path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {problem}")]
    Read { path: String, problem: String },
    #[error("config file {path} is not valid: {problem}")]
    Parse { path: String, problem: String },
    #[error("invalid configuration: `{field}` {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Name `tidings serve --postgres URL` gives its connector.
pub const DEFAULT_POSTGRES_NAME: &str = "postgres";
/// Name `tidings serve --mongodb URI` gives its connector.
pub const DEFAULT_MONGODB_NAME: &str = "mongodb";

/// One configured connector (`[connectors.NAME]`), by `type`. A connector's name keys its
/// checkpoint in the log (renaming it starts it from scratch) and names its default
/// dead-letter channel, `dead:NAME`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectorConfig {
    /// A Postgres outbox read over logical replication (`connectors/postgres`).
    Postgres(PostgresConfig),
    /// A MongoDB change stream (`connectors/mongodb`).
    Mongodb(MongoConfig),
}

impl ConnectorConfig {
    /// The connector behind the `type`: the rest of the server knows it only as this.
    pub fn connector(&self) -> &dyn Connector {
        match self {
            ConnectorConfig::Postgres(c) => c,
            ConnectorConfig::Mongodb(c) => c,
        }
    }
}

/// A connector as the configuration resolved it: its channels checked, its dead-letter
/// channel and poison policy decided.
#[derive(Debug, Clone)]
pub struct ResolvedConnector {
    /// The configured name (`[connectors.NAME]`).
    pub name: String,
    /// Where its poison changes go (with `on_poison = "dead_letter"`), and its own dead letters.
    pub dead_letter: ChannelName,
    /// What to do with a change that cannot become a message.
    pub on_poison: OnPoison,
}

/// A configuration checked once by [`Config::resolve`]: what the server starts from. Reads as
/// the [`Config`] it was resolved from.
#[derive(Debug, Clone)]
pub struct Resolved {
    config: Config,
    connectors: Vec<ResolvedConnector>,
}

impl Resolved {
    /// The connectors, in name order.
    pub fn connectors(&self) -> &[ResolvedConnector] {
        &self.connectors
    }

    /// The configuration and the connectors, apart.
    pub fn into_parts(self) -> (Config, Vec<ResolvedConnector>) {
        (self.config, self.connectors)
    }
}

impl std::ops::Deref for Resolved {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

fn valid_connector_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A channel connector `name` writes to besides its routed ones, set by `field`.
fn own_channel(name: &str, field: &str, text: &str) -> Result<ChannelName, ConfigError> {
    ChannelName::parse(text).map_err(|e| {
        invalid(
            format!("connectors.{name}.{field}"),
            format!("{text:?} is not a valid channel name: {e}"),
        )
    })
}

/// Check every connector, in name order; the first problem is named by its dotted path.
fn resolve_connectors(
    connectors: &BTreeMap<String, ConnectorConfig>,
) -> Result<Vec<ResolvedConnector>, ConfigError> {
    let mut resolved = Vec::with_capacity(connectors.len());
    for (name, config) in connectors {
        if !valid_connector_name(name) {
            return Err(invalid(
                format!("connectors.{name:?}"),
                "is not a valid connector name: use 1 to 64 letters, digits, '_' and '-'",
            ));
        }
        let connector = config.connector();
        connector
            .validate()
            .map_err(|p| invalid(format!("connectors.{name}.{}", p.field), p.problem))?;
        let dead_letter = match connector.dead_letter() {
            Some(text) => own_channel(name, "dead_letter", text)?,
            None => own_channel(name, "dead_letter", &format!("dead:{name}"))?,
        };
        for (field, text) in connector.own_channels(name) {
            own_channel(name, field, &text)?;
        }
        resolved.push(ResolvedConnector {
            name: name.clone(),
            dead_letter,
            on_poison: connector.on_poison(),
        });
    }
    Ok(resolved)
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|problem| ConfigError::Parse {
            path: path.display().to_string(),
            problem,
        })
    }

    /// Parse TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Add an API key given as `KEY_ID:SECRET` (flags and environment), with every capability.
    pub fn add_api_key(&mut self, spec: &str) -> Result<(), ConfigError> {
        let (id, secret) = spec.split_once(':').ok_or_else(|| {
            invalid(
                "api_keys",
                format!("entry {:?} must be KEY_ID:SECRET", redact(spec)),
            )
        })?;
        self.api_keys.push(ApiKeyConfig {
            id: id.to_owned(),
            secret: Secret::new(secret),
            capabilities: None,
        });
        Ok(())
    }

    /// Check every value and resolve what the server runs from them, once: the first problem
    /// found is named by its dotted path. The program starts from the [`Resolved`]
    /// configuration and checks nothing again.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        self.check_settings()?;
        let connectors = resolve_connectors(&self.connectors)?;
        Ok(Resolved {
            config: self,
            connectors,
        })
    }

    /// Check every value as [`Config::resolve`] does, keeping nothing (for tests and tools).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_settings()?;
        resolve_connectors(&self.connectors).map(drop)
    }

    /// The `[cluster]` section.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        for (i, url) in c.servers.iter().enumerate() {
            let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
            let host = url.split_once("://").map_or("", |(_, rest)| rest);
            if !scheme_ok || host.is_empty() || host.contains([' ', ',', '/']) {
                return Err(invalid(
                    format!("cluster.servers[{i}]"),
                    format!("{url:?} is not a NATS server URL; write nats://HOST:PORT (several: comma separated in --nats or TIDINGS_NATS_URLS)"),
                ));
            }
        }
        if !matches!(c.replicas, 1 | 3 | 5) {
            return Err(invalid(
                "cluster.replicas",
                format!(
                    "is {}; JetStream keeps 1, 3 or 5 replicas (3 survives losing one NATS server)",
                    c.replicas
                ),
            ));
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&c.lease_ttl) {
            return Err(invalid(
                "cluster.lease_ttl",
                "must be between 2s and 1h (it is how long a connector is down when its node dies)",
            ));
        }
        if let Some(id) = &c.node_id {
            if id.is_empty() || id.len() > 64 || id.contains(char::is_whitespace) {
                return Err(invalid(
                    "cluster.node_id",
                    "must be 1 to 64 characters without spaces",
                ));
            }
        }
        Ok(())
    }

    /// Every setting but the connectors.
    fn check_settings(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.web_root {
            if !dir.is_dir() {
                return Err(invalid(
                    "web_root",
                    format!(
                        "{} is not a directory; point it at the folder of the pages to serve, or leave it unset",
                        dir.display()
                    ),
                ));
            }
        }
        let l = &self.limits;
        if !(1024..=16 * 1024 * 1024).contains(&l.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "is {}; it must be between 1024 and 16777216",
                    l.max_message_bytes
                ),
            ));
        }
        for (field, value, max) in [
            ("limits.max_publish_batch", l.max_publish_batch, 100_000),
            (
                "limits.max_inflight_publishes",
                l.max_inflight_publishes,
                100_000,
            ),
            ("limits.history_page_max", l.history_page_max, 100_000),
            ("session.live_buffer", self.session.live_buffer, 1 << 20),
            ("limits.max_connections", l.max_connections, 10_000_000),
            (
                "limits.max_connections_per_subject",
                l.max_connections_per_subject,
                10_000_000,
            ),
            (
                "limits.max_channels_per_connection",
                l.max_channels_per_connection,
                1_000_000,
            ),
            ("limits.publish_rate", l.publish_rate as usize, 10_000_000),
            (
                "limits.max_pending_connections",
                l.max_pending_connections,
                10_000_000,
            ),
            ("auth.max_revocations", self.auth.max_revocations, 1_000_000),
        ] {
            if value == 0 || value > max {
                return Err(invalid(
                    field,
                    format!("is {value}; it must be between 1 and {max}"),
                ));
            }
        }
        for (field, value) in [
            ("session.send_timeout", self.session.send_timeout),
            (
                "session.heartbeat_interval",
                self.session.heartbeat_interval,
            ),
            ("retention.interval", self.retention.interval),
            ("retention.dedup_window", self.retention.dedup_window),
            ("limits.request_head_timeout", l.request_head_timeout),
            ("limits.http_idle_timeout", l.http_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be longer than zero"));
            }
        }
        if l.request_head_timeout > l.http_idle_timeout {
            return Err(invalid(
                "limits.request_head_timeout",
                "must not be longer than limits.http_idle_timeout, which bounds every request head too",
            ));
        }
        if self.auth.max_token_lifetime < crate::token::MAX_TTL {
            return Err(invalid(
                "auth.max_token_lifetime",
                format!(
                    "is {}; it must be at least {} (the longest lifetime POST /v1/tokens issues), or a revoked token could outlive its revocation",
                    humantime::format_duration(self.auth.max_token_lifetime),
                    humantime::format_duration(crate::token::MAX_TTL)
                ),
            ));
        }
        if self.auth.max_token_lifetime > Duration::from_secs(366 * 24 * 3600) {
            return Err(invalid(
                "auth.max_token_lifetime",
                "must be at most 366 days; sign shorter-lived tokens and renew them",
            ));
        }
        if self.session.idle_timeout <= self.session.ping_interval {
            return Err(invalid(
                "session.idle_timeout",
                "must be longer than session.ping_interval, or every idle client is cut before it can answer a ping",
            ));
        }
        self.check_cluster()?;
        let mut seen = std::collections::HashSet::new();
        for (i, key) in self.api_keys.iter().enumerate() {
            if key.id.is_empty() || key.id.contains(':') || key.id.contains(',') {
                return Err(invalid(
                    format!("api_keys[{i}].id"),
                    "must be non-empty and contain neither ':' nor ','",
                ));
            }
            if !seen.insert(key.id.as_str()) {
                return Err(invalid(
                    format!("api_keys[{i}].id"),
                    format!("{:?} is configured twice; key ids must be unique", key.id),
                ));
            }
            if key.secret.expose().len() < 8 {
                return Err(invalid(
                    format!("api_keys[{i}].secret"),
                    "is shorter than 8 characters; use a long random secret",
                ));
            }
            if let Some(caps) = &key.capabilities {
                for pattern in caps.keys() {
                    ChannelPattern::parse(pattern).map_err(|e| {
                        invalid(
                            format!("api_keys[{i}].capabilities.{pattern:?}"),
                            e.to_string(),
                        )
                    })?;
                }
            }
        }
        for (i, k) in self.auth.public_keys.iter().enumerate() {
            if !["RS256", "ES256", "EdDSA"].contains(&k.algorithm.as_str()) {
                return Err(invalid(
                    format!("auth.public_keys[{i}].algorithm"),
                    format!("is {:?}; use RS256, ES256 or EdDSA", k.algorithm),
                ));
            }
        }
        for (i, origin) in self.cors.allowed_origins.iter().enumerate() {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin.parse::<axum::http::HeaderValue>().is_ok());
            if !ok {
                return Err(invalid(
                    format!("cors.allowed_origins[{i}]"),
                    format!("is {origin:?}; write origins like `https://app.example.com` (no path, no trailing slash), or `*`"),
                ));
            }
        }
        for name in self.namespaces.keys() {
            if crate::channel::ChannelName::parse(name).is_err() || name.contains(':') {
                return Err(invalid(
                    format!("namespaces.{name:?}"),
                    "is not a valid namespace: use letters, digits and _ - . @ = + without ':'",
                ));
            }
        }
        Ok(())
    }

    /// The API keys as the authenticator wants them. Call after [`Config::validate`].
    pub fn api_keys(&self) -> Vec<ApiKey> {
        self.api_keys
            .iter()
            .map(|k| ApiKey {
                id: k.id.clone(),
                secret: k.secret.expose().to_owned(),
                grants: match &k.capabilities {
                    None => vec![Grant {
                        pattern: ChannelPattern::parse("*").expect("valid pattern"),
                        operations: Operations::all(),
                    }],
                    Some(caps) => caps
                        .iter()
                        .filter_map(|(pattern, ops)| {
                            Some(Grant {
                                pattern: ChannelPattern::parse(pattern).ok()?,
                                operations: ops.iter().copied().collect(),
                            })
                        })
                        .collect(),
                },
            })
            .collect()
    }

    /// The token verifier: API key secrets for HS256, and the configured public keys (files are
    /// read here, so a missing or bad key fails start-up naming its field).
    pub fn token_verifier(&self) -> Result<crate::token::TokenVerifier, ConfigError> {
        let mut pems = Vec::new();
        for (i, k) in self.auth.public_keys.iter().enumerate() {
            let field = format!("auth.public_keys[{i}].pem_file");
            let text = std::fs::read_to_string(&k.pem_file).map_err(|e| {
                invalid(&field, format!("cannot read {}: {e}", k.pem_file.display()))
            })?;
            let alg = match k.algorithm.as_str() {
                "RS256" => jsonwebtoken::Algorithm::RS256,
                "ES256" => jsonwebtoken::Algorithm::ES256,
                _ => jsonwebtoken::Algorithm::EdDSA,
            };
            crate::token::load_public_keys(&[(k.kid.clone(), alg, text.clone())], None)
                .map_err(|e| invalid(&field, e))?;
            pems.push((k.kid.clone(), alg, text));
        }
        let jwks = match &self.auth.jwks_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "auth.jwks_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        let public = crate::token::load_public_keys(&pems, jwks.as_deref())
            .map_err(|e| invalid("auth.jwks_file", e))?;
        Ok(crate::token::TokenVerifier::new(
            &self.api_keys(),
            public,
            self.auth.audience.clone(),
            self.auth.issuer.clone(),
        ))
    }

    /// Namespaces anyone may subscribe to.
    pub fn public_namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, ns)| ns.public)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The retention policy for the log.
    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            default: Retention {
                max_age: self.retention.max_age,
                max_messages: self.retention.max_messages,
            },
            namespaces: self
                .namespaces
                .iter()
                .filter(|(_, ns)| ns.max_age.is_some() || ns.max_messages.is_some())
                .map(|(name, ns)| {
                    (
                        name.clone(),
                        Retention {
                            max_age: ns.max_age.or(self.retention.max_age),
                            max_messages: ns.max_messages.or(self.retention.max_messages),
                        },
                    )
                })
                .collect(),
        }
    }
}

fn redact(spec: &str) -> String {
    match spec.split_once(':') {
        Some((id, _)) => format!("{id}:<redacted>"),
        None if spec.len() > 4 => format!("{}…", &spec[..4.min(spec.len())]),
        None => spec.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_documented_default() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.limits.max_message_bytes, 64 * 1024);
        c.validate().unwrap();
    }

    #[test]
    fn full_config_parses() {
        let c = Config::from_toml(
            r#"
            listen = "0.0.0.0:9000"
            data_dir = "/var/lib/tidings"
            log_format = "json"
            [[api_keys]]
            id = "backend"
            secret = "0123456789abcdef"
            [[api_keys]]
            id = "web"
            secret = "fedcba9876543210"
            capabilities = { "store:*" = ["subscribe", "history"] }
            [limits]
            max_message_bytes = 131072
            [session]
            send_timeout = "5s"
            [retention]
            max_age = "2h"
            [health]
            unready_on_stopped_connector = true
            [namespaces.news]
            public = true
            max_messages = 100
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.session.send_timeout, Duration::from_secs(5));
        assert!(c.health.unready_on_stopped_connector);
        assert!(!Config::default().health.unready_on_stopped_connector);
        assert_eq!(c.public_namespaces(), vec!["news".to_string()]);
        let policy = c.retention_policy();
        let news = policy.for_namespace("news");
        assert_eq!(news.max_messages, Some(100));
        assert_eq!(news.max_age, Some(Duration::from_secs(7200)));
        let keys = c.api_keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].grants.len(), 1);
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "secrets never print"
        );
    }

    #[test]
    fn revocation_settings_parse_and_name_a_bad_value() {
        let c = Config::from_toml("[auth]\nmax_token_lifetime = \"7d\"\nmax_revocations = 5\n")
            .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.auth.max_token_lifetime,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(c.auth.max_revocations, 5);
        let d = Config::default().auth;
        assert_eq!(
            (d.max_token_lifetime, d.max_revocations),
            (DEFAULT_MAX_TOKEN_LIFETIME, DEFAULT_MAX_REVOCATIONS)
        );
        for (toml, field, says) in [
            (
                "max_token_lifetime = \"1h\"",
                "auth.max_token_lifetime",
                "at least 1day",
            ),
            (
                "max_token_lifetime = \"400d\"",
                "auth.max_token_lifetime",
                "366 days",
            ),
            (
                "max_revocations = 0",
                "auth.max_revocations",
                "between 1 and",
            ),
        ] {
            let e = Config::from_toml(&format!("[auth]\n{toml}\n"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains(says), "{toml}: {e}");
        }
    }

    #[test]
    fn http_connection_limits_parse_and_name_a_bad_value() {
        let c = Config::from_toml(
            "[limits]\nrequest_head_timeout = \"2s\"\nhttp_idle_timeout = \"5s\"\nmax_pending_connections = 50\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.request_head_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.http_idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_pending_connections, 50);
        let d = Config::default().limits;
        assert_eq!(
            (
                d.request_head_timeout,
                d.http_idle_timeout,
                d.max_pending_connections
            ),
            (Duration::from_secs(10), Duration::from_secs(60), 1024)
        );
        let field = |toml: &str| match Config::from_toml(toml).map(|c| c.validate()) {
            Ok(Err(ConfigError::Invalid { field, .. })) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(
            field("[limits]\nrequest_head_timeout = \"0s\"\n"),
            "limits.request_head_timeout"
        );
        assert_eq!(
            field("[limits]\nhttp_idle_timeout = \"0s\"\n"),
            "limits.http_idle_timeout"
        );
        assert_eq!(
            field("[limits]\nrequest_head_timeout = \"90s\"\n"),
            "limits.request_head_timeout"
        );
        assert_eq!(
            field("[limits]\nmax_pending_connections = 0\n"),
            "limits.max_pending_connections"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Config::from_toml("[limits]\nmax_mesage_bytes = 5\n").unwrap_err();
        assert!(err.contains("max_mesage_bytes"), "{err}");
    }

    #[test]
    fn the_cluster_section_is_checked_and_off_by_default() {
        let c = Config::from_toml("").unwrap();
        assert!(!c.cluster.enabled(), "the embedded log is the default");
        let c = Config::from_toml(
            "[cluster]\nservers = [\"nats://h1:4222\", \"nats://h2:4222\"]\nnode_id = \"web-1\"\nreplicas = 3\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.node(), "web-1");
        for (toml, field) in [
            ("[cluster]\nreplicas = 2\n", "cluster.replicas"),
            ("[cluster]\nservers = [\"h1:4222\"]\n", "cluster.servers[0]"),
            ("[cluster]\nnode_id = \"a b\"\n", "cluster.node_id"),
        ] {
            let err = Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
        assert!(
            Config::from_toml("[cluster]\nserver = []\n").is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = Config::default();
        c.limits.max_message_bytes = 10;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_message_bytes"), "{err}");

        let mut c = Config::default();
        c.add_api_key("a:0123456789").unwrap();
        c.add_api_key("a:9876543210").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("api_keys[1].id"), "{err}");

        let mut c = Config::default();
        c.add_api_key("a:short").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("api_keys[0].secret"));

        let mut c = Config::default();
        assert!(c.add_api_key("no-colon-here").is_err());

        let c = Config::from_toml(
            "[[api_keys]]\nid = \"k\"\nsecret = \"0123456789\"\ncapabilities = { \"st*re\" = [\"publish\"] }\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("api_keys[0].capabilities"), "{err}");
    }
}

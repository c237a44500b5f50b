//! The command line: `tidings serve` and its flags. Every flag has a `TIDINGS_*` environment
//! variable; flags and variables override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, Resolved};
use crate::runtime::Server;

/// Tidings: database changes to every device, in order, exactly once.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the server: channel log, REST API and WebSocket endpoint.
    Serve(ServeArgs),
    /// Create or upgrade what a connector needs in its database (the Postgres outbox).
    Migrate(MigrateArgs),
    /// Print the messages of channels as they arrive (a subscriber for operators).
    Tail(crate::tail::TailArgs),
}

/// Flags of `tidings serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (optional; every setting has a default).
    #[arg(long, env = "TIDINGS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TIDINGS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded channel log [default: ./tidings-data].
    #[arg(long, env = "TIDINGS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve the static files of this directory at `/` (a web app beside its sync server).
    #[arg(long, env = "TIDINGS_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// API key as KEY_ID:SECRET, with every capability (repeatable; env: comma-separated).
    #[arg(
        long = "api-key",
        env = "TIDINGS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Namespace anyone may subscribe to without a key (repeatable; env: comma-separated).
    #[arg(
        long = "public-namespace",
        env = "TIDINGS_PUBLIC_NAMESPACES",
        value_delimiter = ','
    )]
    pub public_namespaces: Vec<String>,
    /// Log output format [default: text].
    #[arg(long, env = "TIDINGS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest message in bytes (id + name + data + headers) [default: 65536].
    #[arg(long, env = "TIDINGS_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Most messages in one REST publish [default: 1000].
    #[arg(long, env = "TIDINGS_MAX_PUBLISH_BATCH")]
    pub max_publish_batch: Option<usize>,
    /// Publishes awaiting their ack per connection before reading pauses [default: 256].
    #[arg(long, env = "TIDINGS_MAX_INFLIGHT_PUBLISHES")]
    pub max_inflight_publishes: Option<usize>,
    /// Largest history page [default: 1000].
    #[arg(long, env = "TIDINGS_HISTORY_PAGE_MAX")]
    pub history_page_max: Option<usize>,
    /// Most connections (WebSocket, SSE, long-poll) in total [default: 100000].
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections per API key or token subject [default: 100000].
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_SUBJECT")]
    pub max_connections_per_subject: Option<usize>,
    /// Live messages buffered per channel before a subscriber reads the log [default: 1024].
    #[arg(long, env = "TIDINGS_LIVE_BUFFER")]
    pub live_buffer: Option<usize>,
    /// How often retention runs, e.g. "30s".
    #[arg(long, env = "TIDINGS_RETENTION_INTERVAL", value_parser = humantime::parse_duration)]
    pub retention_interval: Option<Duration>,
    /// Time a connection may take to drain its socket before it is closed, e.g. "10s".
    #[arg(long, env = "TIDINGS_SEND_TIMEOUT", value_parser = humantime::parse_duration)]
    pub send_timeout: Option<Duration>,
    /// Heartbeat interval on quiet connections, e.g. "15s".
    #[arg(long, env = "TIDINGS_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Default retention: maximum message age, e.g. "24h".
    #[arg(long, env = "TIDINGS_RETENTION_MAX_AGE", value_parser = humantime::parse_duration)]
    pub retention_max_age: Option<Duration>,
    /// Default retention: most messages kept per channel.
    #[arg(long, env = "TIDINGS_RETENTION_MAX_MESSAGES")]
    pub retention_max_messages: Option<u64>,
    /// Idempotency window for message ids, e.g. "24h".
    #[arg(long, env = "TIDINGS_DEDUP_WINDOW", value_parser = humantime::parse_duration)]
    pub dedup_window: Option<Duration>,
    /// Run a Postgres outbox connector named "postgres" on this database (slot `tidings`,
    /// the outbox `tidings migrate` creates), e.g. postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "TIDINGS_POSTGRES_URL", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Run a MongoDB connector named "mongodb" on this deployment (a replica set), e.g.
    /// mongodb://HOST:27017/?replicaSet=rs0; needs --collection and --channel.
    #[arg(long, env = "TIDINGS_MONGODB_URI", hide_env_values = true)]
    pub mongodb: Option<String>,
    /// Collection the --mongodb connector watches, as DB.COLL.
    #[arg(long, env = "TIDINGS_MONGODB_COLLECTION")]
    pub collection: Option<String>,
    /// Channel template of the --mongodb connector, e.g. "store:{fullDocument.storeId}".
    #[arg(long, env = "TIDINGS_MONGODB_CHANNEL")]
    pub channel: Option<String>,
    /// Cluster mode: keep the channel log in NATS JetStream on these servers (nats-server
    /// 2.12+ with JetStream), comma separated, e.g. nats://h1:4222,nats://h2:4222. Every node
    /// given the same servers serves the same channels.
    #[arg(long = "nats", env = "TIDINGS_NATS_URLS", value_delimiter = ',')]
    pub nats: Vec<String>,
    /// This node's id in cluster mode (logs, metrics); the host name by default.
    #[arg(long, env = "TIDINGS_NODE_ID")]
    pub node_id: Option<String>,
    /// Copies JetStream keeps of every message in cluster mode: 1, 3 (default) or 5.
    #[arg(long, env = "TIDINGS_NATS_REPLICAS")]
    pub nats_replicas: Option<usize>,
    /// Cluster mode: how long a connector's lease lasts without renewal, e.g. "15s" (the
    /// default): another node takes the connector over at most this long after its node died.
    #[arg(long, env = "TIDINGS_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
}

/// Flags of `tidings migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Postgres database to prepare: creates the `tidings` schema, the outbox table and its
    /// publication (idempotent), e.g. postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "TIDINGS_POSTGRES_URL", hide_env_values = true)]
    pub postgres: String,
    /// Replication slot to create now (if missing), so that outbox rows written before
    /// Tidings first starts are streamed too.
    #[arg(long, default_value = tidings_connector_postgres::config::DEFAULT_SLOT)]
    pub slot: String,
}

impl ServeArgs {
    /// The configuration: file (if any), then environment and flags on top, checked once.
    pub fn config(&self) -> Result<Resolved, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.web_root {
            config.web_root = Some(v.clone());
        }
        for spec in self.api_keys.iter().filter(|s| !s.trim().is_empty()) {
            config.add_api_key(spec.trim())?;
        }
        for ns in self
            .public_namespaces
            .iter()
            .filter(|s| !s.trim().is_empty())
        {
            config
                .namespaces
                .entry(ns.trim().to_owned())
                .or_default()
                .public = true;
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
        let servers: Vec<String> = self
            .nats
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if !servers.is_empty() {
            config.cluster.servers = servers;
        }
        if let Some(v) = &self.node_id {
            config.cluster.node_id = Some(v.clone());
        }
        if let Some(v) = self.nats_replicas {
            config.cluster.replicas = v;
        }
        if let Some(v) = self.lease_ttl {
            config.cluster.lease_ttl = v;
        }
        if let Some(v) = self.max_message_bytes {
            config.limits.max_message_bytes = v;
        }
        if let Some(v) = self.max_publish_batch {
            config.limits.max_publish_batch = v;
        }
        if let Some(v) = self.max_inflight_publishes {
            config.limits.max_inflight_publishes = v;
        }
        if let Some(v) = self.history_page_max {
            config.limits.history_page_max = v;
        }
        if let Some(v) = self.max_connections {
            config.limits.max_connections = v;
        }
        if let Some(v) = self.max_connections_per_subject {
            config.limits.max_connections_per_subject = v;
        }
        if let Some(v) = self.live_buffer {
            config.session.live_buffer = v;
        }
        if let Some(v) = self.retention_interval {
            config.retention.interval = v;
        }
        if let Some(v) = self.send_timeout {
            config.session.send_timeout = v;
        }
        if let Some(v) = self.heartbeat_interval {
            config.session.heartbeat_interval = v;
        }
        if let Some(v) = self.retention_max_age {
            config.retention.max_age = Some(v);
        }
        if let Some(v) = self.retention_max_messages {
            config.retention.max_messages = Some(v);
        }
        if let Some(v) = self.dedup_window {
            config.retention.dedup_window = v;
        }
        if let Some(url) = &self.postgres {
            use crate::config::{ConnectorConfig, DEFAULT_POSTGRES_NAME};
            use tidings_connector_postgres::{ConnectionUrl, PostgresConfig};
            let url = ConnectionUrl::new(url.trim());
            match config.connectors.get_mut(DEFAULT_POSTGRES_NAME) {
                Some(ConnectorConfig::Postgres(pg)) => pg.url = url,
                _ => {
                    config.connectors.insert(
                        DEFAULT_POSTGRES_NAME.to_owned(),
                        ConnectorConfig::Postgres(PostgresConfig::with_defaults(url)),
                    );
                }
            }
        }
        self.mongodb_connector(&mut config)?;
        config.resolve()
    }

    /// `--mongodb URI --collection DB.COLL --channel TEMPLATE`: the connector named "mongodb".
    fn mongodb_connector(&self, config: &mut Config) -> Result<(), ConfigError> {
        use crate::config::{ConnectorConfig, DEFAULT_MONGODB_NAME};
        use tidings_connector_mongodb::{MongoConfig, MongoUri};
        let Some(uri) = &self.mongodb else {
            if self.collection.is_some() || self.channel.is_some() {
                return Err(ConfigError::Invalid {
                    field: "connectors.mongodb.uri".into(),
                    problem: "is missing: --collection and --channel belong to --mongodb URI (or TIDINGS_MONGODB_URI)".into(),
                });
            }
            return Ok(());
        };
        let uri = MongoUri::new(uri.trim());
        match config.connectors.get_mut(DEFAULT_MONGODB_NAME) {
            Some(ConnectorConfig::Mongodb(m)) => {
                m.uri = uri;
                if let Some(c) = &self.collection {
                    m.collection = Some(c.trim().to_owned());
                }
                if let Some(t) = &self.channel {
                    m.channel = Some(t.trim().to_owned());
                }
            }
            _ => {
                let collection = self.collection.as_deref().map(str::trim).ok_or_else(|| {
                    ConfigError::Invalid {
                        field: "connectors.mongodb.collection".into(),
                        problem: "is missing: pass --collection DB.COLL (or TIDINGS_MONGODB_COLLECTION) with --mongodb".into(),
                    }
                })?;
                let channel = self.channel.as_deref().map(|t| t.trim().to_owned());
                config.connectors.insert(
                    DEFAULT_MONGODB_NAME.to_owned(),
                    ConnectorConfig::Mongodb(MongoConfig::for_collection(uri, collection, channel)),
                );
            }
        }
        Ok(())
    }
}

/// Set up logging in the configured format. `RUST_LOG` refines the level (default `info`, with
/// Postgres's notices such as "schema already exists, skipping" kept out).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    // Colours only for a person at a terminal, not in files, pipes or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Run `tidings serve` until SIGTERM or SIGINT, then shut down gracefully.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    init_tracing(config.log_format);
    let server = Server::start_resolved(config).await?;
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; closing connections with a resume-elsewhere reason");
        token.cancel();
    });
    server.wait().await;
    Ok(())
}

/// Run `tidings migrate`: apply the Postgres outbox migrations.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    init_tracing(LogFormat::Text);
    use tidings_connector_postgres::SlotOutcome;
    let report =
        tidings_connector_postgres::migrate(args.postgres.trim(), Some(&args.slot)).await?;
    if report.applied.is_empty() {
        println!("the database is up to date (migration {})", report.current);
    } else {
        println!(
            "applied migrations {:?}; the database is at migration {}",
            report.applied, report.current
        );
    }
    match report.slot {
        SlotOutcome::Created { name, lsn } => println!(
            "created replication slot {name} at {lsn}: outbox rows committed from now on will be streamed"
        ),
        SlotOutcome::Existed { name } => println!("replication slot {name} exists"),
        SlotOutcome::NotCreated { reason } => eprintln!(
            "warning: replication slot {} not created ({reason}); the connector creates it when it first starts, and outbox rows committed before then are not streamed",
            args.slot
        ),
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut all = vec!["tidings", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Serve(a) => a,
            _ => unreachable!("a serve command"),
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tidings.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[limits]\nmax_message_bytes = 2048\n[[api_keys]]\nid = \"file\"\nsecret = \"file-secret\"\n",
        )
        .unwrap();
        let args = serve_args(&[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "0.0.0.0:7000",
            "--api-key",
            "a:secret-aaa",
            "--api-key",
            "b:secret-bbb",
            "--send-timeout",
            "3s",
            "--public-namespace",
            "news",
        ]);
        let c = args.config().unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(c.limits.max_message_bytes, 2048, "the file's value stays");
        assert_eq!(c.api_keys.len(), 3);
        assert_eq!(c.session.send_timeout, Duration::from_secs(3));
        assert_eq!(c.public_namespaces(), vec!["news".to_string()]);
    }

    #[test]
    fn mongodb_flags_make_a_connector() {
        let c = serve_args(&[
            "--mongodb",
            "mongodb://h:27017/?replicaSet=rs0",
            "--collection",
            "shop.orders",
            "--channel",
            "store:{fullDocument.storeId}",
        ])
        .config()
        .unwrap();
        match c.connectors.get("mongodb") {
            Some(crate::config::ConnectorConfig::Mongodb(m)) => {
                assert_eq!(m.collection.as_deref(), Some("shop.orders"));
                assert_eq!(m.channel.as_deref(), Some("store:{fullDocument.storeId}"));
            }
            other => panic!("no mongodb connector: {other:?}"),
        }
        let err = serve_args(&["--mongodb", "mongodb://h"])
            .config()
            .unwrap_err();
        assert!(
            err.to_string().contains("connectors.mongodb.collection"),
            "{err}"
        );
        let err = serve_args(&["--mongodb", "mongodb://h", "--collection", "a.b"])
            .config()
            .unwrap_err();
        assert!(
            err.to_string().contains("connectors.mongodb.snapshot"),
            "{err}"
        );
        let err = serve_args(&["--collection", "a.b"]).config().unwrap_err();
        assert!(err.to_string().contains("connectors.mongodb.uri"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let err = serve_args(&["--max-message-bytes", "10"])
            .config()
            .unwrap_err();
        assert!(
            err.to_string().contains("limits.max_message_bytes"),
            "{err}"
        );
        let err = serve_args(&["--api-key", "nocolon"]).config().unwrap_err();
        assert!(err.to_string().contains("api_keys"), "{err}");
        let err = serve_args(&["--config", "/nonexistent/tidings.toml"])
            .config()
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tidings.toml"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["tidings", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["tidings", "serve", "--send-timeout", "soon"]).is_err());
    }
}

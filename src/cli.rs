//! The command line: `tidings serve` and its flags. Every flag has a `TIDINGS_*` environment
//! variable; flags and variables override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat};
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
pub enum Command {
    /// Run the server: channel log, REST API and WebSocket endpoint.
    Serve(ServeArgs),
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
}

impl ServeArgs {
    /// The configuration: file (if any), then environment and flags on top, validated.
    pub fn config(&self) -> Result<Config, ConfigError> {
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
        if let Some(v) = self.max_message_bytes {
            config.limits.max_message_bytes = v;
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
        config.validate()?;
        Ok(config)
    }
}

/// Set up logging in the configured format. `RUST_LOG` refines the level (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    let server = Server::start(config).await?;
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; closing connections with a resume-elsewhere reason");
        token.cancel();
    });
    server.wait().await;
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

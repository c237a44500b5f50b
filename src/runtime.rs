//! Wiring: open the log, build the hub and the server, run until shutdown, then drain.
//!
//! Shutdown order: stop accepting connections and tell every session to close with a
//! "going away, resume elsewhere" reason; let in-flight publishes finish (their appends are
//! durable before they answer); then close the log, which commits whatever is queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{Config, Resolved};
use crate::connector::{ConnectorRegistry, Sources};
use crate::hub::Hub;
use crate::log::embedded::{EmbeddedLog, EmbeddedOptions};
use crate::log::jetstream::{ClusterError, JetStreamLog, JetStreamOptions};
use crate::log::{ChannelLog, Leases, LogError};
use crate::metrics::Metrics;
use crate::revocation::{FileStore, Revocations};
use crate::server::{router, AppState};

/// How long shutdown waits for sessions and requests to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Revocations(#[from] crate::revocation::StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "cannot listen on {addr}: {source}; choose another address with --listen or TIDINGS_LISTEN"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    log: Arc<dyn ChannelLog>,
    /// Fatal errors of sources; each stopped its source, not the server.
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    /// The status of this server's connectors.
    connectors: Arc<ConnectorRegistry>,
}

impl Server {
    /// Check `config`, open the log, bind, and start serving, with the configured connectors.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        Self::launch(config.resolve()?, Vec::new()).await
    }

    /// Like [`Server::start`], for a configuration checked already (the command line's).
    pub async fn start_resolved(config: Resolved) -> Result<Server, StartError> {
        Self::launch(config, Vec::new()).await
    }

    /// Like [`Server::start`], also running each of `sources` into the log besides the
    /// configured connectors: sources built in-process (tests, tools), which `GET
    /// /v1/connectors` does not list.
    pub async fn start_with_sources(
        config: Config,
        sources: Sources,
    ) -> Result<Server, StartError> {
        Self::launch(config.resolve()?, sources).await
    }

    /// Build the connectors once this server's metrics exist, then start.
    async fn launch(config: Resolved, extra: Sources) -> Result<Server, StartError> {
        let cluster = &config.cluster;
        let metrics = Arc::new(Metrics::with_node(
            cluster.enabled().then(|| cluster.node()),
        ));
        let (registry, mut sources) = crate::connector::build(&config, &metrics)?;
        sources.extend(extra);
        let registry = Arc::new(registry);
        let (config, _) = config.into_parts();
        let config = Arc::new(config);
        let hub = Arc::new(Hub::new(config.session.live_buffer, metrics.clone()));
        // The one place that knows which log there is: the server above sees the trait.
        let (log, leases): (Arc<dyn ChannelLog>, Option<Arc<dyn Leases>>) =
            if config.cluster.enabled() {
                let log = JetStreamLog::open(
                    JetStreamOptions {
                        servers: config.cluster.servers.clone(),
                        node: config.cluster.node(),
                        replicas: config.cluster.replicas,
                        max_message_bytes: config.limits.max_message_bytes,
                        dedup_window: config.retention.dedup_window,
                    },
                    hub.clone(),
                )
                .await?;
                let leases = log.leases(config.cluster.lease_ttl).await?;
                (Arc::new(log), Some(Arc::new(leases)))
            } else {
                let log = EmbeddedLog::open(
                    &config.data_dir,
                    EmbeddedOptions {
                        dedup_window: config.retention.dedup_window,
                    },
                    hub.clone(),
                )?;
                (Arc::new(log), None)
            };
        // Kept in the data directory in both modes: cluster mode does not share revocations
        // between nodes yet (docs/cluster.md).
        let revocations = Arc::new(Revocations::open(
            Arc::new(FileStore::new(&config.data_dir)),
            config.auth.max_token_lifetime,
            config.auth.max_revocations,
        )?);
        let auth = Arc::new(Authenticator::new(
            config.api_keys(),
            &config.public_namespaces(),
            config.token_verifier()?,
            revocations.clone(),
        ));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let shutdown = CancellationToken::new();
        let state = AppState::new(crate::server::Shared {
            config: config.clone(),
            log: log.clone(),
            hub,
            auth,
            revocations,
            metrics,
            connectors: registry.clone(),
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            admission: crate::limits::Admission::new(
                config.limits.max_connections,
                config.limits.max_connections_per_subject,
            ),
        });
        // Channels nobody followed for a while leave the hub (and their recent messages go).
        let (hub, stop) = (state.hub.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::hub::IDLE_GRACE / 3);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => { hub.sweep(crate::hub::IDLE_GRACE); }
                }
            }
        });
        let retention = tokio::spawn(retain_forever(
            log.clone(),
            config.clone(),
            shutdown.clone(),
        ));
        if config.api_keys.is_empty() && config.public_namespaces().is_empty() {
            tracing::warn!(
                "no API keys configured: every request will be refused; add one with --api-key KEY_ID:SECRET"
            );
        }
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "tidings listening");
        let connectors = TaskTracker::new();
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        for (opts, src) in sources {
            let (log, shutdown, failures) = (log.clone(), shutdown.clone(), failures.clone());
            let leases = leases.clone();
            let metrics = state.metrics.clone();
            connectors.spawn(async move {
                let name = opts.name.clone();
                let failure = match leases {
                    // Cluster mode: run it while this node holds its lease.
                    Some(leases) => crate::lease::run(src, opts, log, leases, shutdown).await,
                    None => {
                        let mut src = src;
                        crate::source::run(src.as_mut(), &opts, log, shutdown).await
                    }
                };
                if let Some(e) = failure {
                    // A source that needs the operator stops alone: the rest of the server
                    // (its log, REST publishers, the other connectors) goes on. Its status,
                    // `/readyz` and the metric say so until the operator fixes it.
                    metrics.connector_stopped(&name);
                    failures.lock().push(e.to_string());
                }
            });
        }
        connectors.close();
        let task = tokio::spawn(serve(listener, state, retention, connectors));
        Ok(Server {
            addr,
            shutdown,
            task,
            log,
            failures,
            connectors: registry,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The channel log, for tests and tools in the same process.
    pub fn log(&self) -> &Arc<dyn ChannelLog> {
        &self.log
    }

    /// The status of this server's connectors, readable after it stopped too.
    pub fn connectors(&self) -> Arc<ConnectorRegistry> {
        self.connectors.clone()
    }

    /// Fatal errors of sources so far (each stopped its source; the server goes on), in the
    /// order they happened.
    pub fn source_failures(&self) -> Arc<parking_lot::Mutex<Vec<String>>> {
        self.failures.clone()
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Begin a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Wait until the server has stopped and the log is closed.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    state: AppState,
    retention: JoinHandle<()>,
    connectors: TaskTracker,
) {
    let shutdown = state.shutdown.clone();
    let sessions = state.sessions.clone();
    let log = state.log.clone();
    let limits = crate::listener::HttpLimits::from(&state.config.limits);
    let metrics = state.metrics.clone();
    let app = router(state);
    let served = crate::listener::serve(listener, app, limits, metrics, shutdown.clone());
    // Graceful shutdown waits for every open HTTP response to end; a response going to a client
    // that stopped reading (a stuck SSE stream, a long-poll answer into a full socket) would
    // never end, and the server would never stop. Give them the drain timeout, then go on:
    // what was acknowledged is durable either way.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::Instant::now() + DRAIN_TIMEOUT
    }
    .shared();
    let bounded = async { tokio::time::sleep_until(deadline.clone().await).await };
    tokio::select! {
        () = served => {}
        () = bounded => tracing::warn!(
            "some HTTP responses did not finish within {DRAIN_TIMEOUT:?} of the shutdown (clients not reading); closing them"
        ),
    }
    sessions.close();
    // One deadline for everything the shutdown waits on, counted from the shutdown.
    let deadline = deadline.await;
    if tokio::time::timeout_at(deadline, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close within {DRAIN_TIMEOUT:?}");
    }
    retention.abort();
    // Sources stop at their next batch boundary; what they appended is durable.
    if tokio::time::timeout(DRAIN_TIMEOUT, connectors.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sources did not stop within {DRAIN_TIMEOUT:?}");
    }
    log.close().await;
    tracing::info!("tidings stopped");
}

async fn retain_forever(
    log: Arc<dyn ChannelLog>,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let policy = config.retention_policy();
    let every = config.retention.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match log.apply_retention(&policy).await {
            Ok(r) if r.messages_removed > 0 => tracing::info!(
                channels = r.channels_trimmed,
                removed = r.messages_removed,
                "retention removed old messages"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
        }
    }
}

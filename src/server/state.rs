//! What every request handler and session shares: the server's state, one reference count away.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::connector::ConnectorRegistry;
use crate::hub::Hub;
use crate::limits::Admission;
use crate::log::ChannelLog;
use crate::metrics::Metrics;
use crate::revocation::Revocations;

/// Everything a request handler or a session needs: one shared allocation, so the clone every
/// request takes is a single reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Share `shared` with every request and session.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub log: Arc<dyn ChannelLog>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    /// The token revocations in force; sessions follow [`Revocations::subscribe`] and close
    /// when their principal is revoked.
    pub revocations: Arc<Revocations>,
    pub metrics: Arc<Metrics>,
    /// The status of this server's connectors, for `GET /v1/connectors`.
    pub connectors: Arc<ConnectorRegistry>,
    /// Cancelled on shutdown; sessions watch it and close with a "resume elsewhere" reason.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket sessions so shutdown can wait for them to close.
    pub sessions: TaskTracker,
    /// Connection limits.
    pub admission: Arc<Admission>,
}

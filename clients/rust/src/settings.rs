//! How a client was configured, and the context built from it that the application's handles,
//! the REST requests and the driver share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::auth::Auth;
use crate::backoff::Backoff;
use crate::state::Counters;
use crate::transport::Transport;

/// Settings of the connection, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub transports: Vec<Transport>,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub poll_wait: Duration,
    pub heartbeat: Duration,
    pub buffer: usize,
}

/// What the client handles and the connection task share.
pub(crate) struct Shared {
    /// Base URLs of the server's nodes, `http` or `https`, paths ending in `/`; one unless the
    /// server is a cluster.
    pub servers: Vec<Url>,
    /// Index of the node in use; the driver moves on when a connection to it fails.
    pub current: AtomicUsize,
    pub settings: Settings,
    pub auth: Auth,
    pub http: reqwest::Client,
    pub counters: Arc<Counters>,
}

impl Shared {
    /// The base URL of the node in use.
    pub fn base(&self) -> &Url {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Use the next node (the same one when there is only one).
    pub fn next_server(&self) {
        if self.servers.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! How a client was configured, and the context built from it that the application's handles,
//! the REST requests and the driver share.

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
    /// Base URL, `http` or `https`, path ending in `/`.
    pub base: Url,
    pub settings: Settings,
    pub auth: Auth,
    pub http: reqwest::Client,
    pub counters: Arc<Counters>,
}

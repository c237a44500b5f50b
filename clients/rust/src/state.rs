//! What the application can watch: the connection's state (with the transport in use) and
//! counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::transport::Transport;

/// The connection's state, published on [`Client::state`](crate::Client::state).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Trying to connect with `transport`; `attempt` counts failed rounds since the last
    /// healthy connection.
    Connecting {
        /// The transport being tried.
        transport: Transport,
        /// Failed connection rounds since the last healthy connection.
        attempt: u32,
    },
    /// Connected; every attached channel is (being) resumed on this connection.
    Connected {
        /// The transport in use.
        transport: Transport,
    },
    /// The connection was lost or could not be made; the next attempt comes after `retry_in`.
    Disconnected {
        /// Failed connection rounds since the last healthy connection.
        attempt: u32,
        /// Delay before the next attempt (exponential backoff with full jitter).
        retry_in: Duration,
        /// Why the last connection ended or failed.
        error: Arc<Error>,
    },
    /// The client stopped: closed by the application (`error: None`) or after an error that
    /// retrying cannot fix, such as refused credentials.
    Closed {
        /// The error that stopped the client, if any.
        error: Option<Arc<Error>>,
    },
}

impl ConnectionState {
    /// Whether the client is connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// Counters of the client's life, for tests, metrics and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections made (the first one and every reconnect), any transport.
    pub connections: u64,
    /// Messages dropped because their serial was not above the last one delivered.
    pub duplicates_dropped: u64,
    /// Messages delivered to subscriptions.
    pub messages_delivered: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub duplicates_dropped: AtomicU64,
    pub messages_delivered: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        Stats {
            connections: self.connections.load(Ordering::Relaxed),
            duplicates_dropped: self.duplicates_dropped.load(Ordering::Relaxed),
            messages_delivered: self.messages_delivered.load(Ordering::Relaxed),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

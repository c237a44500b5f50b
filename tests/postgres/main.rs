//! The Postgres outbox connector against a real Postgres cluster (started from the system's
//! binaries by `tidings_testkit::postgres::Cluster`): commit order, exactly once across
//! crashes, restarts and a killed walsender, slot loss, poison rows, idle WAL, a large
//! transaction, TLS, what the connector reports, plain table capture, a failing network, and
//! cluster mode (checkpoints in NATS JetStream).
//! One test binary, a module per concern.

mod cluster;
mod crash;
mod idle;
mod in_process;
mod large;
mod network;
mod order;
mod outbox;
mod poison;
mod setup;
mod slot;
mod status;
mod tables;
mod tls;

use std::time::Duration;

/// How long a test waits for the stream to catch up.
pub const CATCH_UP: Duration = Duration::from_secs(60);

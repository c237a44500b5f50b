//! Tidings' Postgres connector: a transactional outbox read from the WAL.
//!
//! Applications insert a row into `tidings.outbox` (or emit a logical message with the prefix
//! `tidings`) in the same transaction as the change it describes. The connector streams the
//! committed rows through a logical replication slot (`pgoutput`), hands them to the server as
//! one batch per transaction in commit order, confirms a position to Postgres only once the
//! server made it durable, and then deletes the published rows. See `docs/postgres.md`.
//!
//! The replication session is `pgwire-replication` (the decision and its reasons are in
//! `docs/postgres.md`); ordinary SQL (checks, slot creation, clean-up, migrations) is
//! `tokio-postgres`. This crate depends on `tidings-connectors-core` only, never on the server.

pub mod capture;
pub mod cleanup;
pub mod config;
pub mod connection;
pub mod connector;
pub mod lag;
pub mod migrate;
pub mod outbox;
pub mod pgoutput;
pub mod slot;
pub mod source;
pub mod tls;
pub mod tracking;

pub use config::{ByteSize, ConnectionUrl, OnPoison, OnSlotLost, PostgresConfig};
pub use migrate::{migrate, MigrateError, Report as MigrateReport, SlotOutcome};
pub use source::{BuildError, PostgresSource};

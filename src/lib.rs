//! Tidings: tails database change feeds into a durable channel log and fans it out to web and
//! mobile clients that resume exactly where they left off.
//!
//! The binary (`main.rs`) only parses arguments; everything lives here. `docs/architecture.md`
//! in the repository is the map: the flow from a publish or a database change to a client, file
//! by file, the invariants and the tests that pin each, and the crate boundaries.

pub mod auth;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connector;
pub mod error;
pub mod grant;
pub mod hub;
pub mod lease;
pub mod limits;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod publish;
pub mod revocation;
pub mod runtime;
pub mod server;
pub mod source;
pub mod tail;
pub mod token;

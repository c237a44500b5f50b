//! Tidings: tails database change feeds into a durable channel log and fans it out to web and
//! mobile clients that resume exactly where they left off.
//!
//! The binary (`main.rs`) only parses arguments; everything lives here. See
//! `ARCHITECTURE.md` in the repository for the flow and the invariants.

pub mod auth;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connector;
pub mod error;
pub mod grant;
pub mod hub;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod publish;
pub mod runtime;
pub mod server;
pub mod source;
pub mod tail;
pub mod token;

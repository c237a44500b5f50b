//! Tidings connector for MongoDB: a change stream on a collection, a list of collections, a
//! database or the whole deployment, checkpointed by its resume token.
//!
//! - The resume token is the checkpoint, stored atomically with the messages it covers; a
//!   restart resumes with `resumeAfter` (`startAfter` after an invalidate), so every change lands
//!   in the log once (message ids derive from the token, so a replay deduplicates).
//! - On a quiet stream the post-batch resume token keeps the checkpoint fresh.
//! - Changes of one transaction (same `lsid` + `txnNumber`) form one atomic batch.
//! - `drop`, `rename`, `dropDatabase` and `invalidate` become control messages.
//! - History loss (error 286) stops the connector with the way out, or re-snapshots.
//! - An initial snapshot takes the stream's position first, so nothing changed during it is lost.
//!
//! Depends on `tidings-connectors-core` only, never on the server. Configuration and behaviour:
//! `docs/mongodb.md`.

pub mod config;
pub mod connector;
pub mod event;
pub mod extjson;
pub mod message_id;
pub mod payload;
pub mod position;
pub mod progress;
pub mod router;
pub mod source;

pub use config::{ConfigProblem, MongoConfig, MongoUri, OnPoison};
pub use router::Router;
pub use source::MongoSource;

//! Rust client for Tidings: ordered, resumable channels from a database
//! to every device, over WebSocket, Server-Sent Events or long-polling.
//!
//! The client keeps one connection to the server in the background and gives the application
//! what `docs/protocol.md` promises: every message of an attached channel once, in order, or an
//! explicit [`Event::ContinuityLost`] when that is impossible. It
//!
//! - reconnects with exponential backoff and full jitter, and resumes every channel from the
//!   `{epoch, serial}` of the last message it delivered;
//! - drops any message whose serial is not above the last one delivered;
//! - falls back from WebSocket to SSE to long-polling when a transport fails to connect;
//! - detects dead connections by missing heartbeats (nothing heard for 2.5 intervals);
//! - fetches fresh tokens from a callback, renews them in-band before expiry on WebSocket, and
//!   reconnects with a new one when the server says the token expired;
//! - reports its [`ConnectionState`] on a watch channel.
//!
//! Clients depend on the `tidings-protocol` crate only, never on the server.

#![warn(missing_docs)]

mod attachment;
mod auth;
mod backoff;
mod channel;
mod client;
mod command;
mod connection;
mod driver;
mod error;
mod event;
mod outcome;
mod publish;
mod rest;
mod settings;
mod start;
mod state;
mod subscription;
mod transport;

pub use auth::{Token, TokenFuture};
pub use backoff::Backoff;
pub use channel::{validate_channel, MAX_CHANNEL_BYTES};
pub use client::{
    Client, ClientBuilder, DEFAULT_BUFFER, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEARTBEAT,
    DEFAULT_POLL_WAIT, DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{BoxError, Error};
pub use event::{Event, Message};
pub use publish::Publish;
pub use start::Start;
pub use state::{ConnectionState, Stats};
pub use subscription::Subscription;
pub use tidings_protocol::{ContinuityLost, ErrorCode, HistoryItem, HistoryPage, Position};
pub use transport::Transport;

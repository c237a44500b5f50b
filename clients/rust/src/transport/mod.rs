//! The ways of reaching the server, one file each: [`ws`] (WebSocket), [`sse`] (Server-Sent
//! Events) and [`poll`] (long-polling), mirroring the server's `src/server/`. Each connects and
//! then serves a [`Connection`](crate::connection::Connection) until the connection ends; the
//! [`Driver`](crate::driver::Driver) chooses which one to try.
//!
//! This file names the transports only, so that errors and states can name one without
//! depending on how it works.

use std::fmt;

mod event_stream;
pub(crate) mod poll;
pub(crate) mod sse;
pub(crate) mod ws;

/// A way of reaching the server. The client tries them in the order given to
/// [`ClientBuilder::transports`](crate::ClientBuilder::transports), by default WebSocket, then
/// Server-Sent Events, then long-polling, and moves to the next when one fails to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `GET /v1/connect`: one bidirectional connection, publishes and token renewal in-band.
    WebSocket,
    /// `GET /v1/sse`: a streaming response; publishes go over REST.
    Sse,
    /// `GET /v1/poll`: repeated requests, for proxies that break streaming.
    LongPoll,
}

impl Transport {
    /// Every transport, in the default order of preference.
    pub const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::LongPoll];
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "long-poll",
        })
    }
}

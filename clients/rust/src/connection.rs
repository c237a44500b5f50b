//! A connection as every transport serves it: the attached channels, the application's
//! commands, the limits the server announced, and the client's published state. The
//! [`Driver`](crate::driver::Driver) keeps one for the client's whole life and lends it to each
//! transport in turn.
//!
//! Commands are served the same way on every transport ([`Connection::handle`]): attaches and
//! detaches change the set of channels, publishes go over REST; the WebSocket sends its own
//! frames for them.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tidings_protocol::ContinuityLost;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::attachment::{Attachments, Request};
use crate::command::Command;
use crate::error::Error;
use crate::outcome::Ended;
use crate::publish::Encoded;
use crate::rest;
use crate::settings::Shared;
use crate::state::{ConnectionState, Counters};
use crate::transport::Transport;

/// Missed heartbeats tolerated: a connection silent for this many heartbeat intervals is dead.
const DEAD_AFTER_HEARTBEATS: f64 = 2.5;

/// What a command did, for the transports to react to.
pub(crate) enum Handled {
    /// Nothing for the transport to do (a publish went over REST, a refused attach).
    Done,
    /// A channel was attached: the transport must include it.
    Attached(String),
    /// A channel was detached.
    Detached(String),
    /// The application closed the client (`None`: it dropped every handle).
    Close(Option<oneshot::Sender<()>>),
}

/// What the transports serve while connected, and what the driver keeps between connections.
pub(crate) struct Connection {
    /// The client's settings, credentials and HTTP client.
    pub shared: Arc<Shared>,
    /// The application's requests.
    pub commands: mpsc::Receiver<Command>,
    /// Where the connection's state is published for [`Client::state`](crate::Client::state).
    pub state: watch::Sender<ConnectionState>,
    /// The attached channels and their subscriptions.
    pub attachments: Attachments,
    /// The server's heartbeat interval (from `connected`; the builder's hint until then).
    pub heartbeat: Duration,
    /// The server's message size limit, once known.
    pub max_message_bytes: Option<usize>,
}

impl Connection {
    /// A client's connection before its first connect: no channel, the builder's heartbeat.
    pub fn new(
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        state: watch::Sender<ConnectionState>,
    ) -> Connection {
        Connection {
            heartbeat: shared.settings.heartbeat,
            attachments: Attachments::new(shared.counters.clone()),
            shared,
            commands,
            state,
            max_message_bytes: None,
        }
    }

    /// Serve commands while not connected, until `until` (or, without it, until a channel is
    /// attached). Returns `Some` when the client is closed meanwhile.
    pub async fn idle(&mut self, until: Option<Instant>) -> Option<Option<oneshot::Sender<()>>> {
        loop {
            let command = tokio::select! {
                command = self.commands.recv() => command,
                _ = sleep_until(until.unwrap_or_else(far_future)), if until.is_some() => return None,
            };
            match self.handle(command) {
                Handled::Close(done) => return Some(done),
                Handled::Attached(_) if until.is_none() => return None,
                _ => {}
            }
        }
    }

    /// Serve a command in a transport-neutral way: attaches and detaches change the set of
    /// channels, publishes go over REST.
    pub fn handle(&mut self, command: Option<Command>) -> Handled {
        match command {
            None => Handled::Close(None),
            Some(Command::Close { done }) => Handled::Close(Some(done)),
            Some(Command::Attach {
                channel,
                id,
                start,
                events,
                confirm,
            }) => match self
                .attachments
                .insert(channel.clone(), id, start, events, confirm)
            {
                Ok(()) => Handled::Attached(channel),
                Err((e, confirm)) => {
                    let _ = confirm.send(Err(e));
                    Handled::Done
                }
            },
            Some(Command::Detach { channel, id }) => {
                if self.attachments.remove(&channel, id) {
                    Handled::Detached(channel)
                } else {
                    Handled::Done
                }
            }
            Some(Command::Publish {
                channel,
                message,
                reply,
            }) => {
                self.publish_rest(channel, message, reply);
                Handled::Done
            }
        }
    }

    /// Publish over REST, in a task of its own so the connection never waits for it.
    pub fn publish_rest(
        &self,
        channel: String,
        message: Encoded,
        reply: oneshot::Sender<Result<u64, Error>>,
    ) {
        if let Err(e) = self.check_size(&message) {
            let _ = reply.send(Err(e));
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _ = reply.send(rest::publish(&shared, &channel, &message).await);
        });
    }

    /// Refuse a message over the server's announced size limit before it is sent.
    pub fn check_size(&self, message: &Encoded) -> Result<(), Error> {
        match self.max_message_bytes {
            Some(limit) if message.size() > limit => Err(Error::MessageTooLarge {
                size: message.size(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Stop: end every subscription, refuse what is still queued, publish the final state.
    pub fn finish(&mut self, error: Option<Error>, done: Option<oneshot::Sender<()>>) {
        let error = error.map(Arc::new);
        self.attachments.end_all(error.as_ref());
        self.state.send_replace(ConnectionState::Closed {
            error: error.clone(),
        });
        self.commands.close();
        let refusal = || match &error {
            Some(e) => Error::Stopped(e.clone()),
            None => Error::Closed,
        };
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Attach { confirm, .. } => {
                    let _ = confirm.send(Err(refusal()));
                }
                Command::Publish { reply, .. } => {
                    let _ = reply.send(Err(refusal()));
                }
                Command::Close { done } => {
                    let _ = done.send(());
                }
                Command::Detach { .. } => {}
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// A transport connected: count it and publish the new state.
    pub fn connected(&mut self, transport: Transport) {
        Counters::add(&self.shared.counters.connections, 1);
        self.state
            .send_replace(ConnectionState::Connected { transport });
    }

    /// How long a silent connection is trusted before it counts as dead.
    pub fn dead_after(&self) -> Duration {
        self.heartbeat.mul_f64(DEAD_AFTER_HEARTBEATS)
    }

    /// The end of a connection after the server said the token expired or was revoked.
    pub fn token_expired(&self, error: Error, healthy: bool) -> Ended {
        if self.shared.auth.renewable() {
            Ended::Lost {
                error,
                refresh: true,
                healthy,
            }
        } else {
            Ended::Fatal(error)
        }
    }

    /// The server attached a channel (an SSE event or a long-poll answer).
    pub fn on_attached(&mut self, a: AttachedFrame) {
        self.attachments
            .on_attached(&a.channel, a.epoch, a.serial, a.resumed, a.reason);
    }

    /// Wait until every subscription took its backlog, serving commands meanwhile. `Some` when
    /// the client is closed meanwhile.
    pub async fn drain_all(&mut self) -> Option<Option<oneshot::Sender<()>>> {
        while self.attachments.backlogged() {
            let room = self.attachments.room();
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if let Handled::Close(done) = self.handle(command) {
                        return Some(done);
                    }
                }
                Some(channel) = room => self.attachments.drain(&channel),
            }
        }
        None
    }
}

/// An `attached` frame or SSE event, without its `type`.
#[derive(serde::Deserialize)]
pub(crate) struct AttachedFrame {
    channel: String,
    epoch: String,
    serial: u64,
    resumed: bool,
    #[serde(default)]
    reason: Option<ContinuityLost>,
}

/// Add `channel=..`, `from=..` and `rewind=..` to an SSE or long-poll URL.
pub(crate) fn query(url: &mut Url, request: &Request) {
    let mut q = url.query_pairs_mut();
    for c in &request.channels {
        q.append_pair("channel", c);
    }
    if let Some(from) = request.positions() {
        q.append_pair("from", &from);
    }
    if let Some(n) = request.rewind {
        q.append_pair("rewind", &n.to_string());
    }
}

/// An instant far enough away to mean "never".
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

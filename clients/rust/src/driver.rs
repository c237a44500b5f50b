//! The driver: one task per client. It keeps a connection to the server up, over the best
//! transport that works, and resumes every attached channel on every (re)connect.
//!
//! The loop, in order:
//! 1. Try the transports, starting with the one that worked last. A transport that fails to
//!    connect (refused, blocked by a proxy, timed out, answered by something that is not a
//!    Tidings server) hands over to the next one at once.
//! 2. On a connection, attach every channel from its position (`{epoch, serial}` of the last
//!    message delivered) and deliver what arrives, dropping serials already delivered.
//! 3. When the connection ends or every transport failed, move to the next node when it was
//!    given several (a cluster), wait (exponential backoff, full jitter; the counter resets
//!    after a healthy connection) and go to 1.
//!
//! Refused credentials stop the client (retrying cannot fix them), except an expired token when
//! a token source can fetch a new one. Commands from the application (attach, detach, publish,
//! close) are served in every state.

use std::sync::Arc;

use tidings_protocol::ErrorCode;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::command::Command;
use crate::connection::Connection;
use crate::error::Error;
use crate::outcome::{Ended, Failed, Outcome};
use crate::settings::Shared;
use crate::state::ConnectionState;
use crate::transport::{poll, sse, ws, Transport};

/// The connection task: the reconnect loop over a [`Connection`].
pub(crate) struct Driver {
    connection: Connection,
    /// Index of the transport that worked last.
    preferred: usize,
}

impl Driver {
    /// The driver of a new client, not connected yet; [`Driver::run`] starts it.
    pub fn new(
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        state: watch::Sender<ConnectionState>,
    ) -> Driver {
        Driver {
            connection: Connection::new(shared, commands, state),
            preferred: 0,
        }
    }

    /// Run until the client is closed or stops on a fatal error.
    pub async fn run(mut self) {
        let conn = &mut self.connection;
        let transports = conn.shared.settings.transports.clone();
        let mut attempt = 0u32;
        let mut refresh = false;
        'reconnect: loop {
            let mut error = None;
            let mut refreshed_this_round = false;
            let mut tried = 0;
            while tried < transports.len() {
                let index = (self.preferred + tried) % transports.len();
                let transport = transports[index];
                // SSE and long-poll requests name their channels: with none, wait for one.
                if transport != Transport::WebSocket && conn.attachments.is_empty() {
                    if let Some(done) = conn.idle(None).await {
                        return conn.finish(None, done);
                    }
                }
                conn.state
                    .send_replace(ConnectionState::Connecting { transport, attempt });
                let outcome = match conn.shared.auth.credential(refresh).await {
                    Ok(credential) => connect(conn, transport, credential).await,
                    Err(e) => Outcome::Failed(Failed::Later(e)),
                };
                refresh = false;
                conn.attachments.all_down();
                match outcome {
                    Outcome::Ended(ended) => {
                        self.preferred = index;
                        match ended {
                            Ended::Closed(done) => return conn.finish(None, done),
                            Ended::Fatal(e) => return conn.finish(Some(e), None),
                            Ended::Restart => continue 'reconnect,
                            Ended::Lost {
                                error: e,
                                refresh: r,
                                healthy,
                            } => {
                                if healthy {
                                    attempt = 0;
                                }
                                refresh = r;
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    Outcome::Failed(Failed::Closed(done)) => return conn.finish(None, done),
                    Outcome::Failed(Failed::Fatal(e)) => return conn.finish(Some(e), None),
                    Outcome::Failed(Failed::Transport(e)) => {
                        error = Some(e);
                        tried += 1;
                    }
                    Outcome::Failed(Failed::Later(e)) => {
                        error = Some(e);
                        break;
                    }
                    Outcome::Failed(Failed::Channel(e)) => {
                        // The same transport again, without the refused channel.
                        match e.channel().map(str::to_owned) {
                            Some(channel) => conn.attachments.fail(&channel, e),
                            None => return conn.finish(Some(e), None),
                        }
                    }
                    Outcome::Failed(Failed::Auth(e)) => {
                        if !conn.shared.auth.renewable() {
                            return conn.finish(Some(e), None);
                        }
                        if !refreshed_this_round {
                            refreshed_this_round = true;
                            refresh = true;
                            continue;
                        }
                        if !matches!(
                            e.code(),
                            Some(ErrorCode::TokenExpired | ErrorCode::TokenRevoked)
                        ) {
                            // A fresh token refused outright: the token source is wrong. (A
                            // fresh token the server calls expired or revoked may be the
                            // source's cache, or clock skew: retry after a backoff.)
                            return conn.finish(Some(e), None);
                        }
                        refresh = true;
                        error = Some(e);
                        break;
                    }
                }
            }
            // The node may be gone: the next attempt goes to the next one (a cluster's nodes
            // all serve every channel, and positions resume on any of them).
            conn.shared.next_server();
            let delay = conn.shared.settings.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            let error = error.unwrap_or_else(|| Error::Protocol("no transport configured".into()));
            conn.state.send_replace(ConnectionState::Disconnected {
                attempt,
                retry_in: delay,
                error: Arc::new(error),
            });
            if let Some(done) = conn.idle(Some(Instant::now() + delay)).await {
                return conn.finish(None, done);
            }
        }
    }
}

/// Connect with `transport` and serve the connection until it ends.
async fn connect(
    conn: &mut Connection,
    transport: Transport,
    credential: Option<String>,
) -> Outcome {
    match transport {
        Transport::WebSocket => ws::connect(conn, credential).await,
        Transport::Sse => sse::connect(conn, credential).await,
        Transport::LongPoll => poll::connect(conn, credential).await,
    }
}

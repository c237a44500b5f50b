//! The connection task: one per client. It keeps a connection to the server up, over the best
//! transport that works, and resumes every attached channel on every (re)connect.
//!
//! The loop, in order:
//! 1. Try the transports, starting with the one that worked last. A transport that fails to
//!    connect (refused, blocked by a proxy, timed out, answered by something that is not a
//!    Tidings server) hands over to the next one at once.
//! 2. On a connection, attach every channel from its position (`{epoch, serial}` of the last
//!    message delivered) and deliver what arrives, dropping serials already delivered.
//! 3. When the connection ends or every transport failed, wait (exponential backoff, full
//!    jitter; the counter resets after a healthy connection) and go to 1.
//!
//! Refused credentials stop the client (retrying cannot fix them), except an expired token when
//! a token source can fetch a new one. Commands from the application (attach, detach, publish,
//! close) are served in every state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use tidings_protocol::{
    ClientFrame, ContinuityLost, ErrorBody, ErrorCode, MessageFrame, ServerFrame, CLOSE_GOING_AWAY,
    CLOSE_TOKEN_EXPIRED,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::attachment::Attachments;
use crate::command::Command;
use crate::error::Error;
use crate::publish::Encoded;
use crate::rest::{self, endpoint, with_credential};
use crate::settings::Shared;
use crate::sse::{SseEvent, SseParser};
use crate::state::{ConnectionState, Counters};
use crate::transport::Transport;

/// Missed heartbeats tolerated: a connection silent for this many heartbeat intervals is dead.
const DEAD_AFTER_HEARTBEATS: f64 = 2.5;
/// How long a graceful close may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Retry an in-band token renewal that failed after this long.
const RENEW_RETRY: Duration = Duration::from_secs(1);
/// Largest error body read from a refused request.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// How a connection that was up ended.
enum Ended {
    /// The application closed the client (or dropped every handle).
    Closed(Option<oneshot::Sender<()>>),
    /// The connection was lost: reconnect after a backoff delay.
    Lost {
        error: Error,
        /// Fetch a new token before reconnecting.
        refresh: bool,
        /// The connection served its channels: reset the backoff.
        healthy: bool,
    },
    /// Reconnect at once (SSE and long-poll carry the channel set in the request).
    Restart,
    /// Stop the client.
    Fatal(Error),
}

/// Why a transport could not connect.
enum Failed {
    /// The transport does not work here: try the next one.
    Transport(Error),
    /// The server refused for now (overloaded, shutting down): back off.
    Later(Error),
    /// The credentials were refused.
    Auth(Error),
    /// One channel was refused: fail it and try again without it.
    Channel(Error),
    /// Retrying cannot help.
    Fatal(Error),
    /// The application closed the client meanwhile.
    Closed(Option<oneshot::Sender<()>>),
}

enum Outcome {
    Failed(Failed),
    Ended(Ended),
}

/// What a command did, for the transports to react to.
enum Handled {
    Done,
    /// A channel was attached: the transport must include it.
    Attached(String),
    /// A channel was detached.
    Detached(String),
    Close(Option<oneshot::Sender<()>>),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A publish sent over the WebSocket, awaiting its ack.
struct Pending {
    channel: String,
    message: Encoded,
    reply: oneshot::Sender<Result<u64, Error>>,
}

/// The connection task.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    state: watch::Sender<ConnectionState>,
    attachments: Attachments,
    /// The server's heartbeat interval (from `connected`; the builder's hint until then).
    heartbeat: Duration,
    /// The server's message size limit, once known.
    max_message_bytes: Option<usize>,
    /// Index of the transport that worked last.
    preferred: usize,
}

impl Driver {
    pub fn new(
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        state: watch::Sender<ConnectionState>,
    ) -> Driver {
        Driver {
            heartbeat: shared.settings.heartbeat,
            attachments: Attachments::new(shared.counters.clone()),
            shared,
            commands,
            state,
            max_message_bytes: None,
            preferred: 0,
        }
    }

    /// Run until the client is closed or stops on a fatal error.
    pub async fn run(mut self) {
        let transports = self.shared.settings.transports.clone();
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
                if transport != Transport::WebSocket && self.attachments.is_empty() {
                    if let Some(done) = self.idle(None).await {
                        return self.finish(None, done);
                    }
                }
                self.state
                    .send_replace(ConnectionState::Connecting { transport, attempt });
                let outcome = match self.shared.auth.credential(refresh).await {
                    Ok(credential) => self.connect(transport, credential).await,
                    Err(e) => Outcome::Failed(Failed::Later(e)),
                };
                refresh = false;
                self.attachments.all_down();
                match outcome {
                    Outcome::Ended(ended) => {
                        self.preferred = index;
                        match ended {
                            Ended::Closed(done) => return self.finish(None, done),
                            Ended::Fatal(e) => return self.finish(Some(e), None),
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
                    Outcome::Failed(Failed::Closed(done)) => return self.finish(None, done),
                    Outcome::Failed(Failed::Fatal(e)) => return self.finish(Some(e), None),
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
                            Some(channel) => self.attachments.fail(&channel, e),
                            None => return self.finish(Some(e), None),
                        }
                    }
                    Outcome::Failed(Failed::Auth(e)) => {
                        if !self.shared.auth.renewable() {
                            return self.finish(Some(e), None);
                        }
                        if !refreshed_this_round {
                            refreshed_this_round = true;
                            refresh = true;
                            continue;
                        }
                        if e.code() != Some(ErrorCode::TokenExpired) {
                            // A fresh token refused outright: the token source is wrong.
                            return self.finish(Some(e), None);
                        }
                        refresh = true;
                        error = Some(e);
                        break;
                    }
                }
            }
            let delay = self.shared.settings.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            let error = error.unwrap_or_else(|| Error::Protocol("no transport configured".into()));
            self.state.send_replace(ConnectionState::Disconnected {
                attempt,
                retry_in: delay,
                error: Arc::new(error),
            });
            if let Some(done) = self.idle(Some(Instant::now() + delay)).await {
                return self.finish(None, done);
            }
        }
    }

    /// Serve commands while not connected, until `until` (or, without it, until a channel is
    /// attached). Returns `Some` when the client is closed meanwhile.
    async fn idle(&mut self, until: Option<Instant>) -> Option<Option<oneshot::Sender<()>>> {
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
    fn handle(&mut self, command: Option<Command>) -> Handled {
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
    fn publish_rest(
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

    fn check_size(&self, message: &Encoded) -> Result<(), Error> {
        match self.max_message_bytes {
            Some(limit) if message.size() > limit => Err(Error::MessageTooLarge {
                size: message.size(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Stop: end every subscription, refuse what is still queued, publish the final state.
    fn finish(&mut self, error: Option<Error>, done: Option<oneshot::Sender<()>>) {
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

    async fn connect(&mut self, transport: Transport, credential: Option<String>) -> Outcome {
        match transport {
            Transport::WebSocket => self.websocket(credential).await,
            Transport::Sse => self.sse(credential).await,
            Transport::LongPoll => self.poll(credential).await,
        }
    }

    fn connected(&mut self, transport: Transport) {
        Counters::add(&self.shared.counters.connections, 1);
        self.state
            .send_replace(ConnectionState::Connected { transport });
    }

    fn dead_after(&self) -> Duration {
        self.heartbeat.mul_f64(DEAD_AFTER_HEARTBEATS)
    }

    /// The end of a connection after the server said the token expired.
    fn token_expired(&self, error: Error, healthy: bool) -> Ended {
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

    // ---- WebSocket -------------------------------------------------------------------------

    async fn websocket(&mut self, credential: Option<String>) -> Outcome {
        let transport = Transport::WebSocket;
        let mut url = endpoint(&self.shared.base, &["v1", "connect"]);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).expect("http(s) URLs become ws(s)");
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed(Failed::Fatal(Error::InvalidUrl {
                    url: url.to_string(),
                    problem: e.to_string(),
                }))
            }
        };
        if let Some(c) = &credential {
            match format!("Bearer {c}").parse() {
                Ok(v) => {
                    request.headers_mut().insert("authorization", v);
                }
                Err(_) => {
                    return Outcome::Failed(Failed::Fatal(Error::Protocol(
                        "the credential contains characters HTTP headers cannot carry".into(),
                    )))
                }
            }
        }
        let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
        let mut ws = match timeout(self.shared.settings.connect_timeout, connecting).await {
            Err(_) => {
                return Outcome::Failed(Failed::Transport(Error::transport(
                    transport,
                    format!(
                        "no WebSocket handshake within {:?}",
                        self.shared.settings.connect_timeout
                    ),
                    None,
                )))
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                return Outcome::Failed(refused(transport, status, body));
            }
            Ok(Err(e)) => {
                return Outcome::Failed(Failed::Transport(Error::transport(
                    transport,
                    "cannot connect",
                    Some(Box::new(e)),
                )))
            }
            Ok(Ok((ws, _))) => ws,
        };
        // The server speaks first: `connected`, with the heartbeat interval and limits.
        let hello = timeout(self.shared.settings.connect_timeout, ws.next()).await;
        let hello = match hello {
            Ok(Some(Ok(WsMessage::Text(text)))) => serde_json::from_str::<ServerFrame>(&text).ok(),
            _ => None,
        };
        let Some(ServerFrame::Connected {
            heartbeat_ms,
            max_message_bytes,
            ..
        }) = hello
        else {
            return Outcome::Failed(Failed::Transport(Error::transport(
                transport,
                "the server did not send `connected` first",
                None,
            )));
        };
        self.heartbeat = Duration::from_millis(heartbeat_ms.max(1));
        self.max_message_bytes = Some(max_message_bytes);
        self.connected(transport);
        Outcome::Ended(self.websocket_session(ws).await)
    }

    async fn websocket_session(&mut self, mut ws: Ws) -> Ended {
        let write_timeout = self.shared.settings.request_timeout;
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut next_ref = 0u64;
        let end = 'session: {
            let mut frames = Vec::new();
            for (channel, a) in self.attachments.iter() {
                let (from, rewind) = Attachments::attach_args(a);
                frames.push(ClientFrame::Attach {
                    channel: channel.clone(),
                    from,
                    rewind,
                });
            }
            for frame in frames {
                if let ClientFrame::Attach { channel, .. } = &frame {
                    self.attachments.set_live(channel);
                }
                if let Err(error) = send(&mut ws, &frame, write_timeout).await {
                    break 'session lost(error, false);
                }
            }
            let mut healthy = false;
            let mut last_heard = Instant::now();
            let mut renew_at = self
                .shared
                .auth
                .renew_in()
                .await
                .map(|d| Instant::now() + d);
            let mut renewing: Option<JoinHandle<Result<Option<String>, Error>>> = None;
            // Timers are reset, not rebuilt per frame: frames come far more often than they fire.
            let dead = tokio::time::sleep_until(last_heard + self.dead_after());
            tokio::pin!(dead);
            let renew_timer = tokio::time::sleep_until(renew_at.unwrap_or_else(far_future));
            tokio::pin!(renew_timer);
            loop {
                healthy = healthy || self.attachments.all_confirmed();
                let backlogged = self.attachments.backlogged();
                let room = self.attachments.room();
                let step = tokio::select! {
                    biased;
                    command = self.commands.recv() => Step::Command(command),
                    Some(channel) = room => Step::Room(channel),
                    frame = ws.next(), if !backlogged => Step::Frame(frame),
                    _ = &mut dead, if !backlogged => {
                        let due = last_heard + self.dead_after();
                        if Instant::now() >= due {
                            break 'session lost(Error::HeartbeatTimeout(self.dead_after()), healthy);
                        }
                        dead.as_mut().reset(due);
                        continue;
                    }
                    token = join(renewing.as_mut()), if renewing.is_some() => Step::Renewed(token),
                    _ = &mut renew_timer, if renew_at.is_some() && renewing.is_none() => {
                        renew_at = None;
                        let shared = self.shared.clone();
                        renewing = Some(tokio::spawn(async move { shared.auth.credential(true).await }));
                        continue;
                    }
                };
                match step {
                    Step::Command(Some(Command::Publish {
                        channel,
                        message,
                        reply,
                    })) => {
                        if let Err(e) = self.check_size(&message) {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                        next_ref += 1;
                        let reference = format!("p{next_ref}");
                        let frame = ClientFrame::Publish {
                            channel: channel.clone(),
                            id: message.id.clone(),
                            name: message.name.clone(),
                            data: message.data.clone(),
                            headers: message.headers.clone(),
                            reference: Some(reference.clone()),
                        };
                        pending.insert(
                            reference,
                            Pending {
                                channel,
                                message,
                                reply,
                            },
                        );
                        if let Err(error) = send(&mut ws, &frame, write_timeout).await {
                            break 'session lost(error, healthy);
                        }
                    }
                    Step::Command(command) => {
                        let frame = match self.handle(command) {
                            Handled::Close(done) => {
                                let _ = timeout(CLOSE_GRACE, ws.close(None)).await;
                                break 'session Ended::Closed(done);
                            }
                            Handled::Done => None,
                            Handled::Attached(channel) => {
                                let a = self.attachments.iter().find(|(c, _)| **c == channel);
                                let (from, rewind) = a
                                    .map(|(_, a)| Attachments::attach_args(a))
                                    .unwrap_or_default();
                                self.attachments.set_live(&channel);
                                Some(ClientFrame::Attach {
                                    channel,
                                    from,
                                    rewind,
                                })
                            }
                            Handled::Detached(channel) => Some(ClientFrame::Detach { channel }),
                        };
                        if let Some(frame) = frame {
                            if let Err(error) = send(&mut ws, &frame, write_timeout).await {
                                break 'session lost(error, healthy);
                            }
                        }
                    }
                    Step::Room(channel) => {
                        self.attachments.drain(&channel);
                        if !self.attachments.backlogged() {
                            // Time spent waiting for the application is not server silence.
                            last_heard = Instant::now();
                        }
                    }
                    Step::Frame(frame) => {
                        last_heard = Instant::now();
                        let text = match frame {
                            None => {
                                break 'session lost(
                                    Error::transport(
                                        Transport::WebSocket,
                                        "the connection ended",
                                        None,
                                    ),
                                    healthy,
                                )
                            }
                            Some(Err(e)) => {
                                break 'session lost(
                                    Error::transport(
                                        Transport::WebSocket,
                                        "the connection failed",
                                        Some(Box::new(e)),
                                    ),
                                    healthy,
                                )
                            }
                            Some(Ok(WsMessage::Text(text))) => text,
                            Some(Ok(WsMessage::Close(close))) => {
                                let (code, reason) = close
                                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                                    .unwrap_or((1005, String::new()));
                                let error = Error::ClosedByServer { code, reason };
                                break 'session if code == CLOSE_TOKEN_EXPIRED {
                                    self.token_expired(error, healthy)
                                } else {
                                    lost(error, healthy)
                                };
                            }
                            Some(Ok(_)) => continue, // pings are answered by the library
                        };
                        match self.on_ws_text(&text, &mut pending) {
                            WsStep::Continue => {}
                            WsStep::Authorized => {
                                renew_at = self
                                    .shared
                                    .auth
                                    .renew_in()
                                    .await
                                    .map(|d| Instant::now() + d);
                                renew_timer
                                    .as_mut()
                                    .reset(renew_at.unwrap_or_else(far_future));
                            }
                            WsStep::End(error, refresh) => {
                                break 'session Ended::Lost {
                                    error,
                                    refresh,
                                    healthy,
                                }
                            }
                        }
                    }
                    Step::Renewed(result) => {
                        renewing = None;
                        match result {
                            Ok(Some(token)) => {
                                let frame = ClientFrame::Auth {
                                    token,
                                    reference: Some(AUTH_REF.into()),
                                };
                                if let Err(error) = send(&mut ws, &frame, write_timeout).await {
                                    break 'session lost(error, healthy);
                                }
                            }
                            _ => {
                                let at = Instant::now() + RENEW_RETRY;
                                renew_at = Some(at);
                                renew_timer.as_mut().reset(at);
                            }
                        }
                    }
                }
                for channel in self.attachments.take_gone() {
                    if let Err(error) =
                        send(&mut ws, &ClientFrame::Detach { channel }, write_timeout).await
                    {
                        break 'session lost(error, healthy);
                    }
                }
            }
        };
        // Publishes the connection took with it: retried over REST when they have an id (the
        // server deduplicates), otherwise their outcome is unknown.
        for (_, p) in pending.drain() {
            if p.message.id.is_some() {
                self.publish_rest(p.channel, p.message, p.reply);
            } else {
                let _ = p.reply.send(Err(Error::PublishInterrupted));
            }
        }
        end
    }

    /// One text frame from the server.
    fn on_ws_text(&mut self, text: &str, pending: &mut HashMap<String, Pending>) -> WsStep {
        // Messages are most frames: read them without the tagged-enum detour.
        if text.starts_with(r#"{"type":"message""#) {
            if let Ok(m) = serde_json::from_str::<MessageFrame>(text) {
                self.attachments.on_message(m);
                return WsStep::Continue;
            }
        }
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            return WsStep::Continue; // a frame type of a newer protocol version
        };
        match frame {
            ServerFrame::Message(m) => self.attachments.on_message(m),
            ServerFrame::Attached {
                channel,
                epoch,
                serial,
                resumed,
                reason,
            } => self
                .attachments
                .on_attached(&channel, epoch, serial, resumed, reason),
            ServerFrame::Ack {
                reference, serial, ..
            } => {
                if let Some(p) = reference.and_then(|r| pending.remove(&r)) {
                    let _ = p.reply.send(Ok(serial));
                }
            }
            ServerFrame::Error(body) => return self.on_ws_error(body, pending),
            ServerFrame::Authorized { .. } => return WsStep::Authorized,
            ServerFrame::Connected { .. }
            | ServerFrame::Detached { .. }
            | ServerFrame::Heartbeat {}
            | ServerFrame::Pong { .. } => {}
        }
        WsStep::Continue
    }

    fn on_ws_error(&mut self, body: ErrorBody, pending: &mut HashMap<String, Pending>) -> WsStep {
        let code = body.code;
        match (body.reference.clone(), body.channel.clone()) {
            (Some(r), _) if r == AUTH_REF => {
                // The renewed token was refused: reconnect with a fresh one.
                WsStep::End(Error::from_body(body), true)
            }
            (Some(r), _) => {
                if let Some(p) = pending.remove(&r) {
                    let _ = p.reply.send(Err(Error::from_body(body)));
                }
                WsStep::Continue
            }
            (None, Some(channel)) => match code {
                ErrorCode::NotAttached => WsStep::Continue,
                ErrorCode::Forbidden | ErrorCode::InvalidChannel | ErrorCode::TooManyChannels => {
                    self.attachments.fail(&channel, Error::from_body(body));
                    WsStep::Continue
                }
                // The server could not serve the channel and detached it: reconnecting
                // re-attaches every channel from its position.
                _ => WsStep::End(Error::from_body(body), false),
            },
            // About the connection, not a request: nothing to answer.
            (None, None) => WsStep::Continue,
        }
    }

    // ---- Server-Sent Events ----------------------------------------------------------------

    async fn sse(&mut self, credential: Option<String>) -> Outcome {
        let transport = Transport::Sse;
        let request = self.attachments.plan();
        let mut url = endpoint(&self.shared.base, &["v1", "sse"]);
        query(&mut url, &request);
        let sending = with_credential(
            self.shared
                .http
                .get(url)
                .header(ACCEPT, "text/event-stream"),
            credential.as_deref(),
        )
        .send();
        let response = match timeout(self.shared.settings.connect_timeout, sending).await {
            Err(_) => {
                return Outcome::Failed(Failed::Transport(Error::transport(
                    transport,
                    format!(
                        "no answer within {:?}",
                        self.shared.settings.connect_timeout
                    ),
                    None,
                )))
            }
            Ok(Err(e)) => {
                return Outcome::Failed(Failed::Transport(Error::transport(
                    transport,
                    "cannot connect",
                    Some(Box::new(e)),
                )))
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let is_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if status != StatusCode::OK || !is_stream {
            let body = read_limited(response, self.shared.settings.connect_timeout).await;
            return Outcome::Failed(refused(transport, status, &body));
        }
        self.connected(transport);
        Outcome::Ended(self.sse_session(response).await)
    }

    async fn sse_session(&mut self, mut response: reqwest::Response) -> Ended {
        let mut parser = SseParser::default();
        let mut events: Vec<SseEvent> = Vec::new();
        let mut healthy = false;
        let mut last_heard = Instant::now();
        let dead = tokio::time::sleep_until(last_heard + self.dead_after());
        tokio::pin!(dead);
        loop {
            if self.attachments.all_confirmed() {
                healthy = true;
                if self.attachments.waiting() || self.attachments.is_empty() {
                    // Channels the request could not carry (another start), or none left.
                    return Ended::Restart;
                }
            }
            let backlogged = self.attachments.backlogged();
            let room = self.attachments.room();
            tokio::select! {
                biased;
                command = self.commands.recv() => match self.handle(command) {
                    Handled::Close(done) => return Ended::Closed(done),
                    // The stream's channel set is fixed: reconnect with the new one, resuming
                    // the others from their positions.
                    Handled::Attached(_) => return Ended::Restart,
                    Handled::Detached(_) | Handled::Done => {}
                },
                Some(channel) = room => {
                    self.attachments.drain(&channel);
                    if !self.attachments.backlogged() {
                        last_heard = Instant::now();
                    }
                }
                chunk = response.chunk(), if !backlogged => {
                    last_heard = Instant::now();
                    match chunk {
                        Ok(Some(bytes)) => {
                            parser.feed(&bytes, &mut events);
                            for event in events.drain(..) {
                                if let Some(end) = self.on_sse_event(event, healthy) {
                                    return end;
                                }
                            }
                        }
                        Ok(None) => return lost(Error::transport(Transport::Sse, "the stream ended", None), healthy),
                        Err(e) => return lost(Error::transport(Transport::Sse, "the stream failed", Some(Box::new(e))), healthy),
                    }
                }
                _ = &mut dead, if !backlogged => {
                    let due = last_heard + self.dead_after();
                    if Instant::now() >= due {
                        return lost(Error::HeartbeatTimeout(self.dead_after()), healthy);
                    }
                    dead.as_mut().reset(due);
                }
            }
            self.attachments.take_gone();
        }
    }

    fn on_sse_event(&mut self, event: SseEvent, healthy: bool) -> Option<Ended> {
        match event.event.as_str() {
            "message" => match serde_json::from_str::<MessageFrame>(&event.data) {
                Ok(m) => self.attachments.on_message(m),
                Err(e) => return Some(bad_event(Transport::Sse, "message", e, healthy)),
            },
            "attached" => match serde_json::from_str::<AttachedFrame>(&event.data) {
                Ok(a) => self.on_attached(a),
                Err(e) => return Some(bad_event(Transport::Sse, "attached", e, healthy)),
            },
            "error" => {
                let error = serde_json::from_str::<serde_json::Value>(&event.data)
                    .ok()
                    .and_then(Error::from_error_value)
                    .unwrap_or_else(|| {
                        Error::Protocol(format!("unreadable SSE error event: {}", event.data))
                    });
                return Some(match error.code() {
                    Some(ErrorCode::TokenExpired) => self.token_expired(error, healthy),
                    Some(ErrorCode::Forbidden) if error.channel().is_some() => {
                        let channel = error.channel().unwrap_or_default().to_owned();
                        self.attachments.fail(&channel, error);
                        Ended::Restart
                    }
                    _ => lost(error, healthy),
                });
            }
            "going_away" => {
                return Some(lost(
                    Error::ClosedByServer {
                        code: CLOSE_GOING_AWAY,
                        reason: "the server is shutting down".into(),
                    },
                    healthy,
                ))
            }
            _ => {}
        }
        None
    }

    fn on_attached(&mut self, a: AttachedFrame) {
        self.attachments
            .on_attached(&a.channel, a.epoch, a.serial, a.resumed, a.reason);
    }

    // ---- Long-polling ----------------------------------------------------------------------

    async fn poll(&mut self, credential: Option<String>) -> Outcome {
        let transport = Transport::LongPoll;
        let mut credential = credential;
        let mut connected = false;
        let mut refreshed = false;
        loop {
            if self.attachments.is_empty() {
                return Outcome::Ended(Ended::Restart);
            }
            let request = self.attachments.plan();
            // Come back at once when some channel waits for the next request, or for the
            // answer that confirms its attach (the application's `attach` waits for it).
            let wait = if self.attachments.waiting() || self.attachments.unconfirmed() {
                Duration::ZERO
            } else {
                self.shared.settings.poll_wait
            };
            let mut url = endpoint(&self.shared.base, &["v1", "poll"]);
            query(&mut url, &request);
            url.query_pairs_mut()
                .append_pair("wait", &format!("{}ms", wait.as_millis()));
            let limit = if connected {
                wait + self.shared.settings.request_timeout
            } else {
                wait + self.shared.settings.connect_timeout
            };
            let sending = with_credential(self.shared.http.get(url), credential.as_deref())
                .timeout(limit)
                .send();
            let answer = async move {
                let response = sending.await?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            };
            tokio::pin!(answer);
            let answer = loop {
                tokio::select! {
                    biased;
                    command = self.commands.recv() => match self.handle(command) {
                        Handled::Close(done) => {
                            return if connected {
                                Outcome::Ended(Ended::Closed(done))
                            } else {
                                Outcome::Failed(Failed::Closed(done))
                            };
                        }
                        // A new channel: ask again at once with it (nothing is lost: positions
                        // only move with answers).
                        Handled::Attached(_) => break None,
                        Handled::Detached(_) | Handled::Done => {}
                    },
                    answer = &mut answer => break Some(answer),
                }
            };
            let Some(answer) = answer else { continue };
            let failure = match answer {
                Err(e) => Failed::Transport(Error::transport(
                    transport,
                    "the request failed",
                    Some(Box::new(e)),
                )),
                Ok((status, body)) if status == StatusCode::OK => {
                    let answer = match serde_json::from_slice::<PollAnswer>(&body) {
                        Ok(a) => a,
                        Err(e) => {
                            let error = Error::transport(
                                transport,
                                format!("unreadable answer: {e}"),
                                None,
                            );
                            return if connected {
                                Outcome::Ended(lost(error, true))
                            } else {
                                Outcome::Failed(Failed::Transport(error))
                            };
                        }
                    };
                    if !connected {
                        connected = true;
                        self.connected(transport);
                    }
                    refreshed = false;
                    for a in answer.attached {
                        self.on_attached(a);
                    }
                    for m in answer.messages {
                        self.attachments.on_message(m);
                    }
                    if let Some(done) = self.drain_all().await {
                        return Outcome::Ended(Ended::Closed(done));
                    }
                    self.attachments.take_gone();
                    match self.shared.auth.credential(false).await {
                        Ok(c) => credential = c,
                        Err(e) => return Outcome::Ended(lost(e, true)),
                    }
                    continue;
                }
                Ok((status, body)) => refused(transport, status, &body),
            };
            if !connected {
                return Outcome::Failed(failure);
            }
            return Outcome::Ended(match failure {
                // An expired token mid-way: fetch a fresh one and ask again, once.
                Failed::Auth(_) if self.shared.auth.renewable() && !refreshed => {
                    refreshed = true;
                    match self.shared.auth.credential(true).await {
                        Ok(c) => {
                            credential = c;
                            continue;
                        }
                        Err(e) => lost(e, true),
                    }
                }
                Failed::Auth(e) => self.token_expired(e, true),
                Failed::Channel(e) => {
                    let channel = e.channel().unwrap_or_default().to_owned();
                    self.attachments.fail(&channel, e);
                    continue;
                }
                Failed::Transport(e) | Failed::Later(e) => lost(e, true),
                Failed::Fatal(e) => Ended::Fatal(e),
                Failed::Closed(done) => Ended::Closed(done),
            });
        }
    }

    /// Wait until every subscription took its backlog, serving commands meanwhile. `Some` when
    /// the client is closed meanwhile.
    async fn drain_all(&mut self) -> Option<Option<oneshot::Sender<()>>> {
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

/// What the WebSocket session loop reacts to.
enum Step {
    Command(Option<Command>),
    Room(String),
    Frame(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Renewed(Result<Option<String>, Error>),
}

enum WsStep {
    Continue,
    Authorized,
    End(Error, bool),
}

/// The `ref` of `auth` frames.
const AUTH_REF: &str = "auth";

/// An `attached` frame or SSE event, without its `type`.
#[derive(serde::Deserialize)]
struct AttachedFrame {
    channel: String,
    epoch: String,
    serial: u64,
    resumed: bool,
    #[serde(default)]
    reason: Option<ContinuityLost>,
}

/// A long-poll answer.
#[derive(serde::Deserialize)]
struct PollAnswer {
    attached: Vec<AttachedFrame>,
    messages: Vec<MessageFrame>,
}

fn lost(error: Error, healthy: bool) -> Ended {
    Ended::Lost {
        error,
        refresh: false,
        healthy,
    }
}

fn bad_event(transport: Transport, kind: &str, e: serde_json::Error, healthy: bool) -> Ended {
    lost(
        Error::transport(transport, format!("unreadable `{kind}` event: {e}"), None),
        healthy,
    )
}

/// Classify a refused connection attempt by its answer. An answer without a Tidings error
/// body comes from something else (a proxy blocking the transport, a wrong URL): try the next
/// transport.
fn refused(transport: Transport, status: StatusCode, body: &[u8]) -> Failed {
    let Some(error) = Error::from_rest(body) else {
        return Failed::Transport(Error::transport(
            transport,
            format!(
                "refused with HTTP {status} by something other than a Tidings server: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            None,
        ));
    };
    match error.code() {
        Some(ErrorCode::Unauthorized | ErrorCode::TokenExpired) => Failed::Auth(error),
        Some(ErrorCode::Forbidden | ErrorCode::InvalidChannel) if error.channel().is_some() => {
            Failed::Channel(error)
        }
        Some(ErrorCode::TooManyConnections | ErrorCode::ShuttingDown | ErrorCode::Internal)
        | None => Failed::Later(error),
        Some(_) => Failed::Fatal(error),
    }
}

/// Add `channel=..`, `from=..` and `rewind=..` to an SSE or long-poll URL.
fn query(url: &mut Url, request: &crate::attachment::Request) {
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

/// Send one frame, failing if the socket does not take it in time.
async fn send(ws: &mut Ws, frame: &ClientFrame, limit: Duration) -> Result<(), Error> {
    let text = serde_json::to_string(frame).expect("client frames encode");
    match timeout(limit, ws.send(WsMessage::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::transport(
            Transport::WebSocket,
            "cannot send",
            Some(Box::new(e)),
        )),
        Err(_) => Err(Error::transport(
            Transport::WebSocket,
            format!("the socket took nothing for {limit:?}"),
            None,
        )),
    }
}

/// Read at most [`MAX_ERROR_BODY`] bytes of a refused answer.
async fn read_limited(mut response: reqwest::Response, limit: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    let _ = timeout(limit, async {
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    })
    .await;
    body
}

/// Await an optional task; pending forever without one.
async fn join<T>(task: Option<&mut JoinHandle<Result<T, Error>>>) -> Result<T, Error> {
    match task {
        None => std::future::pending().await,
        Some(task) => match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Protocol(format!("the token task failed: {e}"))),
        },
    }
}

/// An instant far enough away to mean "never".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

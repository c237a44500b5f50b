//! One client connection speaking the WebSocket protocol (`docs/protocol.md`).
//!
//! A session multiplexes many channels through one [`Subscription`], which joins catch-up from
//! the log with live messages without a gap or a duplicate.
//!
//! Every wait on the socket is bounded by the send timeout: a client that cannot drain its
//! socket in time is closed with a resumable reason and never slows anyone else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tidings_protocol::{
    ClientFrame, ErrorCode, FrameError, Position, ServerFrame, CLIENT_FRAME_TYPES,
    CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_REVOKED,
    PROTOCOL_VERSION,
};

use crate::channel::ChannelName;
use crate::error::ApiError;
use crate::grant::{Operation, Principal};
use crate::limits::{Permit, RateLimit};
use crate::log::Appended;
use crate::metrics::{CloseReason, Transport};
use crate::publish::{self, MessageIn};
use crate::server::caller::auth_error;
use crate::server::state::AppState;
use crate::server::subscription::{Event, Subscription};

/// Most live messages written before one flush, so other work gets a turn.
const LIVE_BATCH: usize = 256;
/// How long a closing frame may take to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Client,
    SlowConsumer,
    Shutdown,
    Protocol,
    Idle,
    TokenExpired,
    TokenRevoked,
}

type PublishDone = (Option<String>, ChannelName, Result<Vec<Appended>, ApiError>);

/// Run a session on an upgraded socket until it ends.
///
/// Every idle connection holds this future, so it is kept small (about a kilobyte, pinned by a
/// test): one timer serves heartbeats, pings and token expiry; the set of in-flight publishes
/// exists only while there are some; and the rarely taken paths (client frames, acks, the
/// close) run as boxed futures instead of reserving their room in every session. The session
/// is built before the `async` block and used in place there: an `async fn` would keep its
/// arguments and the session built from them side by side.
pub fn run<S>(
    socket: S,
    state: AppState,
    principal: Principal,
    permit: Permit,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Unpin
        + Send
        + 'static,
{
    let connection = state.metrics.connection(Transport::websocket);
    let now = tokio::time::Instant::now();
    let timers = Timers {
        heartbeat_every: state.config.session.heartbeat_interval,
        ping_every: state.config.session.ping_interval,
        next_heartbeat: now + state.config.session.heartbeat_interval,
        next_ping: now + state.config.session.ping_interval,
        expiry: expiry_instant(&principal),
        renewed: false,
    };
    let rate = RateLimit::new(state.config.limits.publish_rate);
    let mut s = Session {
        out: Out {
            socket,
            timeout: state.config.session.send_timeout,
            last_write: Instant::now(),
            shutdown: state.shutdown.clone(),
        },
        subscription: Subscription::new(state.log.clone(), state.hub.clone()),
        revocations: state.revocations.subscribe(),
        state,
        principal,
        inflight: None,
        rate,
        last_heard: Instant::now(),
        timers,
    };
    let mut timer = Box::pin(tokio::time::sleep_until(s.timers.next()));
    async move {
        let _connection = connection;
        let _permit = permit;
        let end = match Box::pin(s.hello()).await {
            Err(end) => end,
            Ok(()) => loop {
                let max_inflight = s.state.config.limits.max_inflight_publishes;
                let step = tokio::select! {
                    biased;
                    // Shutdown first: nothing else matters once the server is going away.
                    _ = s.state.shutdown.cancelled() => Err(End::Shutdown),
                    // Timers next: an expired token ends the session before anything else is
                    // delivered under it.
                    _ = timer.as_mut() => {
                        let step = Box::pin(s.on_timer()).await;
                        timer.as_mut().reset(s.timers.next());
                        step
                    }
                    // A revocation, like expiry, ends the session before anything else is
                    // delivered under the revoked token.
                    Ok(()) = s.revocations.changed() => s.check_revoked(),
                    // Then acks: they unblock the client's publishers.
                    Some(done) = next_published(&mut s.inflight) => Box::pin(s.on_published(done)).await,
                    // Then client frames (paused while too many publishes are in flight: back-pressure).
                    frame = s.out.socket.next(), if s.inflight_len() < max_inflight => match frame {
                        None => Err(End::Client),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            Err(if is_too_big(&e) { End::Protocol } else { End::Client })
                        }
                        Some(Ok(msg)) => {
                            s.last_heard = Instant::now();
                            let step = Box::pin(s.on_client(msg)).await;
                            if s.timers.renewed {
                                s.timers.renewed = false;
                                timer.as_mut().reset(s.timers.next());
                            }
                            step
                        }
                    },
                    // Then deliveries (catch-up pages or live batches), each sharing one flush.
                    event = s.subscription.next(LIVE_BATCH) => s.deliver(event).await,
                };
                if let Err(end) = step {
                    break end;
                }
            },
        };
        Box::pin(s.finish(end)).await;
    }
}

/// The next acknowledged publish, or never while none are in flight.
fn next_published(
    inflight: &mut Option<Inflight>,
) -> impl Future<Output = Option<PublishDone>> + '_ {
    std::future::poll_fn(move |cx| match inflight {
        Some(set) if !set.is_empty() => set.poll_next_unpin(cx),
        _ => Poll::Pending,
    })
}

type Inflight = FuturesUnordered<Pin<Box<dyn Future<Output = PublishDone> + Send>>>;

/// Heartbeats, pings and token expiry, served by one timer per session.
struct Timers {
    heartbeat_every: Duration,
    ping_every: Duration,
    next_heartbeat: tokio::time::Instant,
    next_ping: tokio::time::Instant,
    expiry: tokio::time::Instant,
    /// Set when an `auth` frame moved the expiry.
    renewed: bool,
}

impl Timers {
    fn next(&self) -> tokio::time::Instant {
        self.next_heartbeat.min(self.next_ping).min(self.expiry)
    }
}

/// When the principal's token expires, as a timer instant (far future for API keys).
fn expiry_instant(p: &Principal) -> tokio::time::Instant {
    let far = tokio::time::Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600);
    match p.expires_at {
        None => far,
        Some(at) => match at.duration_since(std::time::SystemTime::now()) {
            Ok(left) => tokio::time::Instant::now() + left,
            Err(_) => tokio::time::Instant::now(),
        },
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// Poll once with a waker that does nothing: `None` when the operation would wait (the caller
/// then waits on it properly, which registers the real waker).
fn poll_once<T>(mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Option<T> {
    match f(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

async fn timed(
    limit: Duration,
    write: impl Future<Output = Result<(), axum::Error>>,
) -> Result<(), End> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Client),
        Err(_) => Err(End::SlowConsumer),
    }
}

/// The socket, written with a time limit: a client that cannot drain its socket within the
/// send timeout is a slow consumer.
struct Out<S> {
    socket: S,
    timeout: Duration,
    last_write: Instant,
    /// A write that waits gives up when the server shuts down.
    shutdown: tokio_util::sync::CancellationToken,
}

impl<S> Out<S>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    /// Write messages and flush once; each write (a full buffer going out) and the flush must
    /// finish within the send timeout.
    ///
    /// Most of the time the socket takes everything at once: that path polls the socket
    /// directly, with no timer and no room reserved in the session's future; only a socket that
    /// makes us wait goes on in [`Out::send_rest`], boxed.
    async fn send_all(&mut self, msgs: impl IntoIterator<Item = Message>) -> Result<(), End> {
        let mut msgs = msgs.into_iter();
        let mut waiting = None;
        for msg in msgs.by_ref() {
            match self.try_ready() {
                Some(Ok(())) => {
                    if self.socket.start_send_unpin(msg).is_err() {
                        return Err(End::Client);
                    }
                }
                Some(Err(_)) => return Err(End::Client),
                None => {
                    waiting = Some(msg);
                    break;
                }
            }
        }
        if waiting.is_none() {
            match poll_once(|cx| self.socket.poll_flush_unpin(cx)) {
                Some(Ok(())) => {
                    self.last_write = Instant::now();
                    return Ok(());
                }
                Some(Err(_)) => return Err(End::Client),
                None => {}
            }
        }
        let rest: Vec<Message> = waiting.into_iter().chain(msgs).collect();
        Box::pin(self.send_rest(rest)).await
    }

    /// Whether the socket takes a message now, without waiting.
    fn try_ready(&mut self) -> Option<Result<(), axum::Error>> {
        poll_once(|cx| self.socket.poll_ready_unpin(cx))
    }

    async fn send_rest(&mut self, msgs: Vec<Message>) -> Result<(), End> {
        let (socket, limit, shutdown) = (&mut self.socket, self.timeout, self.shutdown.clone());
        let write = async move {
            for msg in msgs {
                timed(limit, socket.feed(msg)).await?;
            }
            timed(limit, socket.flush()).await
        };
        tokio::select! {
            written = write => written?,
            // A client that does not read must not hold up a shutdown for the send timeout.
            _ = shutdown.cancelled() => return Err(End::Shutdown),
        }
        self.last_write = Instant::now();
        Ok(())
    }

    async fn send_ping(&mut self) -> Result<(), End> {
        self.send_all([Message::Ping(Default::default())]).await
    }

    async fn frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let text = serde_json::to_string(frame).expect("server frames always encode");
        self.send_all([Message::Text(text.into())]).await
    }
}

struct Session<S> {
    out: Out<S>,
    state: AppState,
    principal: Principal,
    subscription: Subscription,
    rate: RateLimit,
    /// When the client last sent anything (frames, pongs).
    last_heard: Instant,
    timers: Timers,
    /// Changes when a revocation comes into force; the principal is checked again.
    revocations: tokio::sync::watch::Receiver<u64>,
    /// Publishes waiting for their append; created by the first publish.
    inflight: Option<Inflight>,
}

impl<S> Session<S>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    async fn hello(&mut self) -> Result<(), End> {
        let hello = ServerFrame::Connected {
            connection_id: format!("{:016x}", rand::random::<u64>()),
            protocol: PROTOCOL_VERSION,
            max_message_bytes: self.state.config.limits.max_message_bytes,
            heartbeat_ms: self.timers.heartbeat_every.as_millis() as u64,
        };
        self.out.frame(&hello).await
    }

    /// Whether the connection's token was revoked.
    fn check_revoked(&self) -> Result<(), End> {
        match self.state.revocations.check(&self.principal) {
            Ok(()) => Ok(()),
            Err(_) => Err(End::TokenRevoked),
        }
    }

    fn inflight_len(&self) -> usize {
        self.inflight.as_ref().map_or(0, |set| set.len())
    }

    /// Whatever is due: token expiry, the idle check with its ping, a heartbeat.
    async fn on_timer(&mut self) -> Result<(), End> {
        let now = tokio::time::Instant::now();
        if self.timers.expiry <= now {
            return Err(End::TokenExpired);
        }
        if self.timers.next_ping <= now {
            self.timers.next_ping = now + self.timers.ping_every;
            if self.last_heard.elapsed() > self.state.config.session.idle_timeout {
                return Err(End::Idle);
            }
            self.out.send_ping().await?;
        }
        if self.timers.next_heartbeat <= now {
            let every = self.timers.heartbeat_every;
            self.timers.next_heartbeat = now + every;
            if self.out.last_write.elapsed() + Duration::from_millis(50) >= every {
                self.out.frame(&ServerFrame::Heartbeat {}).await?;
            }
        }
        Ok(())
    }

    async fn error(&mut self, e: ApiError, reference: Option<String>) -> Result<(), End> {
        self.state.metrics.error(e.code);
        self.out.frame(&ServerFrame::Error(e.body(reference))).await
    }

    async fn on_client(&mut self, msg: Message) -> Result<(), End> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let e = ApiError::new(
                    ErrorCode::MalformedFrame,
                    "binary frames are not part of the protocol; send JSON text frames",
                );
                return self.error(e, None).await;
            }
            Message::Close(_) => return Err(End::Client),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let frame = match ClientFrame::parse(&text) {
            Ok(f) => f,
            Err(FrameError::Malformed(why)) => {
                return self
                    .error(ApiError::new(ErrorCode::MalformedFrame, why), None)
                    .await
            }
            Err(FrameError::UnknownType(t)) => {
                let e = ApiError::new(
                    ErrorCode::UnknownFrameType,
                    format!(
                        "unknown frame type {t:?}; protocol v{PROTOCOL_VERSION} clients send: {}",
                        CLIENT_FRAME_TYPES.join(", ")
                    ),
                );
                return self.error(e, None).await;
            }
        };
        match frame {
            ClientFrame::Attach {
                channel,
                from,
                rewind,
            } => self.attach(&channel, from, rewind).await,
            ClientFrame::Detach { channel } => self.detach(&channel).await,
            ClientFrame::Publish {
                channel,
                id,
                name,
                data,
                headers,
                reference,
            } => {
                let message = MessageIn {
                    id,
                    name,
                    data,
                    headers,
                };
                if !self.rate.try_take(Instant::now()) {
                    let e = ApiError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} publishes per second on this connection (limits.publish_rate); retry in {:?}",
                            self.state.config.limits.publish_rate,
                            self.rate.retry_after()
                        ),
                    )
                    .on(channel);
                    return self.error(e, reference).await;
                }
                match self.prepare_publish(&channel, message) {
                    Ok(m) => {
                        let log = self.state.log.clone();
                        let metrics = self.state.metrics.clone();
                        let channel = m.channel.clone();
                        let set = self.inflight.get_or_insert_with(FuturesUnordered::new);
                        set.push(Box::pin(async move {
                            let result = publish::append(&log, &metrics, vec![m]).await;
                            (reference, channel, result)
                        }));
                        Ok(())
                    }
                    Err(e) => self.error(e, reference).await,
                }
            }
            ClientFrame::Ping { reference } => {
                self.out.frame(&ServerFrame::Pong { reference }).await
            }
            ClientFrame::Auth { token, reference } => self.reauthenticate(&token, reference).await,
        }
    }

    /// Replace the connection's token. The subject must stay the same; channels the new token
    /// no longer allows are detached with `forbidden`.
    async fn reauthenticate(&mut self, token: &str, reference: Option<String>) -> Result<(), End> {
        if token.contains(':') {
            let e = ApiError::new(
                ErrorCode::Unauthorized,
                "`auth` takes a signed token; API keys are given when connecting",
            );
            return self.error(e, reference).await;
        }
        let principal = match self.state.auth.authenticate(Some(token)) {
            Ok(p) => p,
            Err(e) => return self.error(auth_error(e), reference).await,
        };
        if principal.subject != self.principal.subject {
            let e = ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "the new token is for {:?}, this connection for {:?}; reconnect to change identity",
                    principal.subject, self.principal.subject
                ),
            );
            return self.error(e, reference).await;
        }
        self.principal = principal;
        self.timers.expiry = expiry_instant(&self.principal);
        self.timers.renewed = true;
        let lost: Vec<ChannelName> = self
            .subscription
            .positions()
            .map(|(c, _, _)| c.clone())
            .filter(|c| !self.principal.allows(Operation::Subscribe, c.as_str()))
            .collect();
        for channel in lost {
            self.subscription.detach(&channel);
            self.error(
                ApiError::forbidden(Operation::Subscribe, channel.as_str()),
                None,
            )
            .await?;
        }
        let expires_at = self.principal.expires_at.and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64)
        });
        self.out
            .frame(&ServerFrame::Authorized {
                reference,
                subject: self.principal.subject.to_string(),
                expires_at,
            })
            .await
    }

    fn prepare_publish(
        &self,
        channel: &str,
        message: MessageIn,
    ) -> Result<crate::log::NewMessage, ApiError> {
        let channel = publish::channel(channel)?;
        publish::authorize(&self.principal, Operation::Publish, &channel)?;
        publish::validate(
            &channel,
            message,
            self.state.config.limits.max_message_bytes,
        )
    }

    async fn on_published(&mut self, (reference, channel, result): PublishDone) -> Result<(), End> {
        match result {
            Ok(appended) => {
                let a = appended[0];
                self.out
                    .frame(&ServerFrame::Ack {
                        reference,
                        channel: channel.to_string(),
                        serial: a.serial,
                        duplicate: a.duplicate,
                    })
                    .await
            }
            Err(e) => self.error(e.on(channel.as_str()), reference).await,
        }
    }

    async fn attach(
        &mut self,
        name: &str,
        from: Option<Position>,
        rewind: Option<u64>,
    ) -> Result<(), End> {
        let channel = match publish::channel(name) {
            Ok(c) => c,
            Err(e) => return self.error(e, None).await,
        };
        let mut needed = vec![Operation::Subscribe];
        if rewind.is_some() {
            needed.push(Operation::History);
        }
        for op in needed {
            if let Err(e) = publish::authorize(&self.principal, op, &channel) {
                return self.error(e, None).await;
            }
        }
        if from.is_some() && rewind.is_some() {
            let e = ApiError::new(
                ErrorCode::MalformedFrame,
                "give either `from` (resume) or `rewind`, not both",
            )
            .on(channel.as_str());
            return self.error(e, None).await;
        }
        let max = self.state.config.limits.max_channels_per_connection;
        let attached_already = self.subscription.positions().any(|(c, _, _)| *c == channel);
        if self.subscription.len() >= max && !attached_already {
            let e = ApiError::new(
                ErrorCode::TooManyChannels,
                format!("this connection already has {max} channels attached (limits.max_channels_per_connection); detach some or open another connection"),
            )
            .on(channel.as_str());
            return self.error(e, None).await;
        }
        let a = match self
            .subscription
            .attach(&channel, from.as_ref(), rewind)
            .await
        {
            Ok(a) => a,
            Err(e) => return self.error(e, None).await,
        };
        self.out
            .frame(&ServerFrame::Attached {
                channel: channel.to_string(),
                epoch: a.epoch.to_string(),
                serial: a.serial,
                resumed: a.resumed,
                reason: a.reason,
            })
            .await
    }

    async fn detach(&mut self, name: &str) -> Result<(), End> {
        let channel = match publish::channel(name) {
            Ok(c) => c,
            Err(e) => return self.error(e, None).await,
        };
        if self.subscription.detach(&channel) {
            self.out
                .frame(&ServerFrame::Detached {
                    channel: channel.to_string(),
                })
                .await
        } else {
            let e = ApiError::new(ErrorCode::NotAttached, "this channel is not attached")
                .on(channel.as_str());
            self.error(e, None).await
        }
    }

    /// Write a batch of deliveries and flush once.
    async fn deliver(&mut self, event: Event) -> Result<(), End> {
        match event {
            Event::Messages(batch) => {
                let n = batch.len() as u64;
                self.out
                    .send_all(batch.into_iter().map(|d| Message::Text(d.frame)))
                    .await?;
                self.state.metrics.messages_delivered.inc_by(n);
                Ok(())
            }
            Event::Failed(e) => Box::pin(self.error(e, None)).await,
        }
    }

    async fn finish(mut self, end: End) {
        let (reason, close) = match end {
            End::Client => (CloseReason::client, None),
            End::Idle => (
                CloseReason::idle,
                Some((
                    CLOSE_IDLE,
                    "idle: nothing received within the idle timeout; reconnect and resume",
                    CLOSE_GRACE,
                )),
            ),
            End::TokenExpired => (
                CloseReason::token_expired,
                Some((
                    CLOSE_TOKEN_EXPIRED,
                    "token expired: fetch a new token, reconnect and resume from your last serial",
                    CLOSE_GRACE,
                )),
            ),
            End::TokenRevoked => (
                CloseReason::token_revoked,
                Some((
                    CLOSE_TOKEN_REVOKED,
                    "token revoked: fetch a new token, reconnect and resume from your last serial",
                    CLOSE_GRACE,
                )),
            ),
            End::Protocol => (CloseReason::protocol, None),
            End::Shutdown => (
                CloseReason::shutdown,
                Some((
                    CLOSE_GOING_AWAY,
                    "server shutting down; reconnect and resume from your last serial",
                    CLOSE_GRACE,
                )),
            ),
            End::SlowConsumer => (
                CloseReason::slow_consumer,
                Some((
                    CLOSE_SLOW_CONSUMER,
                    "slow consumer: the socket did not drain in time; reconnect and resume from your last serial",
                    self.out.timeout,
                )),
            ),
        };
        self.state.metrics.session_closed(reason);
        if end == End::TokenRevoked {
            self.state
                .metrics
                .revoked_connection_closed(Transport::websocket);
        }
        tracing::debug!(subject = %self.principal.subject, ?end, "session closed");
        // Release the hub's channels before the (possibly slow) close.
        drop(std::mem::replace(
            &mut self.subscription,
            Subscription::new(self.state.log.clone(), self.state.hub.clone()),
        ));
        if let Some((code, reason, grace)) = close {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            // The closing handshake: send our Close, then read until the client's Close (or the
            // grace runs out), so the client sees the code instead of a reset connection.
            let _ = tokio::time::timeout(grace, async {
                if self.out.socket.send(frame).await.is_ok() {
                    while let Some(Ok(msg)) = self.out.socket.next().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::WebSocket;

    /// The size of the future a closure returns, without running it.
    fn future_size<A, B, C, D, F: Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle WebSocket connection holds one session future (10,000 connections: 10,000 of
    /// them), so its size is memory per connection: keep it small.
    #[test]
    fn an_idle_session_future_stays_small() {
        let size =
            future_size(|a: WebSocket, b: AppState, c: Principal, d: Permit| run(a, b, c, d));
        assert!(
            size <= 1400,
            "the session future grew to {size} B (limit 1400 B): run rarely taken paths as boxed futures (see `session::run`)"
        );
    }
}

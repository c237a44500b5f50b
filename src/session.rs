//! One client connection speaking the WebSocket protocol (`docs/protocol.md`).
//!
//! A session multiplexes many channels. For each attached channel it remembers the last serial
//! it delivered and joins catch-up from the log with live messages from the hub without a gap or
//! a duplicate: it subscribes to the hub first, reads the log from the client's position up to
//! the head, then takes live messages, skipping serials already sent and reading the log again
//! whenever a live message's predecessor was not delivered (the ring overflowed, or messages
//! arrived while catching up).
//!
//! Every wait on the socket is bounded by the send timeout: a client that cannot drain its
//! socket in time is closed with a resumable reason and never slows anyone else.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tidings_protocol::{
    ClientFrame, ContinuityLost, ErrorCode, FrameError, Position, ServerFrame, CLIENT_FRAME_TYPES,
    CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER, PROTOCOL_VERSION,
};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamMap;

use crate::auth::{Operation, Principal};
use crate::channel::ChannelName;
use crate::error::ApiError;
use crate::hub::{encode_message, Live};
use crate::log::Appended;
use crate::metrics::{CloseReason, Transport};
use crate::publish::{self, MessageIn};
use crate::server::AppState;

/// Messages read from the log per catch-up page.
const CATCH_UP_PAGE: usize = 1000;
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
}

struct Attachment {
    channel: ChannelName,
    /// Serial of the last message delivered (or the attach point).
    last: u64,
}

type PublishDone = (Option<String>, ChannelName, Result<Vec<Appended>, ApiError>);

/// Run a session on an upgraded socket until it ends.
pub async fn run<S>(socket: S, state: AppState, principal: Principal)
where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Send
        + 'static,
{
    let _connection = state.metrics.connection(Transport::websocket);
    let (sink, mut incoming) = socket.split();
    let mut s = Session {
        out: Out {
            sink,
            timeout: state.config.session.send_timeout,
            last_write: Instant::now(),
            pending: 0,
        },
        state: state.clone(),
        principal,
        attachments: HashMap::new(),
        live: StreamMap::new(),
        inflight: FuturesUnordered::new(),
    };
    let hello = ServerFrame::Connected {
        connection_id: format!("{:016x}", rand::random::<u64>()),
        protocol: PROTOCOL_VERSION,
        max_message_bytes: state.config.limits.max_message_bytes,
        heartbeat_ms: state.config.session.heartbeat_interval.as_millis() as u64,
    };
    let max_inflight = state.config.limits.max_inflight_publishes;
    let heartbeat_every = state.config.session.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + heartbeat_every,
        heartbeat_every,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let end = match s.out.frame(&hello).await {
        Err(end) => end,
        Ok(()) => loop {
            let step = tokio::select! {
                biased;
                // Shutdown first: nothing else matters once the server is going away.
                _ = state.shutdown.cancelled() => Err(End::Shutdown),
                // Then acks: they unblock the client's publishers.
                Some(done) = s.inflight.next(), if !s.inflight.is_empty() => s.on_published(done).await,
                // Then client frames (paused while too many publishes are in flight: back-pressure).
                frame = incoming.next(), if s.inflight.len() < max_inflight => match frame {
                    None => Err(End::Client),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        Err(if is_too_big(&e) { End::Protocol } else { End::Client })
                    }
                    Some(Ok(msg)) => s.on_client(msg).await,
                },
                // Then live messages, in batches that share one flush.
                Some((key, item)) = s.live.next() => s.on_live_batch(key, item).await,
                _ = heartbeat.tick() => s.on_heartbeat(heartbeat_every).await,
            };
            if let Err(end) = step {
                break end;
            }
        },
    };
    s.finish(end).await;
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

struct Out<S> {
    sink: SplitSink<S, Message>,
    timeout: Duration,
    last_write: Instant,
    /// Messages fed since the last flush, counted as delivered when the flush succeeds.
    pending: u64,
}

impl<S> Out<S>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>>,
{
    /// Queue one message; may write to the socket when the buffer fills.
    async fn feed(&mut self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(self.timeout, self.sink.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(End::SlowConsumer),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(self.timeout, self.sink.flush()).await {
            Ok(Ok(())) => {
                self.last_write = Instant::now();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(End::SlowConsumer),
        }
    }

    async fn frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let text = serde_json::to_string(frame).expect("server frames always encode");
        self.feed(Message::Text(text.into())).await?;
        self.flush().await
    }
}

struct Session<S> {
    out: Out<S>,
    state: AppState,
    principal: Principal,
    attachments: HashMap<Arc<str>, Attachment>,
    live: StreamMap<Arc<str>, BroadcastStream<Arc<Live>>>,
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = PublishDone> + Send>>>,
}

impl<S> Session<S>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>>,
{
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
                match self.prepare_publish(&channel, message) {
                    Ok(m) => {
                        let log = self.state.log.clone();
                        let metrics = self.state.metrics.clone();
                        let channel = m.channel.clone();
                        self.inflight.push(Box::pin(async move {
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
        }
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
        // Re-attaching restarts delivery from the new position.
        self.drop_attachment(&channel);
        // Subscribe before reading the head: anything appended after this point arrives live.
        let receiver = self.state.hub.subscribe(&channel);
        let state = self.state.log.state(&channel);
        let (start, resumed, reason) = match (from, rewind) {
            (Some(pos), _) => {
                if *pos.epoch != *state.epoch {
                    (state.head, false, Some(ContinuityLost::EpochChanged))
                } else if pos.serial > state.head {
                    (state.head, false, Some(ContinuityLost::PositionAhead))
                } else if pos.serial < state.trimmed {
                    (state.head, false, Some(ContinuityLost::HistoryExpired))
                } else {
                    (pos.serial, true, None)
                }
            }
            (None, Some(n)) => (state.head.saturating_sub(n).max(state.trimmed), false, None),
            (None, None) => (state.head, false, None),
        };
        let key = channel.as_arc().clone();
        self.attachments.insert(
            key.clone(),
            Attachment {
                channel: channel.clone(),
                last: start,
            },
        );
        self.live
            .insert(key.clone(), BroadcastStream::new(receiver));
        self.out
            .frame(&ServerFrame::Attached {
                channel: channel.to_string(),
                epoch: state.epoch.to_string(),
                serial: start,
                resumed,
                reason,
            })
            .await?;
        if start < state.head {
            self.catch_up(&key).await?;
            self.flush().await?;
        }
        Ok(())
    }

    fn drop_attachment(&mut self, channel: &ChannelName) -> bool {
        let was = self.attachments.remove(channel.as_arc()).is_some();
        if was {
            self.live.remove(channel.as_arc());
            self.state.hub.release(channel);
        }
        was
    }

    async fn detach(&mut self, name: &str) -> Result<(), End> {
        let channel = match publish::channel(name) {
            Ok(c) => c,
            Err(e) => return self.error(e, None).await,
        };
        if self.drop_attachment(&channel) {
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

    /// Deliver from the log everything after the attachment's last serial, up to the head.
    async fn catch_up(&mut self, key: &Arc<str>) -> Result<(), End> {
        loop {
            let Some(att) = self.attachments.get(key) else {
                return Ok(());
            };
            let (channel, after) = (att.channel.clone(), att.last);
            let page = match self.state.log.read(&channel, after, CATCH_UP_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // Without the log this attachment cannot keep its promise: end it, say why.
                    self.drop_attachment(&channel);
                    let e = ApiError::from_log(&e).on(channel.as_str());
                    return self.error(e, None).await;
                }
            };
            let n = page.messages.len();
            for m in &page.messages {
                if m.serial > after {
                    let frame = Utf8Bytes::from(encode_message(channel.as_str(), m));
                    self.out.feed(Message::Text(frame)).await?;
                    self.out.pending += 1;
                }
            }
            if let (Some(last), Some(att)) = (page.messages.last(), self.attachments.get_mut(key)) {
                att.last = att.last.max(last.serial);
            }
            if n < CATCH_UP_PAGE {
                return Ok(());
            }
        }
    }

    async fn on_live(
        &mut self,
        key: Arc<str>,
        item: Result<Arc<Live>, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        let Some(att) = self.attachments.get_mut(&key) else {
            return Ok(());
        };
        match item {
            Ok(live) if live.serial <= att.last => Ok(()),
            Ok(live) if live.prev <= att.last => {
                att.last = live.serial;
                self.out.pending += 1;
                self.out.feed(Message::Text(live.frame.clone())).await
            }
            // A predecessor was not delivered (or the ring overflowed): the log has it.
            Ok(_) | Err(BroadcastStreamRecvError::Lagged(_)) => self.catch_up(&key).await,
        }
    }

    async fn on_live_batch(
        &mut self,
        key: Arc<str>,
        item: Result<Arc<Live>, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        self.on_live(key, item).await?;
        for _ in 1..LIVE_BATCH {
            match self.live.next().now_or_never() {
                Some(Some((key, item))) => self.on_live(key, item).await?,
                _ => break,
            }
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.out.flush().await?;
        let delivered = std::mem::take(&mut self.out.pending);
        self.state.metrics.messages_delivered.inc_by(delivered);
        Ok(())
    }

    async fn on_heartbeat(&mut self, every: Duration) -> Result<(), End> {
        if self.out.last_write.elapsed() + Duration::from_millis(50) >= every {
            self.out.frame(&ServerFrame::Heartbeat {}).await?;
        }
        Ok(())
    }

    async fn finish(mut self, end: End) {
        let (reason, close) = match end {
            End::Client => (CloseReason::client, None),
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
        tracing::debug!(subject = %self.principal.subject, ?end, "session closed");
        let channels: Vec<ChannelName> = self
            .attachments
            .values()
            .map(|a| a.channel.clone())
            .collect();
        self.live = StreamMap::new();
        self.attachments.clear();
        for channel in &channels {
            self.state.hub.release(channel);
        }
        if let Some((code, reason, grace)) = close {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(grace, self.out.sink.send(frame)).await;
        }
    }
}

//! `GET /v1/sse`: Server-Sent Events for clients (or proxies) that cannot use WebSocket.
//!
//! One stream carries any number of channels. Every event's `id` encodes the position reached on
//! every channel of the stream (`channel=epoch:serial,...`), so the browser's own EventSource
//! reconnect, which sends it back as `Last-Event-ID`, resumes with no loss and no duplicate.

use std::convert::Infallible;
use std::time::Duration;

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use tidings_protocol::{ErrorCode, ServerFrame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::caller::Caller;
use super::state::AppState;
use super::subscription::{format_positions, Event, Kind, Subscription};
use super::wanted::Wanted;
use crate::channel::ChannelName;
use crate::error::ApiError;
use crate::grant::Principal;
use crate::metrics::{CloseReason, Transport};

/// Live messages taken per wake-up.
const SSE_BATCH: usize = 256;
/// Events queued for the response body; beyond that the stream waits (up to the send timeout).
const SSE_QUEUE: usize = 256;

pub(super) async fn sse(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = Wanted::parse(&pairs, &headers)?;
    let permit = caller.admit(&state)?;
    let Caller(principal) = caller;
    let (sub, attached) = wanted.attach(&state, &principal).await?;
    let (tx, rx) = mpsc::channel(SSE_QUEUE);
    let task_state = state.clone();
    state.sessions.spawn(async move {
        let _permit = permit;
        stream_events(task_state, sub, attached, tx, principal).await
    });
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(axum::body::Body::from_stream(ReceiverStream::new(rx)))
        .expect("static headers are valid");
    Ok(response)
}

/// Append one event to `out` in the SSE wire format. `data` is JSON: one line as the server
/// writes it, but messages keep `data` and `headers` as their publisher sent them, which may
/// span lines (pretty-printed). Each line then gets a `data:` field of its own, which the client
/// joins with `\n` (a raw line break in JSON is whitespace between tokens, never inside a
/// string), so a break cannot end the event early.
fn write_event(out: &mut String, event: &str, id: Option<&str>, data: &str) {
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    // Two memchr scans: the usual one-line data is copied whole.
    if data.contains('\n') || data.contains('\r') {
        for line in data.split(['\n', '\r']) {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
    } else {
        out.push_str("data: ");
        out.push_str(data);
        out.push('\n');
    }
    out.push('\n');
}

/// Feed the body of one SSE response until the client leaves, the server shuts down, or the
/// client stops reading for longer than the send timeout (it then reconnects and resumes).
/// Each batch of deliveries goes out as one chunk: one write for many events.
async fn stream_events(
    state: AppState,
    mut sub: Subscription,
    attached: Vec<ServerFrame>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    principal: Principal,
) {
    let mut revocations = state.revocations.subscribe();
    let expires_in = principal.expires_at.map(|t| {
        t.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    let expiry =
        tokio::time::sleep(expires_in.unwrap_or(Duration::from_secs(10 * 365 * 24 * 3600)));
    tokio::pin!(expiry);
    let _connection = state.metrics.connection(Transport::sse);
    let timeout = state.config.session.send_timeout;
    let keep_alive_every = state.config.session.heartbeat_interval;
    let mut keep_alive = tokio::time::interval_at(
        tokio::time::Instant::now() + keep_alive_every,
        keep_alive_every,
    );
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = tokio::time::Instant::now();
    let mut positions: BTreeMap<ChannelName, (String, u64)> = sub
        .positions()
        .map(|(c, e, s)| (c.clone(), (e.to_owned(), s)))
        .collect();
    let id = |p: &BTreeMap<ChannelName, (String, u64)>| {
        format_positions(p.iter().map(|(c, (e, s))| (c, e.as_str(), *s)))
    };
    let send = |chunk: String| {
        let tx = tx.clone();
        async move {
            match tokio::time::timeout(timeout, tx.send(Ok(Bytes::from(chunk)))).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(CloseReason::client),
                Err(_) => Err(CloseReason::slow_consumer),
            }
        }
    };
    let first = id(&positions);
    let mut chunk = String::new();
    // As on WebSocket, the stream opens with `connected`: clients learn the heartbeat interval
    // (keep-alive comments, which EventSource hides, come at that interval).
    let hello = ServerFrame::Connected {
        connection_id: format!("{:016x}", rand::random::<u64>()),
        protocol: tidings_protocol::PROTOCOL_VERSION,
        max_message_bytes: state.config.limits.max_message_bytes,
        heartbeat_ms: keep_alive_every.as_millis() as u64,
    };
    let hello = serde_json::to_string(&hello).expect("frames encode");
    write_event(&mut chunk, "connected", Some(&first), &hello);
    for frame in attached {
        let data = serde_json::to_string(&frame).expect("frames encode");
        write_event(&mut chunk, "attached", Some(&first), &data);
    }
    let reason = match send(chunk).await {
        Err(r) => r,
        Ok(()) => loop {
            let event = tokio::select! {
                biased;
                // Shutdown first; the browser's EventSource reconnects by itself.
                _ = state.shutdown.cancelled() => {
                    let _ = send("retry: 1000\nevent: going_away\ndata: {\"type\":\"going_away\"}\n\n".to_owned()).await;
                    break CloseReason::shutdown;
                }
                _ = tx.closed() => break CloseReason::client,
                // The stream ends with the token; the client fetches a new one and reconnects
                // with its last event id.
                _ = &mut expiry => {
                    let e = ApiError::new(ErrorCode::TokenExpired, "the token has expired: fetch a new one and reconnect with the last event id");
                    let body = serde_json::to_string(&ServerFrame::Error(e.body(None))).expect("frames encode");
                    let mut chunk = String::new();
                    write_event(&mut chunk, "error", None, &body);
                    let _ = send(chunk).await;
                    break CloseReason::token_expired;
                }
                // A revoked token ends the stream the same way, with its own code.
                Ok(()) = revocations.changed() => {
                    if state.revocations.check(&principal).is_ok() {
                        continue;
                    }
                    let e = ApiError::token_revoked();
                    state.metrics.error(e.code);
                    let body = serde_json::to_string(&ServerFrame::Error(e.body(None))).expect("frames encode");
                    let mut chunk = String::new();
                    write_event(&mut chunk, "error", None, &body);
                    let _ = send(chunk).await;
                    state.metrics.revoked_connection_closed(Transport::sse);
                    break CloseReason::token_revoked;
                }
                event = sub.next(SSE_BATCH) => event,
                // A comment keeps proxies from closing a quiet stream.
                _ = keep_alive.tick() => {
                    if last_sent.elapsed() + Duration::from_millis(50) >= keep_alive_every {
                        if let Err(r) = send(": keep-alive\n\n".to_owned()).await {
                            break r;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                    continue;
                }
            };
            let mut chunk = String::new();
            let mut delivered = 0;
            match event {
                Event::Messages(batch) => {
                    chunk.reserve(batch.iter().map(|d| d.frame.len() + 64).sum());
                    for d in batch {
                        let event_name = match d.kind {
                            Kind::Message => {
                                delivered += 1;
                                "message"
                            }
                            Kind::Reattached => "attached",
                        };
                        if let Some(p) = positions.get_mut(&d.channel) {
                            if d.kind == Kind::Reattached {
                                if let Ok(ServerFrame::Attached { epoch, .. }) =
                                    serde_json::from_str::<ServerFrame>(d.frame.as_str())
                                {
                                    p.0 = epoch;
                                }
                            }
                            p.1 = d.serial;
                        }
                        write_event(
                            &mut chunk,
                            event_name,
                            Some(&id(&positions)),
                            d.frame.as_str(),
                        );
                    }
                }
                Event::Failed(e) => {
                    let body = serde_json::to_string(&ServerFrame::Error(e.body(None)))
                        .expect("frames encode");
                    write_event(&mut chunk, "error", None, &body);
                }
            }
            if let Err(r) = send(chunk).await {
                break r;
            }
            last_sent = tokio::time::Instant::now();
            state.metrics.messages_delivered.inc_by(delivered);
        },
    };
    state.metrics.session_closed(reason);
}

//! `GET /v1/sse`: the Server-Sent Events transport. One streaming response carries the channels
//! named in the request; publishes go over REST, and a newly attached channel means a new
//! request (the others resume from their positions).

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use tidings_protocol::{ErrorCode, MessageFrame, CLOSE_GOING_AWAY};
use tokio::time::{timeout, Instant};

use super::event_stream::{SseEvent, SseParser};
use crate::connection::{query, AttachedFrame, Connection, Handled};
use crate::error::Error;
use crate::outcome::{lost, refused, Ended, Failed, Outcome};
use crate::rest::{endpoint, with_credential};
use crate::transport::Transport;

/// Largest error body read from a refused request.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Open the event stream for the channels one request can carry, then serve it until it ends.
pub(crate) async fn connect(conn: &mut Connection, credential: Option<String>) -> Outcome {
    let transport = Transport::Sse;
    let request = conn.attachments.plan();
    let mut url = endpoint(conn.shared.base(), &["v1", "sse"]);
    query(&mut url, &request);
    let sending = with_credential(
        conn.shared
            .http
            .get(url)
            .header(ACCEPT, "text/event-stream"),
        credential.as_deref(),
    )
    .send();
    let response = match timeout(conn.shared.settings.connect_timeout, sending).await {
        Err(_) => {
            return Outcome::Failed(Failed::Transport(Error::transport(
                transport,
                format!(
                    "no answer within {:?}",
                    conn.shared.settings.connect_timeout
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
        let body = read_limited(response, conn.shared.settings.connect_timeout).await;
        return Outcome::Failed(refused(transport, status, &body));
    }
    conn.connected(transport);
    Outcome::Ended(session(conn, response).await)
}

/// Deliver the stream's events until it ends, or until a channel it does not carry needs a new
/// request.
async fn session(conn: &mut Connection, mut response: reqwest::Response) -> Ended {
    let mut parser = SseParser::default();
    let mut events: Vec<SseEvent> = Vec::new();
    let mut healthy = false;
    let mut last_heard = Instant::now();
    let dead = tokio::time::sleep_until(last_heard + conn.dead_after());
    tokio::pin!(dead);
    loop {
        if conn.attachments.all_confirmed() {
            healthy = true;
            if conn.attachments.waiting() || conn.attachments.is_empty() {
                // Channels the request could not carry (another start), or none left.
                return Ended::Restart;
            }
        }
        let backlogged = conn.attachments.backlogged();
        let room = conn.attachments.room();
        tokio::select! {
            biased;
            command = conn.commands.recv() => match conn.handle(command) {
                Handled::Close(done) => return Ended::Closed(done),
                // The stream's channel set is fixed: reconnect with the new one, resuming
                // the others from their positions.
                Handled::Attached(_) => return Ended::Restart,
                Handled::Detached(_) | Handled::Done => {}
            },
            Some(channel) = room => {
                conn.attachments.drain(&channel);
                if !conn.attachments.backlogged() {
                    last_heard = Instant::now();
                }
            }
            chunk = response.chunk(), if !backlogged => {
                last_heard = Instant::now();
                match chunk {
                    Ok(Some(bytes)) => {
                        parser.feed(&bytes, &mut events);
                        for event in events.drain(..) {
                            if let Some(end) = on_event(conn, event, healthy) {
                                return end;
                            }
                        }
                    }
                    Ok(None) => return lost(Error::transport(Transport::Sse, "the stream ended", None), healthy),
                    Err(e) => return lost(Error::transport(Transport::Sse, "the stream failed", Some(Box::new(e))), healthy),
                }
            }
            _ = &mut dead, if !backlogged => {
                let due = last_heard + conn.dead_after();
                if Instant::now() >= due {
                    return lost(Error::HeartbeatTimeout(conn.dead_after()), healthy);
                }
                dead.as_mut().reset(due);
            }
        }
        conn.attachments.take_gone();
    }
}

/// One event of the stream; `Some` when it ends the connection.
fn on_event(conn: &mut Connection, event: SseEvent, healthy: bool) -> Option<Ended> {
    match event.event.as_str() {
        "message" => match serde_json::from_str::<MessageFrame>(&event.data) {
            Ok(m) => conn.attachments.on_message(m),
            Err(e) => return Some(bad_event(Transport::Sse, "message", e, healthy)),
        },
        "attached" => match serde_json::from_str::<AttachedFrame>(&event.data) {
            Ok(a) => conn.on_attached(a),
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
                Some(ErrorCode::TokenExpired | ErrorCode::TokenRevoked) => {
                    conn.token_expired(error, healthy)
                }
                Some(ErrorCode::Forbidden) if error.channel().is_some() => {
                    let channel = error.channel().unwrap_or_default().to_owned();
                    conn.attachments.fail(&channel, error);
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

/// The end of a connection that sent an event this client cannot read.
fn bad_event(transport: Transport, kind: &str, e: serde_json::Error, healthy: bool) -> Ended {
    lost(
        Error::transport(transport, format!("unreadable `{kind}` event: {e}"), None),
        healthy,
    )
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

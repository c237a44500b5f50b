//! `GET /v1/connect`: the WebSocket transport. One bidirectional connection carries every
//! channel; attaches, detaches, publishes and token renewals go in-band as frames, and the
//! server speaks first with `connected` (its heartbeat interval and message size limit).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tidings_protocol::{
    ClientFrame, ErrorBody, ErrorCode, MessageFrame, ServerFrame, CLOSE_TOKEN_EXPIRED,
    CLOSE_TOKEN_REVOKED,
};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::attachment::Attachments;
use crate::command::Command;
use crate::connection::{far_future, Connection, Handled};
use crate::error::Error;
use crate::outcome::{lost, refused, Ended, Failed, Outcome};
use crate::publish::Encoded;
use crate::rest::endpoint;
use crate::transport::Transport;

/// How long a graceful close may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Retry an in-band token renewal that failed after this long.
const RENEW_RETRY: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A publish sent over the WebSocket, awaiting its ack.
struct Pending {
    channel: String,
    message: Encoded,
    reply: oneshot::Sender<Result<u64, Error>>,
}

/// Open the WebSocket, wait for the server's `connected`, then serve the connection until it
/// ends.
pub(crate) async fn connect(conn: &mut Connection, credential: Option<String>) -> Outcome {
    let transport = Transport::WebSocket;
    let mut url = endpoint(conn.shared.base(), &["v1", "connect"]);
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
    let mut ws = match timeout(conn.shared.settings.connect_timeout, connecting).await {
        Err(_) => {
            return Outcome::Failed(Failed::Transport(Error::transport(
                transport,
                format!(
                    "no WebSocket handshake within {:?}",
                    conn.shared.settings.connect_timeout
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
    let hello = timeout(conn.shared.settings.connect_timeout, ws.next()).await;
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
    conn.heartbeat = Duration::from_millis(heartbeat_ms.max(1));
    conn.max_message_bytes = Some(max_message_bytes);
    conn.connected(transport);
    Outcome::Ended(session(conn, ws).await)
}

/// Attach every channel from its position, then deliver frames, send the application's
/// commands as frames and renew the token in-band, until the connection ends.
async fn session(conn: &mut Connection, mut ws: Ws) -> Ended {
    let write_timeout = conn.shared.settings.request_timeout;
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut next_ref = 0u64;
    let end = 'session: {
        let mut frames = Vec::new();
        for (channel, a) in conn.attachments.iter() {
            let (from, rewind) = Attachments::attach_args(a);
            frames.push(ClientFrame::Attach {
                channel: channel.clone(),
                from,
                rewind,
            });
        }
        for frame in frames {
            if let ClientFrame::Attach { channel, .. } = &frame {
                conn.attachments.set_live(channel);
            }
            if let Err(error) = send(&mut ws, &frame, write_timeout).await {
                break 'session lost(error, false);
            }
        }
        let mut healthy = false;
        let mut last_heard = Instant::now();
        let mut renew_at = conn
            .shared
            .auth
            .renew_in()
            .await
            .map(|d| Instant::now() + d);
        let mut renewing: Option<JoinHandle<Result<Option<String>, Error>>> = None;
        // Timers are reset, not rebuilt per frame: frames come far more often than they fire.
        let dead = tokio::time::sleep_until(last_heard + conn.dead_after());
        tokio::pin!(dead);
        let renew_timer = tokio::time::sleep_until(renew_at.unwrap_or_else(far_future));
        tokio::pin!(renew_timer);
        loop {
            healthy = healthy || conn.attachments.all_confirmed();
            let backlogged = conn.attachments.backlogged();
            let room = conn.attachments.room();
            let step = tokio::select! {
                biased;
                command = conn.commands.recv() => Step::Command(command),
                Some(channel) = room => Step::Room(channel),
                frame = ws.next(), if !backlogged => Step::Frame(frame),
                _ = &mut dead, if !backlogged => {
                    let due = last_heard + conn.dead_after();
                    if Instant::now() >= due {
                        break 'session lost(Error::HeartbeatTimeout(conn.dead_after()), healthy);
                    }
                    dead.as_mut().reset(due);
                    continue;
                }
                token = join(renewing.as_mut()), if renewing.is_some() => Step::Renewed(token),
                _ = &mut renew_timer, if renew_at.is_some() && renewing.is_none() => {
                    renew_at = None;
                    let shared = conn.shared.clone();
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
                    if let Err(e) = conn.check_size(&message) {
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
                    let frame = match conn.handle(command) {
                        Handled::Close(done) => {
                            let _ = timeout(CLOSE_GRACE, ws.close(None)).await;
                            break 'session Ended::Closed(done);
                        }
                        Handled::Done => None,
                        Handled::Attached(channel) => {
                            let a = conn.attachments.iter().find(|(c, _)| **c == channel);
                            let (from, rewind) = a
                                .map(|(_, a)| Attachments::attach_args(a))
                                .unwrap_or_default();
                            conn.attachments.set_live(&channel);
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
                    conn.attachments.drain(&channel);
                    if !conn.attachments.backlogged() {
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
                            break 'session if code == CLOSE_TOKEN_EXPIRED
                                || code == CLOSE_TOKEN_REVOKED
                            {
                                conn.token_expired(error, healthy)
                            } else {
                                lost(error, healthy)
                            };
                        }
                        Some(Ok(_)) => continue, // pings are answered by the library
                    };
                    match on_text(conn, &text, &mut pending) {
                        WsStep::Continue => {}
                        WsStep::Authorized => {
                            renew_at = conn
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
            for channel in conn.attachments.take_gone() {
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
            conn.publish_rest(p.channel, p.message, p.reply);
        } else {
            let _ = p.reply.send(Err(Error::PublishInterrupted));
        }
    }
    end
}

/// One text frame from the server.
fn on_text(conn: &mut Connection, text: &str, pending: &mut HashMap<String, Pending>) -> WsStep {
    // Messages are most frames: read them without the tagged-enum detour.
    if text.starts_with(r#"{"type":"message""#) {
        if let Ok(m) = serde_json::from_str::<MessageFrame>(text) {
            conn.attachments.on_message(m);
            return WsStep::Continue;
        }
    }
    let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
        return WsStep::Continue; // a frame type of a newer protocol version
    };
    match frame {
        ServerFrame::Message(m) => conn.attachments.on_message(m),
        ServerFrame::Attached {
            channel,
            epoch,
            serial,
            resumed,
            reason,
        } => conn
            .attachments
            .on_attached(&channel, epoch, serial, resumed, reason),
        ServerFrame::Ack {
            reference, serial, ..
        } => {
            if let Some(p) = reference.and_then(|r| pending.remove(&r)) {
                let _ = p.reply.send(Ok(serial));
            }
        }
        ServerFrame::Error(body) => return on_error(conn, body, pending),
        ServerFrame::Authorized { .. } => return WsStep::Authorized,
        ServerFrame::Connected { .. }
        | ServerFrame::Detached { .. }
        | ServerFrame::Heartbeat {}
        | ServerFrame::Pong { .. } => {}
    }
    WsStep::Continue
}

/// An `error` frame: it answers a publish or a token renewal, or refuses a channel.
fn on_error(
    conn: &mut Connection,
    body: ErrorBody,
    pending: &mut HashMap<String, Pending>,
) -> WsStep {
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
                conn.attachments.fail(&channel, Error::from_body(body));
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

/// What the WebSocket session loop reacts to.
enum Step {
    Command(Option<Command>),
    Room(String),
    Frame(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Renewed(Result<Option<String>, Error>),
}

/// What a text frame means for the session loop.
enum WsStep {
    Continue,
    Authorized,
    End(Error, bool),
}

/// The `ref` of `auth` frames.
const AUTH_REF: &str = "auth";

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

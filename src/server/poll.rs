//! `GET /v1/poll`: HTTP long-polling, for clients behind proxies that break streaming.
//!
//! Each request names its channels and the positions reached (`from`, the `next` of the previous
//! answer). It answers at once when messages after those positions exist (a bounded batch),
//! otherwise waits for the first live message or the timeout, and answers with the messages and
//! the positions to poll from next. Every answer says, per channel, whether it resumed.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tidings_protocol::ErrorCode;

use super::caller::Caller;
use super::state::AppState;
use super::subscription::{format_positions, Event, Kind};
use super::wanted::Wanted;
use crate::error::ApiError;
use crate::metrics::Transport;

/// Messages per answer (soft: a catch-up page is never split).
const POLL_MAX: usize = 1000;
/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(120);

pub(super) async fn poll(
    State(state): State<AppState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let _connection = state.metrics.connection(Transport::poll);
    let wanted = Wanted::parse(&pairs, &headers)?;
    let _permit = caller.admit(&state)?;
    let Caller(principal) = caller;
    let wait = match pairs.iter().find(|(k, _)| k == "wait") {
        None => state.config.session.poll_timeout,
        Some((_, v)) => humantime::parse_duration(v)
            .ok()
            .filter(|d| *d <= MAX_WAIT)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("`wait` must be a duration up to {MAX_WAIT:?}, like `25s` or `500ms`"),
                )
            })?,
    };
    let (mut sub, attached) = wanted.attach(&state, &principal).await?;
    let mut frames = Vec::new();
    let mut reattached = Vec::new();
    // A first attach (no position yet) or a lost continuity is answered at once: the client
    // needs the position, or must resync, before waiting makes sense.
    let answer_now = attached.iter().any(|a| {
        matches!(
            a,
            tidings_protocol::ServerFrame::Attached { resumed: false, .. }
        )
    });
    let deadline = tokio::time::Instant::now() + if answer_now { Duration::ZERO } else { wait };
    let mut revocations = state.revocations.subscribe();
    // Wait for the first messages (at once if the log has some after the positions). A
    // revocation of the caller's token ends the wait with `token_revoked`.
    let first = loop {
        break tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => None,
            Ok(()) = revocations.changed() => {
                if state.revocations.check(&principal).is_ok() {
                    continue;
                }
                state.metrics.revoked_connection_closed(Transport::poll);
                let e = ApiError::token_revoked();
                state.metrics.error(e.code);
                return Err(e);
            }
            _ = tokio::time::sleep_until(deadline) => None,
            event = sub.next(POLL_MAX) => Some(event),
        };
    };
    let mut next_event = first;
    while let Some(event) = next_event.take() {
        match event {
            Event::Messages(batch) => {
                for d in batch {
                    match d.kind {
                        Kind::Message => frames.push(d.frame),
                        // A restarted history goes with the attach results the client checks.
                        Kind::Reattached => reattached.push(d.frame),
                    }
                }
            }
            Event::Failed(e) => return Err(e),
        }
        if frames.len() >= POLL_MAX {
            break;
        }
        // Then only what is ready now: the rest of a catch-up, or live messages already here.
        next_event = if sub.is_behind() {
            Some(sub.next(POLL_MAX - frames.len()).await)
        } else {
            sub.next(POLL_MAX - frames.len()).now_or_never()
        };
    }
    state.metrics.messages_delivered.inc_by(frames.len() as u64);
    let mut body = String::with_capacity(256 + frames.iter().map(|f| f.len() + 1).sum::<usize>());
    body.push_str(r#"{"attached":"#);
    let mut all_attached: Vec<String> = attached
        .iter()
        .map(|f| serde_json::to_string(f).expect("frames encode"))
        .collect();
    all_attached.extend(reattached.iter().map(|f| f.as_str().to_owned()));
    body.push('[');
    body.push_str(&all_attached.join(","));
    body.push(']');
    body.push_str(r#","messages":["#);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(f.as_str());
    }
    body.push_str(r#"],"next":"#);
    body.push_str(
        &serde_json::to_string(&format_positions(sub.positions())).expect("strings encode"),
    );
    body.push('}');
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

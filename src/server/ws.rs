//! `GET /v1/connect`: authenticate, then upgrade to a WebSocket session.

mod session;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::Response;

use super::caller::{AllowedOrigin, Caller};
use super::state::AppState;
use crate::error::ApiError;

/// Frames up to this many times the message limit are read; the message limit itself is
/// checked per publish so an oversized message gets an `error` frame, not a closed socket.
const FRAME_LIMIT_FACTOR: usize = 2;
/// Extra room for the frame's own fields around the message.
const FRAME_OVERHEAD: usize = 16 * 1024;
/// Read buffer per connection, allocated up front: small, so idle connections stay cheap (clients
/// send small frames; a large publish is read in several chunks). docs/performance.md, "Idle
/// memory per connection", has what other sizes cost.
const READ_BUFFER: usize = 1024;
/// Bytes buffered before a write goes to the socket; a batch of frames shares one syscall.
const WRITE_BUFFER: usize = 64 * 1024;

/// The upgrade is checked first (a plain GET is told to upgrade whatever its credentials), then
/// the origin, the caller and the connection limits.
pub(super) async fn connect(
    State(state): State<AppState>,
    upgrade: WebSocketUpgrade,
    _origin: AllowedOrigin,
    caller: Caller,
) -> Result<Response, ApiError> {
    let permit = caller.admit(&state)?;
    let Caller(principal) = caller;
    let max_frame = state.config.limits.max_message_bytes * FRAME_LIMIT_FACTOR + FRAME_OVERHEAD;
    let tracker = state.sessions.clone();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            tracker.track_future(session::run(socket, state, principal, permit))
        }))
}

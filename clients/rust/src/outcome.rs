//! How one go at a transport turned out: it could not connect ([`Failed`]), or it connected and
//! then ended ([`Ended`]). Transports answer the [`Driver`](crate::driver::Driver) with an
//! [`Outcome`]; the driver alone decides from it whether to try the next transport, back off,
//! fetch a new token, or stop.

use reqwest::StatusCode;
use tidings_protocol::ErrorCode;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::transport::Transport;

/// How a connection that was up ended.
pub(crate) enum Ended {
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
pub(crate) enum Failed {
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

/// What one go at a transport came to, for the driver to decide what comes next.
pub(crate) enum Outcome {
    /// It could not connect.
    Failed(Failed),
    /// It connected, and the connection has ended.
    Ended(Ended),
}

/// A connection lost without a reason to fetch a new token: reconnect after a backoff delay.
pub(crate) fn lost(error: Error, healthy: bool) -> Ended {
    Ended::Lost {
        error,
        refresh: false,
        healthy,
    }
}

/// Classify a refused connection attempt by its answer. An answer without a Tidings error
/// body comes from something else (a proxy blocking the transport, a wrong URL): try the next
/// transport.
pub(crate) fn refused(transport: Transport, status: StatusCode, body: &[u8]) -> Failed {
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
        Some(ErrorCode::Unauthorized | ErrorCode::TokenExpired | ErrorCode::TokenRevoked) => {
            Failed::Auth(error)
        }
        Some(ErrorCode::Forbidden | ErrorCode::InvalidChannel) if error.channel().is_some() => {
            Failed::Channel(error)
        }
        Some(ErrorCode::TooManyConnections | ErrorCode::ShuttingDown | ErrorCode::Internal)
        | None => Failed::Later(error),
        Some(_) => Failed::Fatal(error),
    }
}

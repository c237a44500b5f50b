//! What the application's handles ([`Client`](crate::Client),
//! [`Subscription`](crate::Subscription)) ask of the driver, over one bounded queue.

use tidings_protocol::Position;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::event::Item;
use crate::publish::Encoded;
use crate::start::Start;

/// Answers an application's `attach` once the server attached the channel: with the attach
/// point, or `None` when continuity was lost (the stream's first event says so, and where it
/// continues).
pub(crate) type Confirm = oneshot::Sender<Result<Option<Position>, Error>>;

/// Requests from the application to the connection task.
pub(crate) enum Command {
    Attach {
        channel: String,
        id: u64,
        start: Start,
        events: mpsc::Sender<Item>,
        confirm: Confirm,
    },
    Detach {
        channel: String,
        id: u64,
    },
    Publish {
        channel: String,
        message: Encoded,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

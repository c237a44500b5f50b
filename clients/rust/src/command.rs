//! What the application's handles ([`Client`](crate::Client),
//! [`Subscription`](crate::Subscription)) ask of the driver, over one bounded queue.

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::event::Item;
use crate::publish::Encoded;
use crate::start::Start;

/// Requests from the application to the connection task.
pub(crate) enum Command {
    Attach {
        channel: String,
        id: u64,
        start: Start,
        events: mpsc::Sender<Item>,
        confirm: oneshot::Sender<Result<(), Error>>,
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

//! What a subscription receives: the [`Event`]s the application sees, and the [`Item`]s the
//! driver puts in a subscription's queue to carry them (with attach points and a final error).

use tidings_protocol::{ContinuityLost, MessageFrame, Position};

use crate::error::Error;

/// A delivered message: `channel`, `serial`, `id`, `name`, `data`, `headers`, `timestamp`, as on
/// the wire.
pub type Message = MessageFrame;

/// One item of a [`Subscription`](crate::Subscription).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The next message of the channel: serials strictly increase, none is repeated.
    Message(Message),
    /// Messages were missed and cannot be delivered: the channel's history was reset
    /// (`epoch_changed`), retention removed them (`history_expired`), or the position was never
    /// issued (`position_ahead`). Discard local state, reload it (REST history or your backend),
    /// and continue: messages after `position` follow.
    ContinuityLost {
        /// The channel.
        channel: String,
        /// Why continuity was lost.
        reason: ContinuityLost,
        /// The position delivery continues after (the channel's head in its current epoch).
        position: Position,
    },
}

/// What the connection sends to a subscription's queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// The channel was (re)attached at this position; not shown to the application but kept as
    /// the subscription's position.
    Attached(Position),
    /// An event for the application.
    Event(Event),
    /// The channel cannot be served any more (refused, or the client stopped); the stream ends.
    Failed(Error),
}

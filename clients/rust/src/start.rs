//! Where a subscription starts: now, from a saved position, or a number of messages back.

use tidings_protocol::Position;

/// Where a new subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Only messages published after the attach.
    Now,
    /// Resume after a position saved earlier (the epoch and the serial of the last message
    /// processed). If the server cannot continue from it, the stream says so first with
    /// [`Event::ContinuityLost`](crate::Event::ContinuityLost).
    From(Position),
    /// The last N messages, then live ones.
    Rewind(u64),
}

//! What an application receives for one attached channel: a [`Stream`] of [`Event`]s.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tidings_protocol::{ContinuityLost, MessageFrame, Position};
use tokio::sync::mpsc;

use crate::connection::Command;
use crate::error::Error;

/// A delivered message: `channel`, `serial`, `id`, `name`, `data`, `headers`, `timestamp`, as on
/// the wire.
pub type Message = MessageFrame;

/// Where a new subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Only messages published after the attach.
    Now,
    /// Resume after a position saved earlier (the epoch and the serial of the last message
    /// processed). If the server cannot continue from it, the stream says so first with
    /// [`Event::ContinuityLost`].
    From(Position),
    /// The last N messages, then live ones.
    Rewind(u64),
}

/// One item of a [`Subscription`].
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

/// A message to publish. At least one of `name` and `data` is needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Publish {
    /// Idempotency key (1–255 bytes): publishing the same id again appends nothing and answers
    /// the existing serial. With an id, the client retries a publish interrupted by a dropped
    /// connection; without one, it reports [`Error::PublishInterrupted`] instead.
    pub id: Option<String>,
    /// Event name, for the application's dispatch.
    pub name: Option<String>,
    /// Any JSON value.
    pub data: Option<serde_json::Value>,
    /// A JSON object of headers.
    pub headers: Option<serde_json::Value>,
}

impl Publish {
    /// A message with this data.
    pub fn data(data: serde_json::Value) -> Publish {
        Publish {
            data: Some(data),
            ..Publish::default()
        }
    }

    /// Set the event name.
    pub fn name(mut self, name: impl Into<String>) -> Publish {
        self.name = Some(name.into());
        self
    }

    /// Set the idempotency key.
    pub fn id(mut self, id: impl Into<String>) -> Publish {
        self.id = Some(id.into());
        self
    }

    /// Set the headers (a JSON object).
    pub fn headers(mut self, headers: serde_json::Value) -> Publish {
        self.headers = Some(headers);
        self
    }
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

/// The events of one attached channel, in order. Dropping it detaches the channel.
///
/// The stream yields `Ok(Event)` for as long as the channel is attached, across reconnects and
/// transport changes. It yields `Err` once if the channel cannot be served any more (for
/// example `forbidden` after a token renewal narrowed the capabilities, or a fatal client
/// error), then ends. It also ends when the client is closed.
pub struct Subscription {
    channel: String,
    id: u64,
    events: mpsc::Receiver<Item>,
    position: Option<Position>,
    commands: mpsc::Sender<Command>,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        id: u64,
        events: mpsc::Receiver<Item>,
        commands: mpsc::Sender<Command>,
    ) -> Subscription {
        Subscription {
            channel,
            id,
            events,
            position: None,
            commands,
        }
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The position reached by what this stream has yielded so far: the epoch and the serial of
    /// the last message yielded (or of the attach point). Save it to resume later with
    /// [`Start::From`].
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.events.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Item::Attached(p))) => self.position = Some(p),
                Poll::Ready(Some(Item::Failed(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Item::Event(event))) => {
                    match &event {
                        Event::Message(m) => {
                            if let Some(p) = self.position.as_mut() {
                                p.serial = m.serial;
                            }
                        }
                        Event::ContinuityLost { position, .. } => {
                            self.position = Some(position.clone())
                        }
                    }
                    return Poll::Ready(Some(Ok(event)));
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Best effort: if the command queue is full, the connection notices the closed
        // queue at the next delivery and detaches then.
        let _ = self.commands.try_send(Command::Detach {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("position", &self.position)
            .finish()
    }
}

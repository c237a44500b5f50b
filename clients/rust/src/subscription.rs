//! The application's end of one attached channel: a [`Stream`] of [`Event`]s that detaches the
//! channel when dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tidings_protocol::Position;
use tokio::sync::mpsc;

use crate::command::Command;
use crate::error::Error;
use crate::event::{Event, Item};

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
    /// the last message yielded, or of the attach point, known as soon as
    /// [`Client::attach`](crate::Client::attach) returns (unless continuity was lost: then
    /// `None` until the stream yields that event). Save it to resume later with
    /// [`Start::From`](crate::Start::From).
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Where the server attached the channel, before anything was read from the stream.
    pub(crate) fn attached_at(&mut self, position: Option<Position>) {
        if self.position.is_none() {
            self.position = position;
        }
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

//! The node's live feed: ONE core NATS subscription to `tdg.live.>`, where the stream
//! republishes every message it stored, feeding the [`AppendObserver`] (the hub).
//!
//! Republished messages carry their stream sequence (`Nats-Sequence`, the serial) and the
//! sequence of the previous message on the same subject (`Nats-Last-Sequence`, the `prev` the
//! hub links messages by), so this costs one subscription per node whatever the number of
//! channels or connections, and no per-channel state. Core NATS is at-most-once: a message
//! can be lost on a reconnect or when this subscriber falls behind. A lost message in the
//! middle of a channel shows as a `prev` the subscriber has not seen, and the session reads the
//! log; a lost message at a channel's end would show only with the next one, so on every
//! reconnect or overflow the observer is told to [`resync`](AppendObserver::resync): every
//! subscriber checks the log.

use std::sync::Arc;

use async_nats::{HeaderMap, Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::record::{self, EPOCH_HEADER};
use super::subjects;
use crate::log::AppendObserver;

/// Why the feed may have missed messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lost {
    /// The connection to NATS came back (messages sent meanwhile are gone).
    Reconnected,
    /// This node did not keep up and the client dropped messages.
    SlowConsumer,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

/// Hand one republished message to `observer`.
fn deliver(observer: &dyn AppendObserver, message: &Message) {
    let Some(channel) = subjects::live_channel(message.subject.as_str()) else {
        return;
    };
    let Some(headers) = message.headers.as_ref() else {
        return;
    };
    let Some(serial) = header_u64(headers, "Nats-Sequence") else {
        return;
    };
    let prev = header_u64(headers, "Nats-Last-Sequence").unwrap_or(0);
    if let Some(epoch) = headers.get(EPOCH_HEADER) {
        observer.reset(&channel, &Arc::from(epoch.as_str()), serial);
        return;
    }
    match record::decode_message(serial, &message.payload) {
        Ok(stored) => observer.appended(&channel, prev, std::slice::from_ref(&stored)),
        Err(e) => {
            tracing::warn!(channel = %channel, serial, error = %e, "undecodable message in the stream; subscribers will read the log");
            observer.resync();
        }
    }
}

/// Feed `observer` from `subscription` until `shutdown`; `lost` says when messages may have
/// been missed.
pub(super) async fn run(
    mut subscription: Subscriber,
    observer: Arc<dyn AppendObserver>,
    mut lost: mpsc::Receiver<Lost>,
    shutdown: CancellationToken,
) {
    loop {
        // Shutdown first; then a possible loss (so subscribers re-check promptly); then data.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            Some(why) = lost.recv() => {
                tracing::warn!(reason = ?why, "the live feed may have missed messages; subscribers check the log");
                observer.resync();
            }
            message = subscription.next() => match message {
                Some(message) => deliver(observer.as_ref(), &message),
                None => {
                    tracing::error!("the live feed subscription ended; subscribers check the log");
                    observer.resync();
                    return;
                }
            },
        }
    }
}

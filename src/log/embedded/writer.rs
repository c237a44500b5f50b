//! The single writer thread: it owns the write connection and serves the log's requests in
//! groups, taking every request waiting (up to [`MAX_GROUP_MESSAGES`]) at once.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::channels::Shared;
use super::commit::{AppendReply, GroupCommit};
use super::reset::reset;
use super::retention::retain;
use crate::channel::ChannelName;
use crate::log::{AppendObserver, LogError, NewMessage, RetentionPolicy, RetentionReport};
use tidings_connectors_core::Checkpoint;

/// Most messages committed in one transaction. Bounds the latency one group adds.
pub const MAX_GROUP_MESSAGES: usize = 8192;
/// Capacity of the writer's request queue; appends wait (asynchronously) when it is full.
pub const WRITER_QUEUE: usize = 4096;

/// What the log asks of its writer; each request carries where to answer.
pub(super) enum Request {
    Append {
        messages: Vec<NewMessage>,
        checkpoint: Option<Checkpoint>,
        reply: AppendReply,
    },
    Retain {
        policy: RetentionPolicy,
        reply: oneshot::Sender<Result<RetentionReport, LogError>>,
    },
    Reset {
        channels: Vec<ChannelName>,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// The writer thread's state: the only connection that writes.
pub(super) struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    observer: Arc<dyn AppendObserver>,
    appends: GroupCommit,
}

impl Writer {
    /// A writer over `conn`; `last_ts` is the newest timestamp stored, `dedup_window` how far
    /// back a message id deduplicates.
    pub(super) fn new(
        conn: Connection,
        shared: Arc<Shared>,
        observer: Arc<dyn AppendObserver>,
        last_ts: u64,
        dedup_window: Duration,
    ) -> Self {
        Writer {
            conn,
            shared,
            observer,
            appends: GroupCommit::new(last_ts, dedup_window),
        }
    }

    /// Serve requests until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends = Vec::new();
            let mut retains = Vec::new();
            let mut resets = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append {
                        messages,
                        checkpoint,
                        reply,
                    } => {
                        count += messages.len().max(1);
                        appends.push((messages, checkpoint, reply));
                    }
                    Request::Retain { policy, reply } => retains.push((policy, reply)),
                    Request::Reset { channels, reply } => resets.push((channels, reply)),
                }
                if count < MAX_GROUP_MESSAGES {
                    next = rx.try_recv().ok();
                }
            }
            // Resets queued before appends in this group go first: a source asks for the reset
            // before it appends the batch that starts the new history.
            for (channels, reply) in resets {
                let _ = reply.send(reset(
                    &mut self.conn,
                    &self.shared,
                    &*self.observer,
                    &channels,
                ));
            }
            if !appends.is_empty() {
                self.appends
                    .commit(&mut self.conn, &self.shared, &*self.observer, appends);
            }
            for (policy, reply) in retains {
                let _ = reply.send(retain(&mut self.conn, &self.shared, &policy));
            }
        }
        tracing::debug!("channel log writer stopped");
    }
}

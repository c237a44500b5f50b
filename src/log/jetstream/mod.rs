//! The cluster log: every node's [`ChannelLog`] is one NATS JetStream stream, `TIDINGS`.
//!
//! The design is in `docs/cluster.md`; in short:
//! - A channel's messages are on `tdg.m.<ns>.<channel>`; a message's serial is its **stream
//!   sequence**, the same on every node. Serials of one channel strictly increase, with gaps.
//! - A REST/WebSocket publish is one JetStream publish (several: one atomic batch), with
//!   `Nats-Msg-Id` = channel + id for the idempotency id, so a retry on any node lands once
//!   within the stream's dedup window.
//! - A connector batch and its checkpoint (`tdg.cp.<source>`) are one atomic batch, the
//!   checkpoint first, fenced by `Nats-Expected-Last-Subject-Sequence` = the checkpoint's
//!   sequence this node read: a writer that did not see the latest checkpoint stores nothing.
//! - A reset writes the channel's epoch record and an epoch marker in one batch; reads skip
//!   markers, the live feed turns them into a reset.
//! - Each node's hub is fed by one subscription to the stream's republished subjects (`feed`).
//! - Reads of state and checkpoints go to the stream leader (`STREAM.MSG.GET`), so they see
//!   every acknowledged write; range reads use batched direct gets, which any replica answers,
//!   and fall back to the leader when the replica that answered is behind.
//!
//! Memory does not grow with the number of channels: the only map is the checkpoint sequence
//! of each connector this node writes for.

mod error;
mod feed;
mod leases;
mod publish;
mod record;
pub mod subjects;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{
    Config as StreamConfig, LastRawMessageErrorKind, RawMessageErrorKind, Republish, StorageType,
};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, ServerAddr, StatusCode};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tidings_connectors_core::{Checkpoint, SourcePosition};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::log::{
    AppendObserver, Appended, ChannelLog, ChannelState, LogError, LogStatus, NewMessage, ReadPage,
    RetentionPolicy, RetentionReport, StoredMessage,
};
use publish::{code, Ack, Failure, Outgoing, MAX_BATCH};
use record::{CheckpointRecord, EpochRecord, Partial, EPOCH_HEADER};

pub use error::{ClusterError, MIN_SERVER};
pub use leases::KvLeases;
pub use subjects::STREAM;

/// Stream metadata key holding the base epoch (of channels never reset).
const EPOCH_KEY: &str = "tidings_epoch";
/// Room a message's envelope takes beside its `limits.max_message_bytes`.
const ENVELOPE_ALLOWANCE: usize = 4096;
/// How long one request to JetStream may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write or read keeps retrying while the stream has no leader (a leader election
/// after a NATS server died takes 4 to 9 s).
const RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause between two retries.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest idempotency window in cluster mode: JetStream keeps every id of the window in
/// memory on each server, so the embedded log's day would cost gigabytes at a high rate.
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// JetStream: "atomic publish batch is incomplete" (a leader change abandoned it).
const BATCH_INCOMPLETE: u64 = 10176;

/// How to reach and shape the cluster log.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// NATS server URLs (`nats://host:4222`); any one is enough to connect, all are tried.
    pub servers: Vec<String>,
    /// This node's id (in the NATS connection name and the logs).
    pub node: String,
    /// Copies JetStream keeps of every message (1, 3 or 5; at most the number of servers).
    pub replicas: usize,
    /// The largest message the server accepts (`limits.max_message_bytes`): every NATS server
    /// must take it, with the envelope around it.
    pub max_message_bytes: usize,
    /// A message id seen on the channel within this window deduplicates (JetStream holds the
    /// ids in memory, so at most [`MAX_DEDUP_WINDOW`] is used).
    pub dedup_window: Duration,
}

/// What this node knows of a connector's checkpoint: its record and the sequence it is stored
/// at, which the next write of that checkpoint expects.
#[derive(Debug, Clone)]
struct KnownCheckpoint {
    seq: u64,
    record: CheckpointRecord,
}

/// The [`ChannelLog`] of cluster mode.
pub struct JetStreamLog {
    client: Client,
    js: jetstream::Context,
    /// This node's id, in the checkpoints it writes.
    node: String,
    stream: jetstream::stream::Stream,
    base_epoch: Arc<str>,
    /// Per connector this node writes for: bounded by the configured connectors.
    checkpoints: Mutex<HashMap<String, KnownCheckpoint>>,
    closed: AtomicBool,
    shutdown: CancellationToken,
}

fn version_of(text: &str) -> (u32, u32) {
    let mut parts = text
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {e}"))
}

/// The `Nats-Msg-Id` of an idempotency id on a channel: ids are per channel in Tidings and per
/// stream in JetStream.
fn dedup_id(channel: &ChannelName, id: &str) -> String {
    format!(
        "{}/{}",
        subjects::token(channel.as_str()),
        subjects::token(id)
    )
}

impl JetStreamLog {
    /// Connect to `options.servers`, check them, create the stream if it is missing, and start
    /// feeding `observer` from it.
    pub async fn open(
        options: JetStreamOptions,
        observer: Arc<dyn AppendObserver>,
    ) -> Result<Self, ClusterError> {
        let mut addrs = Vec::new();
        for url in &options.servers {
            addrs.push(
                url.parse::<ServerAddr>()
                    .map_err(|e| ClusterError::BadUrl {
                        url: url.clone(),
                        problem: e.to_string(),
                    })?,
            );
        }
        let servers = options.servers.join(",");
        let (lost_tx, lost_rx) = mpsc::channel(4);
        // The first `Connected` is the initial connection, before the feed subscribed: only a
        // later one (a reconnect) can have lost messages.
        let connected_before = Arc::new(AtomicBool::new(false));
        let connect = ConnectOptions::new()
            .name(format!("tidings {}", options.node))
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            .event_callback(move |event| {
                let lost = lost_tx.clone();
                let connected_before = connected_before.clone();
                async move {
                    let why = match event {
                        Event::Connected if connected_before.swap(true, Ordering::SeqCst) => {
                            Some(feed::Lost::Reconnected)
                        }
                        Event::Connected => None,
                        Event::SlowConsumer(_) => Some(feed::Lost::SlowConsumer),
                        Event::Disconnected => {
                            tracing::warn!("lost the connection to NATS; reconnecting");
                            None
                        }
                        _ => None,
                    };
                    if let Some(why) = why {
                        // Full means a resync is pending already.
                        let _ = lost.try_send(why);
                    }
                }
            });
        let client = async_nats::connect_with_options(addrs, connect)
            .await
            .map_err(|e| ClusterError::Unreachable {
                servers: servers.clone(),
                problem: e.to_string(),
            })?;
        let info = client.server_info();
        let server = format!("{} ({}:{})", info.server_name, info.host, info.port);
        if version_of(&info.version) < MIN_SERVER {
            return Err(ClusterError::TooOld {
                server,
                version: info.version,
            });
        }
        if !info.jetstream {
            return Err(ClusterError::NoJetStream { server });
        }
        // The JSON envelope adds the id, name, headers and timestamp around the data.
        let needed = options.max_message_bytes + ENVELOPE_ALLOWANCE;
        if info.max_payload < needed {
            return Err(ClusterError::PayloadTooSmall {
                server,
                max_payload: info.max_payload,
                needed,
            });
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        // Right after the NATS cluster starts (or loses its meta leader) stream requests can
        // time out: keep trying for a while before telling the operator.
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let stream = loop {
            match ensure_stream(&js, &options).await {
                Err(ClusterError::Stream { problem }) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(%problem, "JetStream not ready yet; retrying");
                    tokio::time::sleep(RETRY_PAUSE * 5).await;
                }
                other => break other?,
            }
        };
        let config = &stream.cached_info().config;
        let base_epoch: Arc<str> = match config.metadata.get(EPOCH_KEY) {
            Some(e) => Arc::from(e.as_str()),
            None => {
                return Err(ClusterError::Incompatible {
                    problem: format!("has no `{EPOCH_KEY}` in its metadata"),
                })
            }
        };
        if config.num_replicas != options.replicas {
            tracing::warn!(
                stream = STREAM,
                configured = options.replicas,
                actual = config.num_replicas,
                "the stream keeps a different number of replicas than configured; change it with `nats stream edit {STREAM} --replicas N`"
            );
        }
        // Subscribe before answering: every message stored from here on reaches the hub.
        let subscription =
            client
                .subscribe(subjects::LIVE)
                .await
                .map_err(|e| ClusterError::Stream {
                    problem: format!("cannot subscribe to {}: {e}", subjects::LIVE),
                })?;
        client
            .flush()
            .await
            .map_err(|e| ClusterError::Unreachable {
                servers: servers.clone(),
                problem: e.to_string(),
            })?;
        let shutdown = CancellationToken::new();
        tokio::spawn(feed::run(subscription, observer, lost_rx, shutdown.clone()));
        tracing::info!(
            servers = %servers,
            server = %server,
            version = %info.version,
            stream = STREAM,
            replicas = config.num_replicas,
            epoch = %base_epoch,
            node = %options.node,
            "cluster log opened on NATS JetStream"
        );
        Ok(JetStreamLog {
            client,
            js,
            node: options.node.clone(),
            stream,
            base_epoch,
            checkpoints: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            shutdown,
        })
    }

    /// This node's connector leases, `ttl` long, kept in the same JetStream (with the stream's
    /// replicas).
    pub async fn leases(&self, ttl: Duration) -> Result<KvLeases, ClusterError> {
        let replicas = self.stream.cached_info().config.num_replicas;
        KvLeases::open(&self.js, &self.node, ttl, replicas).await
    }

    fn check_open(&self) -> Result<(), LogError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// The newest message on `subject`, from the stream leader (`None`: there is none).
    async fn last_on(
        &self,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, LogError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let e = match self.stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => return Ok(Some(m)),
                Err(e) => e,
            };
            match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                LastRawMessageErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    return Ok(None)
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                _ => return Err(unavailable(&format!("cannot read {subject}"), e)),
            }
        }
    }

    /// The first message on `subject` at or after `seq`, from the stream leader.
    async fn next_on(
        &self,
        subject: &str,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, LogError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let got = self
                .stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject)
                .send()
                .await;
            let e = match got {
                Ok(m) => return Ok(Some(m)),
                Err(e) => e,
            };
            match e.kind() {
                RawMessageErrorKind::NoMessageFound => return Ok(None),
                RawMessageErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    return Ok(None)
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                _ => return Err(unavailable(&format!("cannot read {subject}"), e)),
            }
        }
    }

    /// Up to `want` messages on `subject` from `seq` to `up_to`, by one batched direct get
    /// (answered by any replica, which may be behind). Each with its sequence; epoch markers
    /// as `None`. Empty when the replica has none (or none answered).
    async fn direct_batch(
        &self,
        subject: &str,
        seq: u64,
        want: usize,
        up_to: u64,
    ) -> Result<Vec<(u64, Option<StoredMessage>)>, LogError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        let body = serde_json::json!({
            "seq": seq,
            "next_by_subj": subject,
            "batch": want,
            "up_to_seq": up_to,
        });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{STREAM}"),
                inbox,
                body.to_string().into(),
            )
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(REQUEST_TIMEOUT, replies.next()).await;
            let Ok(Some(m)) = next else {
                // No answer, or the subscription ended: the caller asks the leader.
                break;
            };
            if let Some(status) = m.status {
                if status != StatusCode::OK {
                    // 204: end of the batch; 404: nothing; 503: no replica answers.
                    break;
                }
            }
            let Some(headers) = m.headers.as_ref() else {
                break;
            };
            let Some(s) = headers
                .get("Nats-Sequence")
                .and_then(|v| v.as_str().parse::<u64>().ok())
            else {
                break;
            };
            out.push((s, decode(s, headers, &m.payload)?));
            if out.len() >= want {
                break;
            }
        }
        let _ = replies.unsubscribe().await;
        Ok(out)
    }

    /// The stored checkpoint of `source` (from the leader) and its sequence (0: none).
    async fn read_checkpoint(&self, source: &str) -> Result<KnownCheckpoint, LogError> {
        let found = self.last_on(&subjects::checkpoint(source)).await?;
        let Some(m) = found else {
            return Ok(KnownCheckpoint {
                seq: 0,
                record: CheckpointRecord {
                    position: None,
                    partial: None,
                    writer: String::new(),
                },
            });
        };
        let record: CheckpointRecord = serde_json::from_slice(&m.payload).map_err(|e| {
            LogError::Corrupt(format!(
                "the checkpoint of {source} at {} is unreadable: {e}",
                m.sequence
            ))
        })?;
        Ok(KnownCheckpoint {
            seq: m.sequence,
            record,
        })
    }

    /// Publish plain messages (no checkpoint), retrying while the stream has no leader.
    async fn append_plain(&self, messages: Vec<NewMessage>) -> Result<Vec<Appended>, LogError> {
        let ts = record::now_ms();
        let all_have_ids = messages.iter().all(|m| m.id.is_some());
        let outgoing = |m: &NewMessage| {
            let mut headers = HeaderMap::new();
            if let Some(id) = &m.id {
                headers.insert("Nats-Msg-Id", dedup_id(&m.channel, id).as_str());
            }
            Outgoing {
                subject: subjects::messages(&m.channel),
                headers,
                payload: record::encode_message(m, ts),
            }
        };
        let mut out = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(MAX_BATCH) {
            let deadline = tokio::time::Instant::now() + RETRY_FOR;
            loop {
                let result = if chunk.len() == 1 {
                    publish::one(&self.client, outgoing(&chunk[0]), REQUEST_TIMEOUT)
                        .await
                        .map(|ack| {
                            vec![Appended {
                                serial: ack.seq,
                                duplicate: ack.duplicate,
                            }]
                        })
                } else {
                    let batch = chunk.iter().map(outgoing).collect();
                    publish::batch(&self.client, batch, REQUEST_TIMEOUT)
                        .await
                        .map(|ack| serials(&ack, chunk.len(), 0))
                };
                match result {
                    Ok(appended) => {
                        out.extend(appended);
                        break;
                    }
                    Err(f) if f.code() == Some(code::BATCH_DUPLICATE) => {
                        // Some of these ids were stored before (a retried request): publish
                        // one by one, and each repeat answers its stored serial.
                        for m in chunk {
                            let ack = self.publish_retrying(outgoing(m), m.id.is_some()).await?;
                            out.push(Appended {
                                serial: ack.seq,
                                duplicate: ack.duplicate,
                            });
                        }
                        break;
                    }
                    Err(f) if retryable(&f, all_have_ids) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(unavailable("cannot publish", f));
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(f) => return Err(unavailable("cannot publish", f)),
                }
            }
        }
        Ok(out)
    }

    /// Publish one message, retrying while that cannot store it twice.
    async fn publish_retrying(&self, message: Outgoing, has_id: bool) -> Result<Ack, LogError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let attempt = Outgoing {
                subject: message.subject.clone(),
                headers: message.headers.clone(),
                payload: message.payload.clone(),
            };
            match publish::one(&self.client, attempt, REQUEST_TIMEOUT).await {
                Ok(ack) => return Ok(ack),
                Err(f) if retryable(&f, has_id) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                Err(f) => return Err(unavailable("cannot publish", f)),
            }
        }
    }

    /// A connector batch and its checkpoint, atomically, fenced on the checkpoint's sequence.
    async fn append_checkpointed(
        &self,
        messages: Vec<NewMessage>,
        checkpoint: Checkpoint,
    ) -> Result<Vec<Appended>, LogError> {
        let source = checkpoint.source.clone();
        let subject = subjects::checkpoint(&source);
        let known = self.checkpoints.lock().get(&source).cloned();
        let mut known = match known {
            Some(k) => k,
            None => self.read_checkpoint(&source).await?,
        };
        // A batch written in parts before a crash: its first parts are stored already.
        let skip = match &known.record.partial {
            Some(p) if p.target == checkpoint.position => p.done.min(messages.len()),
            _ => 0,
        };
        let resume_from = known.record.position.clone();
        let mut out = vec![
            Appended {
                serial: 0,
                duplicate: true,
            };
            skip
        ];
        let ts = record::now_ms();
        let rest = &messages[skip..];
        // The checkpoint takes one place in each atomic batch.
        let parts: Vec<&[NewMessage]> = if rest.is_empty() {
            vec![rest]
        } else {
            rest.chunks(MAX_BATCH - 1).collect()
        };
        let mut done = skip;
        for (k, part) in parts.iter().enumerate() {
            done += part.len();
            let writer = format!("{}/{:016x}", self.node, rand::random::<u64>());
            let record = if k + 1 == parts.len() {
                CheckpointRecord {
                    position: Some(checkpoint.position.clone()),
                    partial: None,
                    writer,
                }
            } else {
                CheckpointRecord {
                    position: resume_from.clone(),
                    partial: Some(Partial {
                        target: checkpoint.position.clone(),
                        done,
                    }),
                    writer,
                }
            };
            let first_seq = self
                .write_part(&source, &subject, &known, &record, part, ts)
                .await?;
            out.extend((0..part.len()).map(|i| Appended {
                serial: first_seq + 1 + i as u64,
                duplicate: false,
            }));
            known = KnownCheckpoint {
                seq: first_seq,
                record,
            };
            self.checkpoints
                .lock()
                .insert(source.clone(), known.clone());
        }
        Ok(out)
    }

    /// Write one atomic batch `[checkpoint record, part...]` expecting the checkpoint at
    /// `known.seq`. Answers the checkpoint's new sequence (the messages follow it).
    async fn write_part(
        &self,
        source: &str,
        subject: &str,
        known: &KnownCheckpoint,
        record: &CheckpointRecord,
        part: &[NewMessage],
        ts: u64,
    ) -> Result<u64, LogError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                known.seq.to_string().as_str(),
            );
            let mut batch = vec![Outgoing {
                subject: subject.to_owned(),
                headers,
                payload: serde_json::to_vec(record)
                    .expect("a checkpoint always encodes")
                    .into(),
            }];
            batch.extend(part.iter().map(|m| Outgoing {
                subject: subjects::messages(&m.channel),
                headers: HeaderMap::new(),
                payload: record::encode_message(m, ts),
            }));
            let n = batch.len();
            let result = if n == 1 {
                publish::one(&self.client, batch.pop().expect("one"), REQUEST_TIMEOUT).await
            } else {
                publish::batch(&self.client, batch, REQUEST_TIMEOUT).await
            };
            let failure = match result {
                Ok(ack) => return Ok(ack.seq + 1 - n as u64),
                Err(f) => f,
            };
            let ambiguous = matches!(failure, Failure::TimedOut)
                || failure.code() == Some(code::WRONG_LAST_SEQUENCE);
            if ambiguous {
                // Either another writer moved the checkpoint (we are fenced), or this very
                // batch was stored and only its ack was lost: the leader's record says which.
                let now = self.read_checkpoint(source).await?;
                if now.seq != known.seq && now.record == *record {
                    return Ok(now.seq);
                }
                if now.seq != known.seq {
                    self.checkpoints.lock().remove(source);
                    tracing::warn!(
                        source,
                        expected = known.seq,
                        found = now.seq,
                        "checkpoint moved by another writer; batch refused"
                    );
                    return Err(LogError::Fenced {
                        connector: source.to_owned(),
                    });
                }
                // Unchanged: nothing was stored; try again.
            } else if !retryable(&failure, false) {
                self.checkpoints.lock().remove(source);
                return Err(unavailable("cannot append the connector's batch", failure));
            }
            if tokio::time::Instant::now() >= deadline {
                self.checkpoints.lock().remove(source);
                return Err(unavailable("cannot append the connector's batch", failure));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Whether a failed publish can be sent again: always when nothing was stored, and after a
/// timeout only when dedup ids make a second copy impossible.
fn retryable(failure: &Failure, deduplicated: bool) -> bool {
    match failure {
        Failure::NoResponders => true,
        Failure::TimedOut => deduplicated,
        Failure::Api { code, .. } => *code == BATCH_INCOMPLETE,
        Failure::Other(_) => false,
    }
}

/// The serials of a batch's messages from its ack: sequences are contiguous and end at
/// `ack.seq`; the first `skip` of them are not messages (a checkpoint).
fn serials(ack: &Ack, n: usize, skip: usize) -> Vec<Appended> {
    let first = ack.seq + 1 - (n + skip) as u64 + skip as u64;
    (0..n)
        .map(|i| Appended {
            serial: first + i as u64,
            duplicate: false,
        })
        .collect()
}

/// A stored message on a channel subject: `None` for an epoch marker.
fn decode(
    seq: u64,
    headers: &HeaderMap,
    payload: &[u8],
) -> Result<Option<StoredMessage>, LogError> {
    if headers.get(EPOCH_HEADER).is_some() {
        return Ok(None);
    }
    record::decode_message(seq, payload).map(Some)
}

/// The stream as this version needs it: found, or created.
async fn ensure_stream(
    js: &jetstream::Context,
    options: &JetStreamOptions,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let stream_err = |e: &dyn std::fmt::Display| ClusterError::Stream {
        problem: e.to_string(),
    };
    for _ in 0..2 {
        match js.get_stream(STREAM).await {
            Ok(stream) => {
                check_stream(&stream.cached_info().config)?;
                return Ok(stream);
            }
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
                _ => return Err(stream_err(&e)),
            },
        }
        let config = StreamConfig {
            name: STREAM.to_owned(),
            subjects: subjects::STORED.iter().map(|s| s.to_string()).collect(),
            storage: StorageType::File,
            num_replicas: options.replicas,
            duplicate_window: options.dedup_window.min(MAX_DEDUP_WINDOW),
            allow_direct: true,
            allow_atomic_publish: true,
            republish: Some(Republish {
                source: subjects::REPUBLISH_FROM.to_owned(),
                destination: subjects::REPUBLISH_TO.to_owned(),
                headers_only: false,
            }),
            metadata: HashMap::from([(EPOCH_KEY.to_owned(), crate::log::embedded::new_epoch())]),
            description: Some("Tidings channel log (cluster mode)".to_owned()),
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(stream) => {
                tracing::info!(
                    stream = STREAM,
                    replicas = options.replicas,
                    "created the JetStream stream"
                );
                return Ok(stream);
            }
            Err(e) => match e.kind() {
                // Another node created it meanwhile: use theirs.
                jetstream::context::CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NAME_EXIST => {}
                jetstream::context::CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::INSUFFICIENT_RESOURCES
                        || j.error_code() == ErrorCode(10074) =>
                {
                    return Err(ClusterError::TooFewServers {
                        replicas: options.replicas,
                        problem: j.to_string(),
                    })
                }
                _ => return Err(stream_err(&e)),
            },
        }
    }
    Err(ClusterError::Stream {
        problem: "it was created and removed again while starting".into(),
    })
}

/// Refuse a stream this version cannot run on.
fn check_stream(config: &StreamConfig) -> Result<(), ClusterError> {
    let mut missing = Vec::new();
    for s in subjects::STORED {
        if !config.subjects.iter().any(|c| c == s) {
            missing.push(format!("does not store {s}"));
        }
    }
    if !config.allow_atomic_publish {
        missing.push("does not allow atomic batches".into());
    }
    if !config.allow_direct {
        missing.push("does not allow direct gets".into());
    }
    let republish_ok = config.republish.as_ref().is_some_and(|r| {
        r.source == subjects::REPUBLISH_FROM
            && r.destination == subjects::REPUBLISH_TO
            && !r.headers_only
    });
    if !republish_ok {
        missing.push(format!(
            "does not republish {} to {}",
            subjects::REPUBLISH_FROM,
            subjects::REPUBLISH_TO
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Incompatible {
            problem: missing.join(", "),
        })
    }
}

#[async_trait::async_trait]
impl ChannelLog for JetStreamLog {
    async fn append(
        &self,
        messages: Vec<NewMessage>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<Appended>, LogError> {
        self.check_open()?;
        match checkpoint {
            None if messages.is_empty() => Ok(Vec::new()),
            None => self.append_plain(messages).await,
            Some(cp) => self.append_checkpointed(messages, cp).await,
        }
    }

    async fn state(&self, channel: &ChannelName) -> Result<ChannelState, LogError> {
        let (messages, epoch) = (subjects::messages(channel), subjects::epoch(channel));
        let (head, epoch) = tokio::try_join!(self.last_on(&messages), self.last_on(&epoch))?;
        let head = head.map_or(0, |m| m.sequence);
        let (epoch, trimmed) = match epoch {
            None => (self.base_epoch.clone(), 0),
            Some(m) => {
                let r: EpochRecord = serde_json::from_slice(&m.payload).map_err(|e| {
                    LogError::Corrupt(format!("the epoch record of {channel} is unreadable: {e}"))
                })?;
                (Arc::from(r.epoch), m.sequence + 1)
            }
        };
        Ok(ChannelState {
            epoch,
            head,
            trimmed,
        })
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<ReadPage, LogError> {
        let state = self.state(channel).await?;
        let subject = subjects::messages(channel);
        let mut messages = Vec::new();
        let mut next = after.max(state.trimmed) + 1;
        while messages.len() < limit && next <= state.head {
            let got = self
                .direct_batch(&subject, next, limit - messages.len(), state.head)
                .await?;
            let got = if got.is_empty() {
                // The replica that answered is behind (or none did): the leader has it.
                match self.next_on(&subject, next).await? {
                    Some(m) if m.sequence <= state.head => {
                        vec![(m.sequence, decode(m.sequence, &m.headers, &m.payload)?)]
                    }
                    _ => break,
                }
            } else {
                got
            };
            for (seq, m) in got {
                if seq > state.head {
                    break;
                }
                next = seq + 1;
                messages.extend(m);
            }
        }
        Ok(ReadPage { state, messages })
    }

    async fn reset(&self, channels: Vec<ChannelName>) -> Result<(), LogError> {
        self.check_open()?;
        for channel in channels {
            let epoch = crate::log::embedded::new_epoch();
            let mut marker = HeaderMap::new();
            marker.insert(EPOCH_HEADER, epoch.as_str());
            let batch = || {
                vec![
                    Outgoing {
                        subject: subjects::epoch(&channel),
                        headers: HeaderMap::new(),
                        payload: serde_json::to_vec(&EpochRecord {
                            epoch: epoch.clone(),
                        })
                        .expect("an epoch record always encodes")
                        .into(),
                    },
                    Outgoing {
                        subject: subjects::messages(&channel),
                        headers: marker.clone(),
                        payload: bytes::Bytes::new(),
                    },
                ]
            };
            let deadline = tokio::time::Instant::now() + RETRY_FOR;
            let ack = loop {
                match publish::batch(&self.client, batch(), REQUEST_TIMEOUT).await {
                    Ok(ack) => break ack,
                    // A second reset after a lost ack is harmless: one more new epoch.
                    Err(f) if retryable(&f, true) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(RETRY_PAUSE).await
                    }
                    Err(f) => return Err(unavailable("cannot reset the channel", f)),
                }
            };
            tracing::warn!(channel = %channel, epoch = %epoch, head = ack.seq, "channel history reset: new epoch");
            // What is older than the marker no longer belongs to any history (reads skip it
            // already): free it.
            let purged = self
                .stream
                .purge()
                .filter(subjects::messages(&channel))
                .sequence(ack.seq)
                .await;
            if let Err(e) = purged {
                tracing::warn!(channel = %channel, error = %e, "cannot remove the messages before a reset; they stay unreadable until removed");
            }
        }
        Ok(())
    }

    async fn checkpoint(&self, source: &str) -> Result<Option<SourcePosition>, LogError> {
        let known = self.read_checkpoint(source).await?;
        let position = known.record.position.clone();
        self.checkpoints.lock().insert(source.to_owned(), known);
        Ok(position)
    }

    async fn apply_retention(
        &self,
        _policy: &RetentionPolicy,
    ) -> Result<RetentionReport, LogError> {
        // Not built yet in cluster mode (docs/cluster.md): the stream keeps everything.
        Ok(RetentionReport::default())
    }

    async fn status(&self) -> Result<LogStatus, LogError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| unavailable("cannot read the stream's state", e))?;
        let server = self.client.server_info();
        let cluster = info.cluster.unwrap_or_default();
        let peers: Vec<serde_json::Value> = cluster
            .replicas
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "current": p.current,
                    "offline": p.offline,
                    "lag": p.lag.unwrap_or(0),
                    "active_ms": p.active.as_millis() as u64,
                })
            })
            .collect();
        let detail = serde_json::json!({
            "nats": {
                "connected_to": server.server_name,
                "version": server.version,
                "cluster": server.cluster,
                "servers": server.connect_urls,
            },
            "stream": {
                "name": STREAM,
                "replicas": info.config.num_replicas,
                "leader": cluster.leader,
                "peers": peers,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_serial": info.state.first_sequence,
                "last_serial": info.state.last_sequence,
            },
        });
        let serde_json::Value::Object(detail) = detail else {
            unreachable!("an object")
        };
        Ok(LogStatus {
            mode: "cluster",
            node: Some(self.node.clone()),
            detail,
        })
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.client.flush().await;
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_of("2.9.10") < MIN_SERVER);
        assert!(version_of("2.12.0") >= MIN_SERVER);
        assert!(version_of("v2.15.1") >= MIN_SERVER);
        assert!(version_of("2.14.0-RC.1") >= MIN_SERVER);
    }

    #[test]
    fn batch_serials_follow_the_checkpoint() {
        let ack = Ack {
            seq: 10,
            duplicate: false,
            count: Some(4),
        };
        let s: Vec<u64> = serials(&ack, 3, 1).iter().map(|a| a.serial).collect();
        assert_eq!(s, vec![8, 9, 10]);
        let s: Vec<u64> = serials(&ack, 4, 0).iter().map(|a| a.serial).collect();
        assert_eq!(s, vec![7, 8, 9, 10]);
    }
}

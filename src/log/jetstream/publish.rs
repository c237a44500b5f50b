//! Publishing into the stream: one message, or an atomic batch (ADR-50, nats-server 2.12+),
//! over plain requests so that every JetStream error code reaches the caller.
//!
//! async-nats has the batch headers but no batch publisher; this is the small part of one we
//! need: the first message is a request (so a fencing error comes back before the rest is
//! sent), the middle ones are plain publishes, the last carries `Nats-Batch-Commit` and answers
//! with the ack of the whole batch (its last sequence and its count).

use std::time::Duration;

use async_nats::jetstream::response::Response;
use async_nats::{Client, HeaderMap, Request, RequestErrorKind};
use bytes::Bytes;
use serde::Deserialize;

/// Most messages one atomic batch may hold (the server's limit).
pub const MAX_BATCH: usize = 1000;

/// JetStream's error codes this log acts on.
pub mod code {
    /// `Nats-Expected-Last-Subject-Sequence` did not match: another writer moved the subject.
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// A message of an atomic batch repeats a `Nats-Msg-Id` still in the dedup window.
    pub const BATCH_DUPLICATE: u64 = 10201;
}

/// A message to publish.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The stream's answer to a publish.
#[derive(Debug, Clone, Deserialize)]
pub struct Ack {
    /// Sequence of the message (of a batch: of its last message).
    pub seq: u64,
    /// The message id was seen already: nothing was stored; `seq` is the stored one.
    #[serde(default)]
    pub duplicate: bool,
    /// Of a batch: how many messages it stored.
    #[serde(default)]
    pub count: Option<u64>,
}

/// Why a publish was not acknowledged.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Nobody answered: the stream has no leader right now (or does not exist). Nothing was
    /// stored, so the publish can be sent again.
    NoResponders,
    /// No answer in time: the message may or may not be stored.
    TimedOut,
    /// JetStream refused it.
    Api { code: u64, text: String },
    /// The connection failed or the answer made no sense.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoResponders => write!(f, "no JetStream stream answered (no leader yet?)"),
            Failure::TimedOut => write!(f, "JetStream did not answer in time"),
            Failure::Api { code, text } => write!(f, "JetStream refused it: {text} ({code})"),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

impl Failure {
    /// JetStream's error code, if it refused.
    pub fn code(&self) -> Option<u64> {
        match self {
            Failure::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Send one request and read a JetStream answer (`None` for an empty one, which batch flow
/// control sends for a message that is not the commit).
async fn request(
    client: &Client,
    message: Outgoing,
    timeout: Duration,
) -> Result<Option<Ack>, Failure> {
    let request = Request::new()
        .headers(message.headers)
        .payload(message.payload)
        .timeout(Some(timeout));
    let answer = client
        .send_request(message.subject, request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => Failure::NoResponders,
            RequestErrorKind::TimedOut => Failure::TimedOut,
            _ => Failure::Other(e.to_string()),
        })?;
    if answer.payload.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice::<Response<Ack>>(&answer.payload) {
        Ok(Response::Ok(ack)) => Ok(Some(ack)),
        Ok(Response::Err { error }) => Err(Failure::Api {
            code: error.error_code().0,
            text: error.to_string(),
        }),
        Err(e) => Err(Failure::Other(format!(
            "unexpected JetStream answer ({e}): {}",
            String::from_utf8_lossy(&answer.payload)
        ))),
    }
}

/// Publish one message and wait for its ack.
pub async fn one(client: &Client, message: Outgoing, timeout: Duration) -> Result<Ack, Failure> {
    request(client, message, timeout)
        .await?
        .ok_or_else(|| Failure::Other("JetStream answered a publish with nothing".into()))
}

/// Publish `messages` (2 to [`MAX_BATCH`]) as one atomic batch: all are stored, in order and
/// with contiguous sequences, or none is. Answers the ack of the batch.
pub async fn batch(
    client: &Client,
    messages: Vec<Outgoing>,
    timeout: Duration,
) -> Result<Ack, Failure> {
    debug_assert!((2..=MAX_BATCH).contains(&messages.len()));
    let id: String = {
        use rand::Rng;
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(22)
            .map(char::from)
            .collect()
    };
    let n = messages.len();
    for (i, mut m) in messages.into_iter().enumerate() {
        m.headers.insert("Nats-Batch-Id", id.as_str());
        m.headers.insert("Nats-Batch-Sequence", (i + 1).to_string());
        if i + 1 == n {
            m.headers.insert("Nats-Batch-Commit", "1");
            let ack = one(client, m, timeout).await?;
            if ack.count != Some(n as u64) {
                return Err(Failure::Other(format!(
                    "JetStream acknowledged a batch of {n} with count {:?}",
                    ack.count
                )));
            }
            return Ok(ack);
        }
        if i == 0 {
            // A request: a refusal of the first message (fencing) comes back at once.
            request(client, m, timeout).await?;
        } else {
            client
                .publish_with_headers(m.subject, m.headers, m.payload)
                .await
                .map_err(|e| Failure::Other(e.to_string()))?;
        }
    }
    unreachable!("a batch has at least two messages")
}

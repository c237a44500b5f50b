//! Driving a connector: the loop between a [`Source`] and the channel log.
//!
//! Per batch: turn each [`Publish`] into a log message (channel and size checked here, poison
//! changes diverted to the dead-letter channel or stopping the source, as configured), append
//! the batch with the source's position as checkpoint in one atomic write, and only then tell
//! the source the position is durable. Transient failures restart the source from the last
//! durable checkpoint with backoff and jitter; fatal ones stop it with the operator's fix logged.
//!
//! Every transition (starting, running, retrying, stopped), error, checkpoint and count is
//! recorded in the source's [`SourceStatus`], which `GET /v1/connectors` reports.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::value::to_raw_value;
use tidings_connectors_core::{Checkpoint, Publish, Source, SourceError, SourcePosition};
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::log::{Appended, ChannelLog, NewMessage};
use crate::publish::{Fields, MAX_ID_LEN};

/// First retry delay after a transient failure.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The `reason` of a source stopped by the server's shutdown rather than by an error.
const SHUT_DOWN: &str = "shut down";

/// What to do with a change that cannot become a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Publish the error and the change's position to this channel; the stream goes on.
    DeadLetter(ChannelName),
    /// Stop the source and tell the operator.
    Stop,
}

/// How one source runs.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The connector's configured name; its checkpoint is stored under it.
    pub name: String,
    pub poison: PoisonPolicy,
    pub max_message_bytes: usize,
    /// Where the runner records what the source is doing; shared with whoever reports it.
    pub status: Arc<SourceStatus>,
}

/// What a source is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Reading its checkpoint and connecting, the first time.
    Starting,
    /// Started (connected, positioned at its checkpoint) and streaming.
    Running,
    /// Failed; restarting from the last durable checkpoint with backoff. `attempt` counts the
    /// failures in a row since it last ran; the restart is due at `retry_at`.
    Retrying { attempt: u32, retry_at: Timestamp },
    /// Not running: shut down, or stopped by an error the operator must fix (`reason` says how).
    Stopped { reason: String },
    /// Cluster mode: another node holds this connector's lease (`holder`, its node id, when
    /// known); this node takes over if that lease lapses.
    Standby { holder: Option<String> },
}

/// A wall-clock time, serialised as RFC 3339 in UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    fn now() -> Self {
        Timestamp(SystemTime::now())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// The last error a source hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub message: String,
    pub at: Timestamp,
}

/// The last checkpoint a source committed to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastCheckpoint {
    pub position: SourcePosition,
    /// When this process committed it; `None` for the checkpoint stored before it started.
    pub at: Option<Timestamp>,
}

/// A source's status at one moment: its state, last error, last checkpoint and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub state: RunState,
    /// When it entered `state`.
    pub since: Timestamp,
    pub last_error: Option<LastError>,
    pub checkpoint: Option<LastCheckpoint>,
    /// Messages appended to their channels (replays the log dropped as duplicates not counted).
    pub messages_published: u64,
    /// Messages appended to the dead-letter channel.
    pub messages_dead_lettered: u64,
    /// Replayed messages the log already held (after a restart in the middle of a transaction).
    pub duplicates_dropped: u64,
    /// Errors, transient and fatal.
    pub errors: u64,
    /// Restarts after a failure that got the source running again.
    pub reconnects: u64,
}

/// A source's live status, kept by [`run`]. Cheap to read at any time.
#[derive(Debug)]
pub struct SourceStatus(parking_lot::Mutex<StatusReport>);

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus(parking_lot::Mutex::new(StatusReport {
            state: RunState::Starting,
            since: Timestamp::now(),
            last_error: None,
            checkpoint: None,
            messages_published: 0,
            messages_dead_lettered: 0,
            duplicates_dropped: 0,
            errors: 0,
            reconnects: 0,
        }))
    }
}

impl SourceStatus {
    /// A copy of the status now.
    pub fn report(&self) -> StatusReport {
        self.0.lock().clone()
    }

    /// Whether the source was stopped by an error only the operator can fix (not by the
    /// shutdown): what `/readyz` reports.
    pub fn failed(&self) -> bool {
        matches!(&self.0.lock().state, RunState::Stopped { reason } if reason != SHUT_DOWN)
    }

    fn set_state(r: &mut StatusReport, state: RunState) {
        r.state = state;
        r.since = Timestamp::now();
    }

    /// The checkpoint read from the log at start, if nothing was committed since.
    fn stored(&self, position: Option<&SourcePosition>) {
        let mut r = self.0.lock();
        if r.checkpoint.is_none() {
            r.checkpoint = position.map(|p| LastCheckpoint {
                position: p.clone(),
                at: None,
            });
        }
    }

    fn running(&self) {
        let mut r = self.0.lock();
        if matches!(r.state, RunState::Retrying { .. }) {
            r.reconnects += 1;
        }
        Self::set_state(&mut r, RunState::Running);
    }

    fn error(r: &mut StatusReport, e: &SourceError) {
        r.errors += 1;
        r.last_error = Some(LastError {
            message: e.to_string(),
            at: Timestamp::now(),
        });
    }

    /// A transient failure; the restart is due after `delay`.
    fn retrying(&self, e: &SourceError, delay: Duration) {
        let mut r = self.0.lock();
        Self::error(&mut r, e);
        let attempt = match r.state {
            RunState::Retrying { attempt, .. } => attempt.saturating_add(1),
            _ => 1,
        };
        let retry_at = Timestamp(SystemTime::now() + delay);
        Self::set_state(&mut r, RunState::Retrying { attempt, retry_at });
    }

    /// Waiting for the lease that `holder` has.
    pub(crate) fn standby(&self, holder: Option<String>) {
        let mut r = self.0.lock();
        if !matches!(&r.state, RunState::Standby { holder: h } if *h == holder) {
            Self::set_state(&mut r, RunState::Standby { holder });
        }
    }

    fn stopped(&self, e: Option<&SourceError>) {
        let mut r = self.0.lock();
        let reason = match e {
            Some(e) => {
                Self::error(&mut r, e);
                e.to_string()
            }
            None => SHUT_DOWN.to_owned(),
        };
        Self::set_state(&mut r, RunState::Stopped { reason });
    }

    /// A batch is durable: its checkpoint and what the log did with each message.
    fn committed(&self, position: &SourcePosition, dead_letter: &[bool], appended: &[Appended]) {
        let mut r = self.0.lock();
        for (dead, a) in dead_letter.iter().zip(appended) {
            match (a.duplicate, dead) {
                (true, _) => r.duplicates_dropped += 1,
                (false, true) => r.messages_dead_lettered += 1,
                (false, false) => r.messages_published += 1,
            }
        }
        r.checkpoint = Some(LastCheckpoint {
            position: position.clone(),
            at: Some(Timestamp::now()),
        });
    }
}

/// Turn a batch into log messages, applying the poison policy. `Err` stops the source.
fn prepare(
    opts: &SourceOptions,
    batch: Vec<Publish>,
    position: &SourcePosition,
) -> Result<Vec<NewMessage>, SourceError> {
    let mut out = Vec::with_capacity(batch.len());
    for (index, p) in batch.into_iter().enumerate() {
        let checked = Fields {
            id: p.id.as_deref(),
            name: p.name.as_deref(),
            data: p.data.as_deref(),
            headers: p.headers.as_deref(),
        }
        .check_on(&p.channel, opts.max_message_bytes);
        match checked {
            // The connector's JSON text goes to the log as it is.
            Ok(channel) => out.push(NewMessage {
                channel,
                id: p.id,
                name: p.name,
                data: p.data,
                headers: p.headers,
            }),
            Err(invalid) => {
                let problem = invalid.to_string();
                let key = p
                    .key
                    .as_ref()
                    .map_or_else(|| "none".into(), |k| k.get().to_owned());
                tracing::warn!(source = %opts.name, channel = %p.channel, %key, %problem, "poison change");
                match &opts.poison {
                    PoisonPolicy::Stop => {
                        return Err(SourceError::Fatal {
                            what: format!(
                                "source {} produced a change that cannot be published ({problem}) at {position:?}, key {key}",
                                opts.name
                            ),
                            fix: "correct the row or routing, or configure a dead-letter channel so such changes are set aside".into(),
                        })
                    }
                    PoisonPolicy::DeadLetter(dlq) => {
                        let data = serde_json::json!({
                            "error": problem,
                            "source": opts.name,
                            "position": position,
                            "channel": p.channel,
                            "name": p.name,
                            "id": p.id,
                            "key": p.key,
                        });
                        out.push(NewMessage {
                            channel: dlq.clone(),
                            // Derived from the position, so a replay deduplicates here too.
                            id: p.id.clone().or_else(|| {
                                Some(format!("dead:{}:{}", serde_json::to_string(position).unwrap_or_default(), index))
                                    .filter(|s| s.len() <= MAX_ID_LEN)
                            }),
                            name: Some("dead_letter".into()),
                            data: to_raw_value(&data).ok(),
                            headers: None,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Run `source` until `shutdown` or a fatal error. Returns the fatal error, if any.
pub async fn run(
    source: &mut dyn Source,
    opts: &SourceOptions,
    log: Arc<dyn ChannelLog>,
    shutdown: CancellationToken,
) -> Option<SourceError> {
    let mut backoff = BACKOFF_START;
    loop {
        let result = run_once(source, opts, &log, &shutdown, &mut backoff).await;
        match result {
            Ok(()) => {
                opts.status.stopped(None);
                return None;
            }
            Err(e @ SourceError::Fatal { .. }) => {
                opts.status.stopped(Some(&e));
                if let SourceError::Fatal { what, fix } = &e {
                    tracing::error!(source = %opts.name, error = %what, fix = %fix, "source stopped");
                }
                return Some(e);
            }
            Err(e) => {
                let delay = jitter(backoff);
                opts.status.retrying(&e, delay);
                tracing::warn!(source = %opts.name, error = %e, retry_in = ?delay, "source failed; restarting from the last checkpoint");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        opts.status.stopped(None);
                        return None;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn jitter(max: Duration) -> Duration {
    // Full jitter: anywhere between zero and the current backoff.
    max.mul_f64(rand::random::<f64>())
}

async fn run_once(
    source: &mut dyn Source,
    opts: &SourceOptions,
    log: &Arc<dyn ChannelLog>,
    shutdown: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), SourceError> {
    let transient = |what: &str, e: crate::log::LogError| SourceError::Transient {
        what: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    };
    let from = log
        .checkpoint(&opts.name)
        .await
        .map_err(|e| transient("cannot read the checkpoint", e))?;
    tracing::info!(source = %opts.name, from = ?from, "source starting");
    opts.status.stored(from.as_ref());
    source.start(from).await?;
    opts.status.running();
    loop {
        // Shutdown first: stop intake; what is durable stays durable.
        let batch = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            batch = source.next_batch() => batch?,
        };
        let position = batch.position.clone();
        let resets = source.take_resets();
        if !resets.is_empty() {
            // A channel name that does not parse has no history to reset: its messages go to
            // the poison policy in `prepare`, which reports them.
            let channels = resets
                .iter()
                .filter_map(|c| ChannelName::parse(c).ok())
                .collect::<Vec<_>>();
            log.reset(channels)
                .await
                .map_err(|e| transient("cannot reset channel epochs", e))?;
        }
        let messages = prepare(opts, batch.messages, &position)?;
        // Dead letters the connector made itself count too: whatever reaches that channel.
        let dead_letter: Vec<bool> = match &opts.poison {
            PoisonPolicy::DeadLetter(dlq) => messages
                .iter()
                .map(|m| m.channel == *dlq && m.name.as_deref() == Some("dead_letter"))
                .collect(),
            PoisonPolicy::Stop => vec![false; messages.len()],
        };
        let appended = log
            .append(
                messages,
                Some(Checkpoint {
                    source: opts.name.clone(),
                    position: position.clone(),
                }),
            )
            .await
            .map_err(|e| transient("cannot append to the log", e))?;
        opts.status.committed(&position, &dead_letter, &appended);
        source.committed(&position).await?;
        *backoff = BACKOFF_START;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::value::RawValue;
    use tidings_connectors_core::json_text;

    fn opts(poison: PoisonPolicy) -> SourceOptions {
        SourceOptions {
            name: "pg".into(),
            poison,
            max_message_bytes: 1024,
            status: Default::default(),
        }
    }

    fn publish(channel: &str, data: serde_json::Value) -> Publish {
        Publish {
            channel: channel.into(),
            name: None,
            data: Some(json_text(&data)),
            headers: None,
            id: Some(format!("id-{channel}")),
            key: Some(json_text(&json!({"_id": channel}))),
        }
    }

    #[test]
    fn json_text_goes_to_the_log_as_the_connector_wrote_it() {
        let dlq = ChannelName::parse("dead:pg").unwrap();
        let text = |t: &str| Some(RawValue::from_string(t.into()).unwrap());
        let mut kept = publish("ok:1", json!(null));
        kept.data = text(r#"{"total": 12.50}"#);
        kept.headers = text(r#" {"v": 2}"#);
        let mut array_headers = publish("ok:2", json!(1));
        array_headers.headers = text("[1]");
        let out = prepare(
            &opts(PoisonPolicy::DeadLetter(dlq)),
            vec![kept, array_headers],
            &SourcePosition::PostgresLsn(7),
        )
        .unwrap();
        assert_eq!(
            out[0].data.as_deref().map(RawValue::get),
            Some(r#"{"total": 12.50}"#)
        );
        assert_eq!(
            out[0].headers.as_deref().map(RawValue::get),
            Some(r#"{"v": 2}"#)
        );
        let dead: serde_json::Value =
            serde_json::from_str(out[1].data.as_ref().unwrap().get()).unwrap();
        assert_eq!(dead["error"], "headers must be a JSON object");
        assert_eq!(dead["key"], json!({"_id": "ok:2"}));
    }

    #[test]
    fn poison_goes_to_the_dead_letter_channel_in_place() {
        let dlq = ChannelName::parse("dead:pg").unwrap();
        let batch = vec![
            publish("ok:1", json!(1)),
            publish("bad channel", json!(2)),
            publish("ok:2", json!("x".repeat(2000))),
        ];
        let out = prepare(
            &opts(PoisonPolicy::DeadLetter(dlq)),
            batch,
            &SourcePosition::PostgresLsn(7),
        )
        .unwrap();
        let channels: Vec<&str> = out.iter().map(|m| m.channel.as_str()).collect();
        assert_eq!(channels, vec!["ok:1", "dead:pg", "dead:pg"]);
        let dead: serde_json::Value =
            serde_json::from_str(out[1].data.as_ref().unwrap().get()).unwrap();
        assert_eq!(dead["channel"], "bad channel");
        assert_eq!(dead["key"], json!({"_id": "bad channel"}));
        assert_eq!(dead["position"]["value"], 7);
        assert!(dead["error"].as_str().unwrap().contains("invalid channel"));
        let oversized: serde_json::Value =
            serde_json::from_str(out[2].data.as_ref().unwrap().get()).unwrap();
        assert_eq!(oversized["key"], json!({"_id": "ok:2"}));
        assert!(oversized["error"]
            .as_str()
            .unwrap()
            .contains("the limit is 1024"));
    }

    #[test]
    fn status_follows_failures_recoveries_and_commits() {
        let status = SourceStatus::default();
        assert_eq!(status.report().state, RunState::Starting);
        status.stored(Some(&SourcePosition::PostgresLsn(5)));
        assert_eq!(
            status.report().checkpoint.unwrap().at,
            None,
            "stored before this process"
        );
        status.running();
        let fail = |what: &str| SourceError::Transient {
            what: what.into(),
            source: None,
        };
        status.retrying(&fail("connection refused"), Duration::from_secs(1));
        status.retrying(&fail("still refused"), Duration::from_secs(2));
        let r = status.report();
        assert!(
            matches!(r.state, RunState::Retrying { attempt: 2, .. }),
            "{r:?}"
        );
        assert_eq!(r.last_error.as_ref().unwrap().message, "still refused");
        assert_eq!((r.errors, r.reconnects), (2, 0));
        status.running();
        let appended = |duplicate| Appended {
            serial: 1,
            duplicate,
        };
        status.committed(
            &SourcePosition::PostgresLsn(9),
            &[false, true, false],
            &[appended(false), appended(false), appended(true)],
        );
        let r = status.report();
        assert_eq!(r.state, RunState::Running);
        assert_eq!(r.reconnects, 1, "the restart that got it running again");
        assert_eq!(
            (
                r.messages_published,
                r.messages_dead_lettered,
                r.duplicates_dropped
            ),
            (1, 1, 1)
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["checkpoint"]["position"]["value"], 9);
        assert!(
            json["checkpoint"]["at"].as_str().unwrap().ends_with('Z'),
            "{json}"
        );
        assert_eq!(
            json["last_error"]["message"], "still refused",
            "kept after recovery"
        );
        // A failure after running starts counting attempts again.
        status.retrying(&fail("again"), Duration::ZERO);
        let json = serde_json::to_value(status.report()).unwrap();
        assert_eq!(
            (json["state"].as_str(), json["attempt"].as_u64()),
            (Some("retrying"), Some(1))
        );
        assert!(json["retry_at"].is_string(), "{json}");
        assert!(
            !status.failed(),
            "retrying is not a failure the operator must fix"
        );
        status.stopped(Some(&SourceError::Fatal {
            what: "slot gone".into(),
            fix: "recreate it".into(),
        }));
        let json = serde_json::to_value(status.report()).unwrap();
        assert_eq!(json["state"], "stopped");
        assert_eq!(json["reason"], "slot gone; to fix: recreate it");
        assert_eq!(json["errors"], 4);
        assert!(status.failed());
    }

    #[test]
    fn a_shutdown_is_not_a_failure() {
        let status = SourceStatus::default();
        status.running();
        status.stopped(None);
        assert_eq!(
            status.report().state,
            RunState::Stopped {
                reason: "shut down".into()
            }
        );
        assert!(!status.failed());
    }

    #[test]
    fn poison_can_stop_the_source() {
        let err = prepare(
            &opts(PoisonPolicy::Stop),
            vec![publish("a b", json!(1))],
            &SourcePosition::PostgresLsn(1),
        )
        .unwrap_err();
        assert!(
            matches!(&err, SourceError::Fatal { what, .. } if what.contains(r#"key {"_id":"a b"}"#)),
            "{err}"
        );
    }
}

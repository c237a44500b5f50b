//! Driving a connector: the loop between a [`Source`] and the channel log.
//!
//! Per batch: turn each [`Publish`] into a log message (channel and size checked here, poison
//! changes diverted to the dead-letter channel or stopping the source, as configured), append
//! the batch with the source's position as checkpoint in one atomic write, and only then tell
//! the source the position is durable. Transient failures restart the source from the last
//! durable checkpoint with backoff and jitter; fatal ones stop it with the operator's fix logged.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::{to_raw_value, RawValue};
use tidings_connectors_core::{Checkpoint, Publish, Source, SourceError, SourcePosition};
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelName;
use crate::log::{ChannelLog, NewMessage};
use crate::publish::MAX_ID_LEN;

/// First retry delay after a transient failure.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
}

/// Why a change was refused.
fn check(p: &Publish, max_bytes: usize) -> Result<NewMessage, String> {
    let channel = ChannelName::parse(&p.channel)
        .map_err(|e| format!("invalid channel {:?}: {e}", p.channel))?;
    if p.name.is_none() && p.data.is_none() {
        return Err("the change has neither data nor name".into());
    }
    if let Some(id) = &p.id {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(format!("message id must be 1 to {MAX_ID_LEN} bytes"));
        }
    }
    if let Some(h) = &p.headers {
        if !h.is_object() {
            return Err("headers must be a JSON object".into());
        }
    }
    let raw = |v: &Option<serde_json::Value>| -> Result<Option<Box<RawValue>>, String> {
        v.as_ref()
            .map(|v| to_raw_value(v).map_err(|e| format!("cannot encode: {e}")))
            .transpose()
    };
    let (data, headers) = (raw(&p.data)?, raw(&p.headers)?);
    let size = p.id.as_ref().map_or(0, String::len)
        + p.name.as_ref().map_or(0, String::len)
        + data.as_ref().map_or(0, |d| d.get().len())
        + headers.as_ref().map_or(0, |h| h.get().len());
    if size > max_bytes {
        return Err(format!(
            "the message is {size} bytes; the limit is {max_bytes}"
        ));
    }
    Ok(NewMessage {
        channel,
        id: p.id.clone(),
        name: p.name.clone(),
        data,
        headers,
    })
}

/// Turn a batch into log messages, applying the poison policy. `Err` stops the source.
fn prepare(
    opts: &SourceOptions,
    batch: Vec<Publish>,
    position: &SourcePosition,
) -> Result<Vec<NewMessage>, SourceError> {
    let mut out = Vec::with_capacity(batch.len());
    for (index, p) in batch.into_iter().enumerate() {
        match check(&p, opts.max_message_bytes) {
            Ok(m) => out.push(m),
            Err(problem) => {
                let key = p
                    .key
                    .as_ref()
                    .map_or_else(|| "none".into(), |k| k.to_string());
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
    mut source: Box<dyn Source>,
    opts: SourceOptions,
    log: Arc<dyn ChannelLog>,
    shutdown: CancellationToken,
) -> Option<SourceError> {
    let mut backoff = BACKOFF_START;
    loop {
        let result = run_once(source.as_mut(), &opts, &log, &shutdown, &mut backoff).await;
        match result {
            Ok(()) => return None,
            Err(SourceError::Fatal { what, fix }) => {
                tracing::error!(source = %opts.name, error = %what, fix = %fix, "source stopped");
                return Some(SourceError::Fatal { what, fix });
            }
            Err(e) => {
                let delay = jitter(backoff);
                tracing::warn!(source = %opts.name, error = %e, retry_in = ?delay, "source failed; restarting from the last checkpoint");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
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
    source.start(from).await?;
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
        log.append(
            messages,
            Some(Checkpoint {
                source: opts.name.clone(),
                position: position.clone(),
            }),
        )
        .await
        .map_err(|e| transient("cannot append to the log", e))?;
        source.committed(&position).await?;
        *backoff = BACKOFF_START;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(poison: PoisonPolicy) -> SourceOptions {
        SourceOptions {
            name: "pg".into(),
            poison,
            max_message_bytes: 1024,
        }
    }

    fn publish(channel: &str, data: serde_json::Value) -> Publish {
        Publish {
            channel: channel.into(),
            name: None,
            data: Some(data),
            headers: None,
            id: Some(format!("id-{channel}")),
            key: Some(json!({"_id": channel})),
        }
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

//! `catchup`: fill a fresh channel with M messages over REST, then time one WebSocket client
//! replaying all of them from the start of the history.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tidings_protocol::{HistoryPage, PublishResponse, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Report, Target};
use crate::publish::body;

/// How the replaying client asks for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `from: {epoch, serial: 0}` (epoch read from the history endpoint).
    From,
    /// `rewind: M`.
    Rewind,
}

/// Arguments of `catchup`.
#[derive(Debug, Clone, clap::Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub target: Target,
    /// Messages to put in the channel and replay.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Approximate bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per REST request while filling.
    #[arg(long, default_value_t = 1000)]
    pub fill_batch: usize,
    /// REST requests in flight while filling.
    #[arg(long, default_value_t = 4)]
    pub fill_concurrency: usize,
    /// How to ask for the history.
    #[arg(long, value_enum, default_value_t = Mode::From)]
    pub mode: Mode,
    /// Channel (default: a fresh `bench:catchup-...`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Give up replaying after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Server process id, to report its CPU use and RSS.
    #[arg(long)]
    pub pid: Option<String>,
}

/// Publish `m` messages to `channel` in batches; answers the highest serial.
async fn fill(a: &CatchupArgs, channel: &str) -> Result<u64> {
    let url = a.target.messages_url(channel);
    let bearer = a.target.bearer();
    let batch = a.fill_batch.max(1) as u64;
    let batches: Vec<(u64, u64)> = (0..a.messages.div_ceil(batch))
        .map(|b| (b * batch, batch.min(a.messages - b * batch)))
        .collect();
    let client = common::http_client(Duration::from_secs(120))?;
    let mut max_serial = 0u64;
    for chunk in batches.chunks(a.fill_concurrency.max(1)) {
        let futs = chunk.iter().map(|&(seq, n)| {
            let client = client.clone();
            let url = url.clone();
            let bearer = bearer.clone();
            let b = body(a.size, n as usize, seq);
            async move {
                let resp = client
                    .post(&url)
                    .header("authorization", bearer)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await?;
                let status = resp.status();
                if status.as_u16() != 201 {
                    bail!(
                        "fill: HTTP {status}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                }
                let p: PublishResponse = resp.json().await?;
                if p.serials.len() as u64 != n {
                    bail!("fill: {} serials for {n} messages", p.serials.len());
                }
                Ok::<u64, anyhow::Error>(p.serials.into_iter().max().unwrap_or(0))
            }
        });
        for r in futures_util::future::join_all(futs).await {
            max_serial = max_serial.max(r?);
        }
    }
    Ok(max_serial)
}

pub async fn run(a: &CatchupArgs) -> Result<Report> {
    let channel = common::channel_or_fresh(&a.channel, "catchup");
    let mut r = Report::new("catchup");
    r.text("channel", &channel);
    r.int("messages", a.messages, "msg");
    r.int("size", a.size as u64, "B");
    r.text(
        "mode",
        match a.mode {
            Mode::From => "from",
            Mode::Rewind => "rewind",
        },
    );

    let t_fill = Instant::now();
    let final_serial = fill(a, &channel).await?;
    let fill_secs = t_fill.elapsed().as_secs_f64();
    r.num("fill_secs", fill_secs, "s");
    r.num(
        "fill_msgs_per_s",
        a.messages as f64 / fill_secs.max(1e-9),
        "msg/s",
    );

    let extra = match a.mode {
        Mode::From => {
            let client = common::http_client(Duration::from_secs(30))?;
            let page: HistoryPage = client
                .get(format!("{}?limit=1", a.target.messages_url(&channel)))
                .header("authorization", a.target.bearer())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
                .context("history page")?;
            json!({"from": {"epoch": page.epoch, "serial": 0}})
        }
        Mode::Rewind => json!({"rewind": a.messages}),
    };

    let (mut ws, _hb) = common::ws_connect(&a.target.ws_url(), &a.target.bearer(), None, 5).await?;
    let mut frame = json!({"type": "attach", "channel": channel});
    if let (Some(f), Some(e)) = (frame.as_object_mut(), extra.as_object()) {
        f.extend(e.clone());
    }
    let cpu = common::CpuMeter::start(a.pid.as_deref());
    let t0 = Instant::now();
    ws.send(Message::text(frame.to_string())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.timeout);
    let (mut received, mut dups, mut ooo, mut last) = (0u64, 0u64, 0u64, 0u64);
    let (mut t_attached, mut t_first) = (None, None);
    let mut resumed = None;
    let mut problem = None;
    while last < final_serial {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                problem = Some(format!(
                    "timed out after {:.0} s at serial {last} of {final_serial}",
                    a.timeout
                ));
                break;
            }
            Ok(None) => {
                problem = Some("socket ended".to_string());
                break;
            }
            Ok(Some(m)) => m?,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(c) => {
                problem = Some(format!("closed by server: {c:?}"));
                break;
            }
            _ => continue,
        };
        let s = text.as_str();
        if s.contains(common::STAMP) {
            let serial =
                common::find_u64(s, "\"serial\":").ok_or_else(|| anyhow!("no serial in {s}"))?;
            t_first.get_or_insert_with(Instant::now);
            if serial > last {
                last = serial;
                received += 1;
            } else if serial == last {
                dups += 1;
            } else {
                ooo += 1;
            }
            continue;
        }
        match serde_json::from_str::<ServerFrame>(s) {
            Ok(ServerFrame::Attached {
                resumed: res,
                reason,
                ..
            }) => {
                t_attached = Some(Instant::now());
                resumed = Some(res);
                if !res && a.mode == Mode::From {
                    problem = Some(format!("attach did not resume: {reason:?}"));
                }
            }
            Ok(ServerFrame::Error(e)) => {
                problem = Some(format!("server error: {e:?}"));
                break;
            }
            _ => {}
        }
    }
    let total = t0.elapsed().as_secs_f64();
    cpu.finish(&mut r);
    let _ = ws.close(None).await;
    if let Some(t) = t_attached {
        r.num("attached_ms", (t - t0).as_secs_f64() * 1000.0, "ms");
    }
    if let Some(t) = t_first {
        r.num("first_message_ms", (t - t0).as_secs_f64() * 1000.0, "ms");
    }
    if let Some(res) = resumed {
        r.text("resumed", if res { "true" } else { "false" });
    }
    r.num("replay_secs", total, "s");
    r.int("received", received, "msg");
    r.num(
        "replay_msgs_per_s",
        received as f64 / total.max(1e-9),
        "msg/s",
    );
    r.int("missing", a.messages.saturating_sub(received), "msg");
    r.int("duplicates", dups, "msg");
    r.int("out_of_order", ooo, "msg");
    if let Some(p) = problem {
        r.problem(p);
    }
    if received != a.messages {
        r.problem(format!("received {received} of {} messages", a.messages));
    }
    if dups > 0 || ooo > 0 {
        r.problem(format!("{dups} duplicates, {ooo} out of order"));
    }
    Ok(r)
}

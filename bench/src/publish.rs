//! `publish`: C concurrent REST publishers in a closed loop; acknowledged (durable) msg/s and
//! request latency.

use std::time::{Duration, Instant};

use anyhow::Result;
use tidings_protocol::PublishResponse;

use crate::common::{self, Report, Target};

/// Arguments of `publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub target: Target,
    /// Publishers, each with its own keep-alive connection, each one request at a time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Approximate bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per request (1 = a single object body, more = a JSON array).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Channel (default: a fresh `bench:publish-...`).
    #[arg(long)]
    pub channel: Option<String>,
    /// Spread publishers over this many channels (`CHANNEL-0` ..), 1 = all on one channel.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Server process id, to report its CPU use and RSS.
    #[arg(long)]
    pub pid: Option<String>,
}

struct TaskResult {
    requests: u64,
    messages: u64,
    errors: u64,
    first_error: Option<String>,
    hist: hdrhistogram::Histogram<u64>,
}

/// Request body of `batch` messages of about `size` bytes of data each.
pub fn body(size: usize, batch: usize, seq: u64) -> String {
    let (head, tail) = common::stamped_data(size);
    let one = |k: u64| format!("{{\"name\":\"bench\",\"data\":{head}{k}{tail}}}");
    if batch <= 1 {
        one(seq)
    } else {
        let items: Vec<String> = (0..batch as u64).map(|k| one(seq + k)).collect();
        format!("[{}]", items.join(","))
    }
}

pub async fn run(a: &PublishArgs) -> Result<Report> {
    let channel = common::channel_or_fresh(&a.channel, "publish");
    let mut r = Report::new("publish");
    r.text("channel", &channel);
    r.int("concurrency", a.concurrency as u64, "");
    r.int("batch", a.batch as u64, "msg/request");
    r.int("size", a.size as u64, "B");
    r.num("duration", a.duration, "s");
    let bearer = a.target.bearer();
    let cpu = common::CpuMeter::start(a.pid.as_deref());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for i in 0..a.concurrency.max(1) {
        let ch = if a.channels > 1 {
            format!("{channel}-{}", i % a.channels)
        } else {
            channel.clone()
        };
        let url = a.target.messages_url(&ch);
        let bearer = bearer.clone();
        let (size, batch) = (a.size, a.batch.max(1));
        tasks.push(tokio::spawn(async move {
            let mut res = TaskResult {
                requests: 0,
                messages: 0,
                errors: 0,
                first_error: None,
                hist: common::new_histogram(),
            };
            let client = match common::http_client(Duration::from_secs(30)) {
                Ok(c) => c,
                Err(e) => {
                    res.errors += 1;
                    res.first_error = Some(format!("{e:#}"));
                    return res;
                }
            };
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let b = body(size, batch, seq);
                seq += batch as u64;
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("authorization", &bearer)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await;
                let outcome = match resp {
                    Ok(resp) if resp.status().as_u16() == 201 => {
                        match resp.json::<PublishResponse>().await {
                            Ok(p) if p.serials.len() == batch => Ok(p.serials.len() as u64),
                            Ok(p) => {
                                Err(format!("{} serials for {batch} messages", p.serials.len()))
                            }
                            Err(e) => Err(format!("bad response body: {e}")),
                        }
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        Err(format!("HTTP {status}: {text}"))
                    }
                    Err(e) => Err(format!("request failed: {e}")),
                };
                match outcome {
                    Ok(n) => {
                        common::record_ns(&mut res.hist, t.elapsed().as_nanos() as u64);
                        res.requests += 1;
                        res.messages += n;
                    }
                    Err(e) => {
                        res.errors += 1;
                        res.first_error.get_or_insert(e);
                        // Don't spin on a failing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            res
        }));
    }
    let mut hist = common::new_histogram();
    let (mut requests, mut messages, mut errors, mut first_error) = (0, 0, 0, None);
    for t in tasks {
        let res = t.await?;
        requests += res.requests;
        messages += res.messages;
        errors += res.errors;
        if first_error.is_none() {
            first_error = res.first_error;
        }
        hist.add(&res.hist).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    cpu.finish(&mut r);
    r.int("requests", requests, "");
    r.int("acked", messages, "msg");
    r.num("acked_per_s", messages as f64 / secs, "msg/s");
    r.num("requests_per_s", requests as f64 / secs, "req/s");
    common::latency_figures(&mut r, "latency", &hist);
    r.int("errors", errors, "");
    if errors > 0 {
        r.problem(format!(
            "{errors} requests failed; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    if messages == 0 {
        r.problem("no message was acknowledged");
    }
    Ok(r)
}

//! `idle`: N idle WebSocket connections, and what they cost the server in resident memory.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Report, Target};
use crate::system::{Sub, System, SystemArgs};

/// Arguments of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Server process ids (comma-separated) whose summed VmRSS is read before and after.
    #[arg(long)]
    pub pid: Option<String>,
    /// Attach each connection to a channel (see --distinct-channels).
    #[arg(long)]
    pub attach: bool,
    /// With --attach: each connection attaches its own channel instead of one shared one.
    #[arg(long)]
    pub distinct_channels: bool,
    /// Channel (or channel prefix with --distinct-channels); default a fresh `bench:idle-...`.
    #[arg(long)]
    pub channel: Option<String>,
    /// Seconds to wait once all are open before reading the RSS again.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Spread connections over 127.0.0.1..127.0.0.N; 1 = don't bind.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
}

pub async fn run(a: &IdleArgs) -> Result<Report> {
    let mut r = Report::new("idle");
    r.text("system", a.system.system.name());
    r.int("connections", a.connections as u64, "");
    r.text(
        "attach",
        if a.attach {
            if a.distinct_channels {
                "distinct"
            } else {
                "shared"
            }
        } else {
            "none"
        },
    );
    let rss_before = a
        .pid
        .as_deref()
        .and_then(|p| common::pids_status_kib(p, "VmRSS"));
    let self_before = common::proc_status_kib("self", "VmRSS");
    let channel = common::channel_or_fresh(&a.channel, "idle");
    let url = a.target.ws_url();
    let bearer = a.target.bearer();
    let sem = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let opened = Arc::new(AtomicUsize::new(0));
    let settled = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let ips = common::source_ips(a.source_ips);

    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let (sem, opened, settled, closed, first_error) = (
            sem.clone(),
            opened.clone(),
            settled.clone(),
            closed.clone(),
            first_error.clone(),
        );
        let (url, bearer) = (url.clone(), bearer.clone());
        let (sys, target) = (a.system.clone(), a.target.clone());
        let ch = if a.distinct_channels {
            Some(format!("{channel}-{i}"))
        } else if a.attach {
            Some(channel.clone())
        } else {
            None
        };
        let ip = (!ips.is_empty()).then(|| ips[i % ips.len()]);
        tasks.push(tokio::spawn(async move {
            if sys.system != System::Tidings {
                let res = {
                    let _p = sem.acquire().await;
                    async {
                        let mut sub = Sub::connect(&sys, &target, ip, 8).await?;
                        if let Some(ch) = &ch {
                            sub.subscribe(&[(ch.clone(), None)]).await?;
                        }
                        Ok::<_, anyhow::Error>(sub)
                    }
                    .await
                };
                let mut sub = match res {
                    Ok(s) => s,
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| format!("connection {i}: {e:#}"));
                        settled.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                };
                opened.fetch_add(1, Ordering::AcqRel);
                settled.fetch_add(1, Ordering::AcqRel);
                // Peers need no keep-alive from the client; NATS PINGs are answered inside.
                let mut out = Vec::new();
                while sub.next(&mut out).await.is_ok() {
                    out.clear();
                }
                closed.fetch_add(1, Ordering::AcqRel);
                return;
            }
            let res = {
                let _p = sem.acquire().await;
                async {
                    let (mut ws, hb) = common::ws_connect(&url, &bearer, ip, 8).await?;
                    if let Some(ch) = &ch {
                        common::attach(&mut ws, ch, None).await?;
                    }
                    Ok::<_, anyhow::Error>((ws, hb))
                }
                .await
            };
            let (mut ws, hb) = match res {
                Ok(v) => v,
                Err(e) => {
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| format!("connection {i}: {e:#}"));
                    settled.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            };
            opened.fetch_add(1, Ordering::AcqRel);
            settled.fetch_add(1, Ordering::AcqRel);
            let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                    _ = ping.tick() => {
                        if ws.send(common::ping_frame()).await.is_err() { break; }
                    }
                }
            }
            closed.fetch_add(1, Ordering::AcqRel);
        }));
    }
    let mut last_print = Instant::now();
    while settled.load(Ordering::Acquire) < a.connections {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "idle: {}/{} connections settled",
                settled.load(Ordering::Acquire),
                a.connections
            );
            last_print = Instant::now();
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let open = opened.load(Ordering::Acquire) as u64;
    r.num("connect_secs", connect_secs, "s");
    r.num(
        "connects_per_s",
        open as f64 / connect_secs.max(1e-9),
        "conn/s",
    );
    r.int("opened", open, "");
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;

    let rss_after = a
        .pid
        .as_deref()
        .and_then(|p| common::pids_status_kib(p, "VmRSS"));
    if let (Some(b), Some(af)) = (rss_before, rss_after) {
        r.int("server_rss_before_kib", b, "KiB");
        r.int("server_rss_after_kib", af, "KiB");
        r.num(
            "rss_per_connection_kib",
            (af as f64 - b as f64) / (open.max(1) as f64),
            "KiB",
        );
    } else if a.pid.is_some() {
        r.problem("could not read the server's VmRSS from /proc");
    }
    if let (Some(b), Some(af)) = (self_before, common::proc_status_kib("self", "VmRSS")) {
        r.num(
            "loadgen_rss_per_connection_kib",
            (af as f64 - b as f64) / (open.max(1) as f64),
            "KiB",
        );
    }
    let dropped = closed.load(Ordering::Acquire);
    r.int("closed_early", dropped, "");
    if (open as usize) < a.connections {
        r.problem(format!(
            "{} connections failed; first error: {}",
            a.connections - open as usize,
            first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        ));
    }
    if dropped > 0 {
        r.problem(format!(
            "{dropped} idle connections were closed during the wait"
        ));
    }
    for t in &tasks {
        t.abort();
    }
    Ok(r)
}

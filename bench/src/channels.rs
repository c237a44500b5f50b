//! `channels`: N subscribers, each on a channel of its own plus one channel they all share. One
//! publisher sends every `shared-every`-th message to the shared channel and the others round
//! the private channels: per-channel routing cost beside fan-out, on any system.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::common::{self, Report, Target};
use crate::system::{self, Sub, SystemArgs};

/// Arguments of `channels`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelsArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Subscribers, each on its own channel and the shared one.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Messages per second, all channels together.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Every this many messages, one goes to the shared channel (the others to private ones).
    #[arg(long, default_value_t = 200)]
    pub shared_every: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Approximate bytes of each message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Connects (and subscribes) in flight at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds to wait after publishing for every subscriber to have every message.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Server process ids (comma-separated) for CPU and RSS.
    #[arg(long)]
    pub pid: Option<String>,
    /// API key of the Tidings publisher.
    #[arg(long, env = "TIDINGS_BENCH_PUBLISHER_KEY")]
    pub publisher_key: Option<String>,
}

/// What one subscriber saw, per channel kind (0 = shared, 1 = its own).
#[derive(Default)]
struct SubStats {
    received: [AtomicU64; 2],
    last: [AtomicU64; 2],
    anomalies: AtomicU64,
    closed: AtomicU64,
}

struct Shared {
    subs: Vec<SubStats>,
    /// Latency of shared-channel and private-channel deliveries.
    hist: [Mutex<Histogram<u64>>; 2],
    settled: AtomicUsize,
    attached: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

/// The channel index message `k` goes to: 0 (shared) every `every`-th, else 1 + the private
/// channels in turn.
fn route(k: u64, every: u64, n: usize) -> usize {
    let every = every.max(1);
    if k.is_multiple_of(every) || n == 0 {
        0
    } else {
        let own_before = k - (k / every + 1);
        1 + (own_before % n as u64) as usize
    }
}

pub async fn run(a: &ChannelsArgs) -> Result<Report> {
    let mut r = Report::new("channels");
    r.text("system", a.system.system.name());
    r.int("subscribers", a.subscribers as u64, "");
    r.num("rate", a.rate, "msg/s");
    r.int("shared_every", a.shared_every, "");
    let base = common::channel_or_fresh(&None, "channels");
    let mut names = vec![format!("{base}-shared")];
    names.extend((0..a.subscribers).map(|i| format!("{base}-{i}")));
    let names = Arc::new(names);
    let sh = Arc::new(Shared {
        subs: (0..a.subscribers).map(|_| SubStats::default()).collect(),
        hist: [
            Mutex::new(common::new_histogram()),
            Mutex::new(common::new_histogram()),
        ],
        settled: AtomicUsize::new(0),
        attached: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let sem = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.subscribers);
    for i in 0..a.subscribers {
        let (sh, sem, names) = (sh.clone(), sem.clone(), names.clone());
        let (sys, target) = (a.system.clone(), a.target.clone());
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _p = sem.acquire().await;
                async {
                    let mut sub = Sub::connect(&sys, &target, None, 8).await?;
                    sub.subscribe(&[(names[0].clone(), None), (names[i + 1].clone(), None)])
                        .await?;
                    Ok::<_, anyhow::Error>(sub)
                }
                .await
            };
            let mut sub = match opened {
                Ok(s) => s,
                Err(e) => {
                    sh.first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| format!("subscriber {i}: {e:#}"));
                    sh.settled.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            };
            sh.attached.fetch_add(1, Ordering::AcqRel);
            sh.settled.fetch_add(1, Ordering::AcqRel);
            let st = &sh.subs[i];
            let mut out = Vec::new();
            let mut ping = sub
                .heartbeat
                .map(|hb| tokio::time::interval_at(tokio::time::Instant::now() + hb, hb));
            loop {
                let next = async {
                    match &mut ping {
                        Some(p) => {
                            tokio::select! {
                                biased;
                                r = sub.next(&mut out) => r,
                                _ = p.tick() => sub.ping().await,
                            }
                        }
                        None => sub.next(&mut out).await,
                    }
                };
                if next.await.is_err() {
                    st.closed.store(1, Ordering::Release);
                    return;
                }
                if out.is_empty() {
                    continue;
                }
                let now = common::now_ns();
                for d in out.drain(..) {
                    let k = usize::from(d.ch != 0);
                    if k == 1 && d.ch as usize != i + 1 {
                        st.anomalies.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    common::record_ns(
                        &mut sh.hist[k].lock().unwrap_or_else(|p| p.into_inner()),
                        now.saturating_sub(d.sent_ns),
                    );
                    let last = st.last[k].load(Ordering::Relaxed);
                    if d.seq == last + 1 {
                        st.last[k].store(d.seq, Ordering::Release);
                        st.received[k].fetch_add(1, Ordering::Relaxed);
                    } else {
                        // A gap, a duplicate or a reordering: all break continuity.
                        st.anomalies.fetch_add(1, Ordering::Relaxed);
                        if d.seq > last {
                            st.last[k].store(d.seq, Ordering::Release);
                            st.received[k].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    while sh.settled.load(Ordering::Acquire) < a.subscribers {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attached = sh.attached.load(Ordering::Acquire) as u64;
    r.num("connect_secs", t0.elapsed().as_secs_f64(), "s");
    r.int("attached", attached, "");
    if attached < a.subscribers as u64 {
        r.problem(format!(
            "{} subscribers did not subscribe; first error: {}",
            a.subscribers as u64 - attached,
            sh.first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cpu = common::CpuMeter::start(a.pid.as_deref());
    let t_pub = Instant::now();
    let (every, n) = (a.shared_every, a.subscribers);
    let published = system::publish_paced(
        &a.system,
        &a.target,
        a.publisher_key.as_deref(),
        &names,
        |k| route(k, every, n),
        a.rate,
        a.duration,
        a.size,
        None,
        None,
    )
    .await;
    let p = match published {
        Ok(p) => p,
        Err(e) => {
            for t in &tasks {
                t.abort();
            }
            r.problem(format!("publisher failed: {e:#}"));
            return Ok(r);
        }
    };
    // Drain: every subscriber has the last message of both its channels.
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain_timeout);
    let lacking = |sh: &Shared| {
        sh.subs
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                s.closed.load(Ordering::Acquire) == 0
                    && (s.last[0].load(Ordering::Acquire) < p.per_channel[0]
                        || s.last[1].load(Ordering::Acquire) < p.per_channel[i + 1])
            })
            .count()
    };
    while lacking(&sh) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let window = t_pub.elapsed().as_secs_f64();
    cpu.finish(&mut r);
    for t in &tasks {
        t.abort();
    }
    let mut delivered = [0u64; 2];
    let mut missing = 0u64;
    let mut anomalies = 0u64;
    let mut closed = 0u64;
    for (i, s) in sh.subs.iter().enumerate() {
        for (k, expected) in [(0, p.per_channel[0]), (1, p.per_channel[i + 1])] {
            let got = s.received[k].load(Ordering::Relaxed);
            delivered[k] += got;
            missing += expected.saturating_sub(got);
        }
        anomalies += s.anomalies.load(Ordering::Relaxed);
        closed += s.closed.load(Ordering::Relaxed);
    }
    r.int("published", p.sent, "msg");
    r.int("published_shared", p.per_channel[0], "msg");
    r.int("delivered", delivered[0] + delivered[1], "msg");
    r.int("delivered_private", delivered[1], "msg");
    r.num(
        "delivered_per_s",
        (delivered[0] + delivered[1]) as f64 / window.max(1e-9),
        "msg/s",
    );
    for (k, prefix) in [(0, "shared_latency"), (1, "private_latency")] {
        let h = sh.hist[k].lock().unwrap_or_else(|p| p.into_inner());
        common::latency_figures(&mut r, prefix, &h);
    }
    r.int("missing", missing, "msg");
    r.int("continuity_anomalies", anomalies, "");
    r.int("disconnected", closed, "");
    if let Some(e) = &p.first_error {
        r.problem(format!("publisher: {e}"));
    }
    if missing > 0 {
        r.problem(format!("{missing} deliveries missing"));
    }
    if anomalies > 0 {
        r.problem(format!(
            "{anomalies} deliveries out of sequence (gap, duplicate or reordering)"
        ));
    }
    if closed > 0 {
        r.problem(format!("{closed} subscribers were disconnected"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn route_sends_every_nth_to_the_shared_channel_and_the_rest_round_the_private_ones() {
        let got: Vec<usize> = (0..9).map(|k| route(k, 3, 2)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0, 1, 2]);
        let got: Vec<usize> = (0..6).map(|k| route(k, 2, 3)).collect();
        assert_eq!(got, vec![0, 1, 0, 2, 0, 3]);
    }
}

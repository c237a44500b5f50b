//! `storm`: N subscribers on one channel with a publisher running; after a warm-up every
//! subscriber drops its connection at the same instant and reconnects at once (at most
//! `connect-concurrency` connects in flight). Measures the time until every one is subscribed
//! again and until every one has caught up: holds every message up to the one published when
//! its subscription was back. Tidings subscribers resume from their last serial, so they miss
//! nothing and catching up includes the replay; peers have no history, so for them "caught up"
//! is "subscribed again", and the messages published while a subscriber was away are counted as
//! missed (seen as a gap in the sequence numbers once live messages flow again).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{watch, Semaphore};

use crate::common::{self, Report, Target};
use crate::system::{self, Delivery, Sub, System, SystemArgs};

/// Arguments of `storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Subscribers on the channel.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Messages per second published throughout (low enough for every system to keep up with
    /// in steady state: the storm, not a backlog, is measured).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Seconds of publishing before everyone drops.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds of publishing at most (the storm must be over before; publishing stops a
    /// second after every subscriber has caught up).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Approximate bytes of each message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Connects (and subscribes) in flight at once, at the start and in the storm.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Server process ids (comma-separated) for CPU and RSS.
    #[arg(long)]
    pub pid: Option<String>,
    /// API key of the Tidings publisher.
    #[arg(long, env = "TIDINGS_BENCH_PUBLISHER_KEY")]
    pub publisher_key: Option<String>,
}

#[derive(Default)]
struct SubStats {
    /// Nanoseconds (process clock) when subscribed again, and when caught up; 0 = not yet.
    resubscribed_ns: AtomicU64,
    caught_up_ns: AtomicU64,
    last: AtomicU64,
    missed: AtomicU64,
    duplicates: AtomicU64,
    continuity_lost: AtomicU64,
    failed: AtomicU64,
}

struct Shared {
    subs: Vec<SubStats>,
    settled: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }
}

/// Account deliveries; answers the Tidings serial of the last one, if any.
fn account(st: &SubStats, out: &mut Vec<Delivery>, target: u64, now: u64) -> Option<u64> {
    let mut serial = None;
    for d in out.drain(..) {
        let last = st.last.load(Ordering::Relaxed);
        if d.seq <= last {
            st.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if d.seq > last + 1 {
            st.missed.fetch_add(d.seq - last - 1, Ordering::Relaxed);
        }
        st.last.store(d.seq, Ordering::Release);
        serial = d.serial.or(serial);
        if target > 0 && d.seq >= target && st.caught_up_ns.load(Ordering::Relaxed) == 0 {
            st.caught_up_ns.store(now, Ordering::Release);
        }
    }
    serial
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    i: usize,
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    sys: SystemArgs,
    target: Target,
    channel: String,
    progress: Arc<[AtomicU64; 1]>,
    mut storm: watch::Receiver<bool>,
) {
    let st = &sh.subs[i];
    let mut position: Option<(String, u64)> = None;
    let mut first = true;
    let mut out = Vec::new();
    loop {
        // (Re)connect and subscribe; Tidings resumes from the last serial it holds.
        let opened = {
            let _p = sem.acquire().await;
            async {
                let mut sub = Sub::connect(&sys, &target, None, 8).await?;
                let from = position.clone();
                let got = sub.subscribe(&[(channel.clone(), from)]).await?;
                Ok::<_, anyhow::Error>((sub, got))
            }
            .await
        };
        let (mut sub, got) = match opened {
            Ok(v) => v,
            Err(e) => {
                sh.note_error(format!("subscriber {i}: {e:#}"));
                st.failed.store(1, Ordering::Release);
                if first {
                    sh.settled.fetch_add(1, Ordering::AcqRel);
                }
                return;
            }
        };
        let now = common::now_ns();
        let mut catch_target = 0;
        if let Some(s) = got.first() {
            if sys.system == System::Tidings {
                if !first && !s.resumed {
                    st.continuity_lost.fetch_add(1, Ordering::Relaxed);
                }
                position = Some((s.epoch.clone(), position.map_or(s.serial, |p| p.1)));
            }
        }
        if first {
            sh.settled.fetch_add(1, Ordering::AcqRel);
        } else {
            st.resubscribed_ns.store(now, Ordering::Release);
            // Caught up once it holds every message it can get up to the one published last
            // when it was back: Tidings replays what was published meanwhile (caught up at
            // once if nothing was); a peer cannot, so it is as caught up as it will be now.
            catch_target = progress[0].load(Ordering::Acquire);
            if sys.system != System::Tidings || st.last.load(Ordering::Acquire) >= catch_target {
                st.caught_up_ns.store(now, Ordering::Release);
            }
        }
        let mut ping = sub
            .heartbeat
            .map(|hb| tokio::time::interval_at(tokio::time::Instant::now() + hb, hb));
        let dropped = loop {
            let res = tokio::select! {
                biased;
                _ = storm.changed(), if first => break true,
                r = sub.next(&mut out) => r,
                _ = async { ping.as_mut().unwrap().tick().await }, if ping.is_some() => sub.ping().await,
            };
            if let Err(e) = res {
                sh.note_error(format!("subscriber {i}: {e:#}"));
                break false;
            }
            if !out.is_empty() {
                let now = common::now_ns();
                if let Some(serial) = account(st, &mut out, catch_target, now) {
                    if let Some(p) = position.as_mut() {
                        p.1 = serial;
                    }
                }
            }
        };
        drop(sub);
        if !dropped {
            st.failed.store(1, Ordering::Release);
            return;
        }
        first = false;
    }
}

pub async fn run(a: &StormArgs) -> Result<Report> {
    let mut r = Report::new("storm");
    r.text("system", a.system.system.name());
    r.int("subscribers", a.subscribers as u64, "");
    r.num("rate", a.rate, "msg/s");
    let channel = common::channel_or_fresh(&None, "storm");
    let sh = Arc::new(Shared {
        subs: (0..a.subscribers).map(|_| SubStats::default()).collect(),
        settled: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let sem = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let progress: Arc<[AtomicU64; 1]> = Arc::new([AtomicU64::new(0)]);
    let (storm_tx, storm_rx) = watch::channel(false);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..a.subscribers)
        .map(|i| {
            tokio::spawn(subscriber(
                i,
                sh.clone(),
                sem.clone(),
                a.system.clone(),
                a.target.clone(),
                channel.clone(),
                progress.clone(),
                storm_rx.clone(),
            ))
        })
        .collect();
    while sh.settled.load(Ordering::Acquire) < a.subscribers {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.num("connect_secs", t0.elapsed().as_secs_f64(), "s");
    let failed_first = sh
        .subs
        .iter()
        .filter(|s| s.failed.load(Ordering::Acquire) == 1)
        .count();
    if failed_first > 0 {
        r.problem(format!(
            "{failed_first} subscribers did not subscribe; first error: {}",
            sh.first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        ));
        for t in &tasks {
            t.abort();
        }
        return Ok(r);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cpu = common::CpuMeter::start(a.pid.as_deref());
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let (sys, target, key, ch, progress) = (
            a.system.clone(),
            a.target.clone(),
            a.publisher_key.clone(),
            channel.clone(),
            progress.clone(),
        );
        let (rate, duration, size) = (a.rate, a.duration, a.size);
        tokio::spawn(async move {
            system::publish_paced(
                &sys,
                &target,
                key.as_deref(),
                &[ch],
                |_| 0,
                rate,
                duration,
                size,
                Some(&progress[..]),
                Some(&stop),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let storm_ns = common::now_ns();
    let _ = storm_tx.send(true);
    let all_caught = |sh: &Shared| {
        sh.subs.iter().all(|s| {
            s.failed.load(Ordering::Acquire) == 1 || s.caught_up_ns.load(Ordering::Acquire) > 0
        })
    };
    while !all_caught(&sh) && !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovery_done = all_caught(&sh);
    // Publish a little longer: resumed subscribers must go on receiving live messages.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let published = match publisher.await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            r.problem(format!("publisher failed: {e:#}"));
            return Ok(r);
        }
        Err(e) => {
            r.problem(format!("publisher task: {e}"));
            return Ok(r);
        }
    };
    // Let the last messages arrive, then check every subscriber has the last one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && sh.subs.iter().any(|s| {
            s.failed.load(Ordering::Acquire) == 0 && s.last.load(Ordering::Acquire) < published.sent
        })
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cpu.finish(&mut r);
    for t in &tasks {
        t.abort();
    }

    let secs_after_storm = |ns: u64| ns.saturating_sub(storm_ns) as f64 / 1e9;
    let mut resub: Vec<f64> = Vec::new();
    let mut caught: Vec<f64> = Vec::new();
    let (mut missed, mut dups, mut lost, mut failed, mut behind) = (0, 0, 0, 0, 0);
    for s in &sh.subs {
        let rs = s.resubscribed_ns.load(Ordering::Acquire);
        let cu = s.caught_up_ns.load(Ordering::Acquire);
        if rs > 0 {
            resub.push(secs_after_storm(rs));
        }
        if cu > 0 {
            caught.push(secs_after_storm(cu));
        }
        missed += s.missed.load(Ordering::Relaxed);
        dups += s.duplicates.load(Ordering::Relaxed);
        lost += s.continuity_lost.load(Ordering::Relaxed);
        failed += s.failed.load(Ordering::Relaxed);
        if s.failed.load(Ordering::Relaxed) == 0 && s.last.load(Ordering::Relaxed) < published.sent
        {
            behind += 1;
        }
    }
    let quantile = |v: &mut Vec<f64>, q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    r.int("published", published.sent, "msg");
    r.int("resubscribed", resub.len() as u64, "");
    r.num("reconnect_p50_secs", quantile(&mut resub, 0.5), "s");
    r.num("reconnect_all_secs", quantile(&mut resub, 1.0), "s");
    r.int("caught_up", caught.len() as u64, "");
    r.num("caught_up_p50_secs", quantile(&mut caught, 0.5), "s");
    r.num("caught_up_p99_secs", quantile(&mut caught, 0.99), "s");
    r.num("caught_up_all_secs", quantile(&mut caught, 1.0), "s");
    r.int("missed", missed, "msg");
    r.num(
        "missed_per_subscriber",
        missed as f64 / a.subscribers.max(1) as f64,
        "msg",
    );
    r.int("duplicates", dups, "msg");
    r.int("continuity_lost", lost, "");
    r.int("failed", failed, "");
    r.int("behind_at_end", behind, "");

    if let Some(e) = &published.first_error {
        r.problem(format!("publisher: {e}"));
    }
    if !recovery_done {
        r.problem(format!(
            "{} subscribers had not caught up when publishing ended ({:.0} s after the storm)",
            a.subscribers - caught.len(),
            a.duration - a.warmup
        ));
    }
    if failed > 0 {
        r.problem(format!(
            "{failed} subscribers failed; first error: {}",
            sh.first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        ));
    }
    if behind > 0 {
        r.problem(format!(
            "{behind} subscribers lacked the last message at the end"
        ));
    }
    // Tidings resumes: anything missed, repeated or not resumed is a failure. Peers cannot
    // resume: what they missed is their figure, not a failure of the run.
    if a.system.system == System::Tidings {
        if missed > 0 {
            r.problem(format!("{missed} messages missed across the storm"));
        }
        if dups > 0 {
            r.problem(format!("{dups} duplicate deliveries"));
        }
        if lost > 0 {
            r.problem(format!("{lost} resumes said resumed: false"));
        }
    }
    Ok(r)
}

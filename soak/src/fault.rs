//! The fault schedule: a seeded sequence of faults with random gaps, every kind once first (in
//! a shuffled order), then kinds that have not struck yet, then at random. Faults on the
//! subscribers (dropped, stalled) run beside the schedule, so they overlap with what follows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::publisher::{burst, Outcome};
use crate::subscriber::Subscriber;
use crate::topology::{Topology, SLOT};

/// The kinds of fault, as the report names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `kill -9` of Tidings, then a start on the same data directory.
    TidingsKill9,
    /// Postgres restarted (fast shutdown: every session terminated).
    PostgresRestart,
    /// The walsender serving the slot terminated (`pg_terminate_backend`).
    WalsenderTerminated,
    /// Every connection between Tidings and Postgres closed.
    PostgresLinkCut,
    /// Every connection between Tidings and Postgres frozen for seconds, then closed.
    PostgresLinkFrozen,
    /// Every connection between clients and Tidings closed.
    ClientLinkCut,
    /// Every connection between clients and Tidings frozen for seconds, then closed.
    ClientLinkFrozen,
    /// A subscriber ended (tasks stopped / `kill -9`), then restarted from its saved positions.
    SubscriberDropped,
    /// A subscriber that stops reading for seconds.
    SubscriberStalled,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::TidingsKill9,
        Kind::PostgresRestart,
        Kind::WalsenderTerminated,
        Kind::PostgresLinkCut,
        Kind::PostgresLinkFrozen,
        Kind::ClientLinkCut,
        Kind::ClientLinkFrozen,
        Kind::SubscriberDropped,
        Kind::SubscriberStalled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::TidingsKill9 => "tidings kill -9",
            Kind::PostgresRestart => "postgres restart",
            Kind::WalsenderTerminated => "walsender terminated",
            Kind::PostgresLinkCut => "tidings-postgres cut",
            Kind::PostgresLinkFrozen => "tidings-postgres frozen",
            Kind::ClientLinkCut => "clients-tidings cut",
            Kind::ClientLinkFrozen => "clients-tidings frozen",
            Kind::SubscriberDropped => "subscriber dropped",
            Kind::SubscriberStalled => "subscriber stalled",
        }
    }
}

/// Faults that struck, by kind, and the problems that kept one from striking or healing.
#[derive(Default)]
pub struct Tally {
    pub struck: BTreeMap<Kind, u64>,
    pub problems: Vec<String>,
}

/// Who sends a burst while a subscriber stalls.
pub struct Burster {
    pub base: String,
    /// Channels that keep everything: a stall's burst goes to one of these or `trimmed`.
    pub channels: Vec<String>,
    /// Channels whose retention keeps few messages: a dropped subscriber's burst goes there.
    pub trimmed: Vec<String>,
    /// Messages per burst.
    pub size: u64,
    pub acks: Arc<AtomicU64>,
    pub outcome: Arc<Mutex<Outcome>>,
    /// Bursts so far: each has its own writer name (`burstN`), so its keys are in order.
    pub count: AtomicU64,
}

pub struct Schedule {
    pub topology: Arc<Topology>,
    pub subscribers: Vec<Arc<AsyncMutex<Subscriber>>>,
    pub seed: u64,
    /// Gaps between faults are drawn from this range.
    pub gap: (Duration, Duration),
    pub tally: Arc<Mutex<Tally>>,
    pub started: Instant,
    pub burster: Arc<Burster>,
}

impl Schedule {
    /// Strike until `stop`, then wait for the subscriber faults still running to heal.
    pub async fn run(self, stop: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5eed_fa17);
        let mut first: Vec<Kind> = Kind::ALL.to_vec();
        first.shuffle(&mut rng);
        first.reverse(); // popped from the end
        let mut beside = JoinSet::new();
        loop {
            let gap = rng.random_range(self.gap.0..=self.gap.1);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(gap) => {}
            }
            let kind = match first.pop() {
                Some(k) => k,
                None => {
                    let missing: Vec<Kind> = {
                        let t = self.tally.lock().unwrap();
                        Kind::ALL
                            .into_iter()
                            .filter(|k| !t.struck.contains_key(k))
                            .collect()
                    };
                    if missing.is_empty() {
                        Kind::ALL[rng.random_range(0..Kind::ALL.len())]
                    } else {
                        missing[rng.random_range(0..missing.len())]
                    }
                }
            };
            let at = self.started.elapsed().as_secs_f64();
            match self.strike(kind, &mut rng, &mut beside).await {
                Ok(detail) => {
                    *self.tally.lock().unwrap().struck.entry(kind).or_default() += 1;
                    println!("  {at:7.1}s fault: {} ({detail})", kind.name());
                }
                Err(e) => {
                    println!("  {at:7.1}s fault: {} did not strike: {e}", kind.name());
                    self.tally
                        .lock()
                        .unwrap()
                        .problems
                        .push(format!("{}: {e}", kind.name()));
                }
            }
        }
        while let Some(done) = beside.join_next().await {
            if let Ok(Err(e)) = done {
                println!("  a subscriber fault did not heal: {e}");
                self.tally.lock().unwrap().problems.push(e);
            }
        }
    }

    async fn strike(
        &self,
        kind: Kind,
        rng: &mut StdRng,
        beside: &mut JoinSet<Result<(), String>>,
    ) -> anyhow::Result<String> {
        let t = &self.topology;
        let frozen_for = Duration::from_millis(rng.random_range(2000..=5000));
        match kind {
            Kind::TidingsKill9 => {
                let down = t.kill9_and_restart().await?;
                Ok(format!("back in {down:.1?}"))
            }
            Kind::PostgresRestart => {
                let pg = t.pg.clone();
                let began = Instant::now();
                tokio::task::spawn_blocking(move || pg.restart())
                    .await
                    .map_err(|e| anyhow::anyhow!("pg_ctl restart failed: {e}"))?;
                Ok(format!("back in {:.1?}", began.elapsed()))
            }
            Kind::WalsenderTerminated => {
                // The walsender may be between sessions after an earlier fault: wait for it.
                let sql = t.sql().await?;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let row = sql
                        .query_opt(
                            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                            &[&SLOT],
                        )
                        .await?;
                    if let Some(row) = row {
                        if row.get::<_, bool>(1) {
                            return Ok(format!("pid {}", row.get::<_, i32>(0)));
                        }
                    }
                    if Instant::now() > deadline {
                        anyhow::bail!("no walsender was active on slot {SLOT} for 20 s");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Kind::PostgresLinkCut => Ok(format!("{} connections", t.pg_proxy.cut())),
            Kind::PostgresLinkFrozen => {
                let open = t.pg_proxy.open();
                t.pg_proxy.freeze();
                tokio::time::sleep(frozen_for).await;
                t.pg_proxy.cut();
                Ok(format!("{open} connections for {frozen_for:.1?}"))
            }
            Kind::ClientLinkCut => Ok(format!("{} connections", t.client_proxy.cut())),
            Kind::ClientLinkFrozen => {
                let open = t.client_proxy.open();
                t.client_proxy.freeze();
                tokio::time::sleep(frozen_for).await;
                t.client_proxy.cut();
                Ok(format!("{open} connections for {frozen_for:.1?}"))
            }
            Kind::SubscriberDropped | Kind::SubscriberStalled => {
                // A subscriber not already under a fault.
                let mut order: Vec<usize> = (0..self.subscribers.len()).collect();
                order.shuffle(rng);
                let Some(sub) = order
                    .into_iter()
                    .find_map(|i| self.subscribers[i].clone().try_lock_owned().ok())
                else {
                    anyhow::bail!("every subscriber is already under a fault");
                };
                let name = sub.name().to_owned();
                let b = self.burster.clone();
                let n = b.count.fetch_add(1, Ordering::Relaxed);
                let writer = format!("burst{n}");
                if kind == Kind::SubscriberDropped {
                    let mut sub = sub;
                    sub.stop().await;
                    // Away while a burst overruns what the trimmed channel keeps.
                    let channel = b.trimmed[rng.random_range(0..b.trimmed.len())].clone();
                    let away = Duration::from_millis(rng.random_range(500..=3000));
                    let detail = format!(
                        "{name}, restarted in {away:.1?}, meanwhile a burst of {} on {channel}",
                        b.size
                    );
                    beside.spawn(async move {
                        tokio::join!(
                            tokio::time::sleep(away),
                            burst(&b.base, &channel, &writer, b.size, &b.acks, &b.outcome)
                        );
                        sub.start()
                            .await
                            .map_err(|e| format!("{} did not restart: {e}", sub.name()))
                    });
                    Ok(detail)
                } else {
                    let pause = Duration::from_millis(rng.random_range(4000..=9000));
                    let all: Vec<&String> = b.channels.iter().chain(&b.trimmed).collect();
                    let channel = all[rng.random_range(0..all.len())].clone();
                    let detail = format!(
                        "{name} for {pause:.1?}, meanwhile a burst of {} on {channel}",
                        b.size
                    );
                    beside.spawn(async move {
                        tokio::join!(
                            sub.stall(pause),
                            burst(&b.base, &channel, &writer, b.size, &b.acks, &b.outcome)
                        );
                        Ok(())
                    });
                    Ok(detail)
                }
            }
        }
    }
}

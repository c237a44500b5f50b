//! One soak run: set up, write and follow under the fault schedule, stop, catch up, account.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tidings_client::Transport;
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use crate::account::{self, examples, ChannelLog, SubscriberAccount, Truth};
use crate::fault::{Burster, Kind, Schedule, Tally};
use crate::outbox::{self, Writer};
use crate::publisher::{Outcome, Publisher};
use crate::subscriber::{JsSubscriber, RustSubscriber, Subscriber};
use crate::topology::Topology;

/// How long the end may take to bring the log, then every subscriber, up to date.
const CATCH_UP: Duration = Duration::from_secs(120);
/// How long a publish in flight at the end may still take to be acknowledged.
const DRAIN: Duration = Duration::from_secs(30);
/// How often a progress line is printed.
const PROGRESS: Duration = Duration::from_secs(10);

/// `tidings-soak`: writers, subscribers and a fault schedule against the real binary.
#[derive(clap::Parser, Debug)]
#[command(name = "tidings-soak", version, about)]
pub struct Options {
    /// How long the faults go on, in minutes.
    #[arg(long, conflicts_with = "seconds")]
    minutes: Option<f64>,
    /// How long the faults go on, in seconds (for short runs; default 60).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of every random choice (faults, gaps, channels); a random one when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// The tidings binary (default: target/release/tidings, else target/debug/tidings).
    #[arg(long, env = "TIDINGS_BIN")]
    tidings_bin: Option<PathBuf>,
    /// The built JS SDK (`npm ci && npm run build` in clients/js).
    #[arg(
        long,
        env = "TIDINGS_JS_DIST",
        default_value = "clients/js/dist/index.js"
    )]
    js_dist: PathBuf,
    /// Run without the JS SDK subscribers.
    #[arg(long)]
    no_js: bool,
    /// Transactions (outbox writers) and publishes (REST publishers) per second, per writer.
    #[arg(long, default_value_t = 8.0)]
    rate: f64,
    /// Messages of the burst published while a subscriber stalls.
    #[arg(long, default_value_t = 1500)]
    burst: u64,
    /// Shortest and longest gap between faults, in seconds (default 1 4 for runs up to five
    /// minutes, 2 8 for longer ones).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"])]
    fault_gap: Option<Vec<f64>>,
}

impl Options {
    fn duration(&self) -> Duration {
        match (self.minutes, self.seconds) {
            (Some(m), _) => Duration::from_secs_f64(m * 60.0),
            (None, Some(s)) => Duration::from_secs(s),
            (None, None) => Duration::from_secs(60),
        }
    }

    fn tidings(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.tidings_bin {
            return Ok(p.clone());
        }
        for p in ["target/release/tidings", "target/debug/tidings"] {
            if std::path::Path::new(p).exists() {
                return Ok(PathBuf::from(p));
            }
        }
        bail!("no tidings binary: build it (`cargo build --bin tidings`) or set TIDINGS_BIN")
    }
}

const DB_CHANNELS: [&str; 3] = ["soak:db0", "soak:db1", "soak:db2"];
const REST_CHANNELS: [&str; 2] = ["soak:rest0", "soak:rest1"];
/// A channel whose namespace keeps only [`crate::topology::TRIM_KEEP`] messages: bursts
/// there overrun a subscriber that is away or behind, which must then be told.
const TRIM_CHANNELS: [&str; 1] = ["soaktrim:burst"];

/// Run the soak; answers whether every check held.
pub async fn run(o: Options) -> anyhow::Result<bool> {
    let seed = o.seed.unwrap_or_else(rand::random);
    let duration = o.duration();
    let exe = o.tidings()?;
    let gap = o.fault_gap.clone().unwrap_or_else(|| {
        if duration <= Duration::from_secs(300) {
            vec![1.0, 4.0]
        } else {
            vec![2.0, 8.0]
        }
    });
    if gap[0] <= 0.0 || gap[1] < gap[0] {
        bail!("--fault-gap MIN MAX: give 0 < MIN <= MAX seconds");
    }
    println!(
        "soak: seed {seed}, faults for {duration:?} every {}..{} s, {} (rerun with --seed {seed} for the same schedule)",
        gap[0],
        gap[1],
        exe.display()
    );
    let topology = Arc::new(Topology::start(&exe).await?);
    let channels: Vec<String> = DB_CHANNELS
        .iter()
        .chain(REST_CHANNELS.iter())
        .chain(TRIM_CHANNELS.iter())
        .map(|c| c.to_string())
        .collect();
    let base = topology.base();

    // Subscribers first, attached before anything is written.
    let mut subs = vec![
        Subscriber::Rust(RustSubscriber::new(
            "rust-ws".into(),
            Transport::WebSocket,
            base.clone(),
            channels.clone(),
        )),
        Subscriber::Rust(RustSubscriber::new(
            "rust-sse".into(),
            Transport::Sse,
            base.clone(),
            channels.clone(),
        )),
        Subscriber::Rust(RustSubscriber::new(
            "rust-poll".into(),
            Transport::LongPoll,
            base.clone(),
            channels.clone(),
        )),
    ];
    if !o.no_js {
        let dist = std::fs::canonicalize(&o.js_dist).with_context(|| {
            format!(
                "the JS SDK is not built at {}: run `npm ci && npm run build` in clients/js (or pass --no-js)",
                o.js_dist.display()
            )
        })?;
        let script =
            std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/js/subscriber.mjs"))?;
        for (name, transport) in [
            ("js-ws", "websocket"),
            ("js-sse", "sse"),
            ("js-poll", "poll"),
        ] {
            subs.push(Subscriber::Js(JsSubscriber::new(
                name.into(),
                transport,
                base.clone(),
                channels.clone(),
                script.clone(),
                dist.clone(),
            )));
        }
    }
    for s in &mut subs {
        s.start().await?;
    }
    let subs: Vec<Arc<AsyncMutex<Subscriber>>> = subs
        .into_iter()
        .map(|s| Arc::new(AsyncMutex::new(s)))
        .collect();
    let ledgers: Vec<(String, crate::ledger::Shared)> = {
        let mut v = Vec::new();
        for s in &subs {
            let s = s.lock().await;
            v.push((s.name().to_owned(), s.ledger().clone()));
        }
        v
    };
    println!(
        "soak: {} subscribers attached to {} channels: {}",
        ledgers.len(),
        channels.len(),
        ledgers
            .iter()
            .map(|l| l.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Writers.
    let started = Instant::now();
    let stop_writers = CancellationToken::new();
    let rows = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut writers = Vec::new();
    for i in 0..2u64 {
        let w = Writer {
            name: format!("db{i}"),
            url: topology.pg.url(),
            channels: DB_CHANNELS.iter().map(|c| c.to_string()).collect(),
            rate: o.rate,
            seed: seed.wrapping_add(i),
            rows: rows.clone(),
        };
        writers.push(tokio::spawn(w.run(stop_writers.clone())));
        let p = Publisher {
            name: format!("rest{i}"),
            base: base.clone(),
            channels: REST_CHANNELS.iter().map(|c| c.to_string()).collect(),
            rate: o.rate,
            seed: seed.wrapping_add(100 + i),
            acks: acks.clone(),
            outcome: outcome.clone(),
        };
        writers.push(tokio::spawn(p.run(stop_writers.clone(), DRAIN)));
    }

    // Faults.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_faults = CancellationToken::new();
    let schedule = Schedule {
        topology: topology.clone(),
        subscribers: subs.clone(),
        seed,
        gap: (
            Duration::from_secs_f64(gap[0]),
            Duration::from_secs_f64(gap[1]),
        ),
        tally: tally.clone(),
        started,
        burster: Arc::new(Burster {
            base: base.clone(),
            channels: REST_CHANNELS.iter().map(|c| c.to_string()).collect(),
            trimmed: TRIM_CHANNELS.iter().map(|c| c.to_string()).collect(),
            size: o.burst,
            acks: acks.clone(),
            outcome: outcome.clone(),
            count: AtomicU64::new(0),
        }),
    };
    let faults = tokio::spawn(schedule.run(stop_faults.clone()));

    // Progress until the time is up.
    let end = started + duration;
    while Instant::now() < end {
        tokio::time::sleep(PROGRESS.min(end - Instant::now())).await;
        topology.scrape().await;
        let delivered: Vec<u64> = ledgers
            .iter()
            .map(|(_, l)| l.lock().unwrap().messages)
            .collect();
        let struck: u64 = tally.lock().unwrap().struck.values().sum();
        println!(
            "{:7.1}s committed {} rows, acknowledged {} publishes, delivered {}..{} per subscriber, {struck} faults",
            started.elapsed().as_secs_f64(),
            rows.load(Ordering::Relaxed),
            acks.load(Ordering::Relaxed),
            delivered.iter().min().unwrap_or(&0),
            delivered.iter().max().unwrap_or(&0),
        );
    }

    // The end: faults stop (and heal), then the writers.
    stop_faults.cancel();
    faults.await?;
    stop_writers.cancel();
    for w in writers {
        w.await?;
    }
    println!(
        "{:7.1}s faults and writers stopped; catching up",
        started.elapsed().as_secs_f64()
    );
    let committed = outbox::committed(&topology.pg.url()).await?;
    let (acked, unacked, refused, serials) = {
        let o = outcome.lock().unwrap();
        (
            o.acked.clone(),
            o.unacked.clone(),
            o.refused.clone(),
            o.serials.clone(),
        )
    };
    let mut expected = committed.clone();
    expected.extend(acked.iter().map(|(k, c)| (k.clone(), c.clone())));

    // The log first: every committed row and acknowledged publish in it.
    let caught = Instant::now() + CATCH_UP;
    let log = loop {
        let log = account::read_log(&topology.direct().await, &channels).await?;
        let (_, log_account) = Truth::new(expected.clone(), unacked.clone(), &serials, &log);
        if log_account.missing.is_empty() {
            break log;
        }
        if Instant::now() > caught {
            println!(
                "soak: after {CATCH_UP:?} the log still lacks {} expected messages: {}",
                log_account.missing.len(),
                examples(&log_account.missing, 5)
            );
            break log;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Then every subscriber up to the log's heads.
    let caught = Instant::now() + CATCH_UP;
    loop {
        let behind: Vec<String> = ledgers
            .iter()
            .filter_map(|(name, l)| {
                let b = account::behind(&l.lock().unwrap(), &log);
                (!b.is_empty()).then(|| format!("{name}: {}", b.join(", ")))
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if Instant::now() > caught {
            println!(
                "soak: after {CATCH_UP:?} these subscribers are still behind the log's heads: {}",
                behind.join("; ")
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{:7.1}s caught up; accounting",
        started.elapsed().as_secs_f64()
    );
    for s in &subs {
        s.lock().await.stop().await;
    }
    topology.scrape().await;
    // Anything that arrived while stopping is in the ledgers too.
    let (truth, log_account) = Truth::new(expected, unacked.clone(), &serials, &log);
    let accounts: Vec<SubscriberAccount> = ledgers
        .iter()
        .map(|(name, l)| account::account(name, &l.lock().unwrap(), &truth))
        .collect();
    let passed = report(&Report {
        seed,
        duration,
        committed: committed.len(),
        acked: acked.len(),
        unacked: unacked.len(),
        refused: &refused,
        log: &log,
        log_account: &log_account,
        accounts: &accounts,
        tally: &tally.lock().unwrap(),
        counters: &topology.counters(),
    });
    if !passed {
        println!(
            "--- tidings log (last lines) ---\n{}",
            topology.tidings_log_tail(30).await
        );
    }
    Ok(passed)
}

struct Report<'a> {
    seed: u64,
    duration: Duration,
    committed: usize,
    acked: usize,
    unacked: usize,
    refused: &'a [String],
    log: &'a BTreeMap<String, ChannelLog>,
    log_account: &'a account::LogAccount,
    accounts: &'a [SubscriberAccount],
    tally: &'a Tally,
    counters: &'a crate::topology::Counters,
}

/// Print the table; answers whether every check held.
fn report(r: &Report) -> bool {
    let mut ok = true;
    println!();
    println!("soak result (seed {}, faults for {:?})", r.seed, r.duration);
    println!("  committed outbox rows      {:>8}", r.committed);
    println!("  acknowledged publishes     {:>8}", r.acked);
    println!(
        "  unacknowledged publishes   {:>8}  (excluded; delivered at most once)",
        r.unacked
    );
    let in_log: usize = r.log.values().map(|l| l.items.len()).sum();
    println!("  messages in the log        {in_log:>8}");
    println!(
        "  removed by retention       {:>8}  (acknowledged; found by their acknowledged serial)",
        r.log_account.removed
    );
    println!();
    println!(
        "  {:<10} {:>10} {:>12} {:>11} {:>13} {:>10} {:>9} {:>11}",
        "subscriber",
        "delivered",
        "lost untold",
        "duplicated",
        "out of order",
        "lost told",
        "signals",
        "unexpected"
    );
    for a in r.accounts {
        println!(
            "  {:<10} {:>10} {:>12} {:>11} {:>13} {:>10} {:>9} {:>11}",
            a.name,
            a.delivered,
            a.lost_untold.len(),
            a.duplicated.len(),
            a.out_of_order.len(),
            a.lost_told,
            a.signals,
            a.unexpected.len()
        );
    }
    println!();
    println!("  faults injected:");
    for kind in Kind::ALL {
        let n = r.tally.struck.get(&kind).copied().unwrap_or(0);
        println!("    {:<26} {n:>5}", kind.name());
        if n == 0 {
            ok = false;
        }
    }
    println!();
    println!("  server counters, over every incarnation:");
    for (series, v) in r.counters {
        println!("    {series:<60} {v:>8}");
    }
    let never: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !r.tally.struck.contains_key(k))
        .map(|k| k.name())
        .collect();
    println!();
    let mut problem = |what: &str, list: &[String]| {
        if !list.is_empty() {
            ok = false;
            println!("  FAIL {what} ({}): {}", list.len(), examples(list, 5));
        }
    };
    problem(
        "expected messages the log never got",
        &r.log_account.missing,
    );
    problem("messages the log holds twice", &r.log_account.duplicated);
    problem(
        "messages the log holds on the wrong channel",
        &r.log_account.misplaced,
    );
    problem(
        "messages in the log that no writer wrote",
        &r.log_account.foreign,
    );
    problem("publishes refused for good", r.refused);
    for a in r.accounts {
        problem(&format!("{}: lost, untold", a.name), &a.lost_untold);
        problem(&format!("{}: duplicated", a.name), &a.duplicated);
        problem(&format!("{}: out of order", a.name), &a.out_of_order);
        problem(&format!("{}: unexpected", a.name), &a.unexpected);
    }
    if !never.is_empty() {
        println!(
            "  FAIL fault kinds that never struck: {} (run longer)",
            never.join(", ")
        );
    }
    for a in r.accounts.iter().filter(|a| !a.errors.is_empty()) {
        println!(
            "  note {}: {} SDK errors: {}",
            a.name,
            a.errors.len(),
            examples(&a.errors, 3)
        );
    }
    for a in r.accounts.iter().filter(|a| a.signals > 0) {
        println!("  note {}: continuity-lost signals {:?}", a.name, a.reasons);
    }
    for p in &r.tally.problems {
        println!("  note fault: {p}");
    }
    println!(
        "{}",
        if ok {
            "soak: PASS: every committed row and acknowledged publish reached every subscriber once, in order, or it was told continuity was lost"
        } else {
            "soak: FAIL"
        }
    );
    ok
}

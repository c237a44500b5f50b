//! Change events per second through the MongoDB connector into the durable channel log, beside
//! the ceiling of the MongoDB test server it reads from.
//!
//! ```sh
//! cargo run --release --example mongodb_throughput -- [EVENTS] [STORES] [--json]
//! ```
//!
//! `MAX_BATCH_EVENTS=N` sets the connector's `max_batch_events` (default 4096) for a comparison.
//!
//! Everything runs in this process on the machine's cores: the wire-level test server
//! (`tidings-mongo-testserver`), the unmodified `mongodb` driver, the connector, the server's
//! source runner and its embedded log (SQLite, one fsync per group commit).
//!
//! 1. **Ceiling**: a bare driver client reads EVENTS change events, already in the oplog, as
//!    raw BSON (`ChangeStream<RawDocumentBuf>`) and does nothing with them: what the test
//!    server and the driver deliver at most.
//! 2. **Connector alone**: the connector reads the same events into batches of publishes
//!    (routing by `orders:{fullDocument.storeId}` over STORES channels, normalized payload),
//!    handing them to nobody.
//! 3. **Runner and log alone**: those same batches replayed into a fresh log by the server's
//!    source runner (checks, atomic append with the checkpoint, fsync).
//! 4. **End to end**: the connector from its stored position through the runner into the log,
//!    timed until the last event is durable.
//! 5. **Snapshot**: an initial snapshot of EVENTS existing documents into the log.
//!
//! Stages 3 and 4 also print the CPU each kind of thread used, as a share of one core: a thread
//! near 100 % is what bounds the stage; when none is, the stage waits (on the log's syncs).
//!
//! `--json` prints one JSON object per line above (`scenario` `mongodb-throughput`, `system` the
//! stage, its figures, the CPU shares as `cpu_pct.<thread>`, `ok`, `problems`) on stdout and the
//! human lines on stderr, as `tidings-bench --json` does; `bench/run` reads them.
//!
//! The numbers it prints are the ones `docs/mongodb.md` quotes, with the machine they ran on.
//! It lives in the server package because it drives the server's real log and runner; the
//! connector itself depends on `tidings-connectors-core` alone (connectors never depend on the
//! server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, DateTime, Decimal128, Document, RawDocumentBuf};
use futures_util::StreamExt;
use tidings::channel::ChannelName;
use tidings::log::embedded::{EmbeddedLog, EmbeddedOptions};
use tidings::log::{AppendObserver, ChannelLog, StoredMessage};
use tidings::source::{run, PoisonPolicy, SourceOptions};
use tidings_connector_mongodb::config::SnapshotMode;
use tidings_connector_mongodb::position::Position;
use tidings_connector_mongodb::{MongoConfig, MongoSource, MongoUri};
use tidings_connectors_core::{Batch, Source, SourceError, SourcePosition};
use tidings_mongo_testserver::MongoTestServer;
use tokio_util::sync::CancellationToken;

/// Nobody is subscribed: the log's observer has nothing to do.
struct Quiet;

impl AppendObserver for Quiet {
    fn appended(&self, _: &ChannelName, _: u64, _: &[StoredMessage]) {}
    fn reset(&self, _: &ChannelName, _: &Arc<str>, _: u64) {}
}

/// An order of about 400 bytes of BSON with the usual types (as in `benches/event.rs`).
fn order(i: u64, stores: u64) -> Document {
    doc! {
        "_id": ObjectId::new(),
        "storeId": format!("store-{}", i % stores),
        "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"},
        "status": "paid",
        "total": Decimal128::from_bytes([0x0c, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0x30]),
        "items": [
            {"sku": "A-1", "qty": 2, "price": 9.5},
            {"sku": "B-7", "qty": 1, "price": 24.0},
        ],
        "createdAt": DateTime::now(),
        "version": i as i64,
    }
}

/// Batches handed out again, as a source: to time the runner and the log without MongoDB.
struct Replay(std::collections::VecDeque<Batch>);

#[async_trait::async_trait]
impl Source for Replay {
    async fn start(&mut self, _: Option<SourcePosition>) -> Result<(), SourceError> {
        Ok(())
    }
    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        match self.0.pop_front() {
            Some(b) => Ok(b),
            None => std::future::pending().await,
        }
    }
    async fn committed(&mut self, _: &SourcePosition) -> Result<(), SourceError> {
        Ok(())
    }
}

fn config(server: &MongoTestServer, ns: &str, snapshot: SnapshotMode) -> MongoConfig {
    let mut c = MongoConfig::for_collection(
        MongoUri::new(server.uri()),
        ns,
        Some("orders:{fullDocument.storeId}".into()),
    );
    c.snapshot = snapshot;
    c.max_await = Duration::from_millis(50);
    if let Some(max) = std::env::var("MAX_BATCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.max_batch_events = max;
    }
    c
}

fn options(name: &str) -> SourceOptions {
    SourceOptions {
        name: name.into(),
        poison: PoisonPolicy::DeadLetter(ChannelName::parse(&format!("dead:{name}")).unwrap()),
        max_message_bytes: 64 * 1024,
        status: Default::default(),
    }
}

/// Messages in the log across the STORES channels.
async fn in_log(log: &dyn ChannelLog, stores: u64) -> u64 {
    let mut total = 0;
    for s in 0..stores {
        let channel = ChannelName::parse(&format!("orders:store-{s}")).unwrap();
        total += log
            .state(&channel)
            .await
            .expect("the embedded log answers")
            .head;
    }
    total
}

/// Run `source` through the runner into `log` until the STORES channels hold `more` messages
/// beyond what they held when it started; stop it and return how long that took.
async fn drain(
    source: Box<dyn Source>,
    name: &str,
    log: &Arc<dyn ChannelLog>,
    stores: u64,
    more: u64,
) -> Duration {
    let before = in_log(log.as_ref(), stores).await;
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let (opts, runner_log, stop) = (options(name), log.clone(), shutdown.clone());
    let runner = tokio::spawn(async move {
        let mut source = source;
        run(source.as_mut(), &opts, runner_log, stop).await
    });
    while in_log(log.as_ref(), stores).await - before < more {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    shutdown.cancel();
    runner.await.unwrap();
    took
}

async fn wait_checkpoint(log: &EmbeddedLog, name: &str) -> SourcePosition {
    loop {
        if let Some(p) = log.checkpoint(name).await.unwrap() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU seconds this process's threads have used, by thread name (from `/proc/self/task`; empty
/// where there is none): which stage is busy all the time, and so bounds the rate.
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After the name: state, ..., utime and stime (fields 14 and 15) in clock ticks (100/s).
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        *out.entry(stat[open + 1..close].to_owned()).or_default() +=
            (ticks(11) + ticks(12)) as f64 / 100.0;
    }
    out
}

/// The CPU each kind of thread used since `before`, as a percentage of `wall` (100 = one core),
/// for the kinds that used at least 0.05 s.
fn cpu_since(
    before: &std::collections::BTreeMap<String, f64>,
    wall: Duration,
) -> Vec<(String, f64)> {
    let now = cpu_by_thread();
    let mut shares = Vec::new();
    for (name, secs) in now {
        let used = secs - before.get(&name).copied().unwrap_or(0.0);
        if used >= 0.05 {
            shares.push((name, 100.0 * used / wall.as_secs_f64()));
        }
    }
    shares
}

fn cpu_line(shares: &[(String, f64)]) -> String {
    let parts: Vec<String> = shares
        .iter()
        .map(|(name, pct)| format!("{name} {pct:.0} %"))
        .collect();
    format!("    cpu (of one core): {}", parts.join(", "))
}

/// Where the lines go: people read them on stdout; with `--json` they go to stderr and each
/// stage's figures go to stdout as one JSON object.
struct Out {
    json: bool,
    events: u64,
    stores: u64,
    /// The connector's `max_batch_events` (`MAX_BATCH_EVENTS` or the default).
    max_batch_events: usize,
    /// The ceiling's rate, once measured: each later stage gives its share of it.
    ceiling: Option<f64>,
}

impl Out {
    fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    /// One stage's figures as JSON (nothing without `--json`): `system` names the stage.
    fn stage(&self, system: &str, label: &str, took: Duration, extra: serde_json::Value) {
        if !self.json {
            return;
        }
        let per_s = self.events as f64 / took.as_secs_f64();
        let mut m = serde_json::json!({
            "scenario": "mongodb-throughput",
            "system": system,
            "stage": label,
            "events": self.events,
            "channels": self.stores,
            "max_batch_events": self.max_batch_events,
            "secs": (took.as_secs_f64() * 1e6).round() / 1e6,
            "events_per_s": per_s.round(),
        });
        if let Some(ceiling) = self.ceiling {
            m["ceiling_share"] = serde_json::json!((per_s / ceiling * 1e4).round() / 1e4);
        }
        if let (Some(m), serde_json::Value::Object(extra)) = (m.as_object_mut(), extra) {
            m.extend(extra);
        }
        m["ok"] = serde_json::json!(true);
        m["problems"] = serde_json::json!([]);
        println!("{m}");
    }

    fn stage_with_cpu(
        &self,
        system: &str,
        label: &str,
        took: Duration,
        mut extra: serde_json::Value,
        cpu: &[(String, f64)],
    ) {
        for (name, pct) in cpu {
            extra[format!("cpu_pct.{name}")] = serde_json::json!((pct * 10.0).round() / 10.0);
        }
        self.stage(system, label, took, extra);
    }
}

fn rate(n: u64, d: Duration) -> String {
    format!(
        "{:>9.0} /s  ({n} in {:.3} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

/// The allocator the `tidings` binary uses (src/main.rs), so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let mut args = std::env::args().skip(1).filter(|a| a != "--json");
    let events: u64 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("EVENTS is a number"));
    let stores: u64 = args
        .next()
        .map_or(100, |a| a.parse().expect("STORES is a number"));
    let server = MongoTestServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        EmbeddedLog::open(
            &dir.path().join("log"),
            EmbeddedOptions::default(),
            Arc::new(Quiet),
        )
        .unwrap(),
    );
    let dyn_log: Arc<dyn ChannelLog> = log.clone();
    let mut out = Out {
        json,
        events,
        stores,
        max_batch_events: config(&server, "shop.orders", SnapshotMode::Never).max_batch_events,
        ceiling: None,
    };
    out.line(&format!(
        "{events} change events, {stores} channels, cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));

    // The connector takes its start position on an empty collection, then stops.
    let shutdown = CancellationToken::new();
    let source = MongoSource::new(
        "bench",
        config(&server, "shop.orders", SnapshotMode::Never),
        "dead:bench",
        "mongodb:bench",
    )
    .unwrap();
    let (opts, runner_log, stop) = (options("bench"), dyn_log.clone(), shutdown.clone());
    let runner = tokio::spawn(async move {
        let mut source = source;
        run(&mut source, &opts, runner_log, stop).await
    });
    let start = wait_checkpoint(&log, "bench").await;
    shutdown.cancel();
    runner.await.unwrap();
    let Ok(Position::Token(token)) = Position::from_source(&start) else {
        panic!("the start position is a resume token: {start:?}");
    };

    // The backlog both readers drain: EVENTS inserts already in the oplog.
    let t = Instant::now();
    for i in 0..events {
        server.insert("shop.orders", order(i, stores));
    }
    let writes = t.elapsed();
    out.line(&format!(
        "writes into the test server        {}",
        rate(events, writes)
    ));
    out.stage(
        "writes",
        "inserts into the test server (setup, in process)",
        writes,
        serde_json::json!({}),
    );

    // 1. Ceiling: a bare driver client, raw events, no processing.
    let client = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
    let mut stream = client
        .database("shop")
        .collection::<Document>("orders")
        .watch()
        .resume_after(
            bson::from_bson::<mongodb::change_stream::event::ResumeToken>(token.clone()).unwrap(),
        )
        .await
        .unwrap()
        .with_type::<RawDocumentBuf>();
    let t = Instant::now();
    let mut read = 0u64;
    while read < events {
        stream.next().await.expect("the stream goes on").unwrap();
        read += 1;
    }
    let ceiling = t.elapsed();
    out.line(&format!(
        "ceiling: bare driver, raw events   {}",
        rate(events, ceiling)
    ));
    out.ceiling = Some(events as f64 / ceiling.as_secs_f64());
    out.stage(
        "ceiling",
        "ceiling: bare driver, raw events",
        ceiling,
        serde_json::json!({}),
    );
    drop(stream);

    // 2. The connector alone: the same events to batches of publishes.
    let mut source = MongoSource::new(
        "bench",
        config(&server, "shop.orders", SnapshotMode::Never),
        "dead:bench",
        "mongodb:bench",
    )
    .unwrap();
    source.start(Some(start.clone())).await.unwrap();
    let t = Instant::now();
    let (mut batches, mut published) = (std::collections::VecDeque::new(), 0u64);
    while published < events {
        let b = source.next_batch().await.unwrap();
        published += b.messages.len() as u64;
        batches.push_back(b);
    }
    let alone = t.elapsed();
    drop(source);
    out.line(&format!(
        "connector alone, no log            {}  in {} batches",
        rate(events, alone),
        batches.len()
    ));
    out.stage(
        "connector-alone",
        "connector alone, no log",
        alone,
        serde_json::json!({"batches": batches.len()}),
    );
    // Batches as large as the connector makes them when the log is the slower side (events
    // pile up during an append): whole batches merged up to `max_batch_events`.
    let limit = config(&server, "shop.orders", SnapshotMode::Never).max_batch_events;
    let mut merged: std::collections::VecDeque<Batch> = std::collections::VecDeque::new();
    for b in batches {
        match merged.back_mut() {
            Some(last) if last.messages.len() + b.messages.len() <= limit => {
                last.messages.extend(b.messages);
                last.position = b.position;
            }
            _ => merged.push_back(b),
        }
    }
    let batches = merged;

    // 3. The runner and the log alone: those batches into a fresh log.
    let replay_dir = tempfile::tempdir().unwrap();
    let replay_log: Arc<dyn ChannelLog> = Arc::new(
        EmbeddedLog::open(
            replay_dir.path(),
            EmbeddedOptions::default(),
            Arc::new(Quiet),
        )
        .unwrap(),
    );
    let appends = batches.len();
    let cpu = cpu_by_thread();
    let log_alone = drain(
        Box::new(Replay(batches)),
        "replay",
        &replay_log,
        stores,
        events,
    )
    .await;
    replay_log.close().await;
    let cpu = cpu_since(&cpu, log_alone);
    out.line(&format!(
        "runner + log alone, no MongoDB     {}  in {appends} appends",
        rate(events, log_alone)
    ));
    out.line(&cpu_line(&cpu));
    out.stage_with_cpu(
        "runner-log-alone",
        "runner + log alone, no MongoDB",
        log_alone,
        serde_json::json!({"appends": appends}),
        &cpu,
    );

    // 4. The connector into the durable log, from the stored position.
    let source = MongoSource::new(
        "bench",
        config(&server, "shop.orders", SnapshotMode::Never),
        "dead:bench",
        "mongodb:bench",
    )
    .unwrap();
    let commits = log
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let cpu = cpu_by_thread();
    let through = drain(Box::new(source), "bench", &dyn_log, stores, events).await;
    let commits = log
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed)
        - commits;
    let cpu = cpu_since(&cpu, through);
    out.line(&format!(
        "connector into the durable log     {}  in {commits} commits  = {:.0} % of the ceiling",
        rate(events, through),
        100.0 * ceiling.as_secs_f64() / through.as_secs_f64()
    ));
    out.line(&cpu_line(&cpu));
    out.stage_with_cpu(
        "end-to-end",
        "connector into the durable log",
        through,
        serde_json::json!({"commits": commits}),
        &cpu,
    );

    // 5. An initial snapshot of EVENTS existing documents.
    for i in 0..events {
        server.insert("shop.snap", order(i, stores));
    }
    let source = MongoSource::new(
        "snap",
        config(&server, "shop.snap", SnapshotMode::Initial),
        "dead:snap",
        "mongodb:snap",
    )
    .unwrap();
    let snapshot = drain(Box::new(source), "snap", &dyn_log, stores, events).await;
    out.line(&format!(
        "snapshot into the durable log      {}",
        rate(events, snapshot)
    ));
    out.stage(
        "snapshot",
        "snapshot into the durable log",
        snapshot,
        serde_json::json!({}),
    );
    dyn_log.close().await;
}

//! `tidings-bench pg`: the Postgres outbox path, on one throwaway cluster and the same WAL.
//!
//! Three systems read the same outbox rows:
//!
//! - `tidings`: the `tidings` binary with its Postgres connector (slot `tidings`, pgoutput),
//!   rows appended to its log and delivered to a WebSocket client.
//! - `pg_recvlogical`: Postgres's own client decoding the same publication from a pgoutput
//!   slot of its own into a pipe this process reads: the floor, nothing done with the rows.
//! - `polling-relay`: the way most outbox relays work, written straightforwardly in Rust here:
//!   `LISTEN` (a statement trigger sends `NOTIFY`), then `SELECT … WHERE id > $last ORDER BY id
//!   LIMIT 1000` until empty, each page published over REST (one request per page) to a second
//!   Tidings server of its own (so the two never share a log writer or its syncs) and delivered
//!   to a WebSocket client like Tidings' own.
//!
//! Two measurements:
//!
//! 1. Throughput: `--rows` rows are committed (in transactions of `--txn-rows`) while nothing
//!    reads; then each system drains them alone. Rows/s from the first row out to the last
//!    (Tidings: durable in its log; pg_recvlogical: decoded into the pipe; relay: durable in the
//!    log through REST).
//! 2. Latency: every system runs while `--writers` connections insert single-row autocommit
//!    transactions at each `--rates` step for `--seconds`; each row's data carries the instant
//!    its INSERT was sent (`"bench_ns"`), and the figure is that to the instant the reader
//!    got it. Rows a system never delivered are counted (`missing`).
//!
//! Postgres runs with `fsync = off` (as the test harness does) so the figures are the relay
//! path, not this machine's disk; Tidings' own log syncs as in production.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::KEY;

use crate::common::{self, Report};

/// The channel outbox rows are written to, and the one the relay publishes on.
const CHANNEL: &str = "pg:bench";
const RELAY_CHANNEL: &str = "relay:bench";
/// The marker jsonb output puts before the send instant (`{"seq": 1, "bench_ns": 123}`).
const JSONB_STAMP: &str = "\"bench_ns\": ";

/// Arguments of `tidings-bench pg`.
#[derive(Debug, Clone, clap::Args)]
pub struct PgArgs {
    /// Rows committed before the throughput drain.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
    /// Rows per transaction in the throughput phase.
    #[arg(long, default_value_t = 100)]
    pub txn_rows: u64,
    /// Paced insert rates of the latency phase, rows/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub rates: Vec<u64>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections inserting in the latency phase.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// The `tidings` binary (default: `tidings` beside this program).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// A tiny run (CI): 2,000 rows, one step of 200 rows/s for 2 s.
    #[arg(long)]
    pub smoke: bool,
}

/// Print every report; true when none has a problem.
pub fn print(reports: Result<Vec<Report>>, json: bool) -> bool {
    match reports {
        Ok(reports) => {
            for r in &reports {
                r.print(json);
            }
            reports.iter().all(|r| r.problems.is_empty())
        }
        Err(e) => {
            eprintln!("tidings-bench pg: {e:#}");
            false
        }
    }
}

/// Run both measurements.
pub async fn run(a: &PgArgs) -> Result<Vec<Report>> {
    let mut a = a.clone();
    if a.smoke {
        a.rows = 2_000;
        a.rates = vec![200];
        a.seconds = 2;
    }
    let server = match &a.server {
        Some(s) => s.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for this program"))?
            .join("tidings"),
    };
    if !server.exists() {
        bail!(
            "no tidings binary at {} (build it: cargo build --release -p tidings, or pass --server)",
            server.display()
        );
    }
    let pg =
        Cluster::try_start_with("max_connections = 50").context("starting a throwaway Postgres")?;
    let url = pg.url();
    prepare(&server, &url).await?;
    let mut reports = Vec::new();

    // 1. Throughput: commit the rows with nobody reading, then drain them system by system.
    let sql = connect(&url).await?;
    let started = Instant::now();
    let mut written = 0;
    while written < a.rows {
        let n = a.txn_rows.min(a.rows - written) as i64;
        sql.execute(
            "INSERT INTO tidings.outbox (channel, name, data) \
             SELECT $1, 'row', jsonb_build_object('seq', $2::bigint + g, 'bench_ns', 0, 'pad', repeat('x', 60)) \
             FROM generate_series(1, $3::bigint) g",
            &[&CHANNEL, &(written as i64), &n],
        )
        .await?;
        written += n as u64;
    }
    let end: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    eprintln!(
        "pg: {} rows committed in {:.1} s; draining",
        a.rows,
        started.elapsed().as_secs_f64()
    );

    let mut r = Report::new("postgres-throughput");
    r.text("system", "pg_recvlogical");
    let (rows, secs) = recvlogical_drain(&pg, &end).await?;
    r.int("rows", rows, "rows");
    r.num("rows_per_s", rows as f64 / secs, "rows/s");
    if rows != a.rows {
        r.problem(format!("decoded {rows} of {} rows", a.rows));
    }
    let floor = rows as f64 / secs;
    reports.push(r);

    let tidings = Tidings::start(&server, Some(&url)).await?;
    let http = common::http_client(Duration::from_secs(30))?;
    let mut r = Report::new("postgres-throughput");
    r.text("system", "tidings");
    match drain_time(&http, &tidings.http, CHANNEL, a.rows).await {
        Ok(secs) => {
            let rate = a.rows as f64 / secs;
            r.int("rows", a.rows, "rows");
            r.num("rows_per_s", rate, "rows/s");
            r.num("ratio_to_pg_recvlogical", rate / floor, "");
        }
        Err(e) => r.problem(format!("{e:#}")),
    }
    reports.push(r);

    let relay_target = Tidings::start(&server, None).await?;
    let relay = Relay::start(&url, &relay_target.http, http.clone()).await?;
    let mut r = Report::new("postgres-throughput");
    r.text("system", "polling-relay");
    match drain_time(&http, &relay_target.http, RELAY_CHANNEL, a.rows).await {
        Ok(secs) => {
            let rate = a.rows as f64 / secs;
            r.int("rows", a.rows, "rows");
            r.num("rows_per_s", rate, "rows/s");
            r.num("ratio_to_pg_recvlogical", rate / floor, "");
        }
        Err(e) => r.problem(format!("{e:#}")),
    }
    reports.push(r);

    // 2. Latency: all three read live while the writers insert at each rate.
    let stamps = Receivers::start(&pg, &tidings.http, &relay_target.http).await?;
    let mut seq = a.rows;
    for &rate in &a.rates {
        let first = seq + 1;
        let total = rate * a.seconds;
        stamps.expect(first, total).await;
        let achieved = write_paced(&url, a.writers, rate, a.seconds, first).await?;
        seq += total;
        // Stragglers: wait until every system has all rows, or 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !stamps.complete().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (system, got) in stamps.take().await {
            let mut r = Report::new(&format!("postgres-latency-{rate}"));
            r.text("system", system);
            r.int("rate_target", rate, "rows/s");
            r.num("rate_achieved", achieved, "rows/s");
            r.int("rows", total, "rows");
            r.int("received", got.len() as u64, "rows");
            let missing = total.saturating_sub(got.len() as u64);
            r.int("missing", missing, "rows");
            let mut h = common::new_histogram();
            for ns in got {
                common::record_ns(&mut h, ns);
            }
            common::latency_figures(&mut r, "latency", &h);
            // A polling relay reading `ORDER BY id` skips rows whose id was taken before a
            // row that committed earlier: a property of that design, measured, not a failure
            // of the run. Tidings and pg_recvlogical must deliver every row.
            if missing > 0 && system != "polling-relay" {
                r.problem(format!("{missing} of {total} rows never arrived"));
            }
            reports.push(r);
        }
    }
    drop(relay);
    drop(stamps);
    drop(tidings);
    drop(relay_target);
    Ok(reports)
}

/// `tidings migrate` (outbox, publication, slot `tidings`), a second pgoutput slot for
/// pg_recvlogical, and the relay's NOTIFY trigger: all before any row is written.
async fn prepare(server: &Path, url: &str) -> Result<()> {
    let out = Command::new(server)
        .args(["migrate", "--postgres", url])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "tidings migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    connect(url)
        .await?
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('recv', 'pgoutput');
             CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_notify('outbox_insert', ''); RETURN NULL; END $$;
             CREATE TRIGGER bench_notify AFTER INSERT ON tidings.outbox
               FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();",
        )
        .await?;
    Ok(())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Time from the first to the last of `rows` messages being in `channel`'s log.
async fn drain_time(http: &reqwest::Client, base: &str, channel: &str, rows: u64) -> Result<f64> {
    let has = |after: u64| {
        let url = format!("{base}/v1/channels/{channel}/messages?after={after}&limit=1");
        async move {
            let v: serde_json::Value = http.get(url).bearer_auth(KEY).send().await?.json().await?;
            Ok::<bool, anyhow::Error>(v["items"].as_array().is_some_and(|i| !i.is_empty()))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while !has(0).await? {
        if Instant::now() > deadline {
            bail!("no message reached {channel}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = Instant::now();
    while !has(rows - 1).await? {
        if Instant::now() > deadline {
            bail!("{channel} did not reach {rows} messages");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(first.elapsed().as_secs_f64())
}

/// `pg_recvlogical` from slot `recv` up to `end`: rows decoded, and seconds from its first
/// output to its exit.
async fn recvlogical_drain(pg: &Cluster, end: &str) -> Result<(u64, f64)> {
    let mut child = recvlogical(pg, Some(end))?;
    let mut out = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 1 << 16];
    let mut rows = 0;
    let mut first = None;
    let mut carry = Vec::new();
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        carry.extend_from_slice(&buf[..n]);
        let (found, keep) = scan_rows(&carry);
        rows += found.len() as u64;
        carry.drain(..keep);
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok((rows, secs.max(1e-6)))
}

/// Find every row's `"seq": K` and the `"bench_ns": N` after it in `bytes` (jsonb's text, as
/// pgoutput carries it); answers the pairs and how many leading bytes are done with (a row cut
/// by the end of a read stays for the next one).
fn scan_rows(bytes: &[u8]) -> (Vec<(u64, u64)>, usize) {
    const SEQ: &[u8] = b"\"seq\": ";
    let stamp = JSONB_STAMP.as_bytes();
    let number = |at: usize| -> Option<(u64, usize)> {
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        // A number running into the end of the buffer may go on in the next read.
        if digits == 0 || at + digits >= bytes.len() {
            return None;
        }
        let v = std::str::from_utf8(&bytes[at..at + digits])
            .ok()?
            .parse()
            .ok()?;
        Some((v, at + digits))
    };
    let mut rows = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&bytes[i..], SEQ) {
        let seq_at = i + at;
        let Some((seq, after_seq)) = number(seq_at + SEQ.len()) else {
            return (rows, seq_at);
        };
        let Some(s) = find(&bytes[after_seq..], stamp) else {
            return (rows, seq_at);
        };
        let Some((sent, end)) = number(after_seq + s + stamp.len()) else {
            return (rows, seq_at);
        };
        rows.push((seq, sent));
        i = end;
    }
    // Keep a tail that might hold the start of a cut `"seq": `.
    (rows, i.max(bytes.len().saturating_sub(SEQ.len())))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Insert `rate` rows/s for `seconds` from `writers` connections, one row per autocommit
/// transaction, sequence numbers from `first`. Answers the rate achieved.
async fn write_paced(
    url: &str,
    writers: usize,
    rate: u64,
    seconds: u64,
    first: u64,
) -> Result<f64> {
    let total = rate * seconds;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers.max(1) {
        let client = connect(url).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare(
                    "INSERT INTO tidings.outbox (channel, name, data) \
                     VALUES ($1, 'row', jsonb_build_object('seq', $2::bigint, 'bench_ns', $3::bigint, 'pad', repeat('x', 60)))",
                )
                .await?;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                // Row k is due at k / rate seconds.
                let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let sent = common::now_ns() as i64;
                client
                    .execute(&stmt, &[&CHANNEL, &((first + k) as i64), &sent])
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Latencies per system for the current step.
struct Receivers {
    state: Arc<Mutex<Step>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    recv: Child,
}

#[derive(Default)]
struct Step {
    first: u64,
    total: u64,
    /// Per system: (name, latencies in ns).
    got: Vec<(&'static str, Vec<u64>)>,
}

impl Step {
    fn record(&mut self, system: usize, seq: u64, sent: u64) {
        if seq >= self.first && seq < self.first + self.total {
            self.got[system]
                .1
                .push(common::now_ns().saturating_sub(sent));
        }
    }
}

impl Receivers {
    async fn start(pg: &Cluster, base: &str, relay_base: &str) -> Result<Receivers> {
        let state = Arc::new(Mutex::new(Step {
            got: vec![
                ("tidings", Vec::new()),
                ("polling-relay", Vec::new()),
                ("pg_recvlogical", Vec::new()),
            ],
            ..Step::default()
        }));
        let mut tasks = Vec::new();
        let ws = |b: &str| format!("{}/v1/connect", b.replacen("http://", "ws://", 1));
        for (system, channel, ws_url) in
            [(0, CHANNEL, ws(base)), (1, RELAY_CHANNEL, ws(relay_base))]
        {
            let (mut ws, _) =
                common::ws_connect(&ws_url, &format!("Bearer {KEY}"), None, 5).await?;
            common::attach(&mut ws, channel, None).await?;
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let t = t.as_str();
                        if let (Some(seq), Some(sent)) = (
                            common::find_u64(t, "\"seq\":"),
                            common::find_u64(t, "\"bench_ns\":"),
                        ) {
                            state.lock().await.record(system, seq, sent);
                        }
                    }
                }
            }));
        }
        let mut recv = recvlogical(pg, None)?;
        let mut out = recv.stdout.take().expect("piped");
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            let mut carry: Vec<u8> = Vec::new();
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                carry.extend_from_slice(&buf[..n]);
                let (pairs, keep) = scan_rows(&carry);
                carry.drain(..keep);
                let mut s = st.lock().await;
                for (seq, sent) in pairs {
                    s.record(2, seq, sent);
                }
            }
        }));
        Ok(Receivers { state, tasks, recv })
    }

    /// Start a step: rows `first..first + total`.
    async fn expect(&self, first: u64, total: u64) {
        let mut s = self.state.lock().await;
        s.first = first;
        s.total = total;
        for g in &mut s.got {
            g.1.clear();
        }
    }

    async fn complete(&self) -> bool {
        let s = self.state.lock().await;
        s.got.iter().all(|g| g.1.len() as u64 >= s.total)
    }

    async fn take(&self) -> Vec<(&'static str, Vec<u64>)> {
        let mut s = self.state.lock().await;
        s.got
            .iter_mut()
            .map(|(n, v)| (*n, std::mem::take(v)))
            .collect()
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.recv.start_kill();
    }
}

/// The polling outbox relay.
struct Relay {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    async fn start(url: &str, base: &str, http: reqwest::Client) -> Result<Relay> {
        let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let (tx, mut notified) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m {
                    let _ = tx.send(());
                }
            }
        });
        client.batch_execute("LISTEN outbox_insert").await?;
        let publish = format!("{base}/v1/channels/{RELAY_CHANNEL}/messages");
        let task = tokio::spawn(async move {
            let mut last: i64 = 0;
            loop {
                // Read until the outbox has nothing after `last`, then wait for a NOTIFY (or
                // a second, as relays poll anyway in case one was missed).
                loop {
                    let rows = match client
                        .query(
                            "SELECT id, name, data::text FROM tidings.outbox WHERE id > $1 ORDER BY id LIMIT 1000",
                            &[&last],
                        )
                        .await
                    {
                        Ok(rows) => rows,
                        Err(e) => {
                            eprintln!("relay: {e}");
                            return;
                        }
                    };
                    if rows.is_empty() {
                        break;
                    }
                    let mut body = String::from("[");
                    for (i, row) in rows.iter().enumerate() {
                        let name: Option<String> = row.get(1);
                        let data: Option<String> = row.get(2);
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&format!(
                            "{{\"name\":{},\"data\":{}}}",
                            serde_json::to_string(&name).unwrap_or_default(),
                            data.as_deref().unwrap_or("null")
                        ));
                    }
                    body.push(']');
                    let sent = http
                        .post(&publish)
                        .bearer_auth(KEY)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            eprintln!("relay: publish answered {}", r.status());
                            return;
                        }
                        Err(e) => {
                            eprintln!("relay: publish failed: {e}");
                            return;
                        }
                    }
                    last = rows.last().map(|r| r.get(0)).unwrap_or(last);
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), notified.recv()).await;
                while notified.try_recv().is_ok() {}
            }
        });
        Ok(Relay { task })
    }
}

/// The `tidings` binary, with the Postgres connector on `url` when given.
struct Tidings {
    _process: Process,
    _dir: tempfile::TempDir,
    http: String,
}

impl Tidings {
    async fn start(server: &Path, url: Option<&str>) -> Result<Tidings> {
        let dir = tempfile::Builder::new()
            .prefix("tidings-bench-pg-")
            .tempdir()?;
        let config = dir.path().join("tidings.toml");
        let mut text = String::from("[limits]\npublish_rate = 10000000\n");
        if let Some(url) = url {
            text.push_str(&format!(
                "\n[connectors.postgres]\ntype = \"postgres\"\nurl = \"{url}\"\ncleanup = false\nstatus_interval = \"1s\"\n"
            ));
        }
        std::fs::write(&config, text)?;
        let config = config.to_str().context("a temporary path that is UTF-8")?;
        let command = Process::command(server, &dir.path().join("data"), &["--config", config]);
        let mut process = Process::try_spawn(command)?;
        // Longer than a test waits: a benchmark host may still be busy with the scenario
        // before this one.
        process.try_listening(Duration::from_secs(30)).await?;
        Ok(Tidings {
            http: process.http(),
            _process: process,
            _dir: dir,
        })
    }
}

/// `pg_recvlogical` on slot `recv` of `pg` to a pipe, up to `end` when given.
fn recvlogical(pg: &Cluster, end: Option<&str>) -> Result<Child> {
    let mut cmd = Command::new(pg.tool("pg_recvlogical"));
    cmd.args(["-d", &pg.url(), "--slot", "recv", "--start", "-f", "-"])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=tidings_outbox",
        ])
        .args(["-F", "1"]);
    if let Some(end) = end {
        cmd.args(["--endpos", end]);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting pg_recvlogical")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_across_reads() {
        let text =
            br#"xx{"pad": "x", "seq": 1, "bench_ns": 123}yy{"pad": "x", "seq": 2, "bench_ns": 45"#;
        let (rows, keep) = scan_rows(text);
        assert_eq!(rows, vec![(1, 123)]);
        // The cut row is kept for the next read.
        assert!(std::str::from_utf8(&text[keep..])
            .unwrap()
            .starts_with("\"seq\": 2"));
        let (rows, keep) = scan_rows(b"{\"seq\": 3, \"bench_ns\": 7}");
        assert_eq!((rows, keep), (vec![(3, 7)], 24));
    }
}

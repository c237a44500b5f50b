//! The parts under test and the links between them: a throwaway Postgres with the outbox, the
//! real `tidings` binary whose Postgres connector reaches Postgres through one fault proxy, and
//! a second fault proxy every client (subscribers, REST publishers) reaches Tidings through.
//! Tidings keeps its data directory across `kill -9`; after each restart on a new port the
//! clients' proxy is retargeted to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::proxy::Proxy;
use tokio::sync::Mutex;

/// The slot the connector streams from (created by `tidings migrate`).
pub const SLOT: &str = "tidings";

/// The server's heartbeat interval in the soak; clients are told the same, so a frozen link is
/// noticed after 2.5 of them.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How many messages the `soaktrim` namespace keeps (retention runs every second).
pub const TRIM_KEEP: u64 = 300;

/// How long Tidings may take to listen after a start (a restart after `kill -9` reopens the log).
const LISTEN_WITHIN: Duration = Duration::from_secs(60);

pub struct Topology {
    pub pg: Arc<Cluster>,
    /// Between the connector and Postgres.
    pub pg_proxy: Proxy,
    /// Between every client and Tidings.
    pub client_proxy: Proxy,
    exe: PathBuf,
    data: tempfile::TempDir,
    config: PathBuf,
    tidings: Mutex<Process>,
    /// Server counters of the incarnations killed so far, summed, and of the running one.
    counters: std::sync::Mutex<(Counters, Counters)>,
}

/// Some of the server's Prometheus counters, by series (`name{labels}`).
pub type Counters = BTreeMap<String, f64>;

/// The counters the report shows: how sessions ended, how catch-up was served, errors.
const COUNTERS: [&str; 4] = [
    "tidings_sessions_closed_total",
    "tidings_catch_up_from_memory_total",
    "tidings_catch_up_log_pages_total",
    "tidings_errors_total",
];

impl Topology {
    /// Start Postgres, apply the outbox migrations (`tidings migrate`), start both proxies and
    /// Tidings.
    pub async fn start(exe: &Path) -> anyhow::Result<Topology> {
        let pg =
            tokio::task::spawn_blocking(|| Cluster::try_start_with("wal_sender_timeout = 10s"))
                .await?
                .context("starting the throwaway Postgres cluster")?;
        let out = tokio::process::Command::new(exe)
            .args(["migrate", "--postgres", &pg.url()])
            .output()
            .await
            .with_context(|| format!("running {} migrate", exe.display()))?;
        if !out.status.success() {
            bail!(
                "`tidings migrate` failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pg_proxy = Proxy::start(pg.addr()).await;
        let data = tempfile::Builder::new().prefix("tidings-soak-").tempdir()?;
        let config = data.path().join("soak.toml");
        // Clean-up off: the outbox table is the ground truth of what was committed. A short
        // network_timeout so a frozen link to Postgres is replaced within the soak's time; a
        // short send_timeout so a subscriber that stops reading is closed (resumable) soon.
        // One namespace keeps few messages, so a subscriber away during a burst there loses
        // some and must be told.
        std::fs::write(
            &config,
            format!(
                r#"[connectors.pg]
type = "postgres"
url = "{url}"
slot = "{SLOT}"
cleanup = false
network_timeout = "5s"
status_interval = "1s"

[session]
heartbeat_interval = "{hb}s"
send_timeout = "3s"

[retention]
interval = "1s"

[namespaces.soaktrim]
max_messages = {TRIM_KEEP}
"#,
                url = pg.url_through(pg_proxy.addr()),
                hb = HEARTBEAT.as_secs(),
            ),
        )?;
        let data_dir = data.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let tidings = launch(exe, &data_dir, &config).await?;
        let client_proxy = Proxy::start(tidings.addr().parse()?).await;
        Ok(Topology {
            pg: Arc::new(pg),
            pg_proxy,
            client_proxy,
            exe: exe.to_owned(),
            data,
            config,
            tidings: Mutex::new(tidings),
            counters: Default::default(),
        })
    }

    /// The clients' way in: through the proxy.
    pub fn base(&self) -> String {
        self.client_proxy.http()
    }

    /// Tidings' own address, around the proxy: for the final reads only.
    pub async fn direct(&self) -> String {
        self.tidings.lock().await.http()
    }

    /// `kill -9` Tidings, start it again on the same data directory, point the clients' proxy
    /// at it. Answers how long it was down.
    pub async fn kill9_and_restart(&self) -> anyhow::Result<Duration> {
        let mut tidings = self.tidings.lock().await;
        // Its counters die with it: read them last thing, and keep them.
        self.scrape_from(&tidings).await;
        {
            let mut c = self.counters.lock().unwrap();
            let current = std::mem::take(&mut c.1);
            for (k, v) in current {
                *c.0.entry(k).or_default() += v;
            }
        }
        tidings.kill9().await;
        let down = std::time::Instant::now();
        let data_dir = self.data.path().join("data");
        let fresh = launch(&self.exe, &data_dir, &self.config).await?;
        self.client_proxy.retarget(fresh.addr().parse()?);
        *tidings = fresh;
        Ok(down.elapsed())
    }

    /// Read the running server's counters (kept until the next read).
    pub async fn scrape(&self) {
        let tidings = self.tidings.lock().await;
        self.scrape_from(&tidings).await;
    }

    async fn scrape_from(&self, tidings: &Process) {
        let read = async {
            reqwest::Client::new()
                .get(format!("{}/metrics", tidings.http()))
                .timeout(Duration::from_secs(5))
                .send()
                .await?
                .text()
                .await
        };
        let Ok(text) = read.await else { return };
        let current: Counters = text
            .lines()
            .filter(|l| COUNTERS.iter().any(|c| l.starts_with(c)))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        self.counters.lock().unwrap().1 = current;
    }

    /// The server's counters over every incarnation, as of the last read.
    pub fn counters(&self) -> Counters {
        let c = self.counters.lock().unwrap();
        let mut all = c.0.clone();
        for (k, v) in &c.1 {
            *all.entry(k.clone()).or_default() += v;
        }
        all
    }

    /// The last lines Tidings logged (for a failure report).
    pub async fn tidings_log_tail(&self, n: usize) -> String {
        let log = self.tidings.lock().await.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An SQL session straight to Postgres (writers, faults, the final read).
    pub async fn sql(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.pg.url()).await
    }
}

/// Connect to Postgres within a few seconds.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .context("connecting to Postgres timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn launch(exe: &Path, data_dir: &Path, config: &Path) -> anyhow::Result<Process> {
    let command = Process::command(exe, data_dir, &["--config", config.to_str().unwrap()]);
    let mut process = Process::try_spawn(command)?;
    process.try_listening(LISTEN_WITHIN).await?;
    Ok(process)
}

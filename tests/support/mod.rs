//! A throwaway Postgres cluster for the connector tests, started from the system's binaries:
//! `initdb` into a temp dir, `wal_level = logical`, a free port on 127.0.0.1, its Unix socket
//! in the temp dir, SCRAM-SHA-256 for TCP logins. Postgres refuses to run as root, so as root
//! the cluster belongs to an unprivileged user (`postgres` from the Debian package, or one we
//! create) and every server binary runs through `runuser`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// Password of the test role (a SCRAM-SHA-256 login over TCP).
pub const PASSWORD: &str = "tidings-test-pw";
/// The superuser `initdb` creates; the connector logs in as it.
pub const USER: &str = "tidings";

/// A running cluster; stopped (immediately) when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    // Newest version last (directories are named by major version).
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = found.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "Postgres server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql` (scripts/test does this)"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The unprivileged user that runs Postgres when we are root.
fn server_user() -> String {
    for user in ["postgres", "tidings-pg"] {
        if Command::new("id")
            .arg("-u")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return user.to_owned();
        }
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "tidings-pg",
        ])
        .status()
        .expect("useradd runs");
    assert!(
        status.success(),
        "cannot create the user tidings-pg to run Postgres"
    );
    "tidings-pg".to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Log to the test's output (shown for failing tests); `RUST_LOG` refines it.
pub fn trace() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Cluster {
    /// initdb and start a cluster with logical replication on.
    pub fn start() -> Cluster {
        Self::start_with("")
    }

    /// Like [`Cluster::start`], with extra `postgresql.conf` lines.
    pub fn start_with(extra_conf: &str) -> Cluster {
        Self::start_inner(extra_conf, false)
    }

    /// Like [`Cluster::start`], with TLS on: a throwaway CA (`ca_pem()`) signs a certificate
    /// for `localhost`.
    pub fn start_tls() -> Cluster {
        Self::start_inner("", true)
    }

    /// The CA that signed the server's certificate (TLS clusters only).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_inner(extra_conf: &str, tls: bool) -> Cluster {
        trace();
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("tidings-pg-")
            .tempdir()
            .unwrap();
        let run_as = is_root().then(server_user);
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(user)
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some(user) = &run_as {
            Command::new("chown")
                .arg(user)
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let port = free_port();
        let c = Cluster {
            dir,
            port,
            bin,
            run_as,
        };
        c.run(
            "initdb",
            &[
                "-D",
                c.data().to_str().unwrap(),
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let conf = format!(
            "\nwal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\nlog_min_messages = warning\n{extra_conf}\n",
            c.dir.path().display()
        );
        let conf_path = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        if tls {
            c.make_certificates();
            text.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                c.dir.path().display()
            ));
        }
        std::fs::write(&conf_path, text).unwrap();
        c.pg_ctl(&["start", "-w", "-t", "60"]);
        c
    }

    fn make_certificates(&self) {
        let d = self.dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl runs (apt-get install openssl)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tidings test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Command::new("chmod")
            .args(["600", "server.key"])
            .current_dir(d)
            .status()
            .unwrap();
        if let Some(user) = &self.run_as {
            Command::new("chown")
                .args([user.as_str(), "server.key", "server.crt"])
                .current_dir(d)
                .status()
                .unwrap();
        }
    }

    /// Connection URL by host name `localhost` with the given `sslmode` (and this CA).
    pub fn tls_url(&self, sslmode: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@localhost:{}/postgres?sslmode={sslmode}&sslrootcert={}",
            self.port,
            self.ca_pem().display()
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("postgres.log");
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Restart the server (fast shutdown: sessions are terminated, as in a real restart).
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Stop the server (fast shutdown: sessions are terminated); [`Cluster::start_again`]
    /// brings it back on the same port.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
    }

    /// Start the server again after [`Cluster::stop`].
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Connection URL over TCP with SCRAM-SHA-256.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// An ordinary SQL session.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connects to the test cluster");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Apply the outbox migrations and create the slot `tidings` (as `tidings migrate` does).
    pub async fn migrate(&self) {
        let report = tidings_connector_postgres::migrate(&self.url(), Some("tidings"))
            .await
            .expect("migrations apply");
        assert!(
            matches!(
                report.slot,
                tidings_connector_postgres::SlotOutcome::Created { .. }
                    | tidings_connector_postgres::SlotOutcome::Existed { .. }
            ),
            "{report:?}"
        );
    }

    /// Apply the outbox migrations only.
    pub async fn migrate_without_slot(&self) {
        tidings_connector_postgres::migrate(&self.url(), None)
            .await
            .expect("migrations apply");
    }

    /// `confirmed_flush_lsn` of a slot, as a number.
    pub async fn confirmed_flush(&self, client: &tokio_postgres::Client, slot: &str) -> u64 {
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        row.and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|t| tidings_connector_postgres::pgoutput::parse_lsn(&t))
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- postgres log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd
            .args(["-D", data.to_str().unwrap(), "stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The `tidings` binary as a child process, its stderr lines kept for assertions.
pub struct Tidings {
    pub child: tokio::process::Child,
    pub addr: Option<String>,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Tidings {
    /// Spawn `tidings serve` with `args` (JSON logs, a free port, the test key). Waits until
    /// it listens.
    pub async fn serve(data_dir: &Path, args: &[&str]) -> Tidings {
        let mut t = Self::spawn(data_dir, args);
        let lines = t.lines.clone();
        let addr = wait_for(Duration::from_secs(20), || {
            lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "tidings listening")
                    .then(|| v["addr"].as_str().unwrap().to_owned())
            })
        })
        .await
        .unwrap_or_else(|| panic!("tidings did not start: {:?}", t.lines.lock().unwrap()));
        t.addr = Some(addr);
        t
    }

    /// Spawn without waiting.
    pub fn spawn(data_dir: &Path, args: &[&str]) -> Tidings {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--api-key",
                crate::common::KEY,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the tidings binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Tidings {
            child,
            addr: None,
            lines,
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr.as_deref().expect("listening"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub async fn kill9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait().await;
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Log lines whose JSON has this `message`.
    pub fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

impl Drop for Tidings {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.lines.lock().unwrap();
            let start = lines.len().saturating_sub(30);
            eprintln!(
                "--- tidings log (last lines) ---\n{}",
                lines[start..].join("\n")
            );
        }
    }
}

/// Poll `f` every 50 ms until it returns `Some` or `limit` passes.
pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

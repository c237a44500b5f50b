//! Pieces every scenario shares: the clock, WebSocket connects, histograms, /proc readings and
//! the report printed at the end.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tidings_protocol::ServerFrame;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket as the bench uses it.
pub type Ws = WebSocketStream<TcpStream>;

/// Marker put in every benchmark message's data, followed by the send instant in nanoseconds.
pub const STAMP: &str = "\"bench_ns\":";

static T0: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-local reference instant. Publisher and subscribers share the
/// process, so a difference of two readings is a latency.
pub fn now_ns() -> u64 {
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Start the reference clock (call once at start so later readings are small numbers).
pub fn init_clock() {
    let _ = now_ns();
}

/// Raise RLIMIT_NOFILE's soft limit as far as the hard limit allows; answers the new limit.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// Milliseconds since the Unix epoch, for unique channel names.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The given channel, or a fresh one named after the scenario (so runs never share history).
pub fn channel_or_fresh(given: &Option<String>, scenario: &str) -> String {
    given
        .clone()
        .unwrap_or_else(|| format!("bench:{scenario}-{}-{}", std::process::id(), unix_ms()))
}

/// Where and how to reach the server.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// WebSocket base URL (ws://HOST:PORT); `/v1/connect` is appended. Derived from --http when
    /// omitted.
    #[arg(long)]
    pub url: Option<String>,
    /// HTTP base URL (http://HOST:PORT).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// API key as ID:SECRET.
    #[arg(long, env = "TIDINGS_BENCH_KEY")]
    pub key: String,
}

impl Target {
    /// The WebSocket connect URL.
    pub fn ws_url(&self) -> String {
        let base = match &self.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => self
                .http
                .trim_end_matches('/')
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1),
        };
        if base.contains("/v1/connect") {
            base
        } else {
            format!("{base}/v1/connect")
        }
    }

    /// The HTTP base without a trailing slash.
    pub fn http_base(&self) -> String {
        self.http.trim_end_matches('/').to_string()
    }

    /// Host and port of the HTTP base (plain `http://` only), for hand-written requests.
    pub fn http_host_port(&self) -> Result<(String, u16)> {
        let base = self.http_base();
        let Some(rest) = base.strip_prefix("http://") else {
            bail!("SSE and long-poll subscribers need an http:// base URL, not {base}");
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        // `host:port`, `[v6]:port`, or a bare host (port 80).
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                (h, p.parse::<u16>().context("port of --http")?)
            }
            _ => (authority, 80),
        };
        Ok((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        ))
    }

    /// URL of a channel's messages resource.
    pub fn messages_url(&self, channel: &str) -> String {
        format!("{}/v1/channels/{channel}/messages", self.http_base())
    }

    /// `Bearer ID:SECRET`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }
}

/// WebSocket buffer sizes: small, because thousands of connections live in this process.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

/// Open a TCP connection with TCP_NODELAY, optionally from a given local address.
pub async fn tcp_connect(
    host: &str,
    port: u16,
    local_ip: Option<std::net::IpAddr>,
) -> Result<TcpStream> {
    let stream = match local_ip {
        None => TcpStream::connect((host, port)).await?,
        Some(ip) => {
            let addr = tokio::net::lookup_host((host, port))
                .await?
                .find(|a| a.is_ipv4() == ip.is_ipv4())
                .ok_or_else(|| anyhow!("cannot resolve {host}"))?;
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(std::net::SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Open a WebSocket to the server (one attempt), with TCP_NODELAY, optionally from a given local
/// loopback address (to spread many connections over more ephemeral ports).
pub async fn ws_connect_once(
    url: &str,
    bearer: &str,
    local_ip: Option<std::net::IpAddr>,
) -> Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_str(bearer)?);
    let host = req
        .uri()
        .host()
        .ok_or_else(|| anyhow!("no host in {url}"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let stream = tcp_connect(&host, port, local_ip).await?;
    let (ws, _resp) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config())).await?;
    Ok(ws)
}

/// Open a WebSocket, retrying with backoff (an overloaded accept queue refuses or resets), then
/// read the `connected` frame. Answers the socket and the heartbeat interval.
pub async fn ws_connect(
    url: &str,
    bearer: &str,
    local_ip: Option<std::net::IpAddr>,
    attempts: u32,
) -> Result<(Ws, Duration)> {
    let mut delay = Duration::from_millis(50);
    let mut last_err = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        let fut = async {
            let mut ws = ws_connect_once(url, bearer, local_ip).await?;
            let hb = wait_connected(&mut ws).await?;
            Ok::<_, anyhow::Error>((ws, hb))
        };
        match tokio::time::timeout(Duration::from_secs(20), fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some(anyhow!("connect timed out")),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow!("connect failed")))
}

/// Read frames until `connected`; answers the heartbeat interval it announces.
async fn wait_connected(ws: &mut Ws) -> Result<Duration> {
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("closed before `connected`"))??;
        match msg {
            Message::Text(t) => match serde_json::from_str::<ServerFrame>(t.as_str()) {
                Ok(ServerFrame::Connected { heartbeat_ms, .. }) => {
                    return Ok(Duration::from_millis(heartbeat_ms.max(1000)));
                }
                Ok(ServerFrame::Error(e)) => bail!("server error before connected: {e:?}"),
                Ok(_) => continue,
                Err(e) => bail!("unparseable first frame {:?}: {e}", t.as_str()),
            },
            Message::Close(c) => bail!("closed before `connected`: {c:?}"),
            _ => continue,
        }
    }
}

/// Send an `attach` for `channel` (with optional extra fields) and read frames until its
/// `attached`. Answers the attached frame's `serial` and `epoch`.
pub async fn attach(ws: &mut Ws, channel: &str, extra: Option<Value>) -> Result<(u64, String)> {
    let mut frame = json!({"type": "attach", "channel": channel});
    if let (Some(Value::Object(extra)), Value::Object(f)) = (extra, &mut frame) {
        f.extend(extra);
    }
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("closed before `attached`"))??;
        match msg {
            Message::Text(t) => match serde_json::from_str::<ServerFrame>(t.as_str()) {
                Ok(ServerFrame::Attached {
                    channel: c,
                    serial,
                    epoch,
                    ..
                }) if c == channel => return Ok((serial, epoch)),
                Ok(ServerFrame::Error(e)) => bail!("attach {channel} refused: {e:?}"),
                _ => continue,
            },
            Message::Close(c) => bail!("closed before `attached`: {c:?}"),
            _ => continue,
        }
    }
}

/// Application-level ping, sent periodically so the server's idle timeout never fires.
pub fn ping_frame() -> Message {
    Message::text(r#"{"type":"ping"}"#)
}

/// Find the u64 after `key` (e.g. `"serial":`) in a frame's text without parsing the JSON.
pub fn find_u64(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let bytes = text.as_bytes();
    let mut i = start;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    let mut v: u64 = 0;
    let digits_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add(u64::from(bytes[i] - b'0'))?;
        i += 1;
    }
    (i > digits_start).then_some(v)
}

/// The `data` of a benchmark message of about `size` bytes: `{"bench_ns":N,"pad":"xx.."}`.
pub fn stamped_data(size: usize) -> (String, String) {
    let pad = "x".repeat(size.saturating_sub(36));
    (format!("{{{STAMP}"), format!(",\"pad\":\"{pad}\"}}"))
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Record a latency in nanoseconds into a µs histogram (saturating at its top).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Latency figures of a µs histogram, in milliseconds, under `prefix`.
pub fn latency_figures(r: &mut Report, prefix: &str, h: &Histogram<u64>) {
    let ms = |v: u64| (v as f64) / 1000.0;
    if h.is_empty() {
        return;
    }
    r.num(
        &format!("{prefix}_p50_ms"),
        ms(h.value_at_quantile(0.50)),
        "ms",
    );
    r.num(
        &format!("{prefix}_p90_ms"),
        ms(h.value_at_quantile(0.90)),
        "ms",
    );
    r.num(
        &format!("{prefix}_p99_ms"),
        ms(h.value_at_quantile(0.99)),
        "ms",
    );
    r.num(
        &format!("{prefix}_p999_ms"),
        ms(h.value_at_quantile(0.999)),
        "ms",
    );
    r.num(&format!("{prefix}_max_ms"), ms(h.max()), "ms");
    r.num(&format!("{prefix}_mean_ms"), h.mean() / 1000.0, "ms");
}

/// A field of /proc/PID/status in KiB (e.g. `VmRSS`).
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// User + system CPU seconds a process has used so far (/proc/PID/stat, 100 ticks a second).
pub fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `) `.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The sum of a /proc/PID/status field over comma-separated pids (a peer may be several
/// processes: Node and Redis); None when any cannot be read.
pub fn pids_status_kib(pids: &str, field: &str) -> Option<u64> {
    pids.split(',')
        .map(|p| proc_status_kib(p.trim(), field))
        .sum()
}

/// The sum of CPU seconds over comma-separated pids; None when any cannot be read.
pub fn pids_cpu_secs(pids: &str) -> Option<f64> {
    pids.split(',').map(|p| proc_cpu_secs(p.trim())).sum()
}

/// CPU use of this process and, when given, the server over an interval.
pub struct CpuMeter {
    pid: Option<String>,
    start: Instant,
    self0: Option<f64>,
    server0: Option<f64>,
}

impl CpuMeter {
    pub fn start(pid: Option<&str>) -> Self {
        CpuMeter {
            pid: pid.map(str::to_string),
            start: Instant::now(),
            self0: proc_cpu_secs("self"),
            server0: pid.and_then(pids_cpu_secs),
        }
    }

    /// Add `loadgen_cpu_pct` and `server_cpu_pct` (100 = one core busy) to the report.
    pub fn finish(&self, r: &mut Report) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        if let (Some(a), Some(b)) = (self.self0, proc_cpu_secs("self")) {
            let pct = (b - a) / secs * 100.0;
            r.num("loadgen_cpu_pct", pct, "%");
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if pct > 90.0 * cores {
                eprintln!(
                    "warning: the load generator used {pct:.0}% CPU on {cores} CPUs: \
                     figures may measure it rather than the server"
                );
            }
        }
        if let (Some(pid), Some(a)) = (&self.pid, self.server0) {
            if let Some(b) = pids_cpu_secs(pid) {
                r.num("server_cpu_pct", (b - a) / secs * 100.0, "%");
            }
            if let Some(rss) = pids_status_kib(pid, "VmRSS") {
                r.int("server_rss_kib", rss, "KiB");
            }
        }
    }
}

/// Figures of one scenario run, in order, plus anything that went wrong.
pub struct Report {
    pub scenario: String,
    figures: Vec<(String, Value, &'static str)>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.to_string(),
            figures: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub fn int(&mut self, key: &str, v: u64, unit: &'static str) {
        self.figures.push((key.to_string(), json!(v), unit));
    }

    pub fn num(&mut self, key: &str, v: f64, unit: &'static str) {
        let rounded = (v * 1000.0).round() / 1000.0;
        self.figures.push((key.to_string(), json!(rounded), unit));
    }

    pub fn text(&mut self, key: &str, v: &str) {
        self.figures.push((key.to_string(), json!(v), ""));
    }

    pub fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    /// One JSON object: the figures, `scenario`, `ok` and `problems`.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(self.scenario));
        for (k, v, _) in &self.figures {
            m.insert(k.clone(), v.clone());
        }
        m.insert("ok".into(), json!(self.problems.is_empty()));
        m.insert("problems".into(), json!(self.problems));
        Value::Object(m)
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let width = self.figures.iter().map(|f| f.0.len()).max().unwrap_or(0);
        let mut s = format!("== {} ==\n", self.scenario);
        for (k, v, unit) in &self.figures {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!("  {k:<width$}  {v} {unit}\n"));
        }
        if self.problems.is_empty() {
            s.push_str("  result: ok\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("  PROBLEM: {p}\n"));
            }
        }
        s
    }

    /// Print the summary (to stderr when the JSON goes to stdout).
    pub fn print(&self, json_out: bool) {
        if json_out {
            eprint!("{}", self.human());
            println!("{}", self.to_json());
        } else {
            print!("{}", self.human());
        }
    }
}

/// A reqwest client for REST calls: keep-alive, no proxy, TCP_NODELAY.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .timeout(timeout)
        .build()
        .context("building HTTP client")
}

/// Local loopback addresses to spread connections over (127.0.0.1 .. 127.0.0.N); none for N <= 1.
pub fn source_ips(n: u8) -> Vec<std::net::IpAddr> {
    if n <= 1 {
        return Vec::new();
    }
    (1..=n)
        .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_u64_reads_numbers_after_keys() {
        let t =
            r#"{"type":"message","channel":"c","serial":42,"data":{"bench_ns":123456,"pad":"x"}}"#;
        assert_eq!(find_u64(t, "\"serial\":"), Some(42));
        assert_eq!(find_u64(t, STAMP), Some(123456));
        assert_eq!(find_u64(t, "\"nope\":"), None);
        assert_eq!(find_u64(r#"{"serial": 7}"#, "\"serial\":"), Some(7));
    }

    #[test]
    fn stamped_data_is_about_the_asked_size_and_valid_json() {
        let (head, tail) = stamped_data(100);
        let s = format!("{head}{}{tail}", 1_234_567_890_123u64);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["bench_ns"], 1_234_567_890_123u64);
        assert!((90..=110).contains(&s.len()), "{}", s.len());
    }

    #[test]
    fn ws_url_is_derived_from_http() {
        let t = Target {
            url: None,
            http: "http://127.0.0.1:9/".into(),
            key: "a:b".into(),
        };
        assert_eq!(t.ws_url(), "ws://127.0.0.1:9/v1/connect");
        assert_eq!(
            t.messages_url("bench:x"),
            "http://127.0.0.1:9/v1/channels/bench:x/messages"
        );
    }
}

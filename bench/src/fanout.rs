//! `fanout`: N subscribers on one channel (WebSocket, SSE or long-poll), one paced WebSocket
//! publisher, publish-to-receive latency and per-subscriber continuity checks.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tidings_protocol::ServerFrame;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Report, Target, STAMP};
use crate::http;
use crate::system::{self, Sub, System, SystemArgs};

/// How the subscribers receive (the publisher always uses WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `/v1/connect`, one `attach` per socket.
    Websocket,
    /// `GET /v1/sse?channel=C`, one streaming response per subscriber.
    Sse,
    /// `GET /v1/poll?channel=C&from=NEXT&wait=25s` in a loop on a keep-alive connection.
    Poll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// Arguments of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Subscribers to open, all attached to the channel.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// How the subscribers receive; the publisher always uses WebSocket.
    #[arg(long, value_enum, default_value_t = Transport::Websocket)]
    pub transport: Transport,
    /// Messages per second the publisher sends.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Approximate bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Channel to use (default: a fresh `bench:fanout-...` channel).
    #[arg(long)]
    pub channel: Option<String>,
    /// Connects (and attaches) in flight at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Give up waiting for subscribers to attach after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub connect_timeout: f64,
    /// Publishes awaiting their ack at most (the publisher waits beyond that).
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,
    /// Seconds to wait after the last ack for every subscriber to receive the last message.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Spread connections over 127.0.0.1..127.0.0.N (more ephemeral ports); 1 = don't bind.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Server process ids (comma-separated: a peer may be several processes), to report
    /// their CPU use and RSS.
    #[arg(long)]
    pub pid: Option<String>,
    /// API key (ID:SECRET) of the publisher, when it should not count against the
    /// subscribers' key (servers limit connections per key).
    #[arg(long, env = "TIDINGS_BENCH_PUBLISHER_KEY")]
    pub publisher_key: Option<String>,
}

const CONNECTING: u8 = 0;
const ATTACHED: u8 = 1;
const FAILED: u8 = 2;
const CLOSED: u8 = 3;

/// What one subscriber saw; written only by its task, read by the coordinator.
#[derive(Default)]
struct SubStats {
    state: AtomicU8,
    attach_serial: AtomicU64,
    last: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    /// Long-poll answers received, and connections reopened after a failed poll.
    polls: AtomicU64,
    reconnects: AtomicU64,
    /// `attached` with `resumed: false` after the first attach (SSE re-attach, poll answer).
    continuity_lost: AtomicU64,
}

const SHARDS: usize = 8;

struct Shared {
    target: Target,
    system: SystemArgs,
    url: String,
    bearer: String,
    transport: Transport,
    /// For SSE and long-poll: where to connect, the `Host` header, and the request headers.
    host: String,
    port: u16,
    host_header: String,
    req_headers: String,
    channel: String,
    subs: Vec<SubStats>,
    connect_sem: Semaphore,
    settled: AtomicUsize,
    hist: Vec<Mutex<Histogram<u64>>>,
    first_error: Mutex<Option<String>>,
    /// The first duplicate or out-of-order delivery, with what is known around it.
    first_anomaly: Mutex<Option<String>>,
    close_reasons: Mutex<Vec<String>>,
    source_ips: Vec<std::net::IpAddr>,
}

impl Shared {
    fn note_anomaly(&self, describe: impl FnOnce() -> String) {
        let mut g = self.first_anomaly.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(describe());
        }
    }

    fn note_error(&self, e: String) {
        let mut g = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }
}

/// Account one message's text (a WebSocket frame, an SSE event, one frame of a poll answer):
/// latency from its stamp, and continuity from its serial. Answers the serial, or None when
/// `s` is not a benchmark message (no stamp, or no serial).
fn on_message(
    sh: &Shared,
    st: &SubStats,
    h: &mut Histogram<u64>,
    last: &mut u64,
    s: &str,
    now: u64,
) -> Option<u64> {
    let sent = common::find_u64(s, STAMP)?;
    let serial = common::find_u64(s, "\"serial\":");
    account(st, h, last, sent, serial, now);
    if serial.is_none() {
        sh.note_error(format!("message without serial: {s}"));
    }
    serial
}

/// Account one message: latency from its send instant, continuity from its serial (Tidings) or
/// sequence number (peers).
fn account(
    st: &SubStats,
    h: &mut Histogram<u64>,
    last: &mut u64,
    sent: u64,
    serial: Option<u64>,
    now: u64,
) {
    common::record_ns(h, now.saturating_sub(sent));
    match serial {
        Some(n) if n > *last => {
            *last = n;
            st.last.store(n, Ordering::Release);
            st.received.fetch_add(1, Ordering::Relaxed);
        }
        Some(n) if n == *last => {
            st.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Some(_) => {
            st.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        None => {}
    }
}

/// Mark a subscriber attached (or failed) and count it as settled.
fn settle(sh: &Shared, st: &SubStats, i: usize, opened: Result<u64>) -> Option<u64> {
    let r = match opened {
        Ok(serial) => {
            st.attach_serial.store(serial, Ordering::Relaxed);
            st.last.store(serial, Ordering::Relaxed);
            st.state.store(ATTACHED, Ordering::Release);
            Some(serial)
        }
        Err(e) => {
            sh.note_error(format!("subscriber {i}: {e:#}"));
            st.state.store(FAILED, Ordering::Release);
            None
        }
    };
    sh.settled.fetch_add(1, Ordering::AcqRel);
    r
}

fn mark_closed(sh: &Shared, st: &SubStats, i: usize, reason: String) {
    st.state.store(CLOSED, Ordering::Release);
    sh.close_reasons
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("subscriber {i}: {reason}"));
}

/// Retry `f` with backoff (an overloaded accept queue refuses or resets), 20 s per attempt.
async fn with_retries<T, F, Fut>(attempts: u32, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    let mut last_err = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        match tokio::time::timeout(Duration::from_secs(20), f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some(anyhow!("timed out")),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow!("failed")))
}

async fn subscriber(i: usize, sh: Arc<Shared>) {
    let local_ip = (!sh.source_ips.is_empty()).then(|| sh.source_ips[i % sh.source_ips.len()]);
    if sh.system.system != System::Tidings {
        return peer_subscriber(i, &sh, local_ip).await;
    }
    match sh.transport {
        Transport::Websocket => ws_subscriber(i, &sh, local_ip).await,
        Transport::Sse => sse_subscriber(i, &sh, local_ip).await,
        Transport::Poll => poll_subscriber(i, &sh, local_ip).await,
    }
}

/// An error answer's status and the start of its body.
async fn http_error(conn: &mut http::Conn, status: u16) -> anyhow::Error {
    let mut b = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.body(&mut b)).await;
    b.truncate(300);
    anyhow!("HTTP {status}: {}", String::from_utf8_lossy(&b))
}

/// Open an SSE stream and read up to its `attached` event; answers the connection, what was
/// read beyond that event, and the attached serial.
async fn sse_open(
    sh: &Shared,
    local_ip: Option<std::net::IpAddr>,
) -> Result<(http::Conn, Vec<u8>, u64)> {
    let stream = common::tcp_connect(&sh.host, sh.port, local_ip).await?;
    let mut conn = http::Conn::new(stream);
    let path = format!("/v1/sse?channel={}", http::encode(&sh.channel));
    conn.get(&sh.host_header, &path, &sh.req_headers).await?;
    let head = conn.head().await?;
    if head.status != 200 {
        return Err(http_error(&mut conn, head.status).await);
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        while let Some(end) = http::find_bytes(&buf, b"\n\n", 0) {
            let ev = std::str::from_utf8(&buf[..end])?;
            if ev.contains("\"type\":\"attached\"") {
                let serial = common::find_u64(ev, "\"serial\":")
                    .ok_or_else(|| anyhow!("attached event without serial: {ev}"))?;
                buf.drain(..end + 2);
                return Ok((conn, buf, serial));
            }
            if ev.starts_with("event: error") || ev.contains("\nevent: error") {
                bail!("stream error before `attached`: {ev}");
            }
            buf.drain(..end + 2);
        }
        if !conn.body_part(&mut buf).await? {
            bail!("stream ended before `attached`");
        }
    }
}

async fn sse_subscriber(i: usize, sh: &Shared, local_ip: Option<std::net::IpAddr>) {
    let st = &sh.subs[i];
    let opened = {
        let _permit = sh.connect_sem.acquire().await;
        with_retries(8, || sse_open(sh, local_ip)).await
    };
    let (mut conn, mut buf, serial) = match opened {
        Ok((c, b, s)) => {
            settle(sh, st, i, Ok(s));
            (c, b, s)
        }
        Err(e) => {
            settle(sh, st, i, Err(e));
            return;
        }
    };
    let shard = &sh.hist[i % SHARDS];
    let mut last = serial;
    let reason = 'read: loop {
        // Whole events are `...\n\n`; a partial one stays in the buffer for the next read.
        let now = common::now_ns();
        let mut start = 0;
        {
            let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(end) = http::find_bytes(&buf, b"\n\n", start) {
                let Ok(ev) = std::str::from_utf8(&buf[start..end]) else {
                    break 'read "event is not UTF-8".to_string();
                };
                let prev = last;
                if let Some(n) = on_message(sh, st, &mut h, &mut last, ev, now) {
                    if n <= prev {
                        sh.note_anomaly(|| format!("subscriber {i}: serial {n} after {prev}"));
                    }
                } else if ev.contains("\"type\":\"attached\"") {
                    if ev.contains("\"resumed\":false") {
                        st.continuity_lost.fetch_add(1, Ordering::Relaxed);
                        sh.note_anomaly(|| format!("subscriber {i}: continuity lost: {ev}"));
                    }
                } else if ev.contains("event: error") || ev.contains("event: going_away") {
                    break 'read format!("stream ended by the server: {ev}");
                }
                start = end + 2;
            }
        }
        buf.drain(..start);
        match conn.body_part(&mut buf).await {
            Ok(true) => {}
            Ok(false) => break "stream ended".to_string(),
            Err(e) => break format!("stream error: {e:#}"),
        }
    };
    mark_closed(sh, st, i, reason);
}

/// Split a long-poll answer into its `attached` part, its messages, and `next`.
fn poll_parts(body: &str) -> Result<(&str, &str, &str)> {
    const M: &str = "\"messages\":[";
    const N: &str = "],\"next\":\"";
    let m = body
        .find(M)
        .ok_or_else(|| anyhow!("poll answer without messages: {body}"))?;
    let n = body
        .rfind(N)
        .filter(|&n| n >= m + M.len())
        .ok_or_else(|| anyhow!("poll answer without next: {body}"))?;
    let next_start = n + N.len();
    let next_len = body[next_start..]
        .find('"')
        .ok_or_else(|| anyhow!("poll answer with an unterminated next: {body}"))?;
    Ok((
        &body[..m],
        &body[m + M.len()..n],
        &body[next_start..next_start + next_len],
    ))
}

/// One long-poll request and its answer (body into `body`); answers whether the server will
/// close the connection after it.
async fn poll_once(
    sh: &Shared,
    conn: &mut http::Conn,
    from: Option<&str>,
    body: &mut Vec<u8>,
) -> Result<bool> {
    let chan = http::encode(&sh.channel);
    let path = match from {
        None => format!("/v1/poll?channel={chan}"),
        Some(f) => format!("/v1/poll?channel={chan}&from={}&wait=25s", http::encode(f)),
    };
    conn.get(&sh.host_header, &path, &sh.req_headers).await?;
    let head = conn.head().await?;
    if head.status != 200 {
        return Err(http_error(conn, head.status).await);
    }
    conn.body(body).await?;
    Ok(head.close)
}

async fn poll_connect(sh: &Shared, local_ip: Option<std::net::IpAddr>) -> Result<http::Conn> {
    Ok(http::Conn::new(
        common::tcp_connect(&sh.host, sh.port, local_ip).await?,
    ))
}

async fn poll_subscriber(i: usize, sh: &Shared, local_ip: Option<std::net::IpAddr>) {
    let st = &sh.subs[i];
    let mut body = Vec::with_capacity(16 * 1024);
    // First poll (no position): answered at once with the position to poll from.
    let opened = {
        let _permit = sh.connect_sem.acquire().await;
        with_retries(8, || async {
            let mut conn = poll_connect(sh, local_ip).await?;
            let mut body = Vec::new();
            let close = poll_once(sh, &mut conn, None, &mut body).await?;
            let text = std::str::from_utf8(&body)?;
            let (attached, _, next) = poll_parts(text)?;
            let serial = common::find_u64(attached, "\"serial\":")
                .ok_or_else(|| anyhow!("first poll without an attached serial: {text}"))?;
            Ok::<_, anyhow::Error>(((!close).then_some(conn), next.to_string(), serial))
        })
        .await
    };
    let (mut conn, mut next, serial) = match opened {
        Ok((c, n, s)) => {
            settle(sh, st, i, Ok(s));
            (c, n, s)
        }
        Err(e) => {
            settle(sh, st, i, Err(e));
            return;
        }
    };
    let shard = &sh.hist[i % SHARDS];
    let mut last = serial;
    let mut failures = 0u32;
    let reason = loop {
        if conn.is_none() {
            match poll_connect(sh, local_ip).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    failures += 1;
                    if failures >= 8 {
                        break format!("reconnect failed: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_millis(50 << failures.min(5))).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match poll_once(sh, c, Some(&next), &mut body).await {
            Ok(close) => {
                failures = 0;
                let now = common::now_ns();
                st.polls.fetch_add(1, Ordering::Relaxed);
                if close {
                    conn = None;
                }
                let Ok(text) = std::str::from_utf8(&body) else {
                    break "poll answer is not UTF-8".to_string();
                };
                let (attached, mut rest, n) = match poll_parts(text) {
                    Ok(p) => p,
                    Err(e) => break format!("{e:#}"),
                };
                if attached.contains("\"resumed\":false") {
                    st.continuity_lost.fetch_add(1, Ordering::Relaxed);
                    sh.note_anomaly(|| format!("subscriber {i}: continuity lost: {attached}"));
                }
                const SERIAL: &str = "\"serial\":";
                let prev = last;
                let mut serials = Vec::new();
                let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(k) = rest.find(SERIAL) {
                    let after = &rest[k + SERIAL.len()..];
                    let len = after.find(SERIAL).unwrap_or(after.len());
                    let frame = &rest[k..k + SERIAL.len() + len];
                    serials.extend(on_message(sh, st, &mut h, &mut last, frame, now));
                    rest = &after[len..];
                }
                drop(h);
                let mut high = prev;
                if serials.iter().any(|&n| {
                    let bad = n <= high;
                    high = high.max(n);
                    bad
                }) {
                    sh.note_anomaly(|| {
                        format!(
                            "subscriber {i}: the poll from {next} (after serial {prev}) \
                             answered serials {serials:?}, next {n}"
                        )
                    });
                }
                next.clear();
                next.push_str(n);
            }
            Err(e) => {
                // A poll cut mid-flight is repeated with the same `from` on a new connection.
                conn = None;
                failures += 1;
                st.reconnects.fetch_add(1, Ordering::Relaxed);
                if failures >= 8 {
                    break format!("poll failed 8 times in a row: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(50 << failures.min(5))).await;
            }
        }
    };
    mark_closed(sh, st, i, reason);
}

async fn ws_subscriber(i: usize, sh: &Shared, local_ip: Option<std::net::IpAddr>) {
    let st = &sh.subs[i];
    let opened = {
        let _permit = sh.connect_sem.acquire().await;
        async {
            let (mut ws, hb) = common::ws_connect(&sh.url, &sh.bearer, local_ip, 8).await?;
            let (serial, _epoch) = common::attach(&mut ws, &sh.channel, None).await?;
            Ok::<_, anyhow::Error>((ws, hb, serial))
        }
        .await
    };
    let (mut ws, hb, serial) = match opened {
        Ok((ws, hb, serial)) => {
            settle(sh, st, i, Ok(serial));
            (ws, hb, serial)
        }
        Err(e) => {
            settle(sh, st, i, Err(e));
            return;
        }
    };

    let shard = &sh.hist[i % SHARDS];
    let mut last = serial;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
    let reason = loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let s = t.as_str();
                    if !s.contains(STAMP) {
                        continue;
                    }
                    let now = common::now_ns();
                    let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
                    let prev = last;
                    if let Some(n) = on_message(sh, st, &mut h, &mut last, s, now) {
                        if n <= prev {
                            sh.note_anomaly(|| format!("subscriber {i}: serial {n} after {prev}"));
                        }
                    }
                }
                Some(Ok(Message::Close(c))) => break format!("closed by server: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("socket error: {e}"),
                None => break "socket ended".to_string(),
            },
            _ = ping.tick() => {
                if let Err(e) = ws.send(common::ping_frame()).await {
                    break format!("ping failed: {e}");
                }
            }
        }
    };
    mark_closed(sh, st, i, reason);
}

/// A subscriber of a peer system: the same continuity and latency accounting, with the
/// payload's sequence number in place of the serial (peers subscribe before the first publish,
/// so every subscriber expects every message).
async fn peer_subscriber(i: usize, sh: &Shared, local_ip: Option<std::net::IpAddr>) {
    let st = &sh.subs[i];
    let opened = {
        let _permit = sh.connect_sem.acquire().await;
        async {
            let mut sub = Sub::connect(&sh.system, &sh.target, local_ip, 8).await?;
            sub.subscribe(&[(sh.channel.clone(), None)]).await?;
            Ok::<_, anyhow::Error>(sub)
        }
        .await
    };
    let mut sub = match opened {
        Ok(sub) => {
            settle(sh, st, i, Ok(0));
            sub
        }
        Err(e) => {
            settle(sh, st, i, Err(e));
            return;
        }
    };
    let shard = &sh.hist[i % SHARDS];
    let mut last = 0;
    let mut out = Vec::new();
    let reason = loop {
        if let Err(e) = sub.next(&mut out).await {
            break format!("{e:#}");
        }
        if out.is_empty() {
            continue;
        }
        let now = common::now_ns();
        let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
        for d in out.drain(..) {
            let prev = last;
            account(st, &mut h, &mut last, d.sent_ns, Some(d.seq), now);
            if d.seq <= prev {
                sh.note_anomaly(|| format!("subscriber {i}: sequence {} after {prev}", d.seq));
            }
        }
    };
    mark_closed(sh, st, i, reason);
}

/// Acked serials, error count, first error and ack latencies, as the ack reader saw them.
type AckTally = (Vec<(u64, u64)>, u64, Option<String>, Histogram<u64>);

/// What the publisher achieved.
pub struct PublishOutcome {
    pub sent: u64,
    /// Acked serials, in the order the publishes were sent.
    pub serials: Vec<u64>,
    /// Publishes whose serial is below that of a publish sent before them.
    pub order_inversions: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub stalls: u64,
    pub send_secs: f64,
    pub ack_latency: Histogram<u64>,
}

/// Publish `rate` messages a second for `duration` seconds over one WebSocket, each stamped with
/// its send instant, and collect the acks.
pub async fn publish_paced(
    target: &Target,
    channel: &str,
    rate: f64,
    duration: f64,
    size: usize,
    max_inflight: usize,
) -> Result<PublishOutcome> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let (ws, _hb) = common::ws_connect(&target.ws_url(), &target.bearer(), None, 5).await?;
    let (mut sink, mut stream) = ws.split();
    let total = (rate * duration).round().max(1.0) as u64;
    let sem = Arc::new(Semaphore::new(max_inflight.max(1)));

    let reader_sem = sem.clone();
    let reader: JoinHandle<AckTally> = tokio::spawn(async move {
        let mut serials: Vec<(u64, u64)> = Vec::with_capacity(total as usize);
        let mut errors = 0u64;
        let mut first_error = None;
        let mut hist = common::new_histogram();
        while (serials.len() as u64) + errors < total {
            let Some(msg) = stream.next().await else {
                first_error.get_or_insert_with(|| "publisher socket ended".to_string());
                break;
            };
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(c)) => {
                    first_error.get_or_insert_with(|| format!("publisher closed: {c:?}"));
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("publisher socket: {e}"));
                    break;
                }
            };
            match serde_json::from_str::<ServerFrame>(text.as_str()) {
                Ok(ServerFrame::Ack {
                    serial, reference, ..
                }) => {
                    let sent = reference.and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                    common::record_ns(&mut hist, common::now_ns().saturating_sub(sent));
                    serials.push((sent, serial));
                    reader_sem.add_permits(1);
                }
                Ok(ServerFrame::Error(e)) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("publish error: {e:?}"));
                    reader_sem.add_permits(1);
                }
                _ => {}
            }
        }
        (serials, errors, first_error, hist)
    });

    let (head, tail) = common::stamped_data(size);
    let prefix = format!(
        "{{\"type\":\"publish\",\"channel\":{},\"name\":\"bench\",\"data\":{head}",
        serde_json::to_string(channel)?
    );
    let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
    let mut iv = tokio::time::interval(period);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut stalls = 0u64;
    let mut send_error = None;
    'outer: while sent < total {
        iv.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            match sem.clone().try_acquire_owned() {
                Ok(p) => p.forget(),
                Err(_) => {
                    stalls += 1;
                    if let Ok(p) = sem.clone().acquire_owned().await {
                        p.forget();
                    }
                }
            }
            let ns = common::now_ns();
            let frame = format!("{prefix}{ns}{tail},\"ref\":\"{ns}\"}}");
            if let Err(e) = sink.feed(Message::text(frame)).await {
                send_error = Some(format!("publisher send: {e}"));
                break 'outer;
            }
            sent += 1;
        }
        if let Err(e) = sink.flush().await {
            send_error = Some(format!("publisher flush: {e}"));
            break;
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    let (mut acks, errors, reader_error, ack_latency) =
        match tokio::time::timeout(Duration::from_secs(30), reader).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => bail!("publisher reader failed: {e}"),
            Err(_) => bail!("publisher: acks still missing 30 s after the last publish"),
        };
    let _ = sink.close().await;
    acks.sort_unstable();
    let serials: Vec<u64> = acks.iter().map(|a| a.1).collect();
    let mut order_inversions = 0;
    let mut highest = 0;
    for &s in &serials {
        if s < highest {
            order_inversions += 1;
        }
        highest = highest.max(s);
    }
    Ok(PublishOutcome {
        sent,
        serials,
        order_inversions,
        errors,
        first_error: send_error.or(reader_error),
        stalls,
        send_secs,
        ack_latency,
    })
}

/// Publish to a peer; its sequence numbers 1..=N stand in for the serials.
async fn peer_publish(a: &FanoutArgs, channel: &str) -> Result<PublishOutcome> {
    let p = system::publish_paced(
        &a.system,
        &a.target,
        None,
        &[channel.to_string()],
        |_| 0,
        a.rate,
        a.duration,
        a.size,
        None,
        None,
    )
    .await?;
    Ok(PublishOutcome {
        sent: p.sent,
        serials: (1..=p.acked.min(p.sent)).collect(),
        order_inversions: 0,
        errors: p.errors,
        first_error: p.first_error,
        stalls: 0,
        send_secs: p.send_secs,
        ack_latency: p.ack_latency,
    })
}

pub async fn run(a: &FanoutArgs) -> Result<Report> {
    let channel = common::channel_or_fresh(&a.channel, "fanout");
    let mut r = Report::new("fanout");
    r.text("system", a.system.system.name());
    if a.system.system != System::Tidings && a.transport != Transport::Websocket {
        bail!("peers are driven over WebSocket only (--transport websocket)");
    }
    r.text("channel", &channel);
    r.text("transport", a.transport.name());
    r.int("subscribers", a.subscribers as u64, "");
    r.num("rate", a.rate, "msg/s");
    r.num("duration", a.duration, "s");
    r.int("size", a.size as u64, "B");

    let (host, port) = match a.transport {
        Transport::Websocket => (String::new(), 0),
        _ => a.target.http_host_port()?,
    };
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let sh = Arc::new(Shared {
        target: a.target.clone(),
        system: a.system.clone(),
        url: a.target.ws_url(),
        bearer: a.target.bearer(),
        transport: a.transport,
        req_headers: format!("Authorization: {}\r\n", a.target.bearer()),
        host,
        port,
        host_header,
        channel: channel.clone(),
        subs: (0..a.subscribers).map(|_| SubStats::default()).collect(),
        connect_sem: Semaphore::new(a.connect_concurrency.max(1)),
        settled: AtomicUsize::new(0),
        hist: (0..SHARDS)
            .map(|_| Mutex::new(common::new_histogram()))
            .collect(),
        first_error: Mutex::new(None),
        first_anomaly: Mutex::new(None),
        close_reasons: Mutex::new(Vec::new()),
        source_ips: common::source_ips(a.source_ips),
    });

    // Ramp up.
    let t0 = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..a.subscribers)
        .map(|i| tokio::spawn(subscriber(i, sh.clone())))
        .collect();
    let deadline = t0 + Duration::from_secs_f64(a.connect_timeout);
    let mut last_print = Instant::now();
    while sh.settled.load(Ordering::Acquire) < a.subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "fanout: {}/{} subscribers settled after {:.1} s",
                sh.settled.load(Ordering::Acquire),
                a.subscribers,
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let count = |s: u8| {
        sh.subs
            .iter()
            .filter(|x| x.state.load(Ordering::Acquire) == s)
            .count() as u64
    };
    let attached = count(ATTACHED);
    let failed = count(FAILED) + count(CONNECTING);
    r.num("connect_secs", connect_secs, "s");
    r.num(
        "connects_per_s",
        attached as f64 / connect_secs.max(1e-9),
        "conn/s",
    );
    r.int("attached", attached, "");
    r.int("connect_failures", failed, "");
    if failed > 0 {
        r.problem(format!(
            "{failed} subscribers did not attach; first error: {}",
            sh.first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        ));
    }
    if attached == 0 {
        for t in &tasks {
            t.abort();
        }
        return Ok(r);
    }
    // Let the last attaches' catch-up settle before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cpu = common::CpuMeter::start(a.pid.as_deref());
    let t_pub = Instant::now();
    let mut pub_target = a.target.clone();
    if let Some(k) = &a.publisher_key {
        pub_target.key = k.clone();
    }
    let published = if a.system.system == System::Tidings {
        publish_paced(
            &pub_target,
            &channel,
            a.rate,
            a.duration,
            a.size,
            a.max_inflight,
        )
        .await
    } else {
        peer_publish(a, &channel).await
    };
    let outcome = match published {
        Ok(o) => o,
        Err(e) => {
            for t in &tasks {
                t.abort();
            }
            r.problem(format!("publisher failed: {e:#}"));
            return Ok(r);
        }
    };
    let acked = outcome.serials.len() as u64;
    let final_serial = outcome.serials.iter().copied().max().unwrap_or(0);
    let mut sorted = outcome.serials.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let ack_dups = acked - sorted.len() as u64;

    // Drain: wait until every live subscriber has the last acked serial.
    let t_drain = Instant::now();
    let drain_deadline = t_drain + Duration::from_secs_f64(a.drain_timeout);
    loop {
        let pending = sh
            .subs
            .iter()
            .filter(|s| {
                s.state.load(Ordering::Acquire) == ATTACHED
                    && s.last.load(Ordering::Acquire) < final_serial
            })
            .count();
        if pending == 0 || Instant::now() >= drain_deadline {
            if pending > 0 {
                r.problem(format!(
                    "{pending} subscribers still lacked serial {final_serial} after {:.0} s of drain",
                    a.drain_timeout
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_secs = t_drain.elapsed().as_secs_f64();
    let window = t_pub.elapsed().as_secs_f64();
    cpu.finish(&mut r);
    for t in &tasks {
        t.abort();
    }

    // Continuity per subscriber.
    let mut delivered = 0u64;
    let mut missing = 0u64;
    let mut unexpected = 0u64;
    let mut dups = 0u64;
    let mut ooo = 0u64;
    let mut incomplete_subs = 0u64;
    for s in &sh.subs {
        let state = s.state.load(Ordering::Acquire);
        if state != ATTACHED && state != CLOSED {
            continue;
        }
        let att = s.attach_serial.load(Ordering::Relaxed);
        let expected = sorted.iter().filter(|&&x| x > att).count() as u64;
        let got = s.received.load(Ordering::Relaxed);
        delivered += got;
        if got < expected {
            missing += expected - got;
            incomplete_subs += 1;
        } else {
            unexpected += got - expected;
        }
        dups += s.duplicates.load(Ordering::Relaxed);
        ooo += s.out_of_order.load(Ordering::Relaxed);
    }
    let mut hist = common::new_histogram();
    for h in &sh.hist {
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        hist.add(&*h).ok();
    }
    let closed = count(CLOSED);

    r.int("published", outcome.sent, "msg");
    r.int("acked", acked, "msg");
    r.num(
        "publish_rate_achieved",
        outcome.sent as f64 / outcome.send_secs.max(1e-9),
        "msg/s",
    );
    r.int("publish_stalls", outcome.stalls, "");
    r.int("publish_errors", outcome.errors, "");
    r.int("publish_order_inversions", outcome.order_inversions, "");
    r.int("delivered", delivered, "msg");
    r.int("expected_deliveries", acked * attached, "msg");
    r.num(
        "delivered_per_s",
        delivered as f64 / window.max(1e-9),
        "msg/s",
    );
    r.num("drain_secs", drain_secs, "s");
    common::latency_figures(&mut r, "latency", &hist);
    common::latency_figures(&mut r, "ack_latency", &outcome.ack_latency);
    r.int("missing", missing, "msg");
    r.int("subscribers_incomplete", incomplete_subs, "");
    r.int("duplicates", dups, "msg");
    r.int("out_of_order", ooo, "msg");
    r.int("unexpected", unexpected, "msg");
    r.int("disconnected", closed, "");
    let lost: u64 = sh
        .subs
        .iter()
        .map(|s| s.continuity_lost.load(Ordering::Relaxed))
        .sum();
    r.int("continuity_lost", lost, "");
    if a.transport == Transport::Poll {
        let polls: u64 = sh
            .subs
            .iter()
            .map(|s| s.polls.load(Ordering::Relaxed))
            .sum();
        let reconnects: u64 = sh
            .subs
            .iter()
            .map(|s| s.reconnects.load(Ordering::Relaxed))
            .sum();
        r.int("polls", polls, "");
        r.num("polls_per_s", polls as f64 / window.max(1e-9), "req/s");
        r.num(
            "messages_per_poll",
            delivered as f64 / (polls.max(1) as f64),
            "msg",
        );
        r.int("poll_reconnects", reconnects, "");
    }

    if let Some(e) = &outcome.first_error {
        r.problem(e.clone());
    }
    if outcome.errors > 0 {
        r.problem(format!(
            "{} publishes answered with an error",
            outcome.errors
        ));
    }
    if acked + outcome.errors < outcome.sent {
        r.problem(format!(
            "{} publishes never answered",
            outcome.sent - acked - outcome.errors
        ));
    }
    if ack_dups > 0 {
        r.problem(format!(
            "{ack_dups} acks repeated a serial of another publish"
        ));
    }
    if missing > 0 {
        r.problem(format!(
            "{missing} messages missing across {incomplete_subs} subscribers"
        ));
    }
    if dups > 0 {
        r.problem(format!("{dups} duplicate deliveries"));
    }
    if ooo > 0 {
        r.problem(format!("{ooo} out-of-order deliveries"));
    }
    if lost > 0 {
        r.problem(format!("{lost} re-attaches said resumed: false"));
    }
    if let Some(a) = sh
        .first_anomaly
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        r.problem(format!("first anomaly: {a}"));
    }
    if closed > 0 {
        let reasons = sh.close_reasons.lock().unwrap_or_else(|p| p.into_inner());
        r.problem(format!(
            "{closed} subscribers were disconnected, e.g. {}",
            reasons.first().cloned().unwrap_or_default()
        ));
    }
    Ok(r)
}

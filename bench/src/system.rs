//! The systems under test and one client for each, so every scenario drives Tidings and its
//! peers through the same code: connect, subscribe to channels, read deliveries, publish.
//!
//! - `tidings`: the Tidings WebSocket protocol (`attach`, `message`, `publish`/`ack`).
//! - `node-redis`: the peer in `bench/peers/node-redis` (a `ws` server fanning out Redis pub/sub):
//!   subscribers send `{"subscribe":"C"}` and wait for `{"subscribed":"C"}`; every message is
//!   the published text as is. The publisher sends `PUBLISH` to Redis over RESP.
//! - `nats`: `nats-server` with its WebSocket listener; subscribers speak the NATS text protocol
//!   over WebSocket (`CONNECT`, `SUB`, `PING`/`PONG`, `MSG`); the publisher uses plain NATS TCP.
//!
//! Every message carries the same payload on every system,
//! `{"bench_ns":SENT,"seq":K,"ch":C,"pad":"xx.."}`: the send instant, a per-channel sequence
//! number starting at 1 (continuity for systems without serials) and the index of the channel
//! in the scenario's list.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tidings_protocol::ServerFrame;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Target, Ws, STAMP};

/// Which server the scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// The Tidings server (`--http`/`--url`, `--key`).
    Tidings,
    /// `ws` + `ioredis` + `redis-server` (`--peer-url` for the WebSocket server,
    /// `--peer-publish` for Redis).
    NodeRedis,
    /// `nats-server` (`--peer-url` for its WebSocket listener, `--peer-publish` for its
    /// client port).
    Nats,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Tidings => "tidings",
            System::NodeRedis => "node-redis",
            System::Nats => "nats",
        }
    }
}

/// Which system, and where a peer listens.
#[derive(Debug, Clone, clap::Args)]
pub struct SystemArgs {
    /// The server to drive.
    #[arg(long, value_enum, default_value_t = System::Tidings)]
    pub system: System,
    /// A peer's WebSocket URL (ws://HOST:PORT) for subscribers.
    #[arg(long)]
    pub peer_url: Option<String>,
    /// A peer's publish address (HOST:PORT of Redis for node-redis, of the NATS client port
    /// for nats).
    #[arg(long)]
    pub peer_publish: Option<String>,
}

impl SystemArgs {
    fn peer_url(&self) -> Result<&str> {
        self.peer_url
            .as_deref()
            .ok_or_else(|| anyhow!("--system {} needs --peer-url", self.system.name()))
    }

    fn peer_publish(&self) -> Result<&str> {
        self.peer_publish
            .as_deref()
            .ok_or_else(|| anyhow!("--system {} needs --peer-publish", self.system.name()))
    }
}

/// The benchmark payload of about `size` bytes: `{"bench_ns":N,"seq":K,"ch":C,"pad":"x.."}`.
pub fn payload(sent_ns: u64, seq: u64, ch: usize, size: usize) -> String {
    let mut s = format!("{{{STAMP}{sent_ns},\"seq\":{seq},\"ch\":{ch},\"pad\":\"");
    let pad = size.saturating_sub(s.len() + 2).max(1);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// One benchmark message as a subscriber received it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub sent_ns: u64,
    pub seq: u64,
    pub ch: u64,
    /// The Tidings serial (None on peers).
    pub serial: Option<u64>,
}

fn delivery(text: &str) -> Option<Delivery> {
    Some(Delivery {
        sent_ns: common::find_u64(text, STAMP)?,
        seq: common::find_u64(text, "\"seq\":")?,
        ch: common::find_u64(text, "\"ch\":").unwrap_or(0),
        serial: common::find_u64(text, "\"serial\":"),
    })
}

/// A subscription confirmed by the server.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub channel: String,
    /// Tidings: the attached serial and epoch, and whether it resumed; peers: 0, "", true.
    pub serial: u64,
    pub epoch: String,
    pub resumed: bool,
}

/// A subscriber connection to any system.
pub struct Sub {
    ws: Ws,
    system: System,
    /// NATS: protocol bytes not parsed yet (operations may span WebSocket frames).
    buf: Vec<u8>,
    /// Deliveries read while waiting for something else.
    pending: VecDeque<Delivery>,
    pongs: u64,
    /// Tidings: send an application ping this often (the server's idle timeout).
    pub heartbeat: Option<Duration>,
}

/// Open a WebSocket without credentials (peers), with TCP_NODELAY.
async fn ws_plain(url: &str, local_ip: Option<std::net::IpAddr>) -> Result<Ws> {
    let req = url.into_client_request()?;
    let host = req
        .uri()
        .host()
        .ok_or_else(|| anyhow!("no host in {url}"))?
        .to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let stream = common::tcp_connect(&host, port, local_ip).await?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(common::ws_config())).await?;
    Ok(ws)
}

enum Event {
    Delivery(Delivery),
    Subscribed(Subscribed),
    Pong,
}

impl Sub {
    /// Connect (one attempt); for Tidings, up to the `connected` frame, for NATS up to `INFO`
    /// and our `CONNECT`.
    pub async fn connect_once(
        sys: &SystemArgs,
        target: &Target,
        local_ip: Option<std::net::IpAddr>,
    ) -> Result<Sub> {
        let (ws, heartbeat) = match sys.system {
            System::Tidings => {
                let (ws, hb) =
                    common::ws_connect(&target.ws_url(), &target.bearer(), local_ip, 1).await?;
                (ws, Some(hb))
            }
            System::NodeRedis | System::Nats => (ws_plain(sys.peer_url()?, local_ip).await?, None),
        };
        let mut sub = Sub {
            ws,
            system: sys.system,
            buf: Vec::new(),
            pending: VecDeque::new(),
            pongs: 0,
            heartbeat,
        };
        if sys.system == System::Nats {
            // The server speaks first (INFO); CONNECT without verbose acks, no echo.
            let connect = r#"CONNECT {"verbose":false,"pedantic":false,"echo":false,"protocol":1,"lang":"rust","version":"bench","name":"tidings-bench"}"#;
            sub.ws.send(Message::text(format!("{connect}\r\n"))).await?;
        }
        Ok(sub)
    }

    /// Connect, retrying with backoff (an overloaded accept queue refuses or resets).
    pub async fn connect(
        sys: &SystemArgs,
        target: &Target,
        local_ip: Option<std::net::IpAddr>,
        attempts: u32,
    ) -> Result<Sub> {
        let mut delay = Duration::from_millis(50);
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            match tokio::time::timeout(
                Duration::from_secs(20),
                Sub::connect_once(sys, target, local_ip),
            )
            .await
            {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow!("connect timed out")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("connect failed")))
    }

    /// Subscribe to channels (Tidings: attach, resuming from `(epoch, serial)` when given) and
    /// wait until the server confirmed every one. Deliveries read meanwhile are kept for
    /// [`Sub::next`].
    pub async fn subscribe(
        &mut self,
        channels: &[(String, Option<(String, u64)>)],
    ) -> Result<Vec<Subscribed>> {
        match self.system {
            System::Tidings => {
                for (ch, from) in channels {
                    let mut f = json!({"type": "attach", "channel": ch});
                    if let Some((epoch, serial)) = from {
                        f["from"] = json!({"epoch": epoch, "serial": serial});
                    }
                    self.ws.feed(Message::text(f.to_string())).await?;
                }
            }
            System::NodeRedis => {
                for (ch, _) in channels {
                    self.ws
                        .feed(Message::text(json!({ "subscribe": ch }).to_string()))
                        .await?;
                }
            }
            System::Nats => {
                let mut ops = String::new();
                for (i, (ch, _)) in channels.iter().enumerate() {
                    ops.push_str(&format!("SUB {ch} {}\r\n", i + 1));
                }
                // The PONG to this PING comes after the server has registered the SUBs.
                ops.push_str("PING\r\n");
                self.ws.feed(Message::text(ops)).await?;
            }
        }
        self.ws.flush().await?;
        let mut confirmed: Vec<Subscribed> = Vec::new();
        let pongs_before = self.pongs;
        let mut events = Vec::new();
        loop {
            let done = match self.system {
                System::Nats => self.pongs > pongs_before,
                _ => confirmed.len() >= channels.len(),
            };
            if done {
                break;
            }
            self.read_events(&mut events).await?;
            for ev in events.drain(..) {
                match ev {
                    Event::Delivery(d) => self.pending.push_back(d),
                    Event::Subscribed(s) if channels.iter().any(|c| c.0 == s.channel) => {
                        confirmed.push(s)
                    }
                    Event::Subscribed(_) => {}
                    Event::Pong => self.pongs += 1,
                }
            }
        }
        if self.system == System::Nats {
            confirmed = channels
                .iter()
                .map(|(ch, _)| Subscribed {
                    channel: ch.clone(),
                    serial: 0,
                    epoch: String::new(),
                    resumed: true,
                })
                .collect();
        }
        Ok(confirmed)
    }

    /// Append the next deliveries (at least one frame's worth, possibly none) to `out`.
    /// Errors when the connection ends.
    pub async fn next(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        if !self.pending.is_empty() {
            out.extend(self.pending.drain(..));
            return Ok(());
        }
        let mut events = Vec::new();
        self.read_events(&mut events).await?;
        for ev in events {
            match ev {
                Event::Delivery(d) => out.push(d),
                Event::Pong => self.pongs += 1,
                Event::Subscribed(_) => {}
            }
        }
        Ok(())
    }

    /// Keep the connection alive (Tidings: application ping; peers need nothing).
    pub async fn ping(&mut self) -> Result<()> {
        if self.system == System::Tidings {
            self.ws.send(common::ping_frame()).await?;
        }
        Ok(())
    }

    /// Read one WebSocket frame and turn it into events.
    async fn read_events(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let msg = self
            .ws
            .next()
            .await
            .ok_or_else(|| anyhow!("connection ended"))??;
        let bytes: &[u8] = match &msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            Message::Close(c) => bail!("closed by the server: {c:?}"),
            _ => return Ok(()),
        };
        match self.system {
            System::Tidings => {
                let text = std::str::from_utf8(bytes)?;
                if let Some(d) = delivery(text) {
                    out.push(Event::Delivery(d));
                    return Ok(());
                }
                match serde_json::from_str::<ServerFrame>(text) {
                    Ok(ServerFrame::Attached {
                        channel,
                        epoch,
                        serial,
                        resumed,
                        ..
                    }) => out.push(Event::Subscribed(Subscribed {
                        channel,
                        serial,
                        epoch,
                        resumed,
                    })),
                    Ok(ServerFrame::Error(e)) => bail!("server error: {e:?}"),
                    _ => {}
                }
            }
            System::NodeRedis => {
                let text = std::str::from_utf8(bytes)?;
                if let Some(d) = delivery(text) {
                    out.push(Event::Delivery(d));
                    return Ok(());
                }
                let v: Value = serde_json::from_str(text)
                    .with_context(|| format!("unexpected frame {text:?}"))?;
                if let Some(ch) = v.get("subscribed").and_then(Value::as_str) {
                    out.push(Event::Subscribed(Subscribed {
                        channel: ch.to_string(),
                        serial: 0,
                        epoch: String::new(),
                        resumed: true,
                    }));
                } else if let Some(e) = v.get("error") {
                    bail!("server error: {e}");
                }
            }
            System::Nats => {
                self.buf.extend_from_slice(bytes);
                let mut reply = String::new();
                let used = parse_nats(&self.buf, out, &mut reply)?;
                self.buf.drain(..used);
                if !reply.is_empty() {
                    self.ws.send(Message::text(reply)).await?;
                }
            }
        }
        Ok(())
    }
}

/// Parse whole NATS protocol operations from `buf`; answers how many bytes were used. Server
/// PINGs are answered by appending PONGs to `reply`.
fn parse_nats(buf: &[u8], out: &mut Vec<Event>, reply: &mut String) -> Result<usize> {
    let mut pos = 0;
    while let Some(eol) = crate::http::find_bytes(buf, b"\r\n", pos) {
        let line = std::str::from_utf8(&buf[pos..eol])?;
        if let Some(rest) = line.strip_prefix("MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len: usize = rest
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("bad MSG line {line:?}"))?;
            let start = eol + 2;
            if buf.len() < start + len + 2 {
                break; // the payload has not fully arrived yet
            }
            let body = std::str::from_utf8(&buf[start..start + len])?;
            if let Some(d) = delivery(body) {
                out.push(Event::Delivery(d));
            }
            pos = start + len + 2;
            continue;
        }
        if line == "PING" {
            reply.push_str("PONG\r\n");
        } else if line == "PONG" {
            out.push(Event::Pong);
        } else if let Some(e) = line.strip_prefix("-ERR") {
            bail!("nats error:{e}");
        }
        // INFO and +OK need nothing.
        pos = eol + 2;
    }
    Ok(pos)
}

/// What a paced publisher achieved.
pub struct Published {
    pub sent: u64,
    /// Messages sent per channel index.
    pub per_channel: Vec<u64>,
    /// Publishes the system confirmed (Tidings: acks; Redis: replies; NATS: all, once the final
    /// PING was answered).
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub send_secs: f64,
    /// Publish-to-ack latency (Tidings only: Redis answers are counted, not timed; NATS does
    /// not answer).
    pub ack_latency: Histogram<u64>,
}

enum Writer {
    Ws(futures_util::stream::SplitSink<Ws, Message>),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
}

/// Replies the reader task counted.
struct Tally {
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

/// Publish `rate` messages a second for `duration` seconds; message `k` (from 0) goes to
/// channel `route(k)`. `progress[c]` holds the last sequence number sent on channel `c`, for
/// scenarios that watch the publisher; publishing ends early once `stop` is set. Tidings publishes over a WebSocket with `publisher_key`
/// (or the target's key); node-redis with Redis `PUBLISH`; NATS with `PUB` over TCP.
#[allow(clippy::too_many_arguments)]
pub async fn publish_paced(
    sys: &SystemArgs,
    target: &Target,
    publisher_key: Option<&str>,
    channels: &[String],
    route: impl Fn(u64) -> usize,
    rate: f64,
    duration: f64,
    size: usize,
    progress: Option<&[AtomicU64]>,
    stop: Option<&AtomicBool>,
) -> Result<Published> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let total = (rate * duration).round().max(1.0) as u64;
    // Publishes answered (acked or refused) so far, to bound those in flight.
    let acked = Arc::new(AtomicU64::new(0));
    let (mut writer, reader): (Writer, JoinHandle<Tally>) = match sys.system {
        System::Tidings => {
            let mut t = target.clone();
            if let Some(k) = publisher_key {
                t.key = k.to_string();
            }
            let (ws, _) = common::ws_connect(&t.ws_url(), &t.bearer(), None, 5).await?;
            let (sink, mut stream) = ws.split();
            let acked = acked.clone();
            let reader = tokio::spawn(async move {
                let mut t = Tally {
                    acked: 0,
                    errors: 0,
                    first_error: None,
                    hist: common::new_histogram(),
                };
                while let Some(msg) = stream.next().await {
                    let text = match msg {
                        Ok(Message::Text(x)) => x,
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => continue,
                    };
                    match serde_json::from_str::<ServerFrame>(text.as_str()) {
                        Ok(ServerFrame::Ack { reference, .. }) => {
                            let sent = reference.and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                            common::record_ns(&mut t.hist, common::now_ns().saturating_sub(sent));
                            t.acked += 1;
                            acked.fetch_add(1, Ordering::Release);
                        }
                        Ok(ServerFrame::Error(e)) => {
                            t.errors += 1;
                            t.first_error.get_or_insert_with(|| format!("{e:?}"));
                            acked.fetch_add(1, Ordering::Release);
                        }
                        _ => {}
                    }
                }
                t
            });
            (Writer::Ws(sink), reader)
        }
        System::NodeRedis | System::Nats => {
            let addr = sys.peer_publish()?;
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r);
            if sys.system == System::Nats {
                let mut info = String::new();
                lines.read_line(&mut info).await?;
                if !info.starts_with("INFO") {
                    bail!("nats: expected INFO, got {info:?}");
                }
                w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"tidings-bench-publisher\"}\r\n").await?;
            }
            let acked = acked.clone();
            let is_nats = sys.system == System::Nats;
            let reader = tokio::spawn(async move {
                let mut t = Tally {
                    acked: 0,
                    errors: 0,
                    first_error: None,
                    hist: common::new_histogram(),
                };
                let mut line = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if line.starts_with(':') || (is_nats && line.starts_with("PONG")) {
                        // Redis: one integer reply per PUBLISH. NATS: the final PONG.
                        t.acked += 1;
                        acked.fetch_add(1, Ordering::Release);
                    } else if line.starts_with('-') {
                        t.errors += 1;
                        t.first_error.get_or_insert_with(|| line.trim().to_string());
                        acked.fetch_add(1, Ordering::Release);
                    }
                }
                t
            });
            (Writer::Tcp(w), reader)
        }
    };

    let mut per_channel = vec![0u64; channels.len()];
    let names: Vec<String> = match sys.system {
        System::Tidings => channels
            .iter()
            .map(|c| serde_json::to_string(c).unwrap_or_default())
            .collect(),
        _ => channels.to_vec(),
    };
    let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
    let mut iv = tokio::time::interval(period);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut send_error = None;
    let mut batch = String::new();
    let max_inflight = 1000;
    'outer: while sent < total {
        iv.tick().await;
        if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            break;
        }
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            // NATS never answers a PUB: only TCP back-pressure paces it.
            while sys.system != System::Nats
                && sent.saturating_sub(acked.load(Ordering::Acquire)) >= max_inflight
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let c = route(sent);
            per_channel[c] += 1;
            let seq = per_channel[c];
            let ns = common::now_ns();
            let body = payload(ns, seq, c, size);
            let name = &names[c];
            match &mut writer {
                Writer::Ws(sink) => {
                    let frame = format!(
                        "{{\"type\":\"publish\",\"channel\":{name},\"name\":\"bench\",\"data\":{body},\"ref\":\"{ns}\"}}"
                    );
                    if let Err(e) = sink.feed(Message::text(frame)).await {
                        send_error = Some(format!("publisher send: {e}"));
                        break 'outer;
                    }
                }
                Writer::Tcp(_) if sys.system == System::NodeRedis => {
                    batch.push_str(&format!(
                        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{name}\r\n${}\r\n{body}\r\n",
                        name.len(),
                        body.len()
                    ));
                }
                Writer::Tcp(_) => {
                    batch.push_str(&format!("PUB {name} {}\r\n{body}\r\n", body.len()));
                }
            }
            sent += 1;
            if let Some(p) = progress {
                p[c].store(seq, Ordering::Release);
            }
        }
        let flushed = match &mut writer {
            Writer::Ws(sink) => sink.flush().await.map_err(anyhow::Error::from),
            Writer::Tcp(w) => {
                let r = w.write_all(batch.as_bytes()).await;
                batch.clear();
                r.map_err(anyhow::Error::from)
            }
        };
        if let Err(e) = flushed {
            send_error = Some(format!("publisher flush: {e:#}"));
            break;
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Wait for the answers: NATS answers the PING after it has processed every PUB before it.
    let wanted = match &mut writer {
        Writer::Tcp(w) if sys.system == System::Nats => {
            w.write_all(b"PING\r\n").await?;
            1
        }
        _ => sent,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Acquire) < wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answered = acked.load(Ordering::Acquire);
    match writer {
        Writer::Ws(mut sink) => {
            let _ = sink.close().await;
        }
        Writer::Tcp(mut w) => {
            let _ = w.shutdown().await;
        }
    }
    let tally = match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(t)) => t,
        _ => Tally {
            acked: answered,
            errors: 0,
            first_error: Some("publisher reader did not finish".into()),
            hist: common::new_histogram(),
        },
    };
    let acked = if sys.system == System::Nats {
        if tally.acked > 0 || answered > 0 {
            sent
        } else {
            0
        }
    } else {
        tally.acked
    };
    let mut first_error = send_error.or(tally.first_error);
    if answered < wanted {
        first_error
            .get_or_insert_with(|| format!("publisher: {answered} of {wanted} answers after 30 s"));
    }
    Ok(Published {
        sent,
        per_channel,
        acked,
        errors: tally.errors,
        first_error,
        send_secs,
        ack_latency: tally.hist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_json_of_about_the_size_and_parses_back() {
        let p = payload(123_456_789, 42, 7, 100);
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["seq"], 42);
        assert_eq!(v["ch"], 7);
        assert!((98..=102).contains(&p.len()), "{}", p.len());
        let d = delivery(&p).unwrap();
        assert_eq!(
            (d.sent_ns, d.seq, d.ch, d.serial),
            (123_456_789, 42, 7, None)
        );
    }

    #[test]
    fn nats_operations_split_across_frames_are_parsed_once_whole() {
        let p = payload(5, 1, 0, 100);
        let all = format!(
            "INFO {{}}\r\nPING\r\nMSG a 1 {}\r\n{p}\r\nPONG\r\n",
            p.len()
        );
        let (first, second) = all.as_bytes().split_at(40);
        let mut out = Vec::new();
        let mut reply = String::new();
        let used = parse_nats(first, &mut out, &mut reply).unwrap();
        assert!(out.is_empty());
        assert_eq!(reply, "PONG\r\n");
        let mut rest = first[used..].to_vec();
        rest.extend_from_slice(second);
        let used2 = parse_nats(&rest, &mut out, &mut reply).unwrap();
        assert_eq!(used2, rest.len());
        assert!(matches!(out[0], Event::Delivery(d) if d.seq == 1));
        assert!(matches!(out[1], Event::Pong));
    }
}

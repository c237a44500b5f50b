//! Helpers shared by the end-to-end tests: a real server on port 0 (in-process or as the real
//! binary), a real WebSocket client and a real HTTP client.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidings::config::Config;
use tidings::runtime::Server;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = "test:test-secret-1";

/// How long any single expectation may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// `GET url` with the test key: the JSON answer.
pub async fn get_json(url: &str) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A channel's current epoch, as REST history reports it.
pub async fn channel_epoch(base: &str, channel: &str) -> String {
    let page = get_json(&format!(
        "{base}/v1/channels/{channel}/messages?after=0&limit=1"
    ))
    .await;
    page["epoch"]
        .as_str()
        .expect("history names its epoch")
        .to_owned()
}

/// Connector `name`'s entry in `GET /v1/connectors` (with the test key).
pub async fn connector_status(base: &str, name: &str) -> Value {
    let status = get_json(&format!("{base}/v1/connectors")).await;
    status["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for connector {name}: {status}"))
}

/// A server running in this process on a temporary data directory.
pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.add_api_key(KEY).unwrap();
        adjust(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            server,
            dir,
            config,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.server.addr())
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.server.addr())
    }
}

/// A WebSocket client speaking the protocol as raw JSON frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read ahead while waiting for an ack; `recv` returns them first.
    stash: std::collections::VecDeque<Value>,
}

impl Client {
    /// Connect with an API key; waits for the `connected` frame.
    pub async fn connect(url: &str, key: Option<&str>) -> Client {
        Self::try_connect(url, key)
            .await
            .expect("websocket connects")
    }

    pub async fn try_connect(
        url: &str,
        key: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().unwrap();
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut c = Client {
            ws,
            stash: Default::default(),
        };
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        Ok(c)
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Send, returning the error instead of failing: for frames the server may refuse by closing
    /// the connection while they are still being written.
    pub async fn try_send(
        &mut self,
        frame: Value,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(frame.to_string().into())).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Next frame that is not a heartbeat.
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }

    /// Next frame, heartbeats included.
    pub async fn recv_any(&mut self) -> Value {
        if let Some(v) = self.stash.pop_front() {
            return v;
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("the connection is open")
                .expect("a valid websocket message");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Read until the connection closes; returns the frames seen and the close code (None if
    /// the socket ended without a close frame).
    pub async fn drain_until_closed(&mut self) -> (Vec<Value>, Option<CloseCode>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("connection did not close within the wait"),
                Ok(None) | Ok(Some(Err(_))) => return (frames, None),
                Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Close(c)))) => return (frames, c.map(|c| c.code)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Attach and return the `attached` frame.
    pub async fn attach(&mut self, channel: &str, extra: Value) -> Value {
        let mut frame = json!({"type": "attach", "channel": channel});
        if let Value::Object(extra) = extra {
            frame.as_object_mut().unwrap().extend(extra);
        }
        self.send(frame).await;
        let v = self.recv().await;
        assert_eq!(v["type"], "attached", "{v}");
        v
    }

    /// Receive `n` message frames (failing on any other frame).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv().await;
            assert_eq!(v["type"], "message", "expected a message, got {v}");
            out.push(v);
        }
        out
    }

    /// Publish over the socket and wait for the ack. Messages that arrive first (the client
    /// may be attached to the channel it publishes on) are kept for later `recv`s.
    pub async fn publish(&mut self, channel: &str, data: Value) -> u64 {
        self.send(json!({"type": "publish", "channel": channel, "data": data, "ref": "p"}))
            .await;
        let mut ahead = Vec::new();
        let ack = loop {
            let v = self.recv().await;
            match v["type"].as_str() {
                Some("ack") => break v,
                Some("message") => ahead.push(v),
                _ => panic!("expected an ack, got {v}"),
            }
        };
        self.stash.extend(ahead);
        ack["serial"].as_u64().unwrap()
    }
}

/// REST publish with the test key; returns the serials.
pub async fn publish(http: &reqwest::Client, base: &str, channel: &str, body: Value) -> Vec<u64> {
    let resp = http
        .post(format!("{base}/v1/channels/{channel}/messages"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let v: Value = resp.json().await.unwrap();
    v["serials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect()
}

/// Every message of a channel through REST history, following `next`.
pub async fn history(http: &reqwest::Client, base: &str, channel: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let v: Value = http
            .get(format!(
                "{base}/v1/channels/{channel}/messages?after={after}&limit=1000"
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        items.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next"].as_u64() {
            Some(n) => after = n,
            None => return items,
        }
    }
}

pub fn serials(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["serial"].as_u64().unwrap())
        .collect()
}

/// The `tidings` binary running as a child process.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: String,
}

impl Process {
    /// Start `tidings serve` on a free port with `data_dir`; waits until it listens.
    pub async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Process {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
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
            .args(extra);
        Self::spawn(command).await
    }

    /// Spawn a prepared `tidings serve` command (with `--log-format json`); waits until it listens.
    pub async fn spawn(mut command: tokio::process::Command) -> Process {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the tidings binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "tidings listening" {
                        return v["addr"].as_str().unwrap().to_owned();
                    }
                }
            }
            panic!("tidings exited before listening");
        })
        .await
        .expect("tidings listens within the wait");
        // Keep draining stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process { child, addr }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }
}

/// Read a counter or gauge from `/metrics` (0 when absent).
pub async fn metric(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A TCP proxy in front of the server that can cut every open connection at once, the way a
/// phone losing its network or a load balancer's idle timeout does.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.changed() => {} // both sockets drop here: the connection is cut
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    /// Cut every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A minimal EventSource: reads events from a streaming response.
pub struct SseClient {
    response: reqwest::Response,
    buf: String,
}

impl SseClient {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(url).bearer_auth(KEY);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Self::from_request(req, url).await
    }

    /// Open without an Authorization header (credentials in the URL, as browsers do).
    pub async fn open_anonymous(url: &str) -> SseClient {
        Self::from_request(reqwest::Client::new().get(url), url).await
    }

    async fn from_request(req: reqwest::RequestBuilder, url: &str) -> SseClient {
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            response,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped); None when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if data.is_empty() && ev.event.is_empty() {
                    continue; // a comment (keep-alive)
                }
                ev.data = data.join("\n");
                if ev.event.is_empty() {
                    ev.event = "message".into();
                }
                return Some(ev);
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event within the wait");
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next `n` message events.
    pub async fn messages(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = self.next().await.expect("the stream is open");
            assert_eq!(ev.event, "message", "{ev:?}");
            out.push(ev);
        }
        out
    }
}

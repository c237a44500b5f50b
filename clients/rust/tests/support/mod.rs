//! What the client's end-to-end tests share: the real server in-process on port 0, a TCP proxy
//! that drops, freezes or refuses connections, and REST helpers that bypass the client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings::config::Config;
use tidings::runtime::Server;
use tidings_client::{Client, ClientBuilder, ConnectionState, Event, Message, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const KEY: &str = "test:test-secret-1";

/// How long any single expectation may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The real server, running in this process on a temporary data directory.
pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.add_api_key(KEY).unwrap();
        adjust(&mut config);
        let server = Server::start(config).await.expect("the server starts");
        TestServer { server, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub async fn stop(self) {
        self.server.shutdown();
        self.server.wait().await;
    }
}

/// A client for `url` with the test key and quick reconnects.
pub fn client(url: &str) -> ClientBuilder {
    Client::builder(url)
        .api_key(KEY)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(5))
}

/// Publish `data` values over REST, straight to the server (not through the client or a
/// proxy); returns their serials.
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    channel: &str,
    data: &[Value],
) -> Vec<u64> {
    let body: Vec<Value> = data.iter().map(|d| json!({ "data": d })).collect();
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

/// The next event of a subscription, failing the test after [`WAIT`].
pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event within the wait")
        .expect("the subscription is open")
        .expect("no error")
}

/// The next `n` messages (failing on any other event).
pub async fn messages(sub: &mut Subscription, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_event(sub).await {
            Event::Message(m) => out.push(m),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

/// Assert nothing more arrives for a little while.
pub async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("expected nothing more, got {event:?}");
    }
}

/// Wait until the client's state matches.
pub async fn wait_state(
    client: &Client,
    what: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut state = client.state();
    let s = tokio::time::timeout(WAIT, state.wait_for(|s| what(s)))
        .await
        .expect("the state within the wait")
        .expect("the client is alive");
    s.clone()
}

/// A TCP proxy in front of the server that can cut every open connection (a phone losing its
/// network), freeze them (packets silently dropped: the socket stays open and says nothing), or
/// refuse HTTP requests to some paths the way a proxy that blocks WebSocket or streaming does.
pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    cut: watch::Sender<u64>,
    freeze: watch::Sender<u64>,
    blocked: Arc<Mutex<Vec<String>>>,
    /// Paths refused so far.
    pub refused: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            addr,
            target: Arc::new(Mutex::new(target)),
            cut: watch::channel(0).0,
            freeze: watch::channel(0).0,
            blocked: Default::default(),
            refused: Default::default(),
            open: Default::default(),
        };
        let target = proxy.target.clone();
        let (cut, freeze) = (proxy.cut.clone(), proxy.freeze.clone());
        let (blocked, refused, open) = (
            proxy.blocked.clone(),
            proxy.refused.clone(),
            proxy.open.clone(),
        );
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = *target.lock().unwrap();
                let mut cut = cut.subscribe();
                let mut freeze = freeze.subscribe();
                let blocked = blocked.lock().unwrap().clone();
                let refused = refused.clone();
                let open = open.clone();
                tokio::spawn(async move {
                    let _ = cut.borrow_and_update();
                    let _ = freeze.borrow_and_update();
                    let Some((inbound, head)) = screen(inbound, &blocked, &refused).await else {
                        return;
                    };
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    relay(inbound, outbound, head, &mut cut, &mut freeze).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cut every connection open now; returns how many there were.
    pub fn cut(&self) -> usize {
        let n = self.open.load(Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
        n
    }

    /// Stop relaying on every connection open now, without closing it.
    pub fn freeze(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    /// Connections relayed right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Refuse new HTTP requests whose path starts with one of these.
    pub fn block(&self, paths: &[&str]) {
        *self.blocked.lock().unwrap() = paths.iter().map(|p| p.to_string()).collect();
    }

    /// Send new connections to another server.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }
}

/// Read the request head of a new connection when paths are blocked; refuse a blocked one
/// with a plain 403 (no Tidings error body: it is the proxy answering).
async fn screen(
    mut inbound: TcpStream,
    blocked: &[String],
    refused: &Mutex<Vec<String>>,
) -> Option<(TcpStream, Vec<u8>)> {
    if blocked.is_empty() {
        return Some((inbound, Vec::new()));
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        let n = inbound.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    if blocked.iter().any(|b| path.starts_with(b.as_str())) {
        refused.lock().unwrap().push(path);
        let _ = inbound
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 7\r\nconnection: close\r\n\r\nblocked")
            .await;
        let _ = inbound.shutdown().await;
        return None;
    }
    Some((inbound, head))
}

async fn relay(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    head: Vec<u8>,
    cut: &mut watch::Receiver<u64>,
    freeze: &mut watch::Receiver<u64>,
) {
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.changed() => {} // both sockets drop here: the connection is cut
        _ = freeze.changed() => {
            // Hold both sockets open, relaying nothing, until cut.
            let _ = cut.changed().await;
        }
    }
}

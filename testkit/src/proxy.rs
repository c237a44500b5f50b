//! A TCP fault proxy: stands between a client and a server (a client SDK and Tidings, or the
//! Postgres connector and Postgres) and breaks the path the ways real networks do.
//!
//! - cut every open connection, as a phone losing its network or a load balancer's idle
//!   timeout does ([`Proxy::cut`]);
//! - reset every open connection abortively (an RST both ways, nothing flushed or closed in
//!   order) and refuse new ones for a while, as a path that went down ([`Proxy::reset`],
//!   [`Proxy::reset_after`]: at a byte count, from inside the copy, so it lands mid-message);
//! - freeze every open connection: nothing more is passed either way and nothing is closed,
//!   as when a NAT or firewall drops its state ([`Proxy::freeze`]);
//! - refuse HTTP requests to some paths, as proxies that block WebSocket or streaming do
//!   ([`Proxy::block`]);
//! - send new connections to another server ([`Proxy::retarget`]);
//! - count the bytes the server sends on the connections whose first client bytes hold a
//!   marker, such as Postgres replication sessions ([`Proxy::tap`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy on a free port of 127.0.0.1; it stops accepting when the test's runtime
/// ends.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// What the accept loop, every connection and the [`Proxy`] handle share.
struct Shared {
    target: Mutex<SocketAddr>,
    /// Bumped by each cut; every connection open at that moment is closed.
    cut: watch::Sender<u64>,
    /// Bumped by each reset; every connection open at that moment is reset.
    reset: watch::Sender<u64>,
    /// Bumped by each freeze; every connection open at that moment stops relaying.
    freeze: watch::Sender<u64>,
    /// New connections are reset at once while set.
    refusing: AtomicBool,
    /// Connections reset at once because the proxy was refusing.
    refused: AtomicU64,
    /// HTTP path prefixes new requests are refused for.
    blocked: Mutex<Vec<String>>,
    /// Paths refused because they were blocked.
    refused_paths: Mutex<Vec<String>>,
    /// Connections relayed right now.
    open: AtomicUsize,
    /// The marker that makes a connection tapped, once its client sent it.
    tap: Mutex<Option<Vec<u8>>>,
    /// Bytes from the server on tapped connections, all together.
    tapped_total: AtomicU64,
    /// Bytes from the server on each tapped connection, in the order they were tapped.
    tapped: Mutex<Vec<Arc<AtomicU64>>>,
    /// Reset once `tapped_total` reaches this (0: not armed).
    reset_at: AtomicU64,
}

impl Shared {
    /// Refuse new connections (first, so nothing reconnects in between) and reset every open
    /// one.
    fn reset(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.reset.send_modify(|n| *n += 1);
    }
}

impl Proxy {
    /// Listen on a free port and relay every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            cut: watch::channel(0).0,
            reset: watch::channel(0).0,
            freeze: watch::channel(0).0,
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            blocked: Mutex::default(),
            refused_paths: Mutex::default(),
            open: AtomicUsize::new(0),
            tap: Mutex::default(),
            tapped_total: AtomicU64::new(0),
            tapped: Mutex::default(),
            reset_at: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if accepting.refusing.load(Ordering::SeqCst) {
                    accepting.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = inbound.set_zero_linger();
                    continue; // dropped: reset
                }
                // Subscribed now, so only faults from here on reach this connection.
                let faults = Faults {
                    cut: accepting.cut.subscribe(),
                    reset: accepting.reset.subscribe(),
                    freeze: accepting.freeze.subscribe(),
                };
                tokio::spawn(pipe(inbound, accepting.clone(), faults));
            }
        });
        Proxy { addr, shared }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HTTP base URL through the proxy.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// WebSocket endpoint through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// Close every connection open now; returns how many there were.
    pub fn cut(&self) -> usize {
        let n = self.shared.open.load(Ordering::SeqCst);
        self.shared.cut.send_modify(|n| *n += 1);
        n
    }

    /// Reset every connection open now, and refuse new ones until
    /// [`Proxy::refuse`]`(false)`.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Like [`Proxy::reset`], once `more` bytes more have come from the server on tapped
    /// connections.
    pub fn reset_after(&self, more: u64) {
        let at = self.shared.tapped_total.load(Ordering::SeqCst) + more;
        self.shared.reset_at.store(at, Ordering::SeqCst);
    }

    /// How many resets there were, on demand or armed.
    pub fn resets(&self) -> u64 {
        *self.shared.reset.borrow()
    }

    /// Stop relaying on every connection open now, without closing it (until the next cut
    /// or reset); new connections go through as before.
    pub fn freeze(&self) {
        self.shared.freeze.send_modify(|n| *n += 1);
    }

    /// Reset new connections at once (true) or let them through again (false).
    pub fn refuse(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::SeqCst);
    }

    /// How many connections were reset at once because the proxy was refusing.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections relayed right now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Refuse new HTTP requests whose path starts with one of these.
    pub fn block(&self, paths: &[&str]) {
        *self.shared.blocked.lock().unwrap() = paths.iter().map(|p| p.to_string()).collect();
    }

    /// The paths of requests refused so far because they were blocked.
    pub fn refused_paths(&self) -> Vec<String> {
        self.shared.refused_paths.lock().unwrap().clone()
    }

    /// Send new connections to another server.
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }

    /// Tap new connections whose client sends `marker` among its first bytes (a Postgres
    /// replication session's startup packet holds `replication\0`): the bytes the server
    /// sends on them are counted, and [`Proxy::reset_after`] fires on them.
    pub fn tap(&self, marker: &[u8]) {
        *self.shared.tap.lock().unwrap() = Some(marker.to_vec());
    }

    /// Bytes the server sent on each tapped connection so far, oldest first.
    pub fn tapped_bytes(&self) -> Vec<u64> {
        self.shared
            .tapped
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.load(Ordering::SeqCst))
            .collect()
    }
}

/// The faults one connection watches for.
struct Faults {
    cut: watch::Receiver<u64>,
    reset: watch::Receiver<u64>,
    freeze: watch::Receiver<u64>,
}

/// Relay one connection until either side ends it or a fault does.
async fn pipe(inbound: TcpStream, shared: Arc<Shared>, mut faults: Faults) {
    let blocked = shared.blocked.lock().unwrap().clone();
    let Some((inbound, head)) = screen(inbound, &blocked, &shared.refused_paths).await else {
        return;
    };
    let target = *shared.target.lock().unwrap();
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let marker = shared.tap.lock().unwrap().clone();
    let outbound = Tap {
        inner: outbound,
        shared: shared.clone(),
        marker,
        sniffed: Vec::new(),
        received: None,
    };
    shared.open.fetch_add(1, Ordering::SeqCst);
    relay(inbound, outbound, head, &mut faults).await;
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

/// Pass bytes both ways (after `head`, what [`screen`] read ahead) until either side ends the
/// connection or a fault does.
async fn relay(mut inbound: TcpStream, mut outbound: Tap, head: Vec<u8>, faults: &mut Faults) {
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = faults.cut.changed() => {} // both sockets drop here: the connection is closed
        _ = faults.reset.changed() => {
            // Both sockets drop here, reset rather than closed.
            let _ = inbound.set_zero_linger();
            let _ = outbound.inner.set_zero_linger();
        }
        _ = faults.freeze.changed() => {
            // Hold both sockets open, relaying nothing, until a cut or a reset.
            tokio::select! {
                _ = faults.cut.changed() => {}
                _ = faults.reset.changed() => {
                    let _ = inbound.set_zero_linger();
                    let _ = outbound.inner.set_zero_linger();
                }
            }
        }
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

/// The proxy's server-side socket: reads are bytes from the server (counted on tapped
/// connections, and the armed reset fired from here), writes are bytes to it (the start of
/// which is sniffed for the tap's marker).
struct Tap {
    inner: TcpStream,
    shared: Arc<Shared>,
    marker: Option<Vec<u8>>,
    sniffed: Vec<u8>,
    received: Option<Arc<AtomicU64>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if let (Some(received), true) = (&self.received, n > 0) {
            received.fetch_add(n, Ordering::SeqCst);
            let shared = &self.shared;
            let total = shared.tapped_total.fetch_add(n, Ordering::SeqCst) + n;
            let at = shared.reset_at.load(Ordering::SeqCst);
            if at > 0
                && total >= at
                && shared
                    .reset_at
                    .compare_exchange(at, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                shared.reset();
            }
        }
        polled
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            let this = &mut *self;
            if let (Some(marker), None, true) =
                (&this.marker, &this.received, this.sniffed.len() < 1024)
            {
                this.sniffed.extend_from_slice(&buf[..*n]);
                if this.sniffed.windows(marker.len()).any(|w| w == marker) {
                    let counter = Arc::new(AtomicU64::new(0));
                    this.shared.tapped.lock().unwrap().push(counter.clone());
                    this.received = Some(counter);
                }
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A server that echoes every byte back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, bytes: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(bytes).await?;
        let mut back = vec![0; bytes.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    async fn wait_until(mut ok: impl FnMut() -> bool) {
        let found = crate::wait_for(crate::WAIT, || ok().then_some(())).await;
        assert!(found.is_some(), "never held within the wait");
    }

    #[tokio::test]
    async fn relays_then_cut_closes_every_open_connection() {
        let proxy = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");
        wait_until(|| proxy.open() == 1).await;
        assert_eq!(proxy.cut(), 1);
        let mut buf = [0; 1];
        let n = tokio::time::timeout(crate::WAIT, s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        // New connections go through.
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"x").await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn a_frozen_connection_stays_open_and_says_nothing() {
        let proxy = Proxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"a").await.unwrap();
        proxy.freeze();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"b").await.unwrap();
        let mut buf = [0; 1];
        let quiet = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(quiet.is_err(), "a frozen connection answered: {quiet:?}");
        // Until a cut closes it.
        proxy.cut();
        let n = tokio::time::timeout(crate::WAIT, s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    }

    #[tokio::test]
    async fn blocked_paths_get_a_403_and_others_go_through() {
        let proxy = Proxy::start(echo().await).await;
        proxy.block(&["/v1/connect"]);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"GET /v1/connect HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert_eq!(proxy.refused_paths(), ["/v1/connect"]);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let request = b"GET /v1/sse HTTP/1.1\r\n\r\n";
        assert_eq!(round_trip(&mut s, request).await.unwrap(), request);
    }

    #[tokio::test]
    async fn an_armed_reset_fires_on_tapped_bytes_and_refuses_until_told() {
        let proxy = Proxy::start(echo().await).await;
        proxy.tap(b"tap-me\0");
        let mut plain = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut plain, b"not tapped").await.unwrap();
        let mut tapped = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut tapped, b"tap-me\0").await.unwrap();
        assert_eq!(
            proxy.tapped_bytes(),
            [7],
            "only the echo of the tapped connection"
        );
        proxy.reset_after(10);
        round_trip(&mut tapped, b"12345").await.unwrap();
        assert_eq!(proxy.resets(), 0, "not yet at the byte count");
        let _ = round_trip(&mut tapped, b"67890").await;
        wait_until(|| proxy.resets() == 1).await;
        // Both connections were reset, and new ones are refused.
        let mut buf = [0; 1];
        assert!(!matches!(plain.read(&mut buf).await, Ok(n) if n > 0));
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut refused, b"x").await.is_err());
        wait_until(|| proxy.refused() == 1).await;
        proxy.refuse(false);
        let mut back = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut back, b"y").await.unwrap(), b"y");
    }

    #[tokio::test]
    async fn retargeted_connections_reach_the_new_server() {
        let first = echo().await;
        let proxy = Proxy::start(first).await;
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        proxy.retarget(other.local_addr().unwrap());
        let _client = TcpStream::connect(proxy.addr()).await.unwrap();
        let accepted = tokio::time::timeout(crate::WAIT, other.accept()).await;
        assert!(accepted.is_ok(), "the new target was never connected to");
    }
}

//! The HTTP listener: accepts TCP connections and serves each with HTTP/1.1 (WebSocket upgrades
//! included), bounding what a client that never finishes a request can hold.
//!
//! A connection is *pending* from its accept until its first request head is complete. It has
//! `limits.request_head_timeout` for that; at most `limits.max_pending_connections` are pending
//! at once, and one more closes the oldest, so clients that send their request at once are
//! served while slow ones wait out their deadline. After that, a keep-alive connection whose next
//! request head is not complete within `limits.http_idle_timeout` is closed (hyper's header read
//! timeout, which runs only while a connection waits for a head: a WebSocket session, an SSE
//! stream or a long-poll is a request in progress and is never cut by it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::metrics::{HttpClose, Metrics};

/// What bounds each connection, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From accept to the first complete request head.
    pub request_head_timeout: Duration,
    /// A keep-alive connection waiting for its next request head.
    pub http_idle_timeout: Duration,
    /// Connections waiting for their first complete request head at once.
    pub max_pending_connections: usize,
}

impl From<&Limits> for HttpLimits {
    fn from(l: &Limits) -> Self {
        HttpLimits {
            request_head_timeout: l.request_head_timeout,
            http_idle_timeout: l.http_idle_timeout,
            max_pending_connections: l.max_pending_connections,
        }
    }
}

/// The connections still waiting for their first complete request head, oldest first, each
/// with the sender that closes it.
struct Pending {
    max: usize,
    waiting: parking_lot::Mutex<(u64, BTreeMap<u64, oneshot::Sender<()>>)>,
}

impl Pending {
    /// Admit a new connection, closing the oldest pending one if there are `max` already.
    fn admit(self: &Arc<Self>) -> (Arc<PendingSlot>, oneshot::Receiver<()>, bool) {
        let (evict, evicted) = oneshot::channel();
        let mut guard = self.waiting.lock();
        let (next, waiting) = &mut *guard;
        let full = waiting.len() >= self.max;
        if full {
            if let Some((_, oldest)) = waiting.pop_first() {
                let _ = oldest.send(());
            }
        }
        let id = *next;
        *next += 1;
        waiting.insert(id, evict);
        drop(guard);
        let slot = Arc::new(PendingSlot {
            pending: self.clone(),
            id,
            done: AtomicBool::new(false),
        });
        (slot, evicted, full)
    }
}

/// One connection's place among the pending: given up on its first request, or when it ends.
struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
    done: AtomicBool,
}

impl PendingSlot {
    fn release(&self) {
        if !self.done.load(Ordering::Relaxed) && !self.done.swap(true, Ordering::Relaxed) {
            self.pending.waiting.lock().1.remove(&self.id);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// The router as hyper calls it, releasing the connection's pending slot at its first request.
struct Admitted {
    app: TowerToHyperService<Router>,
    slot: Arc<PendingSlot>,
}

impl Service<hyper::Request<Incoming>> for Admitted {
    type Response = <TowerToHyperService<Router> as Service<hyper::Request<Incoming>>>::Response;
    type Error = std::convert::Infallible;
    type Future = TowerToHyperServiceFuture<Router, hyper::Request<Incoming>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.slot.release();
        self.app.call(req)
    }
}

/// Accept and serve connections until `shutdown`, then let each finish its response (no new
/// requests on kept-alive connections) and return once every connection has ended.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Pending {
        max: limits.max_pending_connections,
        waiting: parking_lot::Mutex::new((0, BTreeMap::new())),
    });
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Small frames (acks, live messages) go out at once instead of waiting for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (slot, evicted, full) = pending.admit();
        if full {
            metrics.http_closed(HttpClose::pending_limit);
        }
        let service = Admitted {
            app: TowerToHyperService::new(app.clone()),
            slot: slot.clone(),
        };
        connections.spawn(connection(
            tcp,
            service,
            slot,
            evicted,
            limits,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serve one connection until it ends, is evicted, or misses its first head's deadline.
async fn connection(
    tcp: TcpStream,
    service: Admitted,
    slot: Arc<PendingSlot>,
    mut evicted: oneshot::Receiver<()>,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.http_idle_timeout);
    let conn = http
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let head_deadline = tokio::time::sleep(limits.request_head_timeout);
    tokio::pin!(head_deadline);
    // Each branch below is polled until it fires once: the shutdown, the eviction (a slot
    // released first drops its sender, which ends the wait without closing), the deadline
    // (which closes only a connection still without its first request).
    let (mut draining, mut evictable, mut deadline_open) = (false, true, true);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        metrics.http_closed(HttpClose::idle_timeout);
                    }
                    tracing::trace!(error = %e, "HTTP connection ended");
                }
                return;
            }
            evict = &mut evicted, if evictable => {
                evictable = false;
                if evict.is_ok() && !slot.done.load(Ordering::Relaxed) {
                    return;
                }
            }
            () = &mut head_deadline, if deadline_open => {
                deadline_open = false;
                if !slot.done.load(Ordering::Relaxed) {
                    metrics.http_closed(HttpClose::head_timeout);
                    return;
                }
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Accept errors: a connection reset before it was accepted is the client's business; running
/// out of file descriptors (or another resource) passes with time, so wait a little.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

//! The application's handle: build a client, attach channels, publish, watch the connection.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tidings_protocol::HistoryPage;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::{Auth, Credentials, Token};
use crate::backoff::Backoff;
use crate::channel::validate_channel;
use crate::command::Command;
use crate::driver::Driver;
use crate::error::{BoxError, Error};
use crate::publish::{Encoded, Publish};
use crate::rest;
use crate::settings::{Settings, Shared};
use crate::start::Start;
use crate::state::{ConnectionState, Counters, Stats};
use crate::subscription::Subscription;
use crate::transport::Transport;

/// Default time a transport may take to connect before the next one is tried.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a REST request (publish, history) or a socket write may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default long-poll wait (the server's default `session.poll_timeout`).
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(25);
/// Default heartbeat interval assumed for transports that do not announce it (SSE); WebSocket
/// learns the server's from `connected`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default capacity of each subscription's queue.
pub const DEFAULT_BUFFER: usize = 1024;
/// Capacity of the queue of commands to the connection task.
const COMMAND_QUEUE: usize = 1024;

/// Configures and builds a [`Client`].
///
/// ```no_run
/// # async fn demo() -> Result<(), tidings_client::Error> {
/// use futures_util::StreamExt;
/// use tidings_client::{Client, Event, Start};
///
/// let client = Client::builder("http://127.0.0.1:8080").api_key("app:secret").build()?;
/// let mut orders = client.attach("orders:42", Start::Now).await?;
/// while let Some(event) = orders.next().await {
///     match event? {
///         // `data` is the JSON text as sent: `data_as` parses it (into your own type too).
///         Event::Message(m) => println!("{} {:?}", m.serial, m.data_as::<serde_json::Value>()),
///         Event::ContinuityLost { reason, .. } => println!("missed messages ({reason:?}): reload"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    url: String,
    /// More nodes of the same cluster, tried in turn after `url`.
    more: Vec<String>,
    credentials: Credentials,
    settings: Settings,
}

impl ClientBuilder {
    /// Authenticate with an API key, `KEY_ID:SECRET`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = Credentials::ApiKey(key.into());
        self
    }

    /// Authenticate with a signed token, used as is. When it expires the client stops with
    /// `token_expired`; use [`ClientBuilder::token_source`] for long-lived clients.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Token(Token::new(token));
        self
    }

    /// Authenticate with tokens from a callback (typically a request to your backend, which
    /// calls `POST /v1/tokens` or signs a JWT). The client calls it to connect, again when the
    /// server says the token expired or was revoked (close 4001 or 4002, `token_expired` or
    /// `token_revoked`), and before expiry to renew
    /// in-band on WebSocket (`auth` frame) so the connection never drops for it.
    pub fn token_source<F, Fut, E>(mut self, source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Token, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.credentials = Credentials::Source(Arc::new(move || {
            let fut = source();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Transports to use, in order of preference (default: WebSocket, SSE, long-poll). The
    /// client moves to the next when one fails to connect, and comes back to the one that
    /// worked last on every reconnect.
    pub fn transports(mut self, transports: &[Transport]) -> Self {
        self.settings.transports = transports.to_vec();
        self
    }

    /// Another node of the same Tidings cluster (cluster mode: every node serves every channel
    /// with the same serials). When a connection fails the client moves to the next node, and
    /// resumes each channel there from its position. Call once per node.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.more.push(url.into());
        self
    }

    /// Reconnect delays: full jitter over `min(max, initial × 2^attempt)` (default 250 ms and
    /// 30 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff { initial, max };
        self
    }

    /// How long a transport may take to connect before the next one is tried (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a REST request or a socket write may take (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// How long each long-poll request waits for messages (default 25 s, at most 120 s).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.settings.poll_wait = wait.min(Duration::from_secs(120));
        self
    }

    /// The server's heartbeat interval, for SSE, which does not announce it (default 15 s, the
    /// server's default). A connection silent for 2.5 intervals is considered dead.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.settings.heartbeat = interval;
        self
    }

    /// Capacity of each subscription's queue (default 1024). When a subscription is not read,
    /// the client stops reading the network once its queue is full.
    pub fn buffer(mut self, capacity: usize) -> Self {
        self.settings.buffer = capacity.max(1);
        self
    }

    /// Build the client and start connecting in the background. Must be called inside a Tokio
    /// runtime. Fails only on a URL the client cannot use.
    pub fn build(self) -> Result<Client, Error> {
        let base = base_url(&self.url)?;
        let mut servers = vec![base.clone()];
        for url in &self.more {
            servers.push(base_url(url)?);
        }
        if self.settings.transports.is_empty() {
            return Err(Error::InvalidUrl {
                url: self.url,
                problem: "no transport enabled: give at least one to `transports`".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.settings.connect_timeout)
            .build()
            .map_err(|source| Error::Http {
                url: base.to_string(),
                source,
            })?;
        let shared = Arc::new(Shared {
            servers,
            current: std::sync::atomic::AtomicUsize::new(0),
            settings: self.settings,
            auth: Auth::new(self.credentials),
            http,
            counters: Arc::new(Counters::default()),
        });
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let (state_tx, state) = watch::channel(ConnectionState::Connecting {
            transport: shared.settings.transports[0],
            attempt: 0,
        });
        tokio::spawn(Driver::new(shared.clone(), receiver, state_tx).run());
        Ok(Client {
            shared,
            commands,
            state,
            ids: Arc::new(AtomicU64::new(1)),
        })
    }
}

/// A connection to a Tidings server, kept up in the background. Cheap to clone; the connection
/// ends when the client is closed, or when every clone and every subscription is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    ids: Arc<AtomicU64>,
}

impl Client {
    /// Start configuring a client for the server at `url` (`http://host:port`, or with a path
    /// prefix when the server sits behind one; `ws://` is accepted too).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            more: Vec::new(),
            credentials: Credentials::Anonymous,
            settings: Settings {
                transports: Transport::ALL.to_vec(),
                backoff: Backoff::default(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                poll_wait: DEFAULT_POLL_WAIT,
                heartbeat: DEFAULT_HEARTBEAT,
                buffer: DEFAULT_BUFFER,
            },
        }
    }

    /// Attach a channel and return its events. Resolves once the server attached it (so with
    /// [`Start::Now`], everything published after this returns is delivered); waits while the
    /// client (re)connects. Fails with the server's refusal (`forbidden`, `too_many_channels`),
    /// with [`Error::InvalidChannel`] before sending anything, or with
    /// [`Error::AlreadyAttached`].
    pub async fn attach(&self, channel: &str, start: Start) -> Result<Subscription, Error> {
        validate_channel(channel)?;
        if let Start::From(p) = &start {
            validate_epoch(&p.epoch)?;
        }
        let (events, receiver) = mpsc::channel(self.shared.settings.buffer);
        let (confirm, confirmed) = oneshot::channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.commands
            .send(Command::Attach {
                channel: channel.to_owned(),
                id,
                start,
                events,
                confirm,
            })
            .await
            .map_err(|_| self.closed())?;
        // Built before waiting, so that a cancelled `attach` detaches the channel on drop.
        let mut subscription =
            Subscription::new(channel.to_owned(), id, receiver, self.commands.clone());
        let attach_point = confirmed.await.map_err(|_| self.closed())??;
        subscription.attached_at(attach_point);
        Ok(subscription)
    }

    /// Publish one message; returns its serial once the server made it durable. Goes over the
    /// WebSocket when that is the transport in use, else over REST. A publish with an `id` that
    /// a dropped connection interrupted is retried (the server deduplicates ids); one without
    /// fails with [`Error::PublishInterrupted`].
    pub async fn publish(&self, channel: &str, message: Publish) -> Result<u64, Error> {
        validate_channel(channel)?;
        let message = Encoded::new(&message)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Publish {
                channel: channel.to_owned(),
                message,
                reply,
            })
            .await
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// One page of a channel's history (REST): messages with serials above `after`, at most
    /// `limit`, and the channel's current epoch.
    pub async fn history(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, Error> {
        validate_channel(channel)?;
        rest::history(&self.shared, channel, after, limit).await
    }

    /// The connection's state, as a watch: `borrow()` for now, `changed()` to wait for the next.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Counters: connections made, duplicates dropped, messages delivered.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// The error for a request the stopped connection task can no longer take.
    fn closed(&self) -> Error {
        match &*self.state.borrow() {
            ConnectionState::Closed { error: Some(e) } => Error::Stopped(e.clone()),
            _ => Error::Closed,
        }
    }

    /// Close the connection and end every subscription's stream. Publishes in flight may still
    /// complete. Closing twice is harmless.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = closed.await;
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shared.base().as_str())
            .field("state", &*self.state.borrow())
            .finish()
    }
}

/// Check an epoch before it goes into a request: positions are written `channel=epoch:serial`
/// joined by `,`, so an epoch can hold neither `,` nor `=`.
fn validate_epoch(epoch: &str) -> Result<(), Error> {
    if epoch.is_empty() || epoch.len() > 255 {
        return Err(Error::InvalidPosition("the epoch must be 1 to 255 bytes"));
    }
    if epoch
        .bytes()
        .any(|b| b == b',' || b == b'=' || !b.is_ascii_graphic())
    {
        return Err(Error::InvalidPosition(
            "the epoch holds characters epochs never contain (`,`, `=`, spaces, non-ASCII)",
        ));
    }
    Ok(())
}

/// The server's base URL as `http(s)://host[:port]/[prefix/]`.
fn base_url(text: &str) -> Result<Url, Error> {
    let bad = |problem: &str| Error::InvalidUrl {
        url: text.to_owned(),
        problem: problem.to_owned(),
    };
    let mut url = Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "http",
        "https" | "wss" => {
            return Err(bad(
                "this build of tidings-client has no TLS support yet: use http:// (or a local TLS-terminating proxy)",
            ))
        }
        _ => return Err(bad("the scheme must be http:// (or ws://)")),
    };
    url.set_scheme(scheme)
        .map_err(|()| bad("cannot use this scheme"))?;
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(bad("the URL needs a host, like http://127.0.0.1:8080"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "give the server's base URL, without a query or fragment",
        ));
    }
    // Drop a trailing `/v1/connect` (a WebSocket URL given as the base) and end with `/`.
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1/connect").unwrap_or(path).to_owned();
    url.set_path(&format!("{path}/"));
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        for (given, base) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
            ("http://h/prefix", "http://h/prefix/"),
            ("http://h/prefix/", "http://h/prefix/"),
            ("ws://h:1/v1/connect", "http://h:1/"),
        ] {
            assert_eq!(base_url(given).unwrap().as_str(), base, "{given}");
        }
        for bad in ["ftp://h", "h:8080", "http://h/?a=1", "https://h"] {
            assert!(
                matches!(base_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}

//! Prometheus metrics, registered in one place and exposed at `GET /metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::Arc;
use tidings_connectors_core::{ConnectorGauges, ConnectorMetrics};

/// Transport a connection uses.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Transport {
    websocket,
    sse,
    poll,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CloseReason {
    /// The client closed or the socket ended.
    client,
    /// The socket could not be drained within the send timeout.
    slow_consumer,
    /// The server is shutting down.
    shutdown,
    /// A protocol violation the connection cannot survive (oversized frame, broken socket).
    protocol,
    /// Nothing heard from the client within the idle timeout.
    idle,
    /// The connection's token expired without renewal.
    token_expired,
    /// The connection's token was revoked (`POST /v1/tokens/revoke`).
    token_revoked,
}

/// What a token revocation names.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RevocationKind {
    /// Every token of a subject issued until then.
    subject,
    /// One token, by its `jti`.
    jti,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: RevocationKind,
}

/// Why the server closed an HTTP connection that had no request in progress.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HttpClose {
    /// No complete first request head within `limits.request_head_timeout`.
    head_timeout,
    /// The oldest connection still without a complete first request head, closed to admit a
    /// new one beyond `limits.max_pending_connections`.
    pending_limit,
    /// A keep-alive connection without a complete next request head within
    /// `limits.http_idle_timeout`.
    idle_timeout,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpCloseLabel {
    reason: HttpClose,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: Transport,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: CloseReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

/// Every metric the server emits.
pub struct Metrics {
    registry: Registry,
    connections: Family<TransportLabel, Gauge>,
    /// Channels with at least one live subscriber on this node.
    pub channels_active: Gauge,
    /// Messages appended to the log (duplicates excluded).
    pub messages_appended: Counter,
    /// Messages written to client connections (live and catch-up).
    pub messages_delivered: Counter,
    /// Time from a publish request's arrival to its durable acknowledgement.
    pub publish_duration: Histogram,
    /// Subscribers behind the head served from the hub's recent messages.
    pub catch_up_from_memory: Counter,
    /// Catch-up pages read from the log (subscribers further behind than memory holds).
    pub catch_up_log_pages: Counter,
    sessions_closed: Family<ReasonLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    connectors_stopped: Family<ConnectorLabel, Counter>,
    http_closed: Family<HttpCloseLabel, Counter>,
    revocations: Family<KindLabel, Counter>,
    revoked_closed: Family<TransportLabel, Counter>,
    /// Gauges connectors set for themselves (Postgres slot lag), labelled by connector.
    connectors: Arc<ConnectorGauges>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        Self::with_node(None)
    }

    /// The metrics of one cluster node: every series carries `node="<id>"`, so that a
    /// dashboard over all nodes tells them apart. `None`: a single node, without the label.
    pub fn with_node(node: Option<String>) -> Self {
        let labels = node.map(|n| (Cow::Borrowed("node"), Cow::Owned(n)));
        let mut registry = Registry::with_prefix_and_labels("tidings", labels.into_iter());
        let connections = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let channels_active = Gauge::default();
        registry.register(
            "channels_active",
            "Channels with at least one live subscriber",
            channels_active.clone(),
        );
        let messages_appended = Counter::default();
        registry.register(
            "messages_appended",
            "Messages appended to the channel log",
            messages_appended.clone(),
        );
        let messages_delivered = Counter::default();
        registry.register(
            "messages_delivered",
            "Messages written to client connections",
            messages_delivered.clone(),
        );
        let publish_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "publish_duration",
            "Time from publish request to durable acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            publish_duration.clone(),
        );
        let catch_up_from_memory = Counter::default();
        registry.register(
            "catch_up_from_memory",
            "Subscribers behind the head (resuming, polling, or overrunning the live ring) served from the hub's recent messages",
            catch_up_from_memory.clone(),
        );
        let catch_up_log_pages = Counter::default();
        registry.register(
            "catch_up_log_pages",
            "Catch-up pages read from the log, for subscribers further behind than the recent messages held in memory",
            catch_up_log_pages.clone(),
        );
        let sessions_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sessions_closed",
            "Client sessions closed, by reason",
            sessions_closed.clone(),
        );
        let errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "errors",
            "Errors answered to clients, by code",
            errors.clone(),
        );
        let connectors_stopped = Family::<ConnectorLabel, Counter>::default();
        registry.register(
            "connectors_stopped",
            "Connectors stopped by an error only the operator can fix (the rest of the server goes on), by connector",
            connectors_stopped.clone(),
        );
        let http_closed = Family::<HttpCloseLabel, Counter>::default();
        registry.register(
            "http_connections_closed",
            "HTTP connections the server closed while they had no request in progress, by reason",
            http_closed.clone(),
        );
        let revocations = Family::<KindLabel, Counter>::default();
        registry.register(
            "token_revocations",
            "Token revocations made (POST /v1/tokens/revoke), by what they name",
            revocations.clone(),
        );
        let revoked_closed = Family::<TransportLabel, Counter>::default();
        registry.register(
            "revoked_connections_closed",
            "Open connections (WebSocket sessions, SSE streams, waiting long-polls) closed because their token was revoked, by transport",
            revoked_closed.clone(),
        );
        // Last, as the connectors' gauges always came last in the exposition.
        let connectors = Arc::new(ConnectorGauges::default());
        registry.register_collector(Box::new(connectors.clone()));
        Metrics {
            registry,
            connections,
            channels_active,
            messages_appended,
            messages_delivered,
            publish_duration,
            catch_up_from_memory,
            catch_up_log_pages,
            sessions_closed,
            errors,
            connectors_stopped,
            http_closed,
            revocations,
            revoked_closed,
            connectors,
        }
    }

    /// The metrics handle of connector `name`: its own gauges, labelled with its name, in
    /// this server's exposition.
    pub fn connector(&self, name: &str) -> ConnectorMetrics {
        self.connectors.connector(name)
    }

    /// A connection opened; the returned guard counts it until dropped.
    pub fn connection(&self, transport: Transport) -> ConnectionGuard {
        let gauge = self
            .connections
            .get_or_create(&TransportLabel { transport })
            .clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// A session ended for `reason`.
    pub fn session_closed(&self, reason: CloseReason) {
        self.sessions_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// An error with `code` was answered.
    pub fn error(&self, code: tidings_protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Connector `name` stopped with an error only the operator can fix.
    pub fn connector_stopped(&self, name: &str) {
        self.connectors_stopped
            .get_or_create(&ConnectorLabel {
                connector: name.to_owned(),
            })
            .inc();
    }

    /// A token revocation came into force.
    pub fn revoked(&self, kind: RevocationKind) {
        self.revocations.get_or_create(&KindLabel { kind }).inc();
    }

    /// An open connection on `transport` was closed because its token was revoked.
    pub fn revoked_connection_closed(&self, transport: Transport) {
        self.revoked_closed
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    /// The server closed an HTTP connection for `reason`.
    pub fn http_closed(&self, reason: HttpClose) {
        self.http_closed
            .get_or_create(&HttpCloseLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Decrements the connection gauge when dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

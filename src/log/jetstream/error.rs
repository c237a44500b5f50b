//! Why the cluster log could not start: each error says what to do.

use super::subjects::STREAM;

/// The oldest nats-server with atomic batch publish (ADR-50).
pub const MIN_SERVER: (u32, u32) = (2, 12);

/// Why the cluster log could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("`{url}` is not a NATS server URL ({problem}); give URLs like nats://host:4222, comma separated, in --nats, TIDINGS_NATS_URLS or cluster.servers")]
    BadUrl { url: String, problem: String },
    #[error("cannot reach any NATS server of {servers}: {problem}; check that they run and that this host can reach them (--nats, TIDINGS_NATS_URLS or cluster.servers)")]
    Unreachable { servers: String, problem: String },
    #[error("NATS server {server} does not have JetStream enabled; start it with -js (or `jetstream {{}}` in its configuration): cluster mode keeps the channel log in JetStream")]
    NoJetStream { server: String },
    #[error("NATS server {server} is version {version}; cluster mode needs nats-server {}.{} or newer (atomic batch publish): upgrade the servers", MIN_SERVER.0, MIN_SERVER.1)]
    TooOld { server: String, version: String },
    #[error("NATS server {server} takes messages of at most {max_payload} bytes (max_payload), but limits.max_message_bytes needs {needed}: raise max_payload in the NATS servers' configuration, or lower limits.max_message_bytes (--max-message-bytes)")]
    PayloadTooSmall {
        server: String,
        max_payload: usize,
        needed: usize,
    },
    #[error("JetStream cannot keep {replicas} replicas of the stream: {problem}; run at least {replicas} NATS servers in one JetStream cluster, or lower cluster.replicas (--nats-replicas)")]
    TooFewServers { replicas: usize, problem: String },
    #[error("the JetStream stream {STREAM} exists but {problem}; it was not made by this version of Tidings: remove it (`nats stream rm {STREAM}`, which deletes its messages) or point Tidings at another NATS account")]
    Incompatible { problem: String },
    #[error("cannot set up the JetStream stream {STREAM}: {problem}; check the NATS servers' logs and that JetStream has a leader")]
    Stream { problem: String },
}

//! Connector leases in a JetStream key-value bucket, `tidings-leases`: one key per connector
//! whose value is the holder's node id. The bucket's `max_age` is the lease time, so a key not
//! renewed for that long disappears; taking a lease is `create` (only if absent), renewing is
//! `update` at the revision last written (refused once anyone else wrote), releasing is a
//! delete at that revision. The revision is the token.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, stream::StorageType};

use super::error::ClusterError;
use crate::log::{Acquired, Leases, LogError};

/// The bucket every node shares.
pub const BUCKET: &str = "tidings-leases";

/// Leases of one node.
pub struct KvLeases {
    store: kv::Store,
    node: String,
    ttl: Duration,
}

/// A connector name as a key (`[-/_=.a-zA-Z0-9]`); other names are written in hex.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    {
        return name.to_owned();
    }
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("x.{hex}")
}

impl KvLeases {
    /// Open (creating if needed) the bucket with leases of `ttl` and `replicas` copies.
    pub(super) async fn open(
        js: &jetstream::Context,
        node: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let store = match js.get_key_value(BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "Tidings connector leases (cluster mode)".to_owned(),
                    history: 1,
                    max_age: ttl,
                    storage: StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| ClusterError::Stream {
                    problem: format!("cannot create the lease bucket {BUCKET}: {e}"),
                })?,
        };
        let status = store.status().await.map_err(|e| ClusterError::Stream {
            problem: format!("cannot read the lease bucket {BUCKET}: {e}"),
        })?;
        let ttl_in_bucket = status.max_age();
        if ttl_in_bucket != ttl {
            tracing::warn!(
                configured = ?ttl,
                bucket = ?ttl_in_bucket,
                "the lease bucket has another lease time; it wins (all nodes must agree): change it with `nats kv edit {BUCKET} --ttl`"
            );
        }
        Ok(KvLeases {
            store,
            node: node.to_owned(),
            ttl: ttl_in_bucket,
        })
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("{what}: {e}"))
}

#[async_trait::async_trait]
impl Leases for KvLeases {
    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(&self, name: &str) -> Result<Acquired, LogError> {
        let key = key(name);
        match self.store.create(&key, self.node.clone().into()).await {
            Ok(revision) => Ok(Acquired::Taken(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let holder = self
                    .store
                    .get(&key)
                    .await
                    .ok()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                Ok(Acquired::HeldBy(holder))
            }
            Err(e) => Err(unavailable("cannot take a connector lease", e)),
        }
    }

    async fn renew(&self, name: &str, token: u64) -> Result<Option<u64>, LogError> {
        match self
            .store
            .update(key(name), self.node.clone().into(), token)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable("cannot renew a connector lease", e)),
        }
    }

    async fn release(&self, name: &str, token: u64) {
        if let Err(e) = self
            .store
            .delete_expect_revision(key(name), Some(token))
            .await
        {
            tracing::debug!(connector = name, error = %e, "lease not released (another node may hold it)");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn connector_names_become_valid_keys() {
        assert_eq!(super::key("pg_orders-1"), "pg_orders-1");
        assert_eq!(super::key("my pg"), "x.6d79207067");
    }
}

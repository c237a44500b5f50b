//! The server in this process with one Postgres connector: the one place this suite builds
//! connectors from a configuration.

use std::time::Duration;

use tidings::config::{Config, ConnectorConfig};
use tidings::runtime::Server;
use tidings_connector_postgres::{ConnectionUrl, PostgresConfig};
use tidings_testkit::postgres::Cluster;
use tidings_testkit::KEY;

/// A server in this process with one Postgres connector named `pg`.
pub struct InProcess {
    /// The running server: its log, address and shutdown.
    pub server: Server,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Start with the connector `pg` on `cluster`, as `adjust` leaves its configuration.
    pub async fn start(cluster: &Cluster, adjust: impl FnOnce(&mut PostgresConfig)) -> InProcess {
        Self::start_named("pg", cluster, adjust).await
    }

    /// Like [`InProcess::start`], with the connector named `name` (process-wide metrics are
    /// labelled by connector name, so a test reading them needs its own).
    pub async fn start_named(
        name: &str,
        cluster: &Cluster,
        adjust: impl FnOnce(&mut PostgresConfig),
    ) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.add_api_key(KEY).unwrap();
        let mut pg = PostgresConfig::with_defaults(ConnectionUrl::new(cluster.url()));
        pg.status_interval = Duration::from_millis(500);
        pg.cleanup_interval = Duration::from_millis(10);
        adjust(&mut pg);
        config
            .connectors
            .insert(name.into(), ConnectorConfig::Postgres(pg));
        let server = Server::start(config).await.unwrap();
        InProcess { server, _dir: dir }
    }

    /// Its HTTP base URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.server.addr())
    }
}

/// The head serial of `channel` in the in-process server's log.
pub async fn head(t: &InProcess, channel: &str) -> u64 {
    t.server
        .log()
        .state(&tidings::channel::ChannelName::parse(channel).unwrap())
        .await
        .unwrap()
        .head
}

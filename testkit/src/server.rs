//! The real server running in the test's own process, on port 0 and a temporary data
//! directory, with the test key.

use std::net::SocketAddr;

use tidings::config::Config;
use tidings::runtime::Server;

use crate::KEY;

/// A server running in this process on a temporary data directory; the directory goes when
/// this is dropped.
pub struct TestServer {
    /// The running server: its log, hub and shutdown.
    pub server: Server,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// The configuration it was started with.
    pub config: Config,
}

impl TestServer {
    /// Start with the default configuration and the test key.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with the configuration `adjust` leaves (listen address, data directory and the
    /// test key already set).
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

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Its WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.server.addr())
    }

    /// Its HTTP base URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Shut down gracefully and wait until it has.
    pub async fn stop(self) {
        self.server.shutdown();
        self.server.wait().await;
    }
}

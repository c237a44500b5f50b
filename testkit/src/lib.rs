//! The real parts Tidings' tests and benchmarks run against, in one place: a throwaway
//! Postgres cluster, a three-member NATS JetStream cluster, the `tidings` binary as a child process, the server in-process on port 0
//! (feature `server`), a TCP fault proxy, WebSocket and SSE test clients, and the REST calls
//! a test makes beside them. Every suite uses these, so each part is written once.

pub mod nats;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod rest;
#[cfg(feature = "server")]
pub mod server;
pub mod sse;
pub mod trace;
pub mod wait;
pub mod ws;

pub use wait::{wait_for, WAIT};

/// The API key (`ID:SECRET`) every test server is started with and every test client sends.
pub const KEY: &str = "test:test-secret-1";

/// The `tidings` binary Cargo built for the calling integration test (`CARGO_BIN_EXE_tidings`,
/// known only while compiling the `tidings` package's own tests), as a `&Path`.
#[macro_export]
macro_rules! tidings_exe {
    () => {
        ::std::path::Path::new(env!("CARGO_BIN_EXE_tidings"))
    };
}

//! Log output of the code under test, shown beside a failing test.

/// Send this process's `tracing` output to the test's captured output (shown for failing
/// tests) at `info`, or as `RUST_LOG` says. Later calls do nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

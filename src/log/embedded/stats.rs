//! Counters the writer keeps about its own work.

use std::sync::atomic::AtomicU64;

/// Counters about the writer, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Messages appended (duplicates excluded).
    pub messages: AtomicU64,
}

//! Tidings: tails database change feeds into a durable channel log and fans it out to web and
//! mobile clients that resume exactly where they left off.
//!
//! The binary (`main.rs`) only parses arguments; everything lives here. See
//! `ARCHITECTURE.md` in the repository for the flow and the invariants.

pub mod channel;
pub mod log;

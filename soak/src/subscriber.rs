//! The subscribers: the Rust SDK over WebSocket, SSE and long-poll (`rust.rs`), the JS SDK in
//! Node over the same three (`js.rs`). Each follows every soak channel and fills its
//! [`Ledger`](crate::ledger::Ledger); the fault schedule drops one (its process or tasks
//! ended, then a new one started from the ledger's positions) or stalls one (it stops reading
//! for a while: the Rust SDK's reader stops asking, the Node process is stopped with SIGSTOP).

mod js;
mod rust;

use std::time::Duration;

pub use js::JsSubscriber;
pub use rust::RustSubscriber;

use crate::ledger::Shared;

/// One subscriber, of either SDK.
pub enum Subscriber {
    Rust(RustSubscriber),
    Js(JsSubscriber),
}

impl Subscriber {
    pub fn name(&self) -> &str {
        match self {
            Subscriber::Rust(s) => &s.name,
            Subscriber::Js(s) => &s.name,
        }
    }

    pub fn ledger(&self) -> &Shared {
        match self {
            Subscriber::Rust(s) => &s.ledger,
            Subscriber::Js(s) => &s.ledger,
        }
    }

    /// Start following, from the ledger's positions (now, the first time); resolves once every
    /// channel is attached.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        match self {
            Subscriber::Rust(s) => s.start().await,
            Subscriber::Js(s) => s.start().await,
        }
    }

    /// End it abruptly (tasks aborted / `kill -9`), keeping what it recorded.
    pub async fn stop(&mut self) {
        match self {
            Subscriber::Rust(s) => s.stop().await,
            Subscriber::Js(s) => s.stop().await,
        }
    }

    /// Stop reading for `pause`, then go on.
    pub async fn stall(&self, pause: Duration) {
        match self {
            Subscriber::Rust(s) => s.stall(pause).await,
            Subscriber::Js(s) => s.stall(pause).await,
        }
    }
}

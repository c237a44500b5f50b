//! `tidings-soak`: the fault soak (docs/reliability.md, "Fault soak"). Writers commit outbox
//! rows in Postgres and publish over REST while subscribers on every transport of both SDKs
//! follow their channels and a seeded fault schedule strikes: Tidings `kill -9`, Postgres
//! restarts, walsenders terminated, links cut and frozen, subscribers dropped and stalled. At
//! the end every committed row and acknowledged publish must have reached every subscriber
//! once, in order, or the subscriber must have been told continuity was lost.
//!
//! Run it with `scripts/soak --minutes N [--seed S] [--release]`.

mod account;
mod fault;
mod ledger;
mod outbox;
mod publisher;
mod soak;
mod subscriber;
mod topology;

use clap::Parser;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let options = soak::Options::parse();
    if !soak::run(options).await? {
        std::process::exit(1);
    }
    Ok(())
}

//! `tidings-bench`: the load generator behind `bench/run`.
//!
//! Every subcommand prints a human summary and, with `--json`, one JSON object of figures on
//! stdout (the summary then goes to stderr). Publisher and subscribers share this process, so
//! latencies are measured on one clock: each message's data carries its send instant.
//!
//! `fanout`, `idle`, `channels` and `storm` drive Tidings or one of its peers (`--system`,
//! see [`system`]) through the same client code.

mod catchup;
mod channels;
mod common;
mod fanout;
mod http;
mod idle;
mod pg;
mod publish;
mod smoke;
mod storm;
mod system;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tidings-bench",
    about = "Load generator for the Tidings server and its benchmark peers"
)]
struct Cli {
    /// Print one JSON object of figures on stdout (the human summary goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Tokio worker threads (default: the CPUs this process may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers (WebSocket, SSE or long-poll) on one channel, one paced WebSocket
    /// publisher: delivery latency and continuity.
    Fanout(fanout::FanoutArgs),
    /// N idle WebSocket connections: the server's resident memory per connection.
    Idle(idle::IdleArgs),
    /// N subscribers, each on its own channel plus one shared channel.
    Channels(channels::ChannelsArgs),
    /// N subscribers drop at once and reconnect: time until all have caught up.
    Storm(storm::StormArgs),
    /// C concurrent REST publishers: acknowledged msg/s and request latency.
    Publish(publish::PublishArgs),
    /// Fill a channel with M messages, then time one client replaying them all.
    Catchup(catchup::CatchupArgs),
    /// The Postgres outbox: Tidings beside pg_recvlogical and a polling relay, on one cluster.
    Pg(pg::PgArgs),
    /// Every scenario at a tiny size (CI); exits non-zero on any lost, duplicated or
    /// out-of-order message.
    Smoke(smoke::SmokeArgs),
}

fn main() {
    let cli = Cli::parse();
    common::init_clock();
    let nofile = common::raise_nofile();
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidings-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let needed = match &cli.cmd {
        Cmd::Fanout(a) => a.subscribers as u64 + 64,
        Cmd::Idle(a) => a.connections as u64 + 64,
        Cmd::Channels(a) => a.subscribers as u64 + 64,
        Cmd::Storm(a) => a.subscribers as u64 + 64,
        _ => 0,
    };
    if needed > nofile {
        eprintln!("warning: RLIMIT_NOFILE is {nofile}, below the {needed} descriptors needed");
    }
    let ok = rt.block_on(async {
        let result = match &cli.cmd {
            Cmd::Fanout(a) => fanout::run(a).await,
            Cmd::Idle(a) => idle::run(a).await,
            Cmd::Channels(a) => channels::run(a).await,
            Cmd::Storm(a) => storm::run(a).await,
            Cmd::Publish(a) => publish::run(a).await,
            Cmd::Catchup(a) => catchup::run(a).await,
            Cmd::Pg(a) => return pg::print(pg::run(a).await, cli.json),
            Cmd::Smoke(a) => {
                let reports = smoke::run(a).await;
                return smoke::print(&reports, cli.json);
            }
        };
        match result {
            Ok(r) => {
                r.print(cli.json);
                r.problems.is_empty()
            }
            Err(e) => {
                eprintln!("tidings-bench: {e:#}");
                false
            }
        }
    });
    // Thousands of sockets may still be open: exit without waiting for them to wind down.
    std::process::exit(if ok { 0 } else { 1 });
}

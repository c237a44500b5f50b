//! The `tidings` binary: parse arguments, hand off to the library.

use clap::Parser;
use tidings::cli::{Cli, Command};

/// mimalloc: a server allocating small, short-lived buffers for every request and frame spends
/// a fifth of its time in glibc's malloc under load; mimalloc's thread-local pages cut that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => tidings::cli::serve(args).await,
        Command::Migrate(args) => tidings::cli::migrate(args).await,
        Command::Tail(args) => tidings::tail::run(args).await.map_err(Into::into),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

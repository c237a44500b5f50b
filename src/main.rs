//! The `tidings` binary: parse arguments, hand off to the library.

use clap::Parser;
use tidings::cli::{Cli, Command};

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

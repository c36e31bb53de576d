//! The `hookd` binary: parses the command line and runs a node until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use hookd::cli::{self, Cli, Commands};
use hookd::node;

/// jemalloc, not glibc's malloc: glibc kept ~150 MiB a node no longer used after each large
/// snapshot build (per-thread arenas keep their free pages), and jemalloc gives them back; it
/// also filled 1M jobs a third faster (docs/decisions.md#jemalloc).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match cli.command {
        Commands::Serve(args) => {
            return match node::serve_until_signal(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hookd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Commands::Client(c) => c,
    };
    match cli::run(cli.client, client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

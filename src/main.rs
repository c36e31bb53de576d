//! The `hookd` binary: parses the command line and runs a node until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hookd::cli::{self, Cli, Commands};
use hookd::config::ServeArgs;
use hookd::node::{self, Listeners};
use tokio_util::sync::CancellationToken;

/// jemalloc, not glibc's malloc: glibc kept ~150 MiB a node no longer used after each large
/// snapshot build (per-thread arenas keep their free pages), and jemalloc gives them back; it
/// also filled 1M jobs a third faster (docs/decisions.md#jemalloc).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match cli.command {
        Commands::Serve(args) => {
            return match serve(args) {
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    init_tracing(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hookd")
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind_or_inherit(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        node::run(config, listeners, shutdown).await
    })
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log reader that went away must not stop the node: tracing-subscriber would report
        // the failed write with `eprintln!`, which panics on a closed stderr (in whichever task
        // logged, the signal handler's included).
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Cancels `token` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    token.cancel();
    tracing::info!("{name}: shutting down");
}

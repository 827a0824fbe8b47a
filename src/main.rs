//! The `shardis` binary: command line, logging, runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shardis::config::Config;
use shardis::control::reload_on_sighup;
use shardis::server::Server;
use tracing::error;

/// A Redis-protocol sharding proxy.
#[derive(Parser, Debug)]
#[command(name = "shardis", version, about)]
struct Args {
    /// Configuration file.
    #[arg(short, long, default_value = "proxy.toml")]
    config: PathBuf,
    /// Listen address, overriding the configuration's `listen`.
    #[arg(short, long)]
    listen: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// jemalloc rather than glibc's malloc: after load and client churn glibc
/// keeps freed buffers in fragmented arenas, jemalloc purges them back to
/// the OS (bench/README.md: RSS with 10,000 idle clients after load).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardis: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: OK ({} backends)", args.config.display(), config.backends.len());
        return ExitCode::SUCCESS;
    }
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Look at the runtime's queue of wake-ups from other threads every 4 task
    // polls instead of tokio's self-tuned interval. A backend reply batch
    // wakes hundreds of sessions at once; GET with 1000 clients, one
    // thread: p99 58-101 ms -> 33-38 ms, same throughput and CPU.
    let tune = |b: &mut tokio::runtime::Builder| {
        b.global_queue_interval(4);
    };
    // One thread: everything on one current-thread runtime. More: one
    // current-thread runtime per worker thread, each with its own sessions
    // and backend connections (shardis::workers), and this thread's runtime
    // only accepts clients and handles SIGHUP. Both avoid the work-stealing
    // scheduler, whose cross-thread wake-ups cost more than they bring to a
    // proxy (bench/README.md).
    let workers = if threads > 1 {
        match shardis::workers::Workers::start(threads, tune) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("shardis: cannot start {threads} worker threads: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let executors = workers.as_ref().map(|w| w.executors()).unwrap_or_default();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    tune(&mut builder);
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::bind_on(config, args.listen.as_deref(), executors).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = reload_on_sighup(server.shared.clone(), args.config.clone()) {
            error!(error = %e, "cannot install the SIGHUP handler");
            return ExitCode::FAILURE;
        }
        server.run().await;
        ExitCode::SUCCESS
    })
}

//! The `shardis` binary: command line, logging, runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Operate a fleet of proxies that share one topology in etcd.
    Ctl(CtlArgs),
}

#[derive(clap::Args, Debug)]
struct CtlArgs {
    /// etcd endpoints, comma-separated (host:port).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The fleet's name (`[cluster] name` in the proxies' files).
    #[arg(long)]
    cluster: String,
    #[command(subcommand)]
    op: CtlOp,
}

#[derive(Subcommand, Debug)]
enum CtlOp {
    /// Change the fleet's shards: a file of [[backends]] (+ [ring], [redlock]).
    /// Returns once every proxy serves the new epoch and the keys have moved.
    Apply {
        file: PathBuf,
        /// How long every proxy gets to acknowledge before the change is aborted.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Return once every proxy serves the new epoch, without waiting for
        /// the background migration to end.
        #[arg(long)]
        detach: bool,
    },
    /// Epoch, phase, shards, proxies and the migration's progress.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove a proxy that is gone from the fleet (fencing it at the shards
    /// first when the fleet fences), so changes stop waiting for it.
    Evict {
        id: String,
        /// Evict even if it could not be fenced on every shard.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `shardis ctl` command: exit 0 on success, 1 with the reason.
fn ctl(args: CtlArgs) -> ExitCode {
    use shardis::cluster::ctl;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardis ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (etcd, cluster) = (&args.etcd, args.cluster.as_str());
    let r = rt.block_on(async {
        match args.op {
            CtlOp::Apply {
                file,
                timeout_ms,
                detach,
            } => {
                let opts = ctl::ApplyOptions {
                    ack_timeout_ms: timeout_ms,
                    detach,
                };
                ctl::apply(etcd, cluster, &file, opts).await
            }
            CtlOp::Status { json } => ctl::status(etcd, cluster, json).await,
            CtlOp::Evict { id, force } => ctl::evict(etcd, cluster, &id, force).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardis ctl: {e}");
            ExitCode::FAILURE
        }
    }
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
    if let Some(Cmd::Ctl(c)) = args.cmd {
        return ctl(c);
    }
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
        0 => shardis::workers::default_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
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
        // In a fleet, the topology comes from etcd (seeded from this file
        // when the fleet has none), and the listener serves only once it is
        // in place.
        let listen = args.listen.clone().unwrap_or_else(|| config.listen.clone());
        let (config, joined) = if config.cluster.is_some() {
            match shardis::cluster::agent::join(config, &listen).await {
                Ok(j) => (j.config.clone(), Some(j)),
                Err(e) => {
                    error!(error = %e, "cannot join the fleet");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            (config, None)
        };
        let server = match Server::bind_on(config, args.listen.as_deref(), executors).await {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let mut fleet = None;
        if let Some(j) = joined {
            let topo = server.shared.topology.load_full();
            server.shared.topology.adopt(topo.config.clone(), j.epoch, None);
            drop(topo);
            fleet = Some(shardis::cluster::agent::start(server.shared.clone(), j).await);
        }
        if let Err(e) = reload_on_sighup(server.shared.clone(), args.config.clone()) {
            error!(error = %e, "cannot install the SIGHUP handler");
            return ExitCode::FAILURE;
        }
        // SIGTERM / SIGINT: stop accepting, drain the clients, run the
        // shutdown hooks, exit 0 (shardis::shutdown).
        if let Err(e) = shardis::shutdown::on_signals(&server.shared.shutdown) {
            error!(error = %e, "cannot install the SIGTERM / SIGINT handlers");
            return ExitCode::FAILURE;
        }
        let shared = server.shared.clone();
        server.run().await;
        shardis::server::drain(&shared, shardis::server::shutdown_deadline(&shared)).await;
        // Leave the fleet only once every request read has been answered:
        // until then this proxy may still write with its topology, so a
        // change must keep waiting for its acknowledgement (its agent keeps
        // following the fleet meanwhile).
        if let Some(handle) = fleet {
            handle.leave().await;
        }
        ExitCode::SUCCESS
    })
}

//! The listener: accepts clients, enforces the client limit, and applies
//! configuration reloads (SIGHUP) to the topology.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::session::Session;
use crate::topology::TopologyCell;
use crate::workers::Executors;

/// Counters shared by every session.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients: AtomicUsize,
    pub connections: AtomicU64,
    pub rejected: AtomicU64,
    /// Bumped on every read of every client: striped, see [`StripedCounter`].
    pub commands: StripedCounter,
}

/// Stripes of [`StripedCounter`]; threads beyond this share stripes.
const STRIPES: usize = 16;

/// One stripe on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A counter written by every worker thread and read rarely (INFO). Each
/// thread adds to its own cache line, so sessions on different threads never
/// contend for one line as they would with a single `AtomicU64`.
#[derive(Debug, Default)]
pub struct StripedCounter([Stripe; STRIPES]);

impl StripedCounter {
    pub fn add(&self, n: u64) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        let i = MINE.with(|i| *i);
        self.0[i].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// State shared by every session.
pub struct Shared {
    pub topology: TopologyCell,
    pub stats: Stats,
    pub locks: crate::lock::LockService,
    pub started: Instant,
    next_id: AtomicU64,
    /// The file `SHARDIS.RELOAD` and SIGHUP re-read (none for a proxy built
    /// from a configuration in memory).
    pub config_path: std::sync::OnceLock<PathBuf>,
}

/// A running proxy.
pub struct Server {
    pub shared: Arc<Shared>,
    listener: TcpListener,
    /// Where sessions run: the worker runtimes, or this runtime if none.
    executors: Executors,
}

impl Server {
    /// Binds the listen address (`listen` overrides the config's) and starts
    /// the backend pools, sessions and pools all on the current runtime.
    pub async fn bind(config: Config, listen: Option<&str>) -> std::io::Result<Server> {
        Server::bind_on(config, listen, Executors::current()).await
    }

    /// As [`Server::bind`], with sessions and backend connections on the
    /// given worker runtimes (thread per core, see [`crate::workers`]); the
    /// listener stays on the current runtime.
    pub async fn bind_on(config: Config, listen: Option<&str>, executors: Executors) -> std::io::Result<Server> {
        let addr = listen.unwrap_or(&config.listen).to_string();
        let listener = TcpListener::bind(&addr).await?;
        let shared = Arc::new(Shared {
            topology: TopologyCell::new(Arc::new(config), executors.clone()),
            stats: Stats::default(),
            locks: crate::lock::LockService::default(),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            config_path: std::sync::OnceLock::new(),
        });
        Ok(Server {
            shared,
            listener,
            executors,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts clients forever.
    pub async fn run(self) {
        let topo = self.shared.topology.load_full();
        info!(
            listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            shards = topo.shards.len(),
            slots = topo.ring.slots(),
            epoch = topo.epoch,
            "shardis listening"
        );
        drop(topo);
        let mut next_worker = 0usize;
        loop {
            let (mut sock, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            shared.stats.connections.fetch_add(1, Ordering::Relaxed);
            let max = shared.topology.load().config.limits.max_clients;
            if shared.stats.clients.fetch_add(1, Ordering::AcqRel) >= max {
                shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
                shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                });
                continue;
            }
            let _ = sock.set_nodelay(true);
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let laddr = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
            if self.executors.is_empty() {
                tokio::spawn(async move {
                    let session = Session::new(shared.clone(), id, peer.to_string(), laddr);
                    session.run(sock).await;
                    shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
                });
                continue;
            }
            // Hand the socket to the next worker (round robin): it leaves this
            // runtime's reactor here and joins the worker's in the task, where
            // the session then lives for good.
            let std_sock = match sock.into_std() {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot hand a client to a worker");
                    shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
            };
            next_worker = next_worker.wrapping_add(1);
            self.executors.spawn_on(next_worker, async move {
                match TcpStream::from_std(std_sock) {
                    Ok(sock) => {
                        let session = Session::new(shared.clone(), id, peer.to_string(), laddr);
                        session.run(sock).await;
                    }
                    Err(e) => warn!(error = %e, "a worker cannot take a client"),
                }
                shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

/// Re-reads `path` on every SIGHUP and applies a valid new configuration.
/// An invalid file is logged and the running topology stays.
/// `path` also becomes the file `SHARDIS.RELOAD` reads.
pub fn reload_on_sighup(shared: Arc<Shared>, path: PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let _ = shared.config_path.set(path.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reload(&shared, &path);
        }
    });
    Ok(())
}

/// Applies the configuration in `path`; returns the new epoch, or why the
/// file was refused (the running topology then stays). Refused while a
/// migration runs; see [`reload_forced`].
pub fn reload(shared: &Shared, path: &std::path::Path) -> Result<u64, String> {
    reload_forced(shared, path, false)
}

/// As [`reload`]; with `force`, a migration still running is abandoned
/// rather than the reload refused.
pub fn reload_forced(shared: &Shared, path: &std::path::Path, force: bool) -> Result<u64, String> {
    match Config::load(path).map_err(|e| e.to_string()).and_then(|cfg| {
        let old = shared.topology.load_full();
        if cfg.listen != old.config.listen {
            warn!(old = %old.config.listen, new = %cfg.listen, "listen address changes need a restart; keeping the old one");
        }
        shared.topology.apply(Arc::new(cfg), shared.locks.max_ttl(), force)
    }) {
        Ok(epoch) => {
            let topo = shared.topology.load();
            info!(
                epoch,
                shards = topo.shards.len(),
                "configuration reloaded, new topology in service"
            );
            if !topo.locks.previous.is_empty() {
                warn!(
                    group = ?topo.locks.current,
                    joint_with = ?topo.locks.previous.iter().map(|(g, _)| g).collect::<Vec<_>>(),
                    "lock group changed: grants need a majority of the old and the new group until the longest granted TTL has passed"
                );
            }
            Ok(epoch)
        }
        Err(e) => {
            error!(error = %e, "configuration reload refused; keeping the running topology");
            Err(e)
        }
    }
}

//! State shared by every session and background task of one proxy: the live
//! topology, the lock service, counters, the shutdown signal, where the
//! configuration came from, the live sessions, monitors, slow log and the
//! `/metrics` counters. Made once per proxy ([`Shared::new`]); nothing here starts tasks or
//! does I/O.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::acl::limit::LoginLimit;
use crate::config::Config;
use crate::counters::CommandCounters;
use crate::lock::service::LockService;
use crate::monitor::Monitors;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::slowlog::SlowLog;
use crate::topology::TopologyCell;
use crate::workers::Executors;

/// Counters shared by every session.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients: AtomicUsize,
    /// Clients closed for being idle past `limits.client_idle_timeout_s`.
    pub idle_closed: AtomicU64,
    pub connections: AtomicU64,
    pub rejected: AtomicU64,
    /// Clients waiting on a blocking command (BLPOP ...).
    pub blocked: AtomicUsize,
    /// Bumped on every read of every client: striped, see [`StripedCounter`].
    pub commands: StripedCounter,
    /// Failed logins (AUTH, HELLO AUTH), including those refused by the
    /// rate limit ([`crate::acl::limit`]).
    pub auth_failures: AtomicU64,
    /// The client listener accepts (set by [`crate::server::Server::run`],
    /// cleared when it closes): part of `/readyz`.
    pub listening: AtomicBool,
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

/// What the fleet agent last read from etcd (fleet mode), for
/// `/api/status` and `/metrics`: written by [`crate::cluster`] on every
/// change it sees.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// `stable`, `prepared` or `committed`.
    pub phase: &'static str,
    pub epoch: u64,
    pub members: Vec<FleetMember>,
}

/// One proxy of the fleet.
#[derive(Debug, Clone)]
pub struct FleetMember {
    pub id: String,
    pub addr: String,
    /// The epoch it serves.
    pub serving: u64,
    /// Its liveness lease is current.
    pub alive: bool,
}

/// State shared by every session.
pub struct Shared {
    pub topology: TopologyCell,
    pub stats: Stats,
    pub locks: LockService,
    pub started: Instant,
    next_id: AtomicU64,
    /// The file `SHARDIS.RELOAD` and SIGHUP re-read (none for a proxy built
    /// from a configuration in memory).
    pub config_path: OnceLock<PathBuf>,
    /// Fired by SIGTERM / SIGINT (or an embedder): the listener stops,
    /// sessions drain, hooks run. See [`crate::shutdown`].
    pub shutdown: Shutdown,
    /// The live sessions and the client pause (CLIENT LIST / KILL / PAUSE).
    pub clients: Registry,
    /// The connected MONITORs.
    pub monitors: Monitors,
    /// The proxy's SLOWLOG.
    pub slowlog: SlowLog,
    /// The failover task's state (Sentinel subscription, polls), for INFO.
    pub sentinel: crate::backend::sentinel::SentinelStatus,
    /// Failed logins per source IP (see [`crate::acl::limit`]).
    pub logins: LoginLimit,
    /// Per-command counters for `/metrics` (see [`crate::counters`]).
    pub counters: CommandCounters,
    /// The fleet as the agent last saw it; none outside fleet mode.
    pub fleet: arc_swap::ArcSwapOption<FleetView>,
    /// Output buffer, per-address and per-user limits and their counters
    /// (see [`crate::limits`]).
    pub limits: Arc<crate::limits::Limits>,
}

impl Shared {
    /// The state of a proxy serving `config`; the first topology's shards
    /// start their connections on `executors` (needs a tokio runtime).
    pub fn new(config: Config, executors: Executors) -> Arc<Shared> {
        let slowlog = SlowLog::new(config.slowlog_log_slower_than_us, config.slowlog_max_len);
        let counters = CommandCounters::new(executors.groups());
        let limits = Arc::new(crate::limits::Limits::new(&config.limits));
        Arc::new(Shared {
            topology: TopologyCell::new(Arc::new(config), executors),
            stats: Stats::default(),
            locks: LockService::default(),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            config_path: OnceLock::new(),
            shutdown: Shutdown::new(),
            clients: Registry::default(),
            monitors: Monitors::default(),
            slowlog,
            sentinel: Default::default(),
            logins: LoginLimit::default(),
            counters,
            fleet: arc_swap::ArcSwapOption::empty(),
            limits,
        })
    }

    /// A new client id (CLIENT ID).
    pub fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

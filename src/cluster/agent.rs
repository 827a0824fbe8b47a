//! One proxy's part in the fleet: joining (seeding an empty cluster, or
//! taking etcd's topology), following the phase machine, acknowledging a
//! prepared epoch once its hold is in place, and, when elected, deciding
//! commits and aborts and running the background migration.
//!
//! The data path never waits on this task: it only swaps the topology. If
//! etcd is unreachable the proxy keeps serving the epoch it has; a hold in
//! place answers TRYAGAIN after the hold timeout until the change is seen
//! committed or aborted.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

use super::fence::Fence;
use super::phase::{self, ClusterDoc, Decision, Local, Member, Progress, Step};
use super::store::{EtcdError, Snapshot, Store, now_ms};
use crate::config::{ClusterConfig, Config, FleetSpec};
use crate::hold::{Hold, HoldEnd};
use crate::ring::Ring;
use crate::state::Shared;

/// How often the agent looks at etcd when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);

/// Why a proxy could not join its fleet.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error("{0}")]
    Config(String),
}

/// A proxy that has joined its fleet, before it serves.
pub struct Joined {
    pub store: Store,
    pub id: String,
    pub lease: i64,
    /// The configuration to serve: the local file with the fleet's shards.
    pub config: Config,
    /// The epoch of `config`.
    pub epoch: u64,
    base: Config,
    cluster: ClusterConfig,
    fence: Option<Fence>,
}

/// This proxy's id: `[cluster] id`, or `<hostname>:<listen port>`.
pub fn proxy_id(cfg: &Config, c: &ClusterConfig) -> String {
    if let Some(id) = &c.id {
        return id.clone();
    }
    let host = hostname();
    let port = cfg.listen.rsplit_once(':').map_or("6380", |(_, p)| p);
    format!("{host}:{port}")
}

/// The address `status` shows for a proxy listening on `listen`: the
/// listen address, or `<hostname>:<port>` when it listens on every
/// interface (0.0.0.0, [::]).
fn advertised(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::" | "", port)) => format!("{}:{port}", hostname()),
        _ => listen.to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Connects to etcd (retrying until it answers), seeds the fleet's
/// topology from `base` if it has none, registers this proxy and returns
/// the configuration to serve. `listen`: the address clients reach it at.
pub async fn join(base: Config, listen: &str) -> Result<Joined, JoinError> {
    let Some(cluster) = base.cluster.clone() else {
        return Err(JoinError::Config("no [cluster] section".into()));
    };
    let id = proxy_id(&base, &cluster);
    let mut delay = Duration::from_millis(200);
    let store = loop {
        match Store::connect(&cluster.etcd, &cluster.name).await {
            Ok(s) => match s.snapshot().await {
                Ok(_) => break s,
                Err(e) => warn!(error = %e, "etcd does not answer yet; retrying"),
            },
            Err(e) => warn!(error = %e, endpoints = ?cluster.etcd, "cannot reach etcd yet; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    let snap = store.snapshot().await?;
    if snap.doc.is_none() {
        if base.backends.is_empty() {
            return Err(JoinError::Config(format!(
                "fleet '{}' has no topology in etcd yet and this file has no [[backends]] to seed it",
                cluster.name
            )));
        }
        let spec = FleetSpec::of(&base).seeded();
        if store.swap_doc(0, &ClusterDoc::seed(spec.to_toml())).await? {
            info!(fleet = %cluster.name, shards = spec.backends.len(), "seeded the fleet's topology from this proxy's file");
        }
    } else if !base.backends.is_empty() {
        info!(fleet = %cluster.name, "the fleet's topology comes from etcd; this file's [[backends]] are ignored");
    }
    let lease = store.grant(cluster.lease_ttl_s).await?;
    let fence = cluster.fence.then(|| Fence::new(&id));
    let member = Member {
        id: id.clone(),
        addr: cluster.advertise.clone().unwrap_or_else(|| advertised(listen)),
        serving: 0,
        acked: 0,
        pid: std::process::id(),
        started_ms: now_ms(),
        fence_user: fence.as_ref().map(|f| f.user.clone()),
        fence_password: fence.as_ref().map(|f| f.password.clone()),
    };
    store.put_member(&member).await?;
    store.put_alive(&id, lease).await?;
    // Read again after registering: a change committed from now on has
    // waited for this proxy's acknowledgement.
    let snap = store.snapshot().await?;
    let doc = snap
        .doc
        .ok_or_else(|| JoinError::Config("the fleet's topology disappeared from etcd".into()))?;
    let spec = parse_spec(&doc.spec)?;
    if let Some(f) = &fence {
        f.enable(&spec).await.map_err(JoinError::Config)?;
    }
    let config = effective(&base, &spec, fence.as_ref()).map_err(JoinError::Config)?;
    info!(fleet = %cluster.name, id = %id, epoch = doc.epoch, phase = doc.phase_name(), "joined the fleet");
    Ok(Joined {
        store,
        id,
        lease,
        config,
        epoch: doc.epoch,
        base,
        cluster,
        fence,
    })
}

fn parse_spec(text: &str) -> Result<FleetSpec, JoinError> {
    toml::from_str(text).map_err(|e| JoinError::Config(format!("the fleet's topology in etcd does not parse: {e}")))
}

/// The configuration a proxy serves: its own file's settings with the
/// fleet's shards, ring and lock group (and its fence credentials).
fn effective(base: &Config, spec: &FleetSpec, fence: Option<&Fence>) -> Result<Config, String> {
    let mut cfg = spec.apply_to(base).map_err(|e| e.to_string())?;
    if let Some(f) = fence {
        for b in &mut cfg.backends {
            b.username = Some(f.user.clone());
            b.password = Some(f.password.clone());
        }
    }
    Ok(cfg)
}

/// What the running agent leaves to the rest of the proxy: the way out.
#[derive(Clone)]
pub struct Handle {
    store: Store,
    id: String,
    lease: Arc<AtomicI64>,
    leaving: Arc<std::sync::atomic::AtomicBool>,
}

impl Handle {
    /// Deregisters (a graceful shutdown): a change no longer waits for this
    /// proxy. Its liveness lease is revoked and it stops being the migrator.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        let _ = self.store.resign(&self.id).await;
        match self.store.delete_member(&self.id).await {
            Ok(_) => info!(id = %self.id, "left the fleet"),
            Err(e) => warn!(id = %self.id, error = %e, "could not deregister from the fleet"),
        }
        let _ = self.store.revoke(self.lease.load(Ordering::Acquire)).await;
    }
}

struct Agent {
    shared: Arc<Shared>,
    j: Joined,
    /// The liveness lease in use (renewed by [`keep_alive`] if it expired).
    lease: Arc<AtomicI64>,
    local: Local,
    /// The epoch the migrator task was started for, if this proxy runs one.
    moving: Option<u64>,
    leaving: Arc<std::sync::atomic::AtomicBool>,
    evicted: bool,
    /// What this proxy last wrote as its member record.
    written: (u64, u64),
}

/// Applies whatever `joined`'s snapshot still asks for (a prepared or
/// committed change) before the proxy serves, then follows the fleet in a
/// task. `shared` must serve `joined.config` at `joined.epoch`.
pub async fn start(shared: Arc<Shared>, joined: Joined) -> Handle {
    let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lease = Arc::new(AtomicI64::new(joined.lease));
    let handle = Handle {
        store: joined.store.clone(),
        id: joined.id.clone(),
        lease: lease.clone(),
        leaving: leaving.clone(),
    };
    let mut agent = Agent {
        local: Local {
            epoch: joined.epoch,
            holding: None,
            migrating: false,
        },
        shared,
        j: joined,
        lease,
        moving: None,
        leaving,
        evicted: false,
        written: (0, 0),
    };
    // Catch up before serving: a change committed meanwhile must be in
    // place before the first request is routed.
    if let Ok(snap) = agent.j.store.snapshot().await {
        agent.sync(&snap).await;
    }
    tokio::spawn(agent.run());
    handle
}

impl Agent {
    async fn run(mut self) {
        let store = self.j.store.clone();
        tokio::spawn(keep_alive(
            store.clone(),
            self.j.id.clone(),
            self.lease.clone(),
            self.j.cluster.lease_ttl_s,
            self.leaving.clone(),
        ));
        let mut watch = None;
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            if self.leaving.load(Ordering::Acquire) {
                return;
            }
            match store.snapshot().await {
                Ok(snap) => {
                    if let Some(t) = down_since.take() {
                        info!(after_ms = t.elapsed().as_millis() as u64, "etcd reachable again");
                    }
                    self.sync(&snap).await;
                    if watch.is_none() {
                        watch = store.watch(snap.revision + 1).await.ok();
                    }
                }
                Err(e) => {
                    if down_since.is_none() {
                        warn!(error = %e, "etcd unreachable: serving the topology in place (epoch {})", self.local.epoch);
                        down_since = Some(std::time::Instant::now());
                    }
                    watch = None;
                }
            }
            // Wake on any change under the prefix, or after a tick.
            let tick = tokio::time::sleep(TICK);
            match &mut watch {
                Some(w) => tokio::select! {
                    m = w.message() => match m {
                        Ok(Some(r)) => tracing::debug!(events = r.events().len(), "etcd watch woke the agent"),
                        _ => watch = None,
                    },
                    _ = tick => tracing::debug!("agent tick"),
                },
                None => tick.await,
            }
        }
    }

    /// Brings this proxy in line with `snap`, then acts as coordinator and
    /// migrator if elected.
    async fn sync(&mut self, snap: &Snapshot) {
        super::view::publish(&self.shared, snap);
        if self.evicted || self.leaving.load(Ordering::Acquire) {
            return;
        }
        let Some(doc) = &snap.doc else { return };
        let Some(me) = snap.member(&self.j.id) else {
            return self.evict(doc);
        };
        for step in phase::follow(doc, self.local) {
            if let Err(e) = self.step(step).await {
                error!(error = %e, "cannot follow the fleet's topology");
                return;
            }
        }
        let want = (self.local.epoch, self.local.holding.unwrap_or(me.acked));
        if want != (me.serving, me.acked) || want != self.written {
            let mut m = me.clone();
            (m.serving, m.acked) = want;
            if self.j.store.put_member(&m).await.is_ok() {
                self.written = want;
                if let Some(h) = self.local.holding {
                    info!(epoch = h, "acknowledged the prepared epoch");
                }
            }
        }
        match self
            .j
            .store
            .campaign(&self.j.id, self.lease.load(Ordering::Acquire))
            .await
        {
            Ok(true) => self.lead(snap, doc).await,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "migrator election failed"),
        }
    }

    async fn step(&mut self, step: Step) -> Result<(), String> {
        let max_ttl = self.shared.locks.max_ttl();
        match step {
            Step::Adopt { epoch, spec } => {
                let cfg = self.config_of(&spec)?;
                self.shared.topology.adopt(Arc::new(cfg), epoch, max_ttl);
                info!(epoch, "serving the fleet's epoch");
                self.local = Local {
                    epoch,
                    holding: None,
                    migrating: false,
                };
            }
            Step::Prepare { epoch, spec } => {
                let spec_v = parse_spec(&spec).map_err(|e| e.to_string())?;
                if let Some(f) = &self.j.fence {
                    f.enable(&spec_v).await?;
                }
                let cfg = effective(&self.j.base, &spec_v, self.j.fence.as_ref())?;
                let cur = self.shared.topology.load_full();
                // Shards that join get the function libraries and scripts
                // before any proxy can route to them (each proxy does it;
                // FUNCTION RESTORE ... REPLACE is idempotent). Until that
                // works this proxy does not acknowledge.
                let joining: Vec<Arc<crate::backend::Shard>> = cfg
                    .backends
                    .iter()
                    .filter(|b| !cur.shards.iter().any(|s| s.spec.addr == b.addr))
                    .map(|b| {
                        let spec = crate::backend::BackendSpec::from_config(b, &cfg);
                        crate::backend::Shard::start(spec, self.shared.topology.executors())
                    })
                    .collect();
                if !joining.is_empty() {
                    crate::control::seed(&cur.shards, &joining, &self.shared.locks.scripts())
                        .await
                        .map_err(|e| format!("epoch {epoch} not acknowledged: {e}"))?;
                }
                let next_ring = Ring::for_config(&cfg);
                let names = cfg.backends.iter().map(|b| Arc::<str>::from(b.name.as_str())).collect();
                let hold = Arc::new(Hold::new(epoch, &cur.ring, next_ring, names));
                let moving = hold.moving_slots(&cur.ring, &cur.names);
                let started = std::time::Instant::now();
                self.shared.topology.hold(hold.clone());
                quiesce(&self.shared).await;
                info!(
                    epoch,
                    moving_slots = moving,
                    quiesce_ms = started.elapsed().as_millis() as u64,
                    "prepared epoch: holding requests on moving keys"
                );
                let timeout = Duration::from_millis(self.j.cluster.hold_timeout_ms);
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    if hold.ended().is_none() {
                        warn!(
                            epoch,
                            "held requests time out (TRYAGAIN): the change was neither committed nor aborted in time"
                        );
                        hold.end(HoldEnd::TimedOut);
                    }
                });
                self.local.holding = Some(epoch);
            }
            Step::Commit { epoch, spec } => {
                let cfg = self.config_of(&spec)?;
                let held = self.shared.topology.load().hold.as_ref().map_or(0, |h| h.waiting());
                let applied = self
                    .shared
                    .topology
                    .apply_epoch(Arc::new(cfg), epoch, max_ttl)
                    .map_err(|e| e.to_string())?;
                info!(
                    epoch,
                    released = held,
                    migrating = applied.topology.migration.is_some(),
                    "committed epoch in service"
                );
                self.local = Local {
                    epoch,
                    holding: None,
                    migrating: applied.topology.active_migration().is_some(),
                };
            }
            Step::Unhold => {
                self.shared.topology.unhold();
                info!("the prepared change was aborted: held requests run on the ring in place");
                self.local.holding = None;
            }
            Step::EndMigration => {
                if let Some(m) = self.shared.topology.load().active_migration() {
                    m.finish();
                }
                info!(epoch = self.local.epoch, "the fleet's migration is over");
                self.local.migrating = false;
            }
        }
        Ok(())
    }

    fn config_of(&self, spec: &str) -> Result<Config, String> {
        let spec = parse_spec(spec).map_err(|e| e.to_string())?;
        effective(&self.j.base, &spec, self.j.fence.as_ref())
    }

    /// This proxy is no longer a member: it was evicted (or its record was
    /// lost). It must not serve data on a topology the fleet may have left
    /// behind: every keyed request is refused until it is restarted.
    fn evict(&mut self, doc: &ClusterDoc) {
        self.evicted = true;
        error!(
            id = %self.j.id,
            fleet_epoch = doc.epoch,
            "this proxy is not a member of the fleet any more (evicted): refusing keyed requests; restart it to rejoin"
        );
        let cur = self.shared.topology.load_full();
        let hold = Arc::new(Hold::everything(cur.epoch, &cur.ring, cur.names.clone()));
        hold.end(HoldEnd::Evicted);
        self.shared.topology.hold(hold);
    }

    /// The elected proxy's duties: commit, abort or finish the change, and
    /// run the migration of a committed one.
    async fn lead(&mut self, snap: &Snapshot, doc: &ClusterDoc) {
        if let Some(c) = doc.change.as_ref().filter(|c| c.phase == phase::Phase::Committed)
            && self.local.epoch == c.epoch
        {
            self.migrate(c.epoch).await;
        }
        // Read the report this proxy may just have written.
        let progress = match self.j.store.snapshot().await {
            Ok(s) if s.doc_revision == snap.doc_revision => s.progress,
            _ => return,
        };
        let decision = phase::decide(doc, &snap.members, progress.as_ref(), now_ms());
        if decision == Decision::Wait {
            return;
        }
        let next = doc.after(&decision, now_ms());
        match self.j.store.swap_doc(snap.doc_revision, &next).await {
            Ok(true) => match &decision {
                Decision::Commit => info!(
                    epoch = next.change.as_ref().map_or(0, |c| c.epoch),
                    "every proxy acknowledged: committed"
                ),
                Decision::Abort { missing } => warn!(?missing, "change aborted: not every proxy acknowledged in time"),
                Decision::Finish => info!(epoch = next.epoch, "migration done: the new epoch is stable"),
                Decision::Wait => {}
            },
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot update the fleet's topology"),
        }
    }

    /// Starts (once) and reports the background migration to `epoch`.
    async fn migrate(&mut self, epoch: u64) {
        let topo = self.shared.topology.load_full();
        let m = topo.migration.clone();
        if self.moving != Some(epoch) {
            self.moving = Some(epoch);
            if let Some(m) = m.clone().filter(|m| m.active()) {
                info!(epoch, "elected migrator: moving the keys of the committed epoch");
                tokio::spawn(crate::migration::mover::run(m, topo.clone()));
            }
        }
        let p = match &m {
            Some(m) => Progress {
                epoch,
                migrator: self.j.id.clone(),
                sources_left: m.sources_left(),
                scanned: m.stats.scanned.load(Ordering::Relaxed),
                moved: m.stats.moved.load(Ordering::Relaxed),
                moved_on_demand: m.stats.moved_on_demand.load(Ordering::Relaxed),
                done: !m.active(),
                updated_ms: now_ms(),
            },
            None => Progress {
                epoch,
                migrator: self.j.id.clone(),
                done: true,
                updated_ms: now_ms(),
                ..Progress::default()
            },
        };
        if let Err(e) = self.j.store.put_progress(&p).await {
            warn!(error = %e, "cannot report the migration's progress");
        }
    }
}

/// Returns once every request routed with the topology in place before the
/// call has reached its shard and been answered: each worker runtime runs a
/// task (so no session is between routing and sending), then a PING behind
/// everything on every pipelined backend connection.
async fn quiesce(shared: &Shared) {
    let executors = shared.topology.executors().clone();
    let mut polled = Vec::new();
    if !executors.is_empty() {
        for g in 0..executors.groups() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            executors.spawn_on(g, async move {
                let _ = tx.send(());
            });
            polled.push(rx);
        }
    }
    for rx in polled {
        let _ = rx.await;
    }
    let topo = shared.topology.load_full();
    let barriers = topo.shards.iter().map(|s| s.barrier());
    for b in barriers {
        b.await;
    }
}

/// Keeps the liveness lease alive; when it expired (etcd was down longer
/// than its TTL) takes a new one and marks the proxy alive again.
async fn keep_alive(
    store: Store,
    id: String,
    lease: Arc<AtomicI64>,
    ttl_s: i64,
    leaving: Arc<std::sync::atomic::AtomicBool>,
) {
    let every = Duration::from_millis((ttl_s as u64 * 1000 / 3).max(200));
    loop {
        tokio::time::sleep(every).await;
        if leaving.load(Ordering::Acquire) {
            return;
        }
        match store.keep_alive(lease.load(Ordering::Acquire)).await {
            Ok(true) => {}
            Ok(false) => {
                if let Ok(l) = store.grant(ttl_s).await
                    && store.put_alive(&id, l).await.is_ok()
                {
                    info!("liveness lease renewed after it had expired");
                    lease.store(l, Ordering::Release);
                }
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_defaults_to_host_and_port() {
        let cfg = Config::parse("listen = \"127.0.0.1:7777\"\n[cluster]\netcd = [\"127.0.0.1:2379\"]\nname = \"t\"\n")
            .expect("config");
        let c = cfg.cluster.clone().expect("cluster");
        assert!(proxy_id(&cfg, &c).ends_with(":7777"));
        let c = ClusterConfig {
            id: Some("a".into()),
            ..c
        };
        assert_eq!(proxy_id(&cfg, &c), "a");
        assert_eq!(advertised("10.0.0.5:6380"), "10.0.0.5:6380");
        assert_eq!(advertised("0.0.0.0:6380"), format!("{}:6380", hostname()));
        assert_eq!(advertised("[::]:6381"), format!("{}:6381", hostname()));
    }
}

//! Where a shard's connections go, and what the server there must be.
//!
//! An [`Endpoint`] is either a fixed address or a master name the Sentinels
//! monitor (`master = "..."` in `proxy.toml`): then its address is what the
//! Sentinels last said (the answer with the highest config epoch wins, see
//! [`super::sentinel::ask_master`]) and moves on a failover. Connections
//! read the address when they connect; [`Endpoint::adopt`] bumps a version
//! that the pooled connections watch, so those to the old master close at
//! once (their requests fail naming the shard) and reconnect to the new one.
//!
//! An endpoint that expects a role (every Sentinel-followed or replicated
//! shard, and every replica) checks `ROLE` in the connection handshake
//! ([`super::conn`]): a master endpoint never takes a connection to a server
//! that says it is a replica, so a demoted master that comes back cannot take
//! writes through the proxy. A refused handshake marks the endpoint stale: the
//! next connection asks the Sentinels again, and so does the failover task
//! ([`NUDGE`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::sentinel;
use crate::config::SentinelConfig;

/// What the server behind an endpoint must say in `ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica,
}

impl Role {
    /// The word `ROLE` answers with.
    pub fn word(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Replica => "slave",
        }
    }
}

/// Where the address comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Fixed(String),
    Sentinel {
        master: String,
        sentinel: Arc<SentinelConfig>,
    },
}

/// Wakes every failover task of this process to ask the Sentinels now
/// (a connection found its server gone or in the wrong role).
pub static NUDGE: Notify = Notify::const_new();

/// A shard's (or a replica's) address and role requirement; see the module doc.
#[derive(Debug)]
pub struct Endpoint {
    source: Source,
    expect: Option<Role>,
    addr: ArcSwapOption<String>,
    /// The highest Sentinel config epoch adopted: an answer with a lower
    /// one is stale.
    epoch: AtomicU64,
    /// Bumped when the address changes; pooled connections watch it.
    version: watch::Sender<u64>,
    /// Ask the Sentinels again before the next connection.
    stale: AtomicBool,
    /// The last connection attempt succeeded (a replica whose pool cannot
    /// connect is skipped at once, before the next lag check).
    up: AtomicBool,
    /// Address changes after the first (master failovers followed).
    pub failovers: AtomicU64,
    /// Handshakes that checked ROLE, and those refused for the wrong role.
    pub role_checks: AtomicU64,
    pub role_refusals: AtomicU64,
    /// The replicas the Sentinels last listed (for INFO).
    known_replicas: std::sync::Mutex<Vec<String>>,
    /// One connection asks the Sentinels at a time; the others wait for its
    /// answer (a shard's many connections fail together).
    asking: tokio::sync::Mutex<()>,
}

impl PartialEq for Endpoint {
    /// Same configuration (not the same live state): decides whether a
    /// reload keeps a shard's pool.
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.expect == other.expect
    }
}

impl Eq for Endpoint {}

impl Endpoint {
    fn new(source: Source, expect: Option<Role>) -> Endpoint {
        let addr = match &source {
            Source::Fixed(a) => Some(Arc::new(a.clone())),
            Source::Sentinel { .. } => None,
        };
        Endpoint {
            source,
            expect,
            addr: ArcSwapOption::new(addr),
            epoch: AtomicU64::new(0),
            version: watch::Sender::new(0),
            stale: AtomicBool::new(false),
            up: AtomicBool::new(true),
            failovers: AtomicU64::new(0),
            role_checks: AtomicU64::new(0),
            role_refusals: AtomicU64::new(0),
            known_replicas: std::sync::Mutex::new(Vec::new()),
            asking: tokio::sync::Mutex::new(()),
        }
    }

    /// A fixed address; `expect`: the role to check in the handshake, if any.
    pub fn fixed(addr: &str, expect: Option<Role>) -> Endpoint {
        Endpoint::new(Source::Fixed(addr.to_string()), expect)
    }

    /// The master Sentinel monitors as `master`.
    pub fn sentinel(master: &str, sentinel: Arc<SentinelConfig>) -> Endpoint {
        Endpoint::new(
            Source::Sentinel {
                master: master.to_string(),
                sentinel,
            },
            Some(Role::Master),
        )
    }

    /// The Sentinel master name, for an endpoint that follows one.
    pub fn master_name(&self) -> Option<&str> {
        match &self.source {
            Source::Sentinel { master, .. } => Some(master),
            Source::Fixed(_) => None,
        }
    }

    /// The Sentinels, for an endpoint that follows a master.
    pub fn sentinels(&self) -> Option<&Arc<SentinelConfig>> {
        match &self.source {
            Source::Sentinel { sentinel, .. } => Some(sentinel),
            Source::Fixed(_) => None,
        }
    }

    /// Whether the address can change (pooled connections then watch it).
    #[inline]
    pub fn follows(&self) -> bool {
        matches!(self.source, Source::Sentinel { .. })
    }

    /// The role the handshake checks, if any.
    pub fn expect(&self) -> Option<Role> {
        self.expect
    }

    /// The current address (`None`: no Sentinel has answered yet).
    pub fn addr(&self) -> Option<Arc<String>> {
        self.addr.load_full()
    }

    /// The current address for messages and INFO (`?` while unknown).
    pub fn describe(&self) -> String {
        self.addr().map_or_else(|| "?".to_string(), |a| a.to_string())
    }

    /// Connections watch this to close when the address changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Takes `addr` (with Sentinel config epoch `epoch`) as the master's
    /// address; returns whether it changed from a known one (a failover).
    /// An answer with an older epoch than one already adopted is ignored.
    pub fn adopt(&self, shard: &str, addr: &str, epoch: u64) -> bool {
        if epoch < self.epoch.load(Ordering::Acquire) {
            return false;
        }
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
        let old = self.addr.load_full();
        if old.as_deref().map(String::as_str) == Some(addr) {
            return false;
        }
        self.addr.store(Some(Arc::new(addr.to_string())));
        self.version.send_modify(|v| *v += 1);
        match old {
            Some(old) => {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                warn!(shard, old = %old, new = addr, epoch, "master moved (Sentinel failover): connections to the old master closed");
                true
            }
            None => {
                info!(shard, addr, epoch, "master found through Sentinel");
                false
            }
        }
    }

    /// Records the replicas the Sentinels list (`addr` or `addr(down)`).
    pub fn set_known_replicas(&self, list: Vec<String>) {
        *self.known_replicas.lock().unwrap_or_else(|p| p.into_inner()) = list;
    }

    /// The replicas the Sentinels last listed.
    pub fn known_replicas(&self) -> Vec<String> {
        self.known_replicas.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the last connection attempt succeeded.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records how the last connection attempt went.
    pub fn set_up(&self, up: bool) {
        if self.up.load(Ordering::Relaxed) != up {
            self.up.store(up, Ordering::Relaxed);
        }
    }

    /// A connection found the server gone or in the wrong role: ask the
    /// Sentinels before the next connection, and wake the failover task.
    pub fn mark_stale(&self) {
        if self.follows() {
            self.stale.store(true, Ordering::Release);
            NUDGE.notify_waiters();
        }
    }

    /// The address to connect to: for a followed master with no address
    /// yet, or marked stale, the Sentinels are asked first (within
    /// `within`); when none answers, the last known address is used (the
    /// ROLE check still guards it). Returns whether the address changed
    /// (a failover) beside it.
    pub async fn resolve(&self, shard: &str, within: Duration) -> Result<(Arc<String>, bool), String> {
        let mut moved = false;
        let needed = || self.addr.load().is_none() || self.stale.load(Ordering::Acquire);
        if let Source::Sentinel { master, sentinel } = &self.source
            && needed()
        {
            let _one = self.asking.lock().await;
            // Another connection may have asked while this one waited.
            if !needed() {
                return self
                    .addr()
                    .map(|a| (a, false))
                    .ok_or_else(|| "no address known".to_string());
            }
            self.stale.store(false, Ordering::Release);
            match sentinel::ask_master(sentinel, master, within).await {
                Ok(m) => moved = self.adopt(shard, &m.addr, m.epoch),
                Err(e) => {
                    self.stale.store(true, Ordering::Release);
                    if self.addr.load().is_none() {
                        return Err(e);
                    }
                }
            }
        }
        self.addr()
            .map(|a| (a, moved))
            .ok_or_else(|| "no address known".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_sentinel_answer_never_moves_the_master_back() {
        let cfg = Arc::new(SentinelConfig {
            addrs: vec!["127.0.0.1:1".into()],
            username: None,
            password: None,
            poll_ms: 1000,
            subscribe: true,
        });
        let ep = Endpoint::sentinel("m", cfg.clone());
        let mut seen = ep.subscribe();
        assert!(ep.addr().is_none());
        assert!(!ep.adopt("s", "10.0.0.1:6379", 1), "the first address is no failover");
        assert!(seen.has_changed().unwrap());
        seen.borrow_and_update();
        assert!(!ep.adopt("s", "10.0.0.1:6379", 1), "the same address again");
        assert!(!seen.has_changed().unwrap());
        assert!(ep.adopt("s", "10.0.0.2:6379", 2), "a failover");
        assert_eq!(ep.failovers.load(Ordering::Relaxed), 1);
        assert!(!ep.adopt("s", "10.0.0.1:6379", 1), "an older epoch is stale");
        assert_eq!(ep.describe(), "10.0.0.2:6379");
        // Equal configuration, whatever the live state: a reload keeps the pool.
        assert_eq!(ep, Endpoint::sentinel("m", cfg));
        assert_ne!(Endpoint::fixed("h:1", None), Endpoint::fixed("h:1", Some(Role::Master)));
    }
}

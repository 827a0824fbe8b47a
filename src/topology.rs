//! The topology: which shards exist, the ring over them, and an epoch, as one
//! immutable value behind an [`ArcSwap`].
//!
//! A request loads the current topology once, routes with it and never sees a
//! mix of two. A change (SIGHUP reload, admin command) builds a whole new
//! [`Topology`] with epoch + 1 and swaps it in; requests already sent finish
//! on the connections they were sent to. Shards whose name, address and
//! credentials are unchanged keep their connection pool across the swap.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::backend::{BackendSpec, Shard};
use crate::config::Config;
use crate::lock::LockGroup;
use crate::migration::Migration;
use crate::ring::Ring;
use crate::workers::Executors;

/// One immutable view of the cluster.
#[derive(Debug)]
pub struct Topology {
    pub epoch: u64,
    pub ring: Ring,
    /// In configuration order; the ring's member indices point here.
    pub shards: Vec<Arc<Shard>>,
    pub config: Arc<Config>,
    /// The Redlock group and namespace; versioned with the topology but never
    /// derived from the ring.
    pub locks: LockGroup,
    /// The move of keys from the previous topology, when this one changed
    /// which shard owns some slots (see [`crate::migration`]).
    pub migration: Option<Arc<Migration>>,
}

impl Topology {
    /// Builds a topology from a validated config, reusing the pools of
    /// `previous` where a backend is unchanged. `max_lock_ttl` is the longest
    /// lock TTL granted so far (`None`: a lock without expiry), which decides
    /// how long a changed lock group keeps the old one in the quorum. Needs a
    /// tokio runtime.
    pub fn build(
        config: Arc<Config>,
        epoch: u64,
        previous: Option<&Topology>,
        max_lock_ttl: Option<std::time::Duration>,
        executors: &Executors,
    ) -> Topology {
        let locks = LockGroup::build(&config, previous.map(|p| &p.locks), max_lock_ttl);
        let ring = Ring::for_config(&config);
        let shards: Vec<Arc<Shard>> = config
            .backends
            .iter()
            .map(|b| {
                let spec = BackendSpec::from_config(b, &config);
                previous
                    .and_then(|p| p.shards.iter().find(|s| *s.spec == spec))
                    .cloned()
                    .unwrap_or_else(|| Shard::start(spec, executors))
            })
            .collect();
        let migration = previous.and_then(|p| {
            let names: Vec<Arc<str>> = shards.iter().map(|s| Arc::from(s.name())).collect();
            Migration::plan(p, &ring, &names, epoch).map(Arc::new)
        });
        Topology {
            epoch,
            ring,
            shards,
            config,
            locks,
            migration,
        }
    }

    /// The shard that owns `key`.
    #[inline]
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.ring.shard_of(key)
    }

    /// Shards ordered by name: a stable order for cursors that walk them all.
    pub fn shard_index_by_name(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name() == name)
    }
}

/// The live topology, shared by every session.
pub struct TopologyCell {
    current: ArcSwap<Topology>,
    /// Where new shards start their connections.
    executors: Executors,
    /// Serialises changes so two reloads cannot both take epoch + 1.
    change: std::sync::Mutex<()>,
}

impl TopologyCell {
    /// The first topology; its shards start their connections on `executors`.
    pub fn new(config: Arc<Config>, executors: Executors) -> TopologyCell {
        TopologyCell {
            current: ArcSwap::from_pointee(Topology::build(config, 1, None, None, &executors)),
            executors,
            change: std::sync::Mutex::new(()),
        }
    }

    /// The current topology (no lock; a few atomic operations).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.current.load()
    }

    /// A counted reference, for holding across `.await`.
    pub fn load_full(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Replaces the topology with one built from `config` and, when slots
    /// change owner, starts moving their keys; returns the new epoch.
    /// While an earlier migration runs, `force` abandons it (its keys not yet
    /// moved stay where they are); otherwise a change that keeps the slot
    /// owners (new timeouts, say) carries it over, and one that moves slots
    /// again is refused. `max_lock_ttl`: see [`Topology::build`].
    /// Needs a tokio runtime.
    pub fn apply(
        &self,
        config: Arc<Config>,
        max_lock_ttl: Option<std::time::Duration>,
        force: bool,
    ) -> Result<u64, String> {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let mut next = Topology::build(config, old.epoch + 1, Some(&old), max_lock_ttl, &self.executors);
        let start = next.migration.clone();
        if let Some(running) = old.migration.as_ref().filter(|m| m.active()) {
            if force {
                running.abandon();
                tracing::warn!(
                    from_epoch = running.from_epoch,
                    to_epoch = running.to_epoch,
                    "migration abandoned by a forced reload: keys not moved yet stay on their old shards"
                );
            } else if next.migration.is_none() {
                // Same slot owners: the running migration goes on as it was.
                next.migration = Some(running.clone());
            } else {
                return Err(format!(
                    "a migration (epoch {} -> {}) is still moving keys off {} shard(s) (INFO migration); \
                     wait for it, or SHARDIS.RELOAD FORCE to abandon it",
                    running.from_epoch,
                    running.to_epoch,
                    running.sources_left()
                ));
            }
        }
        let next = Arc::new(next);
        let epoch = next.epoch;
        self.current.store(next.clone());
        if let Some(m) = start {
            tokio::spawn(crate::migration::run(m, next));
        }
        Ok(epoch)
    }
}

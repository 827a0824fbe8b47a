//! The topology: which shards exist, the ring over them, and an epoch, as one
//! immutable value behind an [`ArcSwap`].
//!
//! A request loads the current topology once, routes with it and never sees a
//! mix of two. A change (see [`crate::control`]) builds a whole new
//! [`Topology`] with epoch + 1 and swaps it in; requests already sent finish
//! on the connections they were sent to. Shards whose name, address and
//! credentials are unchanged keep their connection pool across the swap.
//! This module starts no task of its own: the control plane starts the
//! migrator for a topology that needs one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::acl::Acl;
use crate::backend::{BackendSpec, Shard};
use crate::config::Config;
use crate::hold::Hold;
use crate::lock::group::LockGroup;
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
    /// The shards' names, in the same order (a shard's identity on the ring).
    pub names: Vec<Arc<str>>,
    pub config: Arc<Config>,
    /// The Redlock group and namespace; versioned with the topology but never
    /// derived from the ring.
    pub locks: LockGroup,
    /// The move of keys from the previous topology, when this one changed
    /// which shard owns some slots (see [`crate::migration`]).
    pub migration: Option<Arc<Migration>>,
    /// A prepared change (fleet mode): requests on keys that it moves are
    /// held until it is committed or aborted (see [`crate::hold`]).
    pub hold: Option<Arc<Hold>>,
    /// The users of `config`, compiled (see [`crate::acl`]).
    pub acl: Arc<Acl>,
}

impl Topology {
    /// Builds a topology from a validated config, reusing the pools of
    /// `previous` where a backend is unchanged. `max_lock_ttl` is the longest
    /// lock TTL granted so far (`None`: a lock without expiry), which decides
    /// how long a changed lock group keeps the old one in the quorum. Needs a
    /// tokio runtime (new shards start their connections).
    pub fn build(
        config: Arc<Config>,
        epoch: u64,
        previous: Option<&Topology>,
        max_lock_ttl: Option<std::time::Duration>,
        executors: &Executors,
    ) -> Topology {
        Topology::build_with(config, epoch, previous, max_lock_ttl, executors, &[])
    }

    /// As [`Topology::build`], taking the pools of new backends from
    /// `started` where one matches (shards started, and given the function
    /// libraries, before the topology is put in service).
    pub fn build_with(
        config: Arc<Config>,
        epoch: u64,
        previous: Option<&Topology>,
        max_lock_ttl: Option<std::time::Duration>,
        executors: &Executors,
        started: &[Arc<Shard>],
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
                    .or_else(|| started.iter().find(|s| *s.spec == spec))
                    .cloned()
                    .unwrap_or_else(|| Shard::start(spec, executors))
            })
            .collect();
        let names: Vec<Arc<str>> = shards.iter().map(|s| s.spec.name.clone()).collect();
        let migration = previous.and_then(|p| {
            Migration::plan(p.epoch, &p.ring, &p.names, p.shards.clone(), &ring, &names, epoch).map(Arc::new)
        });
        // The configuration was validated, which compiled its users.
        let acl = Acl::build(
            &config.users,
            config.password.as_deref(),
            config.admin_password.is_some(),
        )
        .map(Arc::new)
        .unwrap_or_else(|_| previous.map(|p| p.acl.clone()).unwrap_or_default());
        Topology {
            epoch,
            ring,
            shards,
            names,
            config,
            locks,
            migration,
            hold: None,
            acl,
        }
    }

    /// This topology with `hold` in place (or none): same epoch, shards,
    /// ring and migration.
    pub fn with_hold(&self, hold: Option<Arc<Hold>>) -> Topology {
        Topology {
            epoch: self.epoch,
            ring: self.ring.clone(),
            shards: self.shards.clone(),
            names: self.names.clone(),
            config: self.config.clone(),
            locks: self.locks.clone(),
            migration: self.migration.clone(),
            hold,
            acl: self.acl.clone(),
        }
    }

    /// The shard that owns `key`.
    #[inline]
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.ring.shard_of(key)
    }

    /// The index of the shard named `name`.
    pub fn shard_index_by_name(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|s| &**s == name)
    }

    /// The migration still moving keys, if any.
    #[inline]
    pub fn active_migration(&self) -> Option<&Migration> {
        self.migration.as_deref().filter(|m| m.active())
    }
}

/// Why a topology change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a migration (epoch {from_epoch} -> {to_epoch}) is still moving keys off {sources_left} shard(s) (INFO migration); \
     wait for it, or SHARDIS.RELOAD FORCE to abandon it"
)]
pub struct MigrationRunning {
    pub from_epoch: u64,
    pub to_epoch: u64,
    pub sources_left: usize,
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

    /// Where sessions and backend connections run.
    pub fn executors(&self) -> &Executors {
        &self.executors
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

    /// Replaces the topology with one built from `config` and returns it;
    /// when its `migration` is new (`started`), the caller starts moving keys.
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
    ) -> Result<Applied, MigrationRunning> {
        self.apply_at(config, None, max_lock_ttl, force, &[])
    }

    /// As [`TopologyCell::apply`], with new backends' pools taken from
    /// `started` (see [`Topology::build_with`]).
    pub fn apply_started(
        &self,
        config: Arc<Config>,
        max_lock_ttl: Option<std::time::Duration>,
        force: bool,
        started: &[Arc<Shard>],
    ) -> Result<Applied, MigrationRunning> {
        self.apply_at(config, None, max_lock_ttl, force, started)
    }

    fn apply_at(
        &self,
        config: Arc<Config>,
        epoch: Option<u64>,
        max_lock_ttl: Option<std::time::Duration>,
        force: bool,
        started: &[Arc<Shard>],
    ) -> Result<Applied, MigrationRunning> {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let epoch = epoch.unwrap_or(old.epoch + 1);
        let mut next = Topology::build_with(config, epoch, Some(&old), max_lock_ttl, &self.executors, started);
        let started = next.migration.is_some();
        if let Some(running) = old.active_migration() {
            if force {
                running.abandon();
                tracing::warn!(
                    from_epoch = running.from_epoch,
                    to_epoch = running.to_epoch,
                    "migration abandoned by a forced reload: keys not moved yet stay on their old shards"
                );
            } else if next.migration.is_none() {
                // Same slot owners: the running migration goes on as it was.
                next.migration = old.migration.clone();
            } else {
                return Err(MigrationRunning {
                    from_epoch: running.from_epoch,
                    to_epoch: running.to_epoch,
                    sources_left: running.sources_left(),
                });
            }
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        if let Some(h) = &old.hold {
            h.end(crate::hold::HoldEnd::Released);
        }
        Ok(Applied {
            topology: next,
            started_migration: started,
        })
    }
}

impl TopologyCell {
    /// Puts `hold` in place on the current topology (a prepared change);
    /// returns the topology now in service. A hold already there is
    /// released first (its requests route again, and meet this one).
    pub fn hold(&self, hold: Arc<Hold>) -> Arc<Topology> {
        self.swap_hold(Some(hold))
    }

    /// Removes the hold, if any (an aborted change), releasing its requests
    /// to run on the current ring.
    pub fn unhold(&self) -> Arc<Topology> {
        self.swap_hold(None)
    }

    fn swap_hold(&self, hold: Option<Arc<Hold>>) -> Arc<Topology> {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let next = Arc::new(old.with_hold(hold));
        self.current.store(next.clone());
        if let Some(h) = &old.hold {
            h.end(crate::hold::HoldEnd::Released);
        }
        next
    }

    /// Replaces the topology with one built from `config` at `epoch`, with
    /// no migration (a fleet proxy adopting an epoch whose keys have all
    /// moved already, or its first topology). Ends a running migration and
    /// releases any hold.
    pub fn adopt(&self, config: Arc<Config>, epoch: u64, max_lock_ttl: Option<std::time::Duration>) -> Arc<Topology> {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let mut next = Topology::build(config, epoch, Some(&old), max_lock_ttl, &self.executors);
        next.migration = None;
        if let Some(m) = old.active_migration() {
            m.finish();
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        if let Some(h) = &old.hold {
            h.end(crate::hold::HoldEnd::Released);
        }
        next
    }

    /// As [`TopologyCell::apply`] (no force) but to a given epoch: a fleet
    /// proxy putting a committed change in service.
    pub fn apply_epoch(
        &self,
        config: Arc<Config>,
        epoch: u64,
        max_lock_ttl: Option<std::time::Duration>,
    ) -> Result<Applied, MigrationRunning> {
        self.apply_at(config, Some(epoch), max_lock_ttl, false, &[])
    }
}

/// A topology now in service.
pub struct Applied {
    pub topology: Arc<Topology>,
    /// Its migration is new and must be started.
    pub started_migration: bool,
}

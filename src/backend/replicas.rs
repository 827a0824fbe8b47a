//! Reads on replicas (`read_from = "replica" | "prefer-replica"`): a shard's
//! replica pools, which of them may be read from, and the choice of where a
//! forwarded request goes ([`super::Shard::send_keyed`]): `replica` spreads
//! reads over the usable replicas and falls back to the master when none is
//! usable; `prefer-replica` spreads them over the usable replicas and the
//! master together (one more read target).
//!
//! Only commands the command table flags `readonly`, and not scripts or
//! blocking commands, go to a replica; everything else, and every request
//! of the lock worker, the migrator, transactions and WATCH, goes to the
//! master through [`super::Shard::send`]. Targets are taken in turn
//! (round-robin) among the replicas marked usable; the failover task
//! ([`crate::failover`]) marks a replica unusable when it is down, not
//! linked to its master, or further behind than `max_replica_lag_ms`, and
//! replaces the list when the Sentinels name other replicas. A replica pool
//! checks `ROLE` (it must be a replica) on every connection.
//!
//! Consistency: a read on a replica may not see the client's own write made
//! a moment before (replication is asynchronous).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::endpoint::{Endpoint, Role};
use super::{BackendSpec, Job, Shard};
use crate::command::spec::{self, F_BLOCKING, F_READONLY};
use crate::config::ReadFrom;
use crate::protocol::Protocol;
use crate::workers::Executors;

/// One replica: its pool and whether it may be read from (the failover
/// task's last check said so, and its pool's last connection attempt
/// succeeded).
#[derive(Debug)]
pub struct Replica {
    pub addr: String,
    pub pool: Arc<Shard>,
    usable: AtomicBool,
    /// The lag last measured, in ms.
    pub lag_ms: AtomicU64,
    /// Why it is not usable (empty when it is), for INFO.
    pub why: std::sync::Mutex<String>,
}

impl Replica {
    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// Marks the replica usable or not (with the reason, for INFO).
    pub fn set_usable(&self, usable: bool, why: &str) {
        self.usable.store(usable, Ordering::Relaxed);
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if *w != why {
            *w = why.to_string();
        }
    }
}

/// A shard's replicas.
#[derive(Debug)]
pub struct Replicas {
    pub mode: ReadFrom,
    nodes: ArcSwap<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    /// The master's spec, from which the replicas' are made.
    template: Arc<BackendSpec>,
    executors: Executors,
    /// Reads sent to replicas, and to the master for want of a usable one.
    pub reads: AtomicU64,
    pub fallbacks: AtomicU64,
}

impl Replicas {
    /// The replicas of the shard `template` describes: its static
    /// `replicas` now; a Sentinel-followed shard's come from the failover
    /// task ([`Replicas::set`]).
    pub(super) fn start(template: Arc<BackendSpec>, executors: &Executors) -> Replicas {
        let r = Replicas {
            mode: template.read_from,
            nodes: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            template: template.clone(),
            executors: executors.clone(),
            reads: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        };
        r.set(&template.replicas);
        r
    }

    /// The replicas now.
    pub fn nodes(&self) -> Arc<Vec<Arc<Replica>>> {
        self.nodes.load_full()
    }

    /// Replaces the replica list with `addrs`, keeping the pools of those
    /// already known. New replicas start unusable: the failover task marks
    /// them once it has checked their role and measured their lag. Returns
    /// whether the list changed.
    pub fn set(&self, addrs: &[String]) -> bool {
        let old = self.nodes.load_full();
        if old.len() == addrs.len() && old.iter().zip(addrs).all(|(n, a)| n.addr == *a) {
            return false;
        }
        let nodes: Vec<Arc<Replica>> = addrs
            .iter()
            .map(|a| {
                old.iter().find(|n| n.addr == *a).cloned().unwrap_or_else(|| {
                    let spec = BackendSpec {
                        addr: a.clone(),
                        endpoint: Arc::new(Endpoint::fixed(a, Some(Role::Replica))),
                        read_from: ReadFrom::Master,
                        replicas: Vec::new(),
                        ..(*self.template).clone()
                    };
                    Arc::new(Replica {
                        addr: a.clone(),
                        pool: Shard::start(spec, &self.executors),
                        usable: AtomicBool::new(false),
                        lag_ms: AtomicU64::new(0),
                        why: std::sync::Mutex::new("not checked yet".to_string()),
                    })
                })
            })
            .collect();
        self.nodes.store(Arc::new(nodes));
        true
    }

    /// Sends `job` (the forwarded request `args`) to a usable replica if it
    /// is a read (or, with `prefer-replica`, to the master in its turn),
    /// else to `master`.
    pub(super) fn send(&self, master: &Shard, proto: Protocol, lane: usize, job: Job, args: &[&[u8]]) {
        if self.mode == ReadFrom::Master || !is_replica_read(args) {
            return master.send(proto, lane, job);
        }
        let nodes = self.nodes.load();
        let usable = |i: usize| nodes[i].usable() && nodes[i].pool.spec.endpoint.is_up();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match choose(self.mode, nodes.len(), usable, turn) {
            Target::Replica(i) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                nodes[i].pool.send(proto, lane, job)
            }
            Target::MasterTurn => master.send(proto, lane, job),
            Target::Fallback => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                master.send(proto, lane, job)
            }
        }
    }
}

/// Where one read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The replica at this index.
    Replica(usize),
    /// The master, as one of the read targets (`prefer-replica`).
    MasterTurn,
    /// The master, for want of a usable replica.
    Fallback,
}

/// The target of the `turn`-th read among `n` replicas of which `usable`
/// tells which may be read from: with `replica`, the usable replicas in
/// turn, the master when none is; with `prefer-replica`, the usable
/// replicas and the master in turn (the master takes one read in
/// `usable + 1`). Two passes over the list, no allocation.
fn choose(mode: ReadFrom, n: usize, usable: impl Fn(usize) -> bool, turn: usize) -> Target {
    let count = (0..n).filter(|&i| usable(i)).count();
    let slots = match mode {
        ReadFrom::PreferReplica => count + 1,
        _ => count,
    };
    if slots == 0 {
        return Target::Fallback;
    }
    let k = turn % slots;
    if k == count {
        return Target::MasterTurn;
    }
    match (0..n).filter(|&i| usable(i)).nth(k) {
        Some(i) => Target::Replica(i),
        // The usable set changed between the two passes: no replica then.
        None => Target::Fallback,
    }
}

/// Whether a forwarded request may be served by a replica: a `readonly`
/// command that is neither a script nor a blocking command.
pub fn is_replica_read(args: &[&[u8]]) -> bool {
    match spec::lookup_argv(args) {
        Some(s) => {
            s.flags & F_READONLY != 0
                && s.flags & F_BLOCKING == 0
                && !s.acl_categories.iter().any(|c| *c == "@scripting" || *c == "@blocking")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(mode: ReadFrom, usable: &[bool], reads: usize) -> Vec<Target> {
        (0..reads)
            .map(|t| choose(mode, usable.len(), |i| usable[i], t))
            .collect()
    }

    #[test]
    fn replica_spreads_over_usable_replicas_and_falls_back_to_the_master() {
        use Target::*;
        let r = ReadFrom::Replica;
        assert_eq!(
            targets(r, &[true, true], 4),
            [Replica(0), Replica(1), Replica(0), Replica(1)]
        );
        assert_eq!(targets(r, &[false, true, true], 2), [Replica(1), Replica(2)]);
        assert_eq!(targets(r, &[false, false], 2), [Fallback, Fallback]);
        assert_eq!(targets(r, &[], 1), [Fallback]);
    }

    #[test]
    fn prefer_replica_spreads_over_usable_replicas_and_the_master() {
        use Target::*;
        let p = ReadFrom::PreferReplica;
        assert_eq!(
            targets(p, &[true, true], 6),
            [Replica(0), Replica(1), MasterTurn, Replica(0), Replica(1), MasterTurn]
        );
        // A skipped replica's share is spread evenly, not given to its neighbour.
        assert_eq!(
            targets(p, &[false, true, true], 3),
            [Replica(1), Replica(2), MasterTurn]
        );
        assert_eq!(targets(p, &[false], 2), [MasterTurn, MasterTurn]);
        assert_eq!(targets(p, &[], 1), [MasterTurn]);
    }

    #[test]
    fn only_plain_reads_go_to_replicas() {
        for read in [
            &["GET", "k"][..],
            &["MGET", "a", "b"],
            &["HGETALL", "h"],
            &["OBJECT", "ENCODING", "k"],
        ] {
            let args: Vec<&[u8]> = read.iter().map(|a| a.as_bytes()).collect();
            assert!(is_replica_read(&args), "{read:?}");
        }
        for other in [
            &["SET", "k", "v"][..],
            &["EVAL_RO", "return 1", "0"],
            &["FCALL_RO", "f", "0"],
            &["BLPOP", "k", "0"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "0"],
            &["INCR", "k"],
            &["NOSUCH", "k"],
            &[],
        ] {
            let args: Vec<&[u8]> = other.iter().map(|a| a.as_bytes()).collect();
            assert!(!is_replica_read(&args), "{other:?}");
        }
    }
}

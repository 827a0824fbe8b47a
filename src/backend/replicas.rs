//! Reads on replicas (`read_from = "replica" | "prefer-replica"`): a shard's
//! replica pools, which of them may be read from, and the choice of where a
//! forwarded request goes ([`super::Shard::send_keyed`]).
//!
//! Only commands the command table flags `readonly`, and not scripts or
//! blocking commands, go to a replica; everything else, and every request
//! of the lock worker, the migrator, transactions and WATCH, goes to the
//! master through [`super::Shard::send`]. Replicas are taken in turn
//! (round-robin) among those marked usable; the failover task
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
use super::{BackendError, BackendErrorKind, BackendSpec, Job, Shard};
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
    /// is a read, else to `master`.
    pub(super) fn send(&self, master: &Shard, proto: Protocol, lane: usize, job: Job, args: &[&[u8]]) {
        if self.mode == ReadFrom::Master || !is_replica_read(args) {
            return master.send(proto, lane, job);
        }
        let nodes = self.nodes.load();
        let n = nodes.len();
        if n > 0 {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let node = &nodes[(start + i) % n];
                if node.usable() && node.pool.spec.endpoint.is_up() {
                    self.reads.fetch_add(1, Ordering::Relaxed);
                    return node.pool.send(proto, lane, job);
                }
            }
        }
        match self.mode {
            ReadFrom::Replica => job.reply.complete(Err(BackendError::new(
                BackendErrorKind::Unavailable,
                &master.spec.name,
                "no replica to read from (read_from = \"replica\": down, lagging or none known)",
            ))),
            _ => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                master.send(proto, lane, job)
            }
        }
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

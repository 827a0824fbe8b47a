//! The members a lock request goes to (the current group and earlier groups
//! still in force), and which of them may vote: a member whose server
//! restarted less than the longest granted TTL ago may not.

use std::sync::Arc;
use std::time::Duration;

use super::service::LockService;
use crate::backend::{BackendError, BackendErrorKind, BackendResult};
use crate::topology::Topology;

/// Members of the lock group that are out of lock quorums because their
/// server restarted less than the longest granted TTL ago, with the reason.
pub fn resting_members(topo: &Topology, svc: &LockService) -> Vec<String> {
    let m = Members::of(topo);
    (0..m.names.len())
        .filter_map(|pos| {
            m.resting(topo, svc, pos)
                .map(|why| format!("{} ({})", m.names[pos], why))
        })
        .collect()
}

/// The members of a request: names, backend indices, groups.
pub(super) struct Members {
    pub(super) names: Vec<Arc<str>>,
    pub(super) targets: Vec<Option<usize>>,
    pub(super) groups: Vec<Vec<usize>>,
}

impl Members {
    pub(super) fn of(topo: &Topology) -> Members {
        let (names, groups) = topo.locks.plan();
        let targets = names.iter().map(|n| topo.shard_index_by_name(n)).collect();
        Members { names, targets, groups }
    }

    /// Why member `pos` must not vote: its server restarted (lost its data)
    /// less than the longest granted TTL ago, so it may have lost a lock it
    /// had granted (Redlock's delayed restart, automated).
    pub(super) fn resting(&self, topo: &Topology, svc: &LockService, pos: usize) -> Option<BackendError> {
        let target = (*self.targets.get(pos)?)?;
        let at = topo.shards.get(target)?.identity.restarted_at()?;
        let rest = svc
            .max_ttl()
            .map_or(Duration::MAX, |ttl| ttl.saturating_sub(at.elapsed()));
        (!rest.is_zero()).then(|| {
            BackendError::new(
                BackendErrorKind::Excluded,
                &self.names[pos],
                format!(
                    "restarted {} ms ago, out of lock quorums until the longest lock TTL has passed",
                    at.elapsed().as_millis()
                ),
            )
        })
    }

    pub(super) fn failed(&self, results: &[Option<BackendResult>]) -> String {
        let mut v = Vec::new();
        for (n, r) in self.names.iter().zip(results) {
            match r {
                Some(Ok(_)) => {}
                Some(Err(e)) => v.push(format!("{n} ({})", e.to_string().trim_start_matches("ERR "))),
                None => v.push(format!("{n} (no reply in time)")),
            }
        }
        v.join(", ")
    }
}

//! The lock group as each topology carries it: the namespace of lock keys,
//! the member backends, and the earlier groups that must still agree after a
//! change, until the longest granted TTL has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::glob::Namespace;
use crate::config::{Config, NoQuorum};

/// The per-member fencing counter.
pub const FENCE_KEY: &str = "shardis:fence";

/// The lock group as one topology sees it.
#[derive(Debug, Clone)]
pub struct LockGroup {
    pub namespace: Namespace,
    /// Member backend names; empty when Redlock is off.
    pub current: Vec<Arc<str>>,
    /// Earlier groups that must still agree, each until its deadline: the
    /// longest TTL granted before the change.
    pub previous: Vec<(Vec<Arc<str>>, Instant)>,
    pub member_timeout: Duration,
    pub drift_factor: f64,
    pub on_no_quorum: NoQuorum,
}

impl LockGroup {
    /// The group for `config`, following `old` (the running topology's group).
    /// A config without an explicit group keeps the running group; a changed
    /// group keeps the old one in the quorum until `max_ttl` has passed.
    pub fn build(config: &Config, old: Option<&LockGroup>, max_ttl: Option<Duration>) -> LockGroup {
        let r = &config.redlock;
        let namespace = Namespace::new(&r.keys);
        let configured: Option<Vec<Arc<str>>> = config
            .lock_group()
            .map(|g| g.iter().map(|n| Arc::from(n.as_str())).collect());
        let (current, previous) = match old {
            None => (configured.unwrap_or_default(), Vec::new()),
            Some(old) => {
                let now = Instant::now();
                let mut previous: Vec<_> = old.previous.iter().filter(|(_, until)| *until > now).cloned().collect();
                let current = match (&r.group, r.keys.is_empty()) {
                    (_, true) => Vec::new(),
                    (Some(_), false) => configured.unwrap_or_default(),
                    (None, false) if !old.current.is_empty() => old.current.clone(),
                    (None, false) => configured.unwrap_or_default(),
                };
                if current != old.current && !old.current.is_empty() && !current.is_empty() {
                    match max_ttl {
                        Some(ttl) if ttl.is_zero() => {}
                        Some(ttl) => previous.push((old.current.clone(), now + ttl)),
                        // A lock without expiry was granted: the old group stays in the
                        // quorum for as long as this process runs.
                        None => previous.push((old.current.clone(), now + Duration::from_secs(100 * 365 * 86_400))),
                    }
                }
                (current, previous)
            }
        };
        LockGroup {
            namespace,
            current,
            previous,
            member_timeout: Duration::from_millis(r.member_timeout_ms),
            drift_factor: r.drift_factor,
            on_no_quorum: r.on_no_quorum,
        }
    }

    /// Whether lock keys get Redlock treatment at all.
    #[inline]
    pub fn enabled(&self) -> bool {
        !self.current.is_empty() && !self.namespace.is_empty()
    }

    /// Keys every member holds, which KEYS and SCAN list once: lock keys
    /// and the fencing counter.
    pub fn listed_once(&self) -> Namespace {
        self.namespace.clone().with(FENCE_KEY)
    }

    #[inline]
    pub fn is_lock_key(&self, key: &[u8]) -> bool {
        self.enabled() && self.namespace.matches(key)
    }

    /// Every member that must be asked (the union of the current group and
    /// the previous groups still in force) and each group as positions in it.
    pub fn plan(&self) -> (Vec<Arc<str>>, Vec<Vec<usize>>) {
        let now = Instant::now();
        let mut members: Vec<Arc<str>> = Vec::new();
        let mut groups = Vec::new();
        let live = std::iter::once(&self.current).chain(self.previous.iter().filter(|(_, u)| *u > now).map(|(g, _)| g));
        for g in live {
            let mut pos = Vec::with_capacity(g.len());
            for name in g {
                let i = match members.iter().position(|m| m == name) {
                    Some(i) => i,
                    None => {
                        members.push(name.clone());
                        members.len() - 1
                    }
                };
                pos.push(i);
            }
            groups.push(pos);
        }
        (members, groups)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn group(keys: &[&str], members: &[&str]) -> LockGroup {
        LockGroup {
            namespace: Namespace::new(keys),
            current: members.iter().map(|m| Arc::from(*m)).collect(),
            previous: Vec::new(),
            member_timeout: Duration::from_millis(100),
            drift_factor: 0.01,
            on_no_quorum: NoQuorum::Nil,
        }
    }

    #[test]
    fn group_changes_keep_the_old_group_until_the_longest_ttl() {
        let g = group(&["lock:*"], &["a", "b", "c"]);
        let mut cfg = Config::parse(
            "[[backends]]\nname=\"a\"\naddr=\"h:1\"\n[[backends]]\nname=\"b\"\naddr=\"h:2\"\n[[backends]]\nname=\"c\"\naddr=\"h:3\"\n[[backends]]\nname=\"d\"\naddr=\"h:4\"\n",
        )
        .unwrap();
        // No explicit group: the running group stays.
        let same = LockGroup::build(&cfg, Some(&g), Some(Duration::from_secs(10)));
        assert_eq!(same.current, g.current);
        assert!(same.previous.is_empty());
        cfg.redlock.group = Some(vec!["b".into(), "c".into(), "d".into()]);
        let next = LockGroup::build(&cfg, Some(&g), Some(Duration::from_secs(10)));
        let (members, groups) = next.plan();
        assert_eq!(members.len(), 4);
        assert_eq!(groups.len(), 2, "the old group must still agree");
        // Nothing was ever granted: no joint period.
        let fresh = LockGroup::build(&cfg, Some(&g), Some(Duration::ZERO));
        assert_eq!(fresh.plan().1.len(), 1);
    }
}

//! A shard's master and replicas as the admin endpoint shows them: one
//! snapshot ([`ShardReplication`], read from the shard's
//! [`crate::backend::endpoint::Endpoint`] and
//! [`crate::backend::replicas::Replicas`], the same sources as `INFO
//! proxy`) that `/api/status` serializes as each shard's `replication`
//! and `/metrics` turns into series ([`encode`]).
//!
//! Series (prefixed `shardis_`), for every shard: `shard_master{shard,addr}`
//! (1 for the address writes go to now; no row while a Sentinel-followed
//! shard has none), `shard_failovers_total{shard}` (master moves followed)
//! and `backend_role_refusals_total{shard}` (connections to the master's
//! address refused because the server there did not say `master` in
//! `ROLE`; always 0 for a plain shard, which does not check). For a shard
//! with `read_from` other than `master`: `replica_reads_total{shard}`,
//! `replica_fallbacks_total{shard}` (reads sent to the master for want of
//! a usable replica), and per replica `replica_usable{shard,replica}` (0/1),
//! `replica_lag_seconds{shard,replica}` (the last lag measured: it is not
//! updated while the replica cannot be asked) and
//! `replica_role_refusals_total{shard,replica}`.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use serde::Serialize;

use super::metrics::family;
use crate::backend::Shard;
use crate::backend::replicas::Replica;

/// A shard's master and replicas now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShardReplication {
    /// The address writes go to now (`None`: the Sentinels have not named
    /// it yet).
    pub master: Option<String>,
    /// The Sentinel master name, for a followed shard.
    pub sentinel_master: Option<String>,
    /// The master moves followed since the shard started.
    pub failovers: u64,
    /// Connections that checked `ROLE`, and those refused for the wrong
    /// role (a replica at the master's address).
    pub role_checks: u64,
    pub role_refusals: u64,
    /// `master`, `replica` or `prefer-replica`.
    pub read_from: &'static str,
    /// The replicas reads may go to (with `read_from` other than `master`).
    pub replicas: Vec<ReplicaStatus>,
    /// The replicas the Sentinels list, `addr` or `addr(down)` (a followed
    /// shard that reads from the master only).
    pub sentinel_replicas: Vec<String>,
    pub replica_reads: u64,
    pub replica_fallbacks: u64,
}

/// One replica.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicaStatus {
    pub addr: String,
    /// Reads may go to it now.
    pub usable: bool,
    /// Why not (empty when usable): `lagging`, `unreachable: ...`, `down or
    /// disconnected (Sentinel)`, `cannot connect`, ...
    pub why: String,
    /// The last lag measured, in ms.
    pub lag_ms: u64,
    /// Connections refused because it did not say it is a replica.
    pub role_refusals: u64,
}

impl ReplicaStatus {
    fn of(n: &Replica) -> ReplicaStatus {
        let ep = &n.pool.spec.endpoint;
        // As the read path decides ([`crate::backend::replicas`]): the
        // failover task's verdict, and its pool's last connection attempt.
        let checked = n.usable();
        let why = if !checked {
            n.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
        } else if !ep.is_up() {
            "cannot connect".to_string()
        } else {
            String::new()
        };
        ReplicaStatus {
            addr: n.addr.clone(),
            usable: why.is_empty(),
            why,
            lag_ms: n.lag_ms.load(Relaxed),
            role_refusals: ep.role_refusals.load(Relaxed),
        }
    }
}

impl ShardReplication {
    /// The snapshot of any shard (a plain one has its fixed address, no
    /// replicas and zero counts).
    pub fn of(s: &Shard) -> ShardReplication {
        let ep = &s.spec.endpoint;
        let r = s.replicas.as_deref();
        ShardReplication {
            master: ep.addr().map(|a| a.to_string()),
            sentinel_master: ep.master_name().map(str::to_string),
            failovers: ep.failovers.load(Relaxed),
            role_checks: ep.role_checks.load(Relaxed),
            role_refusals: ep.role_refusals.load(Relaxed),
            read_from: match s.spec.read_from {
                crate::config::ReadFrom::Master => "master",
                crate::config::ReadFrom::Replica => "replica",
                crate::config::ReadFrom::PreferReplica => "prefer-replica",
            },
            replicas: r.map_or_else(Vec::new, |r| r.nodes().iter().map(|n| ReplicaStatus::of(n)).collect()),
            sentinel_replicas: if r.is_none() && ep.follows() {
                ep.known_replicas()
            } else {
                Vec::new()
            },
            replica_reads: r.map_or(0, |r| r.reads.load(Relaxed)),
            replica_fallbacks: r.map_or(0, |r| r.fallbacks.load(Relaxed)),
        }
    }

    /// Whether there is anything beyond a plain shard's fixed address: the
    /// shard follows a master, checks roles or reads from replicas (the
    /// shards `INFO proxy` gives these fields for).
    pub fn is_replicated(s: &Shard) -> bool {
        s.spec.endpoint.expect().is_some() || s.replicas.is_some()
    }
}

type Fmt = Result<(), std::fmt::Error>;
type Labels2 = [(&'static str, String); 2];

/// The series of the module doc for `shards` (name, snapshot, whether the
/// shard reads from replicas).
pub fn encode(e: &mut DescriptorEncoder, shards: &[(String, ShardReplication, bool)]) -> Fmt {
    let one = |f: &dyn Fn(&ShardReplication) -> u64, all: bool| -> Vec<([(&str, String); 1], f64)> {
        shards
            .iter()
            .filter(|(_, _, reads)| all || *reads)
            .map(|(n, r, _)| ([("shard", n.clone())], f(r) as f64))
            .collect()
    };
    let masters: Vec<(Labels2, f64)> = shards
        .iter()
        .filter_map(|(n, r, _)| Some(([("shard", n.clone()), ("addr", r.master.clone()?)], 1.0)))
        .collect();
    family(
        e,
        "shardis_shard_master",
        "1 for the address the shard's writes go to now (followed through Sentinel failovers)",
        Gauge,
        &masters,
    )?;
    family(
        e,
        "shardis_shard_failovers",
        "Master moves (Sentinel failovers) the shard followed",
        Counter,
        &one(&|r| r.failovers, true),
    )?;
    family(
        e,
        "shardis_backend_role_refusals",
        "Connections to the shard's master address refused by the ROLE check (the server said it is a replica)",
        Counter,
        &one(&|r| r.role_refusals, true),
    )?;
    family(
        e,
        "shardis_replica_reads",
        "Reads sent to a replica",
        Counter,
        &one(&|r| r.replica_reads, false),
    )?;
    family(
        e,
        "shardis_replica_fallbacks",
        "Reads sent to the master for want of a usable replica",
        Counter,
        &one(&|r| r.replica_fallbacks, false),
    )?;
    let per = |f: &dyn Fn(&ReplicaStatus) -> f64| -> Vec<(Labels2, f64)> {
        shards
            .iter()
            .flat_map(|(n, r, _)| {
                r.replicas
                    .iter()
                    .map(move |x| ([("shard", n.clone()), ("replica", x.addr.clone())], f(x)))
            })
            .collect()
    };
    family(
        e,
        "shardis_replica_usable",
        "1 when reads may go to the replica (up, linked to its master, not lagging)",
        Gauge,
        &per(&|x| f64::from(u8::from(x.usable))),
    )?;
    family(
        e,
        "shardis_replica_lag_seconds",
        "How far the replica was behind its master when last measured",
        Gauge,
        &per(&|x| x.lag_ms as f64 / 1000.0),
    )?;
    family(
        e,
        "shardis_replica_role_refusals",
        "Connections to the replica refused by the ROLE check (the server said it is not a replica)",
        Counter,
        &per(&|x| x.role_refusals as f64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Fixed(Vec<(String, ShardReplication, bool)>);

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
            encode(&mut e, &self.0)
        }
    }

    fn row(master: Option<&str>, replicas: Vec<ReplicaStatus>) -> ShardReplication {
        ShardReplication {
            master: master.map(str::to_string),
            sentinel_master: None,
            failovers: 2,
            role_checks: 5,
            role_refusals: 1,
            read_from: "replica",
            replicas,
            sentinel_replicas: Vec::new(),
            replica_reads: 7,
            replica_fallbacks: 3,
        }
    }

    #[test]
    fn replication_series_per_shard_and_replica() {
        let lagging = ReplicaStatus {
            addr: "10.0.0.2:6379".into(),
            usable: false,
            why: "lagging".into(),
            lag_ms: 1500,
            role_refusals: 0,
        };
        let shards = vec![
            ("a".to_string(), row(Some("10.0.0.1:6379"), vec![lagging]), true),
            ("b".to_string(), row(None, Vec::new()), false),
        ];
        let mut reg = Registry::default();
        reg.register_collector(Box::new(Fixed(shards)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let v = |s: &str| super::super::metrics::value(&text, s);
        assert_eq!(v("shardis_shard_master{shard=\"a\",addr=\"10.0.0.1:6379\"}"), Some(1.0));
        assert!(!text.contains("shardis_shard_master{shard=\"b\""), "{text}");
        assert_eq!(v("shardis_shard_failovers_total{shard=\"b\"}"), Some(2.0));
        assert_eq!(v("shardis_backend_role_refusals_total{shard=\"a\"}"), Some(1.0));
        assert_eq!(v("shardis_replica_fallbacks_total{shard=\"a\"}"), Some(3.0));
        assert_eq!(v("shardis_replica_fallbacks_total{shard=\"b\"}"), None);
        let r = "{shard=\"a\",replica=\"10.0.0.2:6379\"}";
        assert_eq!(v(&format!("shardis_replica_usable{r}")), Some(0.0));
        assert_eq!(v(&format!("shardis_replica_lag_seconds{r}")), Some(1.5));
        assert_eq!(v(&format!("shardis_replica_role_refusals_total{r}")), Some(0.0));
    }
}

//! `/api/status`: the proxy's state as JSON, for the status page and for
//! scripts. Read from the same sources as INFO (topology, counters, lock
//! service, migration stats); ops/s and p99 per shard are over the window
//! since the previous `/api/status` request (the page asks every second),
//! from the per-shard latency histograms ([`crate::counters`]). A shard
//! with a Sentinel master or replicas also has its `replication`
//! ([`super::replication`]).

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::replication::ShardReplication;
use crate::counters::{HistogramSnapshot, ShardSnapshot};
use crate::state::Shared;
use crate::topology::Topology;

/// The whole status.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_s: u64,
    pub epoch: u64,
    pub clients: Clients,
    /// Requests per second to all shards, over the window.
    pub ops_per_sec: f64,
    pub shards: Vec<ShardStatus>,
    pub migration: Option<MigrationStatus>,
    pub locks: LockStatus,
    /// Set in fleet mode (`[cluster]`).
    pub fleet: Option<FleetStatus>,
}

#[derive(Debug, Serialize)]
pub struct Clients {
    pub connected: usize,
    pub accepted: u64,
    pub refused: u64,
    pub blocked: usize,
}

/// One shard.
#[derive(Debug, Serialize, PartialEq)]
pub struct ShardStatus {
    pub name: String,
    pub addr: String,
    /// At least one pooled connection is up.
    pub up: bool,
    pub connections: i64,
    pub slots: usize,
    /// Share of the ring's slots, 0..=1.
    pub slot_share: f64,
    pub ops_per_sec: f64,
    /// Backend round trip p99 over the window (bucket upper bound), if any
    /// request completed in it.
    pub p99_ms: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    /// For a shard that follows a Sentinel master, checks roles or has
    /// replicas: its master now, failovers, role-check refusals and
    /// replicas (usable, why not, lag); `null` for a plain shard.
    pub replication: Option<ShardReplication>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MigrationStatus {
    pub in_progress: bool,
    pub from_epoch: u64,
    pub to_epoch: u64,
    /// Old shards that lost slots, and those the migrator has still to walk.
    pub shards_total: usize,
    pub shards_left: usize,
    pub keys_scanned: u64,
    /// Keys moved (by the migrator and on demand).
    pub keys_moved: u64,
    pub errors: u64,
    /// Shards walked over shards to walk, 100 once done.
    pub percent: f64,
    pub abandoned: bool,
    pub seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LockStatus {
    /// Redlock is on (the group has members).
    pub enabled: bool,
    pub members: Vec<LockMember>,
    /// Earlier groups still in the quorum after a change.
    pub previous_groups: usize,
    pub granted: u64,
    pub denied: u64,
    pub no_quorum: u64,
}

#[derive(Debug, Serialize)]
pub struct LockMember {
    pub name: String,
    pub up: bool,
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub name: String,
    /// This proxy's id.
    pub id: String,
    /// `stable`, `prepared` or `committed`; empty before the agent's first
    /// read.
    pub phase: String,
    pub epoch: u64,
    pub members: Vec<FleetMemberStatus>,
}

#[derive(Debug, Serialize)]
pub struct FleetMemberStatus {
    pub id: String,
    pub addr: String,
    pub serving: u64,
    pub alive: bool,
}

/// One shard's sample: its name, requests and latency histogram.
type Sample = (String, u64, HistogramSnapshot);

/// The previous sample per shard, for rates over the window.
#[derive(Debug, Default)]
pub struct Window {
    last: Mutex<Option<(Instant, Vec<Sample>)>>,
}

/// A shard's row from its counters and the previous sample (`prev`: its
/// requests and histogram then, and the seconds since).
pub fn shard_row(
    name: &str,
    addr: &str,
    slots: usize,
    total_slots: usize,
    snap: &ShardSnapshot,
    prev: Option<(u64, &HistogramSnapshot, f64)>,
) -> ShardStatus {
    let (ops, window) = match prev {
        Some((req, hist, secs)) if secs > 0.0 => (
            snap.requests.saturating_sub(req) as f64 / secs,
            snap.latency.since(hist),
        ),
        _ => (0.0, snap.latency.clone()),
    };
    ShardStatus {
        name: name.to_string(),
        addr: addr.to_string(),
        up: snap.live > 0,
        connections: snap.live,
        slots,
        slot_share: if total_slots == 0 {
            0.0
        } else {
            slots as f64 / total_slots as f64
        },
        ops_per_sec: (ops * 10.0).round() / 10.0,
        p99_ms: window.quantile_us(0.99).map(|us| us as f64 / 1000.0),
        requests: snap.requests,
        errors: snap.error_replies + snap.failures,
        replication: None,
    }
}

/// The migration of `topo`, if it has one.
pub fn migration(topo: &Topology) -> Option<MigrationStatus> {
    let m = topo.migration.as_ref()?;
    let st = &m.stats;
    let (total, left) = (m.sources_total(), m.sources_left());
    let percent = if !m.active() || total == 0 {
        100.0
    } else {
        ((total - left.min(total)) as f64 * 100.0 / total as f64).round()
    };
    Some(MigrationStatus {
        in_progress: m.active(),
        from_epoch: m.from_epoch,
        to_epoch: m.to_epoch,
        shards_total: total,
        shards_left: left,
        keys_scanned: st.scanned.load(Ordering::Relaxed),
        keys_moved: st.moved.load(Ordering::Relaxed) + st.moved_on_demand.load(Ordering::Relaxed),
        errors: st.errors.load(Ordering::Relaxed),
        percent,
        abandoned: m.abandoned(),
        seconds: m.finished_after().map(|d| d.as_secs_f64()),
    })
}

impl Status {
    /// The status now; moves `window` to now.
    pub fn collect(shared: &Shared, window: &Window) -> Status {
        let topo = shared.topology.load_full();
        let now = Instant::now();
        let counts = topo.ring.slot_counts();
        let total_slots = topo.ring.slots();
        let snaps: Vec<ShardSnapshot> = topo.shards.iter().map(|s| s.counters.snapshot()).collect();
        let mut last = window.last.lock().unwrap_or_else(|p| p.into_inner());
        let shards: Vec<ShardStatus> = topo
            .shards
            .iter()
            .zip(&snaps)
            .enumerate()
            .map(|(i, (sh, snap))| {
                let prev = last.as_ref().and_then(|(at, rows)| {
                    let secs = now.saturating_duration_since(*at).as_secs_f64();
                    rows.iter()
                        .find(|(n, _, _)| n == sh.name())
                        .map(|(_, req, hist)| (*req, hist, secs))
                });
                let slots = counts.get(i).copied().unwrap_or(0);
                let mut row = shard_row(sh.name(), &sh.spec.addr, slots, total_slots, snap, prev);
                if ShardReplication::is_replicated(sh) {
                    row.replication = Some(ShardReplication::of(sh));
                }
                row
            })
            .collect();
        *last = Some((
            now,
            topo.shards
                .iter()
                .zip(&snaps)
                .map(|(sh, s)| (sh.name().to_string(), s.requests, s.latency.clone()))
                .collect(),
        ));
        drop(last);
        let up = |name: &str| shards.iter().any(|s| s.name == name && s.up);
        let l = &shared.locks;
        let locks = LockStatus {
            enabled: !topo.locks.current.is_empty(),
            members: topo
                .locks
                .current
                .iter()
                .map(|m| LockMember {
                    name: m.to_string(),
                    up: up(m),
                })
                .collect(),
            previous_groups: topo.locks.previous.len(),
            granted: l.granted.load(Ordering::Relaxed),
            denied: l.denied.load(Ordering::Relaxed),
            no_quorum: l.no_quorum.load(Ordering::Relaxed),
        };
        let view = shared.fleet.load_full();
        let fleet = topo.config.cluster.as_ref().map(|c| FleetStatus {
            name: c.name.clone(),
            id: crate::cluster::agent::proxy_id(&topo.config, c),
            phase: view.as_ref().map_or("", |v| v.phase).to_string(),
            epoch: view.as_ref().map_or(topo.epoch, |v| v.epoch),
            members: view.as_ref().map_or_else(Vec::new, |v| {
                v.members
                    .iter()
                    .map(|m| FleetMemberStatus {
                        id: m.id.clone(),
                        addr: m.addr.clone(),
                        serving: m.serving,
                        alive: m.alive,
                    })
                    .collect()
            }),
        });
        let st = &shared.stats;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: shared.started.elapsed().as_secs(),
            epoch: topo.epoch,
            clients: Clients {
                connected: st.clients.load(Ordering::Relaxed),
                accepted: st.connections.load(Ordering::Relaxed),
                refused: st.rejected.load(Ordering::Relaxed),
                blocked: st.blocked.load(Ordering::Relaxed),
            },
            ops_per_sec: shards.iter().map(|s| s.ops_per_sec).sum(),
            migration: migration(&topo),
            shards,
            locks,
            fleet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_row_has_its_rate_share_and_p99_over_the_window() {
        let mut snap = ShardSnapshot {
            requests: 1_500,
            live: 2,
            ..Default::default()
        };
        snap.latency.buckets[1] = 1_000; // <= 100 us
        snap.latency.buckets[5] = 10; // <= 2.5 ms
        let earlier = HistogramSnapshot::default();
        let row = shard_row("a", "127.0.0.1:1", 256, 1024, &snap, Some((500, &earlier, 2.0)));
        assert_eq!(row.ops_per_sec, 500.0);
        assert_eq!(row.slot_share, 0.25);
        assert!(row.up);
        assert_eq!(row.p99_ms, Some(0.1));
        snap.live = 0;
        let row = shard_row("a", "x", 0, 0, &snap, None);
        assert!(!row.up);
        assert_eq!((row.ops_per_sec, row.slot_share), (0.0, 0.0));
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["name"], "a");
        assert_eq!(json["up"], false);
        assert!(json.get("p99_ms").is_some());
    }
}

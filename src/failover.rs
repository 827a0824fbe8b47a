//! The failover task of one proxy: follows the Sentinels and watches the
//! replicas of the shards that have them.
//!
//! - A subscription to `+switch-master` on one Sentinel at a time (the next
//!   one when it fails or stops answering PING): an event makes the task
//!   ask at once.
//! - Every `poll_ms` (and at once when a connection finds its server gone or
//!   in the wrong role, see [`crate::backend::endpoint::NUDGE`]) it asks the
//!   Sentinels for each followed master ([`crate::backend::sentinel::ask_master`]:
//!   highest config epoch wins) and moves the shard there
//!   ([`crate::backend::Shard::follow`]): a missed event is followed at the
//!   next poll. The shard keeps its name, so its place on the ring and its
//!   keys stay.
//! - For shards that read from replicas: the replica list (from the
//!   Sentinels, or static), and whether each may be read from: it must say
//!   it is a replica with its link to the master up, and be no further
//!   behind than `max_replica_lag_ms` (its replication offset against the
//!   master's, sampled at each poll).
//!
//! It holds only a weak reference to the proxy's state and ends with it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::backend::Shard;
use crate::backend::endpoint::NUDGE;
use crate::backend::replicas::Replicas;
use crate::backend::sentinel::{self, SentinelConn};
use crate::config::DEFAULT_POLL_MS;
use crate::protocol::{Request, reply};
use crate::state::Shared;
use crate::topology::Topology;

/// Samples of a master's replication offset kept for lag estimates.
const HISTORY: usize = 120;
/// Least time between two polls, however often the task is woken.
const MIN_GAP: Duration = Duration::from_millis(50);

/// Starts the failover task for `shared`'s proxy (it idles while no shard
/// follows a master or has replicas).
pub fn spawn(shared: &Arc<Shared>) {
    let wake = Arc::new(Notify::new());
    tokio::spawn(poll_loop(Arc::downgrade(shared), wake.clone()));
    tokio::spawn(subscribe_loop(Arc::downgrade(shared), wake));
}

fn poll_every(topo: &Topology) -> Duration {
    Duration::from_millis(topo.config.sentinel.as_ref().map_or(DEFAULT_POLL_MS, |s| s.poll_ms))
}

fn has_work(topo: &Topology) -> bool {
    topo.shards
        .iter()
        .any(|s| s.spec.endpoint.follows() || s.replicas.is_some())
}

async fn poll_loop(weak: Weak<Shared>, wake: Arc<Notify>) {
    let mut history: HashMap<Arc<str>, VecDeque<(Instant, u64)>> = HashMap::new();
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let topo = shared.topology.load_full();
        if has_work(&topo) {
            shared.sentinel.polls.fetch_add(1, Relaxed);
            poll(&shared, &topo, &mut history).await;
        }
        drop(shared);
        let every = poll_every(&topo);
        drop(topo);
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            _ = tokio::time::sleep(every.saturating_sub(MIN_GAP)) => {}
            _ = wake.notified() => {}
            _ = NUDGE.notified() => {}
        }
    }
}

/// One round over the shards, each in a task of its own so that a hung
/// server or Sentinel does not hold up the others.
async fn poll(shared: &Shared, topo: &Topology, history: &mut HashMap<Arc<str>, VecDeque<(Instant, u64)>>) {
    let mut tasks = tokio::task::JoinSet::new();
    for shard in &topo.shards {
        if !shard.spec.endpoint.follows() && shard.replicas.is_none() {
            continue;
        }
        let shard = shard.clone();
        let mut h = history.remove(&shard.spec.name).unwrap_or_default();
        tasks.spawn(async move {
            let ok = check_shard(&shard, &mut h).await;
            (shard.spec.name.clone(), h, ok)
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, h, ok)) = done {
            if !ok {
                shared.sentinel.poll_errors.fetch_add(1, Relaxed);
            }
            history.insert(name, h);
        }
    }
}

/// Follows the shard's master and checks its replicas; false if the
/// Sentinels could not be asked.
async fn check_shard(shard: &Shard, history: &mut VecDeque<(Instant, u64)>) -> bool {
    let ep = &shard.spec.endpoint;
    let within = shard.spec.connect_timeout;
    let mut ok = true;
    let mut sentinel_says: Option<Vec<sentinel::ReplicaAddr>> = None;
    if let (Some(name), Some(sentinels)) = (ep.master_name(), ep.sentinels()) {
        match sentinel::ask_master(sentinels, name, within).await {
            Ok(m) => {
                shard.follow(&m.addr, m.epoch);
            }
            Err(e) => {
                ok = false;
                warn!(shard = %shard.spec.name, error = %e, "could not ask the Sentinels for the master");
            }
        }
        match sentinel::ask_replicas(sentinels, name, within).await {
            Ok(list) => {
                let addrs: Vec<String> = list.iter().map(|r| r.addr.clone()).collect();
                ep.set_known_replicas(
                    list.iter()
                        .map(|r| {
                            if r.healthy {
                                r.addr.clone()
                            } else {
                                format!("{}(down)", r.addr)
                            }
                        })
                        .collect(),
                );
                if let Some(r) = &shard.replicas
                    && r.set(&addrs)
                {
                    info!(shard = %shard.spec.name, replicas = ?addrs, "replicas (from the Sentinels)");
                }
                sentinel_says = Some(list);
            }
            Err(e) => debug!(shard = %shard.spec.name, error = %e, "could not ask the Sentinels for the replicas"),
        }
    }
    if let Some(r) = &shard.replicas {
        check_replicas(shard, r, sentinel_says.as_deref(), history).await;
    }
    ok
}

/// INFO replication of a pool's server, as fields.
async fn replication(pool: &Shard) -> Result<Vec<(String, String)>, String> {
    let f = pool
        .call(0, Request::from_args(&["INFO", "replication"]).raw)
        .await
        .map_err(|e| e.detail().to_string())?;
    if reply::is_error(&f) {
        return Err(String::from_utf8_lossy(f.get(1..).unwrap_or_default())
            .trim_end()
            .to_string());
    }
    let body: Bytes = reply::as_bytes(&f).unwrap_or_default();
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn get<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// How far behind the master a replica at offset `off` is: the age of the
/// oldest master sample it does not have yet (0 if it has them all).
fn lag_of(history: &VecDeque<(Instant, u64)>, off: u64, now: Instant) -> Duration {
    history
        .iter()
        .find(|(_, o)| *o > off)
        .map_or(Duration::ZERO, |(t, _)| now.saturating_duration_since(*t))
}

async fn check_replicas(
    shard: &Shard,
    r: &Replicas,
    sentinel_says: Option<&[sentinel::ReplicaAddr]>,
    history: &mut VecDeque<(Instant, u64)>,
) {
    let now = Instant::now();
    if let Ok(m) = replication(shard).await
        && let Some(off) = get(&m, "master_repl_offset").and_then(|v| v.parse::<u64>().ok())
    {
        if history.back().is_some_and(|(_, o)| *o > off) {
            history.clear(); // another master, another offset sequence
        }
        history.push_back((now, off));
        while history.len() > HISTORY {
            history.pop_front();
        }
    }
    let max = shard.spec.max_replica_lag;
    for node in r.nodes().iter() {
        if let Some(list) = sentinel_says
            && list.iter().any(|s| s.addr == node.addr && !s.healthy)
        {
            node.set_usable(false, "down or disconnected (Sentinel)");
            continue;
        }
        let f = match replication(&node.pool).await {
            Ok(f) => f,
            Err(e) => {
                node.set_usable(false, &format!("unreachable: {e}"));
                continue;
            }
        };
        if get(&f, "role") != Some("slave") {
            node.set_usable(false, "not a replica");
            continue;
        }
        if get(&f, "master_link_status") != Some("up") {
            node.set_usable(false, "link to its master down");
            continue;
        }
        let Some(off) = get(&f, "slave_repl_offset").and_then(|v| v.parse::<u64>().ok()) else {
            node.set_usable(false, "no replication offset");
            continue;
        };
        let lag = lag_of(history, off, now);
        node.lag_ms.store(lag.as_millis() as u64, Relaxed);
        if lag > max {
            node.set_usable(false, "lagging");
        } else {
            node.set_usable(true, "");
        }
    }
}

async fn subscribe_loop(weak: Weak<Shared>, wake: Arc<Notify>) {
    let mut next = 0usize;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let topo = shared.topology.load_full();
        let cfg =
            topo.config.sentinel.clone().filter(|c| {
                c.subscribe && !c.addrs.is_empty() && topo.shards.iter().any(|s| s.spec.endpoint.follows())
            });
        let every = poll_every(&topo);
        drop(topo);
        let Some(cfg) = cfg else {
            drop(shared);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let addr = cfg.addrs[next % cfg.addrs.len()].clone();
        next = next.wrapping_add(1);
        let r = listen(&shared, &addr, &cfg, every, &wake).await;
        shared.sentinel.set_subscribed("");
        drop(shared);
        if let Err(e) = r {
            warn!(sentinel = %addr, error = %e, "+switch-master subscription lost; trying the next Sentinel");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes to `+switch-master` on the Sentinel at `addr` and wakes the
/// poll on every event, until the connection fails or the Sentinel stops
/// answering PING for three poll periods.
async fn listen(
    shared: &Shared,
    addr: &str,
    cfg: &crate::config::SentinelConfig,
    every: Duration,
    wake: &Notify,
) -> Result<(), String> {
    let mut c = SentinelConn::open(addr, cfg, Duration::from_secs(1)).await?;
    c.send(&Request::from_args(&["SUBSCRIBE", "+switch-master"]).raw)
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(1), c.next_frame())
        .await
        .map_err(|_| "no answer to SUBSCRIBE".to_string())??;
    if reply::is_error(&first) {
        return Err(String::from_utf8_lossy(&first).trim_end().to_string());
    }
    shared.sentinel.set_subscribed(addr);
    debug!(sentinel = addr, "subscribed to +switch-master");
    let mut heard = Instant::now();
    let ping = Request::from_args(&["PING"]).raw;
    loop {
        tokio::select! {
            f = c.next_frame() => {
                let f = f?;
                heard = Instant::now();
                if let Some(name) = sentinel::switch_master_name(&f) {
                    shared.sentinel.events.fetch_add(1, Relaxed);
                    info!(sentinel = addr, master = %name, "+switch-master");
                    wake.notify_one();
                }
            }
            _ = tokio::time::sleep(every) => {
                if heard.elapsed() > every * 3 {
                    return Err("no answer to PING".to_string());
                }
                c.send(&ping).await?;
            }
        }
    }
}

/// The `INFO proxy` fields of a shard that follows a master or has
/// replicas (empty for others): `,master=...,role_checks=...,...`.
pub fn shard_info(s: &Shard) -> String {
    let ep = &s.spec.endpoint;
    if ep.expect().is_none() && s.replicas.is_none() {
        return String::new();
    }
    let mut t = format!(
        ",master={},role_checks={},role_refusals={},failovers={}",
        ep.describe(),
        ep.role_checks.load(Relaxed),
        ep.role_refusals.load(Relaxed),
        ep.failovers.load(Relaxed)
    );
    if let Some(name) = ep.master_name() {
        t.push_str(&format!(",sentinel_master={name}"));
        if s.replicas.is_none() {
            t.push_str(&format!(",replicas={}", ep.known_replicas().join(";")));
        }
    }
    if let Some(r) = &s.replicas {
        let list: Vec<String> = r
            .nodes()
            .iter()
            .map(|n| {
                let state = if n.usable() { "ok" } else { "skipped" };
                format!("{}@{}/{}ms", n.addr, state, n.lag_ms.load(Relaxed))
            })
            .collect();
        t.push_str(&format!(
            ",read_from={:?},replicas={},replica_reads={},replica_fallbacks={}",
            r.mode,
            list.join(";"),
            r.reads.load(Relaxed),
            r.fallbacks.load(Relaxed)
        ));
    }
    t
}

/// The proxy-wide Sentinel lines of `INFO proxy` (none without `[sentinel]`).
pub fn sentinel_info(shared: &Shared, topo: &Topology) -> String {
    if topo.config.sentinel.is_none() {
        return String::new();
    }
    let st = &shared.sentinel;
    format!(
        "sentinel_subscribed:{}\r\nsentinel_switch_events:{}\r\nsentinel_polls:{}\r\nsentinel_poll_errors:{}\r\n",
        st.subscribed(),
        st.events.load(Relaxed),
        st.polls.load(Relaxed),
        st.poll_errors.load(Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_sample_the_replica_lacks() {
        let now = Instant::now();
        let h: VecDeque<(Instant, u64)> = [(3000u64, 100u64), (2000, 200), (1000, 300), (0, 400)]
            .into_iter()
            .map(|(ago, o)| (now - Duration::from_millis(ago), o))
            .collect();
        assert_eq!(lag_of(&h, 400, now), Duration::ZERO);
        assert_eq!(lag_of(&h, 250, now), Duration::from_millis(1000));
        assert_eq!(lag_of(&h, 150, now), Duration::from_millis(2000));
        assert_eq!(lag_of(&h, 0, now), Duration::from_millis(3000));
        assert_eq!(lag_of(&VecDeque::new(), 0, now), Duration::ZERO);
    }
}

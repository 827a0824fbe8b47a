//! The migrator: the background task that walks every old shard that lost
//! slots and moves each key whose owner changed to its new owner (see the
//! parent module for the whole scheme). Started by [`crate::control`] and,
//! in a fleet, by the elected proxy ([`crate::cluster`]).
//!
//! Every source shard is walked at once, each by a task of its own, and each
//! walk keeps its shard busy without waiting on the proxy between calls:
//!
//! - a **scanner** `SCAN`s the shard and hands the keys that no longer belong
//!   to it, grouped by new owner, to the walk through a short queue, so the
//!   next `SCAN` is already queued on the shard while a `MIGRATE` runs;
//! - the **walk** gathers those keys per target and sends them in batches of
//!   the size [`Pacer`] picks from the latency of the previous batches, so
//!   that one `MIGRATE` (which blocks the source Redis while it runs) stays
//!   around [`super::pacing::TARGET`].
//!
//! Sources hold disjoint keys, so their walks never race on a key; a
//! session's on-demand move of a key the walk also holds is answered
//! `NOKEY` by whichever `MIGRATE` comes second (a batch skips a missing key).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::pacing::{Pacer, RateLimit};
use super::{Migration, Outcome, del_request, migrate_request, outcome};
use crate::backend::backoff::Backoff;
use crate::backend::{BackendSpec, Shard};
use crate::protocol::reply;
use crate::topology::Topology;

/// Keys asked for per `SCAN` call. About 0.5 ms of a loaded Redis for small
/// keys (bench/migration.sh); a quarter to all of them move.
const SCAN_COUNT: &str = "1000";

/// `SCAN` replies the scanner may be ahead of the batches.
const SCANS_AHEAD: usize = 8;

/// The connection lane the migrator's requests use.
const LANE: usize = 0;

/// The keys of one `SCAN` reply that moved: per new owner (its index in the
/// topology), in scan order.
type Found = Vec<(usize, Vec<Bytes>)>;

/// The migrator: walks every old shard that lost slots, all at once, and
/// moves each key whose owner changed to its owner in `topo` (the topology
/// the migration leads to). Ends the migration when every walk is done;
/// stops early if abandoned.
pub async fn run(m: Arc<Migration>, topo: Arc<Topology>) {
    info!(
        from_epoch = m.from_epoch,
        to_epoch = m.to_epoch,
        sources = m.sources_left(),
        "migration started: keys follow the new ring"
    );
    let mut walks = JoinSet::new();
    for i in 0..m.pending.len() {
        if !m.pending[i].load(Ordering::Acquire) {
            continue;
        }
        let Some(source) = m.old_shard(i) else { return };
        walks.spawn(walk_shard(m.clone(), topo.clone(), source, i));
    }
    let mut complete = true;
    while let Some(walked) = walks.join_next().await {
        match walked {
            Ok(done) => complete &= done,
            Err(e) => {
                // Not expected: a walk does not panic. The migration stays
                // active (keys may be left); a forced reload abandons it.
                error!(error = %e, "migration: a shard's walk ended abnormally; the migration cannot finish");
                complete = false;
            }
        }
    }
    if !complete {
        return; // abandoned
    }
    m.finish();
    info!(
        from_epoch = m.from_epoch,
        to_epoch = m.to_epoch,
        scanned = m.stats.scanned.load(Ordering::Relaxed),
        moved = m.stats.moved.load(Ordering::Relaxed),
        moved_on_demand = m.stats.moved_on_demand.load(Ordering::Relaxed),
        superseded = m.stats.superseded.load(Ordering::Relaxed),
        seconds = m.started.elapsed().as_secs_f64(),
        "migration finished"
    );
}

/// Walks old shard `i` to the end and marks it done. False if the migration
/// was abandoned on the way.
async fn walk_shard(m: Arc<Migration>, topo: Arc<Topology>, source: Arc<Shard>, i: usize) -> bool {
    let started = Instant::now();
    let Some(batch) = walk(&m, &topo, &source).await else {
        return false;
    };
    m.pending[i].store(false, Ordering::Release);
    info!(
        shard = %m.old_names[i],
        seconds = started.elapsed().as_secs_f64(),
        last_batch = batch,
        "migration: shard walked, its moved keys are on their new owners"
    );
    true
}

/// Counts a failed call, logs it and waits before the retry.
async fn retry_after(backoff: &mut Backoff, m: &Migration, what: &str, shard: &str, why: &str) {
    m.stats.errors.fetch_add(1, Ordering::Relaxed);
    let delay = backoff.next_delay();
    warn!(
        shard,
        error = why,
        retry_in_ms = delay.as_millis() as u64,
        "migration: {what} failed"
    );
    tokio::time::sleep(delay).await;
}

/// Retries of one call: from 100 ms, doubling up to 5 s.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// Moves what no longer belongs to `source`, in paced batches per target,
/// while its scanner walks it: the size batches had at the end, or `None`
/// if the migration was abandoned.
async fn walk(m: &Arc<Migration>, topo: &Arc<Topology>, source: &Arc<Shard>) -> Option<usize> {
    let (tx, mut rx) = mpsc::channel::<Found>(SCANS_AHEAD);
    let scanner = tokio::spawn(scan(m.clone(), topo.clone(), source.clone(), tx));
    let mut pacer = Pacer::default();
    // `[migration] max_keys_per_second`, shared equally by the walks.
    let limit = topo.config.migration.max_keys_per_second as f64 / m.sources_total().max(1) as f64;
    let (mut limit, began) = (RateLimit::new(limit), Instant::now());
    // Keys waiting for a batch, per target.
    let mut waiting: Vec<Vec<Bytes>> = vec![Vec::new(); topo.shards.len()];
    let mut scanning = true;
    loop {
        let size = pacer.batch();
        // A full batch (or, once the scan is over, whatever is left).
        let ready = waiting
            .iter()
            .position(|w| w.len() >= size || (!scanning && !w.is_empty()));
        if let Some(t) = ready {
            let w = &mut waiting[t];
            let rest = w.split_off(size.min(w.len()));
            let batch = std::mem::replace(w, rest);
            if !move_keys(m, source, &topo.shards[t].spec, &batch, Some(&mut pacer)).await {
                scanner.abort();
                return None;
            }
            let wait = limit.after(batch.len(), began.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            continue;
        }
        if !scanning {
            break;
        }
        match rx.recv().await {
            Some(found) => {
                for (t, keys) in found {
                    if let Some(w) = waiting.get_mut(t) {
                        w.extend(keys);
                    }
                }
            }
            None => scanning = false,
        }
    }
    // The queue closed: the scanner reached the end (true) or stopped for an
    // abandoned migration (false).
    matches!(scanner.await, Ok(true)).then(|| pacer.batch())
}

/// SCANs `source` to the end and queues, per SCAN reply, the keys that moved
/// (lock keys never do). True once the walk is complete; false if the
/// migration was abandoned or the walk stopped listening.
async fn scan(m: Arc<Migration>, topo: Arc<Topology>, source: Arc<Shard>, tx: mpsc::Sender<Found>) -> bool {
    let mut cursor = Bytes::from_static(b"0");
    let mut backoff = backoff();
    loop {
        if m.abandoned() {
            return false;
        }
        let scan = crate::protocol::Request::from_args(&[&b"SCAN"[..], &cursor, b"COUNT", SCAN_COUNT.as_bytes()]);
        let r = source.call(LANE, scan.raw).await;
        let Some((next, keys)) = r.as_ref().ok().and_then(parse_scan) else {
            let why = match &r {
                Ok(f) => String::from_utf8_lossy(f).trim_end().to_string(),
                Err(e) => e.to_string(),
            };
            retry_after(&mut backoff, &m, "SCAN", source.name(), &why).await;
            continue;
        };
        backoff.reset();
        m.stats.scanned.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let found = moved_keys(&topo, source.name(), keys);
        if !found.is_empty() && tx.send(found).await.is_err() {
            return false;
        }
        if &next[..] == b"0" {
            return true;
        }
        cursor = next;
    }
}

/// The keys of `keys` (on shard `source`) whose owner in `topo` is another
/// shard, grouped by that owner. Lock keys stay where they are.
fn moved_keys(topo: &Topology, source: &str, keys: Vec<Bytes>) -> Found {
    let mut groups: Found = Vec::new();
    for k in keys {
        if topo.locks.enabled() && topo.locks.is_lock_key(&k) {
            continue;
        }
        let owner = topo.shard_of(&k);
        if topo.shards[owner].name() == source {
            continue;
        }
        match groups.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, ks)) => ks.push(k),
            None => groups.push((owner, vec![k])),
        }
    }
    groups
}

/// Moves `keys` from `source` to `target`, retrying until they are there
/// (or superseded there), and tells `pacer` how long a successful batch
/// took. False if the migration was abandoned meanwhile.
async fn move_keys(
    m: &Migration,
    source: &Shard,
    target: &BackendSpec,
    keys: &[Bytes],
    mut pacer: Option<&mut Pacer>,
) -> bool {
    let mut backoff = backoff();
    loop {
        if m.abandoned() {
            return false;
        }
        let sent = Instant::now();
        let r = source
            .call(LANE, migrate_request(target, keys.iter().map(|k| &k[..])))
            .await;
        match outcome(&r) {
            Outcome::Moved => {
                if let Some(p) = pacer.as_deref_mut() {
                    p.observe(keys.len(), sent.elapsed());
                }
                m.stats.moved.fetch_add(keys.len() as u64, Ordering::Relaxed);
                return true;
            }
            // Some key is on both: one at a time, so the rest still move and
            // each busy one loses its source copy.
            Outcome::Busy => break,
            Outcome::Failed(why) => retry_after(&mut backoff, m, "MIGRATE", source.name(), &why).await,
        }
    }
    for k in keys {
        loop {
            if m.abandoned() {
                return false;
            }
            let r = source
                .call(LANE, migrate_request(target, std::iter::once(&k[..])))
                .await;
            let done = match outcome(&r) {
                Outcome::Moved => {
                    m.stats.moved.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Outcome::Busy => match source.call(LANE, del_request(k)).await {
                    Ok(f) if !reply::is_error(&f) => {
                        m.stats.superseded.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    r => {
                        let why = format!("{r:?}");
                        retry_after(&mut backoff, m, "DEL of a superseded key", source.name(), &why).await;
                        false
                    }
                },
                Outcome::Failed(why) => {
                    retry_after(&mut backoff, m, "MIGRATE", source.name(), &why).await;
                    false
                }
            };
            if done {
                break;
            }
        }
    }
    true
}

/// `[cursor, [key...]]` of a SCAN reply.
fn parse_scan(frame: &Bytes) -> Option<(Bytes, Vec<Bytes>)> {
    let parts = reply::elements(frame)?;
    let [cursor, keys] = &parts[..] else { return None };
    let cursor = reply::as_bytes(cursor)?;
    let keys = reply::elements(keys)?
        .iter()
        .map(reply::as_bytes)
        .collect::<Option<Vec<Bytes>>>()?;
    Some((cursor, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_replies_parse() {
        let f = Bytes::from_static(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        let (c, keys) = parse_scan(&f).expect("scan reply");
        assert_eq!(&c[..], b"17");
        assert_eq!(keys, vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(parse_scan(&Bytes::from_static(b"-ERR no\r\n")).is_none());
        assert!(parse_scan(&Bytes::from_static(b"*1\r\n$1\r\n0\r\n")).is_none());
    }
}

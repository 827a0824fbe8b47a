//! The migrator: the background task that walks every old shard that lost
//! slots and moves each key whose owner changed to its new owner (see the
//! parent module for the whole scheme). Started by [`crate::control`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use super::{Migration, Outcome, del_request, migrate_request, outcome};
use crate::backend::backoff::Backoff;
use crate::backend::{BackendSpec, Shard};
use crate::protocol::reply;
use crate::topology::Topology;

/// Keys asked for per `SCAN` call, and so at most per migrator `MIGRATE`.
const SCAN_COUNT: &str = "256";

/// The connection lane the migrator's requests use.
const LANE: usize = 0;

/// The migrator: walks every old shard that lost slots and moves each key
/// whose owner changed to its owner in `topo` (the topology the migration
/// leads to). Ends the migration when done; stops early if abandoned.
pub async fn run(m: Arc<Migration>, topo: Arc<Topology>) {
    info!(
        from_epoch = m.from_epoch,
        to_epoch = m.to_epoch,
        sources = m.sources_left(),
        "migration started: keys follow the new ring"
    );
    for i in 0..m.pending.len() {
        if !m.pending[i].load(Ordering::Acquire) {
            continue;
        }
        let Some(source) = m.old_shard(i) else { return };
        if !walk(&m, &topo, &source).await {
            return; // abandoned
        }
        m.pending[i].store(false, Ordering::Release);
        info!(shard = %m.old_names[i], "migration: shard walked, its moved keys are on their new owners");
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

/// SCANs `source` to the end, moving what no longer belongs to it. False if
/// the migration was abandoned on the way.
async fn walk(m: &Migration, topo: &Topology, source: &Shard) -> bool {
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
            retry_after(&mut backoff, m, "SCAN", source.name(), &why).await;
            continue;
        };
        m.stats.scanned.fetch_add(keys.len() as u64, Ordering::Relaxed);
        // Group the keys that moved by their new owner.
        let mut groups: Vec<(usize, Vec<Bytes>)> = Vec::new();
        for k in keys {
            if topo.locks.enabled() && topo.locks.is_lock_key(&k) {
                continue;
            }
            let owner = topo.shard_of(&k);
            if topo.shards[owner].name() == source.name() {
                continue;
            }
            match groups.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, ks)) => ks.push(k),
                None => groups.push((owner, vec![k])),
            }
        }
        for (owner, ks) in groups {
            if !move_keys(m, source, &topo.shards[owner].spec, &ks).await {
                return false;
            }
        }
        if &next[..] == b"0" {
            return true;
        }
        cursor = next;
    }
}

/// Moves `keys` from `source` to `target`, retrying until they are there
/// (or superseded there). False if the migration was abandoned meanwhile.
async fn move_keys(m: &Migration, source: &Shard, target: &BackendSpec, keys: &[Bytes]) -> bool {
    let mut backoff = backoff();
    loop {
        if m.abandoned() {
            return false;
        }
        let r = source
            .call(LANE, migrate_request(target, keys.iter().map(|k| &k[..])))
            .await;
        match outcome(&r) {
            Outcome::Moved => {
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

//! Data migration: after a topology change, keys follow the ring.
//!
//! A reload that changes which shard owns some slots (a shard added,
//! removed, renamed or reweighted, or `slot_bits` changed) starts a
//! [`Migration`] from the previous topology to the new one. Two things move
//! the keys whose owner changed, both with Redis's own `MIGRATE`, which
//! deletes a key from the source only once the target has it and never
//! overwrites a key the target already holds:
//!
//! - **the migrator** ([`run`]), a background task that `SCAN`s every old
//!   shard that lost slots and migrates each key whose owner changed, in
//!   batches, to its new owner;
//! - **the sessions, on demand**: while the migration runs, a command on a
//!   key whose owner changed first migrates that key from its old owner (a
//!   no-op answering `NOKEY` once it has moved), and only then runs on the
//!   new owner. So a client never reads a missing or older value during the
//!   move, and a key deleted on its new owner cannot be brought back later by
//!   the migrator: it had already moved before the delete ran.
//!
//! When the target already holds a key the source still has (`BUSYKEY`: an
//! earlier `MIGRATE` timed out after the copy, or someone wrote to the new
//! owner directly), the target's copy wins and the source's is deleted.
//!
//! Limits, documented in the README: lock keys (`redlock.keys`) live on the
//! lock group, not on the ring, and are never migrated; a request sent under
//! the old topology and still in flight when the reload lands may write to
//! the old owner after its key moved; the old shard must be able to reach
//! the new one at the address in the configuration (`MIGRATE` runs between
//! the two Redis servers); and one migration runs at a time: a reload
//! during a migration is refused unless forced (`SHARDIS.RELOAD FORCE`),
//! which abandons what has not moved yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::backend::{BackendResult, BackendSpec, Completion, Job, ReplyTo, Shard};
use crate::protocol::Protocol;
use crate::protocol::reply;
use crate::protocol::request::{put_bulk, put_header};
use crate::ring::Ring;
use crate::topology::Topology;

/// Keys asked for per `SCAN` call, and so at most per migrator `MIGRATE`.
const SCAN_COUNT: &str = "256";

/// Counters of one migration (INFO migration).
#[derive(Debug, Default)]
pub struct MigrationStats {
    /// Keys the migrator's SCANs returned.
    pub scanned: AtomicU64,
    /// Keys moved by the migrator.
    pub moved: AtomicU64,
    /// Keys a session moved before running a command on them.
    pub moved_on_demand: AtomicU64,
    /// Source copies deleted because the target already had the key.
    pub superseded: AtomicU64,
    /// Failed MIGRATE or SCAN calls (retried).
    pub errors: AtomicU64,
}

/// One move of keys from the previous topology to the current one.
#[derive(Debug)]
pub struct Migration {
    pub from_epoch: u64,
    pub to_epoch: u64,
    old_ring: Ring,
    old_names: Vec<Arc<str>>,
    /// The previous topology's shards, emptied when the migration ends so a
    /// removed shard's connections close.
    old_shards: ArcSwap<Vec<Arc<Shard>>>,
    /// Per old shard: it lost slots and the migrator has not finished it.
    pending: Vec<AtomicBool>,
    done: AtomicBool,
    abandoned: AtomicBool,
    started: Instant,
    finished_after: std::sync::OnceLock<Duration>,
    pub stats: MigrationStats,
}

impl Migration {
    /// The migration from `old` to a topology with `ring` over shards named
    /// `names` (in ring order), or `None` when no slot changes owner.
    pub fn plan(old: &Topology, ring: &Ring, names: &[Arc<str>], to_epoch: u64) -> Option<Migration> {
        let old_names: Vec<Arc<str>> = old.shards.iter().map(|s| Arc::from(s.name())).collect();
        let mut losing = vec![false; old_names.len()];
        if old.ring.slots() == ring.slots() {
            for slot in 0..ring.slots() {
                let was = old.ring.owner_of_slot(slot);
                if *old_names[was] != *names[ring.owner_of_slot(slot)] {
                    losing[was] = true;
                }
            }
        } else {
            // Another slot size: any key may have moved.
            losing.iter_mut().for_each(|l| *l = true);
        }
        if !losing.contains(&true) {
            return None;
        }
        Some(Migration {
            from_epoch: old.epoch,
            to_epoch,
            old_ring: old.ring.clone(),
            old_names,
            old_shards: ArcSwap::from_pointee(old.shards.clone()),
            pending: losing.into_iter().map(AtomicBool::new).collect(),
            done: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            started: Instant::now(),
            finished_after: std::sync::OnceLock::new(),
            stats: MigrationStats::default(),
        })
    }

    /// True until every old shard has been walked (or the migration was
    /// abandoned).
    #[inline]
    pub fn active(&self) -> bool {
        !self.done.load(Ordering::Acquire)
    }

    /// The old shard `key` must be migrated from before a command on it runs
    /// on `new_owner`: its old owner, if that is another shard and the
    /// migrator has not finished with it yet.
    pub fn source_of(&self, key: &[u8], new_owner: &str) -> Option<usize> {
        let old = self.old_ring.shard_of(key);
        (*self.old_names[old] != *new_owner && self.pending[old].load(Ordering::Acquire)).then_some(old)
    }

    /// Old shard `i`, while the migration runs.
    pub fn old_shard(&self, i: usize) -> Option<Arc<Shard>> {
        self.old_shards.load().get(i).cloned()
    }

    pub fn old_name(&self, i: usize) -> &str {
        &self.old_names[i]
    }

    /// Old shards the migrator still has to walk.
    pub fn sources_left(&self) -> usize {
        self.pending.iter().filter(|p| p.load(Ordering::Acquire)).count()
    }

    /// Stops the migration where it is (a forced reload): keys not moved
    /// yet stay on their old shards.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.finish();
    }

    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// How long it ran, once it has ended.
    pub fn finished_after(&self) -> Option<Duration> {
        self.finished_after.get().copied()
    }

    fn finish(&self) {
        self.pending.iter().for_each(|p| p.store(false, Ordering::Release));
        self.done.store(true, Ordering::Release);
        let _ = self.finished_after.set(self.started.elapsed());
        self.old_shards.store(Arc::new(Vec::new()));
    }
}

/// `MIGRATE host port "" 0 timeout [AUTH ...] KEYS k...`: moves `keys` from
/// the server this is sent to onto `target`, without REPLACE.
pub fn migrate_request<'a>(target: &BackendSpec, keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    let (host, port) = split_addr(&target.addr);
    let timeout = target.command_timeout.as_millis().max(1).to_string();
    let auth: Vec<&str> = match (&target.username, &target.password) {
        (Some(u), Some(p)) => vec!["AUTH2", u, p],
        (None, Some(p)) => vec!["AUTH", p],
        _ => vec![],
    };
    let n = 7 + auth.len() + keys.len();
    let mut buf = BytesMut::with_capacity(64 + target.addr.len() + keys.len() * 32);
    put_header(&mut buf, b'*', n);
    for a in [
        &b"MIGRATE"[..],
        host.as_bytes(),
        port.as_bytes(),
        b"",
        b"0",
        timeout.as_bytes(),
    ] {
        put_bulk(&mut buf, a);
    }
    for a in auth {
        put_bulk(&mut buf, a.as_bytes());
    }
    put_bulk(&mut buf, b"KEYS");
    for k in keys {
        put_bulk(&mut buf, k);
    }
    buf.freeze()
}

/// `DEL key`, for a source copy the target has superseded.
pub fn del_request(key: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(32 + key.len());
    put_header(&mut buf, b'*', 2);
    put_bulk(&mut buf, b"DEL");
    put_bulk(&mut buf, key);
    buf.freeze()
}

/// Host and port of `host:port` or `[v6]:port`, as MIGRATE takes them.
fn split_addr(addr: &str) -> (&str, &str) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (addr, "6379"),
    }
}

/// What one MIGRATE achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every key is on the target now (`OK`), or was not on the source (`NOKEY`).
    Moved,
    /// The target already holds (one of) the key(s): the target's copy wins.
    Busy,
    /// The move did not happen (or not for every key); worth retrying.
    Failed(String),
}

pub fn outcome(r: &BackendResult) -> Outcome {
    match r {
        Err(e) => Outcome::Failed(e.message().to_string()),
        Ok(frame) if frame.starts_with(b"-BUSYKEY") => Outcome::Busy,
        Ok(frame) if reply::is_error(frame) => {
            Outcome::Failed(String::from_utf8_lossy(&frame[1..]).trim_end().to_string())
        }
        Ok(_) => Outcome::Moved,
    }
}

/// One request to one shard from the migrator, awaited.
struct Caller {
    tx: mpsc::UnboundedSender<Completion>,
    rx: mpsc::UnboundedReceiver<Completion>,
}

impl Caller {
    async fn call(&mut self, shard: &Shard, req: Bytes) -> BackendResult {
        let reply = ReplyTo {
            sink: self.tx.clone(),
            seq: 0,
            part: 0,
        };
        shard.send(Protocol::Resp2, 0, Job::new(req, reply));
        match self.rx.recv().await {
            Some(c) => c.result,
            // The caller holds a sender: the channel cannot close.
            None => Err(crate::backend::BackendError(
                "ERR shardis: migrator channel closed".into(),
            )),
        }
    }
}

/// The migrator: walks every old shard that lost slots and moves each key
/// whose owner changed to its owner in `topo` (the topology the migration
/// leads to). Ends the migration when done; stops early if abandoned.
pub async fn run(m: Arc<Migration>, topo: Arc<Topology>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut caller = Caller { tx, rx };
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
        if !walk(&m, &topo, &source, &mut caller).await {
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

/// Backoff between retries of a failed call.
struct Backoff(Duration);

impl Backoff {
    async fn wait(&mut self, m: &Migration, what: &str, shard: &str, why: &str) {
        m.stats.errors.fetch_add(1, Ordering::Relaxed);
        warn!(
            shard,
            error = why,
            retry_in_ms = self.0.as_millis() as u64,
            "migration: {what} failed"
        );
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// SCANs `source` to the end, moving what no longer belongs to it. False if
/// the migration was abandoned on the way.
async fn walk(m: &Migration, topo: &Topology, source: &Shard, caller: &mut Caller) -> bool {
    let mut cursor = Bytes::from_static(b"0");
    let mut backoff = Backoff(Duration::from_millis(100));
    loop {
        if m.abandoned() {
            return false;
        }
        let scan = crate::protocol::Request::from_args(&[&b"SCAN"[..], &cursor, b"COUNT", SCAN_COUNT.as_bytes()]);
        let r = caller.call(source, scan.raw).await;
        let Some((next, keys)) = r.as_ref().ok().and_then(parse_scan) else {
            let why = match &r {
                Ok(f) => String::from_utf8_lossy(f).trim_end().to_string(),
                Err(e) => e.message().to_string(),
            };
            backoff.wait(m, "SCAN", source.name(), &why).await;
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
            if !move_keys(m, source, &topo.shards[owner].spec, &ks, caller).await {
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
async fn move_keys(m: &Migration, source: &Shard, target: &BackendSpec, keys: &[Bytes], caller: &mut Caller) -> bool {
    let mut backoff = Backoff(Duration::from_millis(100));
    loop {
        if m.abandoned() {
            return false;
        }
        let r = caller
            .call(source, migrate_request(target, keys.iter().map(|k| &k[..])))
            .await;
        match outcome(&r) {
            Outcome::Moved => {
                m.stats.moved.fetch_add(keys.len() as u64, Ordering::Relaxed);
                return true;
            }
            // Some key is on both: one at a time, so the rest still move and
            // each busy one loses its source copy.
            Outcome::Busy => break,
            Outcome::Failed(why) => backoff.wait(m, "MIGRATE", source.name(), &why).await,
        }
    }
    for k in keys {
        loop {
            if m.abandoned() {
                return false;
            }
            let r = caller
                .call(source, migrate_request(target, std::iter::once(&k[..])))
                .await;
            let done = match outcome(&r) {
                Outcome::Moved => {
                    m.stats.moved.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Outcome::Busy => match caller.call(source, del_request(k)).await {
                    Ok(f) if !reply::is_error(&f) => {
                        m.stats.superseded.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    r => {
                        let why = format!("{r:?}");
                        backoff.wait(m, "DEL of a superseded key", source.name(), &why).await;
                        false
                    }
                },
                Outcome::Failed(why) => {
                    backoff.wait(m, "MIGRATE", source.name(), &why).await;
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

    fn spec(addr: &str, user: Option<&str>, pw: Option<&str>) -> BackendSpec {
        BackendSpec {
            name: "t".into(),
            addr: addr.into(),
            username: user.map(String::from),
            password: pw.map(String::from),
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(1500),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
            connections: 1,
        }
    }

    fn args_of(raw: &Bytes) -> Vec<String> {
        let mut parser = crate::protocol::RequestParser::new(crate::protocol::request::Limits::default());
        let mut buf = BytesMut::from(&raw[..]);
        let req = parser.parse(&mut buf).expect("valid").expect("complete");
        req.args().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }

    #[test]
    fn migrate_requests_name_the_target_and_its_credentials() {
        let keys: [&[u8]; 2] = [b"a", b"{x}b"];
        let r = migrate_request(&spec("10.0.0.7:7004", None, None), keys.into_iter());
        assert_eq!(
            args_of(&r),
            ["MIGRATE", "10.0.0.7", "7004", "", "0", "1500", "KEYS", "a", "{x}b"]
        );
        let r = migrate_request(&spec("[::1]:7004", None, Some("pw")), keys[..1].iter().copied());
        assert_eq!(
            args_of(&r),
            ["MIGRATE", "::1", "7004", "", "0", "1500", "AUTH", "pw", "KEYS", "a"]
        );
        let r = migrate_request(&spec("redis-2:6379", Some("u"), Some("pw")), keys[..1].iter().copied());
        assert_eq!(
            args_of(&r),
            [
                "MIGRATE", "redis-2", "6379", "", "0", "1500", "AUTH2", "u", "pw", "KEYS", "a"
            ]
        );
        assert_eq!(args_of(&del_request(b"k")), ["DEL", "k"]);
    }

    #[test]
    fn outcomes_of_migrate_replies() {
        let ok = |s: &'static str| -> BackendResult { Ok(Bytes::from_static(s.as_bytes())) };
        assert_eq!(outcome(&ok("+OK\r\n")), Outcome::Moved);
        assert_eq!(outcome(&ok("+NOKEY\r\n")), Outcome::Moved);
        assert_eq!(
            outcome(&ok("-BUSYKEY Target key name already exists.\r\n")),
            Outcome::Busy
        );
        assert_eq!(
            outcome(&ok("-IOERR error or timeout reading to target instance\r\n")),
            Outcome::Failed("IOERR error or timeout reading to target instance".into())
        );
        let down: BackendResult = Err(crate::backend::BackendError("ERR backend a unavailable".into()));
        assert_eq!(outcome(&down), Outcome::Failed("ERR backend a unavailable".into()));
    }

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

//! Data migration: after a topology change, keys follow the ring.
//!
//! A reload that changes which shard owns some slots (a shard added,
//! removed, renamed or reweighted, or `slot_bits` changed) starts a
//! [`Migration`] from the previous topology to the new one. Two things move
//! the keys whose owner changed, both with Redis's own `MIGRATE`, which
//! deletes a key from the source only once the target has it and never
//! overwrites a key the target already holds:
//!
//! - **the migrator** ([`mover::run`], started by [`crate::control`]), a background task that `SCAN`s every old
//!   shard that lost slots, all of them at once, and migrates each key whose
//!   owner changed to its new owner, in batches sized so that one `MIGRATE`
//!   blocks its source for a few milliseconds at most ([`pacing`]);
//! - **the sessions, on demand**: while the migration runs, a command on a
//!   key whose owner changed first migrates that key from its old owner (a
//!   no-op answering `NOKEY` once it has moved), and only then runs on the
//!   new owner. So a client never reads a missing or older value during the
//!   move, and a key deleted on its new owner cannot be brought back later by
//!   the migrator: it had already moved before the delete ran. A read-only
//!   command on one key moves nothing: it reads the key where it is
//!   ([`read`]), which is sound because every write moves its key first.
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

use crate::backend::{BackendResult, BackendSpec, Shard};
use crate::protocol::reply;
use crate::protocol::request::{put_bulk, put_header};
use crate::ring::Ring;

pub mod mover;
pub mod pacing;
pub mod read;

/// Counters of one migration (INFO migration).
#[derive(Debug, Default)]
pub struct MigrationStats {
    /// Keys the migrator's SCANs returned.
    pub scanned: AtomicU64,
    /// Keys moved by the migrator.
    pub moved: AtomicU64,
    /// Keys a session moved before running a command on them.
    pub moved_on_demand: AtomicU64,
    /// Read-only commands answered by the old owner, the key still there
    /// ([`read`]).
    pub read_old: AtomicU64,
    /// Read-only commands sent on to the new owner, the key no longer on
    /// the old one ([`read`]).
    pub read_new: AtomicU64,
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
    /// Old shards that lost slots (the migrator walks each once).
    sources: usize,
    done: AtomicBool,
    abandoned: AtomicBool,
    started: Instant,
    finished_after: std::sync::OnceLock<Duration>,
    pub stats: MigrationStats,
}

impl Migration {
    /// The migration from the topology at `from_epoch` (its ring, shard
    /// names and pools) to one with `ring` over shards named `names` (in ring
    /// order), or `None` when no slot changes owner.
    pub fn plan(
        from_epoch: u64,
        old_ring: &Ring,
        old_names: &[Arc<str>],
        old_shards: Vec<Arc<Shard>>,
        ring: &Ring,
        names: &[Arc<str>],
        to_epoch: u64,
    ) -> Option<Migration> {
        let mut losing = vec![false; old_names.len()];
        if old_ring.slots() == ring.slots() {
            for slot in 0..ring.slots() {
                let was = old_ring.owner_of_slot(slot);
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
            from_epoch,
            to_epoch,
            old_ring: old_ring.clone(),
            old_names: old_names.to_vec(),
            old_shards: ArcSwap::from_pointee(old_shards),
            sources: losing.iter().filter(|l| **l).count(),
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

    /// Old shards the migrator walks in all.
    pub fn sources_total(&self) -> usize {
        self.sources
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

    pub(crate) fn finish(&self) {
        self.pending.iter().for_each(|p| p.store(false, Ordering::Release));
        self.done.store(true, Ordering::Release);
        let _ = self.finished_after.set(self.started.elapsed());
        self.old_shards.store(Arc::new(Vec::new()));
    }
}

/// `MIGRATE host port "" 0 timeout [AUTH ...] KEYS k...`: moves `keys` from
/// the server this is sent to onto `target`, without REPLACE.
pub fn migrate_request<'a>(target: &BackendSpec, keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    // The target's master now (Sentinel-followed shards move): migration
    // runs between masters only.
    let addr = target.endpoint.describe();
    let (host, port) = split_addr(&addr);
    let timeout = target.command_timeout.as_millis().max(1).to_string();
    let auth: Vec<&str> = match (&target.username, &target.password) {
        (Some(u), Some(p)) => vec!["AUTH2", u, p],
        (None, Some(p)) => vec!["AUTH", p],
        _ => vec![],
    };
    let n = 7 + auth.len() + keys.len();
    let mut buf = BytesMut::with_capacity(64 + addr.len() + keys.len() * 32);
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

/// How Redis (7.0) answers a MIGRATE when the target already holds a key: it
/// passes the target's `RESTORE` error on inside its own.
const BUSY_FROM_TARGET: &[u8] = b"-ERR Target instance replied with error: BUSYKEY";

pub fn outcome(r: &BackendResult) -> Outcome {
    match r {
        Err(e) => Outcome::Failed(e.to_string()),
        Ok(frame) if frame.starts_with(b"-BUSYKEY") || frame.starts_with(BUSY_FROM_TARGET) => Outcome::Busy,
        Ok(frame) if reply::is_error(frame) => {
            Outcome::Failed(String::from_utf8_lossy(&frame[1..]).trim_end().to_string())
        }
        Ok(_) => Outcome::Moved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, user: Option<&str>, pw: Option<&str>) -> BackendSpec {
        BackendSpec {
            username: user.map(String::from),
            password: pw.map(String::from),
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(1500),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
            ..BackendSpec::plain("t", addr)
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
        // What redis-server 7.0 actually answers, for one key or a batch.
        assert_eq!(
            outcome(&ok(
                "-ERR Target instance replied with error: BUSYKEY Target key name already exists.\r\n"
            )),
            Outcome::Busy
        );
        assert_eq!(
            outcome(&ok("-IOERR error or timeout reading to target instance\r\n")),
            Outcome::Failed("IOERR error or timeout reading to target instance".into())
        );
        let down: BackendResult = Err(crate::backend::BackendError::new(
            crate::backend::BackendErrorKind::Unavailable,
            &"a".into(),
            "connection refused",
        ));
        assert_eq!(
            outcome(&down),
            Outcome::Failed("ERR backend a unavailable: connection refused".into())
        );
    }
}

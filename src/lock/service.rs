//! Lock state shared by all sessions of a proxy: counters, the fencing
//! high-water mark, grants remembered for `SHARDIS.FENCE`, the longest TTL
//! granted, script bodies for NOSCRIPT recovery, and per-member failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use crate::backend::BackendResult;

/// A granted lock, remembered for `SHARDIS.FENCE`.
#[derive(Debug)]
struct Grant {
    token: Bytes,
    fence: u64,
    expires: Option<std::time::Instant>,
}

/// Most grants remembered for `SHARDIS.FENCE`.
const MAX_GRANTS: usize = 100_000;
/// Most script bodies cached for NOSCRIPT recovery.
const MAX_SCRIPTS: usize = 10_000;

/// Lock state shared by all sessions.
#[derive(Debug, Default)]
pub struct LockService {
    pub granted: AtomicU64,
    pub denied: AtomicU64,
    pub no_quorum: AtomicU64,
    /// Longest TTL granted so far, in ms; `u64::MAX` once a lock without
    /// expiry was granted. Decides how long a lock-group change keeps the
    /// old group in the quorum.
    max_ttl_ms: AtomicU64,
    /// The largest fencing token this proxy issued.
    pub(super) fence_hwm: AtomicU64,
    grants: Mutex<HashMap<Bytes, Grant>>,
    /// SHA-1 (lowercase hex) → body, from SCRIPT LOAD and EVAL seen by the proxy.
    scripts: Mutex<HashMap<String, Bytes>>,
    /// Votes each member failed (errors, timeouts), by member name.
    member_failures: Mutex<HashMap<Arc<str>, u64>>,
}

impl LockService {
    /// The longest TTL granted so far (`None`: a lock without expiry).
    pub fn max_ttl(&self) -> Option<Duration> {
        match self.max_ttl_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Remembers a script body under its SHA-1, for NOSCRIPT recovery.
    pub fn remember_script(&self, body: &[u8]) -> String {
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        let mut scripts = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        if scripts.len() >= MAX_SCRIPTS && !scripts.contains_key(&sha) {
            scripts.clear();
        }
        scripts
            .entry(sha.clone())
            .or_insert_with(|| Bytes::copy_from_slice(body));
        sha
    }

    /// Every script body kept (SCRIPT LOAD, EVAL on lock keys): what a new
    /// shard is given before it takes traffic.
    pub fn scripts(&self) -> Vec<Bytes> {
        self.scripts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn script(&self, sha: &str) -> Option<Bytes> {
        self.scripts.lock().unwrap_or_else(|p| p.into_inner()).get(sha).cloned()
    }

    pub(super) fn record_grant(&self, key: Bytes, token: Bytes, fence: u64, ttl_ms: Option<u64>) {
        self.granted.fetch_add(1, Ordering::Relaxed);
        self.max_ttl_ms.fetch_max(ttl_ms.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.fence_hwm.fetch_max(fence, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let expires = ttl_ms.map(|t| now + Duration::from_millis(t));
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, g| g.expires.is_none_or(|e| e > now));
            if grants.len() >= MAX_GRANTS {
                grants.clear();
            }
        }
        grants.insert(key, Grant { token, fence, expires });
    }

    /// The fencing token of the live grant of `key` to `token`, if this proxy made it.
    pub fn fence_of(&self, key: &[u8], token: &[u8]) -> Option<u64> {
        let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let g = grants.get(key)?;
        let live = g.expires.is_none_or(|e| e > std::time::Instant::now());
        (live && g.token == token).then_some(g.fence)
    }

    pub(super) fn note_failures(&self, members: &[Arc<str>], results: &[Option<BackendResult>]) {
        let mut failed = self.member_failures.lock().unwrap_or_else(|p| p.into_inner());
        for (m, r) in members.iter().zip(results) {
            if !matches!(r, Some(Ok(_))) {
                debug!(member = %m, result = ?r, "lock vote failed");
                *failed.entry(m.clone()).or_default() += 1;
            }
        }
    }

    /// `member=count,...` of failed votes, for INFO.
    pub fn member_failures(&self) -> String {
        let failed = self.member_failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = failed.iter().map(|(m, n)| format!("{m}={n}")).collect();
        v.sort();
        v.join(",")
    }
}

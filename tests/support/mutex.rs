//! A mutual-exclusion hammer for lock tests: clients take `lock:mx`
//! through the proxy (`SET ... NX PX`) and, while they hold it, enter a
//! critical section kept in an independent Redis (`cs:holder`, set NX): a
//! second holder there is an overlap, which Redlock must never allow. Used
//! by the lock-member failure tests (tests/it/locks.rs) and the Sentinel
//! failover of a lock member (tests/sentinel/locks.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// Deletes `key` if it still holds `token` (the Redlock release script).
pub const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// `SET key token NX PX px`: whether the lock was granted.
pub async fn acquire(c: &mut MultiplexedConnection, key: &str, token: &str, px: u64) -> redis::RedisResult<bool> {
    let r: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(px)
        .query_async(c)
        .await?;
    Ok(r.as_deref() == Some("OK"))
}

/// Releases `key` if `token` still holds it; 1 if it did.
pub async fn release(c: &mut MultiplexedConnection, key: &str, token: &str) -> redis::RedisResult<i64> {
    redis::cmd("EVAL")
        .arg(RELEASE)
        .arg(1)
        .arg(key)
        .arg(token)
        .query_async(c)
        .await
}

/// Clients taking the lock in a loop until [`Hammer::stop`].
pub struct Hammer {
    stop: Arc<AtomicBool>,
    entries: Arc<AtomicU64>,
    overlaps: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hammer {
    /// Starts one task per connection in `proxy_conns`, each with its own
    /// connection to the independent store at `check`. Tokens are
    /// `rs-<client>-<attempt>`.
    pub async fn start(proxy_conns: Vec<MultiplexedConnection>, check: impl std::fmt::Display) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicU64::new(0));
        let overlaps = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (w, mut c) in proxy_conns.into_iter().enumerate() {
            let mut cs = redis::Client::open(format!("redis://{check}/"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let (stop, entries, overlaps) = (stop.clone(), entries.clone(), overlaps.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let token = format!("rs-{w}-{i}");
                    // An error (a member down, a timeout) counts as "not granted".
                    if acquire(&mut c, "lock:mx", &token, 2000).await.unwrap_or(false) {
                        if acquire(&mut cs, "cs:holder", &token, 5000).await.unwrap() {
                            entries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            release(&mut cs, "cs:holder", &token).await.unwrap();
                        } else {
                            overlaps.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = release(&mut c, "lock:mx", &token).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
            }));
        }
        Hammer {
            stop,
            entries,
            overlaps,
            tasks,
        }
    }

    /// Critical sections entered during the next `ms` milliseconds, with
    /// the phase's label.
    pub async fn phase(&self, label: &'static str, ms: u64) -> (&'static str, u64) {
        let before = self.entries.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        (label, self.entries.load(Ordering::Relaxed) - before)
    }

    /// Stops the clients and waits for them; the overlapping critical
    /// sections they saw.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.overlaps.load(Ordering::Relaxed)
    }
}

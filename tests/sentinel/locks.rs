//! A lock-group member's failover (part of `tests/sentinel.rs`): six
//! clients take `lock:mx` through the proxy and enter a critical section
//! kept in an independent Redis; the member's master is killed, its shard
//! rests out of the quorums, then votes again. No two critical sections
//! overlap, and every phase makes progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::support::{Proxy, RedisNode, wait_until_async};
use super::{Group, info, serial};

const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_member_failover_keeps_mutual_exclusion() {
    let _serial = serial().await;
    let mut g = Group::start(3, 1);
    let check = RedisNode::start(); // the independent store: not behind the proxy
    let proxy = Proxy::start_text(&g.config("poll_ms = 500", ""), 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicU64::new(0));
    let overlaps = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let mut c = proxy.conn().await;
        let mut cs = redis::Client::open(format!("redis://{}/", check.addr()))
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
                let got: redis::RedisResult<Option<String>> = redis::cmd("SET")
                    .arg("lock:mx")
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(2000)
                    .query_async(&mut c)
                    .await;
                if got.ok().flatten().as_deref() == Some("OK") {
                    let inside: Option<String> = redis::cmd("SET")
                        .arg("cs:holder")
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(5000)
                        .query_async(&mut cs)
                        .await
                        .unwrap();
                    if inside.is_none() {
                        overlaps.fetch_add(1, Ordering::Relaxed);
                    } else {
                        entries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        let _: i64 = redis::cmd("EVAL")
                            .arg(RELEASE)
                            .arg(1)
                            .arg("cs:holder")
                            .arg(&token)
                            .query_async(&mut cs)
                            .await
                            .unwrap();
                    }
                    let _: redis::RedisResult<i64> = redis::cmd("EVAL")
                        .arg(RELEASE)
                        .arg(1)
                        .arg("lock:mx")
                        .arg(&token)
                        .query_async(&mut c)
                        .await;
                } else {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        }));
    }
    let phase = |label: &'static str, ms: u64| {
        let entries = entries.clone();
        async move {
            let before = entries.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (label, entries.load(Ordering::Relaxed) - before)
        }
    };
    let mut phases = vec![phase("all members up", 1500).await];
    let old = g.masters[0].port;
    g.masters[0].kill();
    g.wait_new_master("shard-0", old, Duration::from_secs(30)).await;
    let mut c = proxy.conn().await;
    let mut resting = String::new();
    wait_until_async(
        Duration::from_secs(3),
        "shard-0 out of lock quorums after its failover",
        async || {
            resting = info(&mut c, "locks").await;
            resting.contains("restarted")
        },
    )
    .await;
    phases.push(phase("member failed over, resting", 1500).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phases.push(phase("member voting again", 1500).await);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "critical sections per phase: {phases:?}; INFO locks while resting: {}",
        resting
            .lines()
            .filter(|l| l.contains("rest"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(overlaps.load(Ordering::Relaxed), 0, "overlapping critical sections");
    for (label, n) in phases {
        assert!(n > 0, "no progress while {label}");
    }
}

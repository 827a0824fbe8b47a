//! A lock-group member's failover (part of `tests/sentinel.rs`): six
//! clients take `lock:mx` through the proxy and enter a critical section
//! kept in an independent Redis; the member's master is killed, its shard
//! rests out of the quorums, then votes again. No two critical sections
//! overlap, and every phase makes progress.

use std::time::Duration;

use super::support::mutex::Hammer;
use super::support::{Proxy, RedisNode, wait_until_async};
use super::{Group, info, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_member_failover_keeps_mutual_exclusion() {
    let _serial = serial().await;
    let mut g = Group::start(3, 1);
    let check = RedisNode::start(); // the independent store: not behind the proxy
    let proxy = Proxy::start_text(&g.config("poll_ms = 500", ""), 0).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(proxy.conn().await);
    }
    let hammer = Hammer::start(conns, check.addr()).await;
    let mut phases = vec![hammer.phase("all members up", 1500).await];
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
    phases.push(hammer.phase("member failed over, resting", 1500).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    phases.push(hammer.phase("member voting again", 1500).await);
    let overlaps = hammer.stop().await;
    println!(
        "critical sections per phase: {phases:?}; INFO locks while resting: {}",
        resting
            .lines()
            .filter(|l| l.contains("rest"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(overlaps, 0, "overlapping critical sections");
    for (label, n) in phases {
        assert!(n > 0, "no progress while {label}");
    }
}

//! `[migration] max_keys_per_second`: the migrator keeps under its limit
//! (real servers, real MIGRATE), and every key still moves.

use redis::AsyncCommands;

use crate::migration::{config_named, get_direct, info_migration, reload, wait_until_done};
use crate::support::{Proxy, RedisNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrator_keeps_under_its_keys_per_second_limit() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c"].into_iter().zip(nodes.iter()).collect();
    let limit = "[migration]\nmax_keys_per_second = 4000\n";
    let proxy = Proxy::start_text(&format!("{}{limit}", config_named(&named[..2])), 2).await;
    let mut c = proxy.conn().await;
    let n = 6000;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("k:{i}"), i).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    assert!(
        reload(&proxy, &format!("{}{limit}", config_named(&named)), "pace3", false)
            .await
            .is_ok()
    );
    let moving = (0..n).filter(|i| proxy.shard_of(&format!("k:{i}")) == 2).count();
    assert!(moving > 1000, "{moving}");
    // At 4,000 keys/s the move takes half a second or more: still running
    // now (asked before the reads below, which on a loaded machine can
    // take as long as the whole move).
    assert_eq!(info_migration(&mut c).await["migration_in_progress"], "1");
    // Reads meanwhile see every value.
    for i in (0..n).step_by(7) {
        let v: Option<usize> = c.get(format!("k:{i}")).await.unwrap();
        assert_eq!(v, Some(i), "k:{i}");
    }
    let info = wait_until_done(&mut c).await;
    let secs: f64 = info["migration_seconds"].parse().unwrap();
    let moved: f64 = info["migration_keys_moved"].parse().unwrap();
    // Each walk waits after every batch (its last included) until it is
    // back under its share, so the whole move averages at most the limit.
    let rate = moved / secs;
    assert!(
        (1000.0..=4000.0 * 1.05).contains(&rate),
        "{moved} keys in {secs} s: {info:?}"
    );
    for i in 0..n {
        let k = format!("k:{i}");
        let owner = proxy.shard_of(&k);
        for (s, node) in nodes.iter().enumerate() {
            assert_eq!(
                get_direct(node, &k),
                (s == owner).then(|| i.to_string()),
                "{k}: shard {s}"
            );
        }
    }
}

//! Dead and hung shards: errors that name the shard, within the command
//! timeout, no effect on other shards' keys, recovery without a restart.

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::support::{NodeClient, Proxy, three_nodes};

/// A key owned by each shard index.
fn key_per_shard(proxy: &Proxy) -> Vec<String> {
    (0..3)
        .map(|s| {
            (0..)
                .map(|i| format!("key{i}"))
                .find(|k| proxy.shard_of(k) == s)
                .unwrap()
        })
        .collect()
}

async fn wait_until_ok(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Duration {
    let start = Instant::now();
    loop {
        let r: redis::RedisResult<()> = c.set(key, "back").await;
        if r.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "shard did not come back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shard_fails_fast_and_recovers() {
    let mut nodes = three_nodes();
    let proxy = {
        let refs: Vec<_> = nodes.iter().collect();
        Proxy::start(&refs).await
    };
    let keys = key_per_shard(&proxy);
    let mut c = proxy.conn().await;
    for k in &keys {
        let _: () = c.set(k, "v").await.unwrap();
    }
    nodes[1].kill();
    // The dead shard's key: an error naming the shard, quickly.
    for _ in 0..5 {
        let start = Instant::now();
        let e = c.get::<_, String>(&keys[1]).await.unwrap_err();
        assert!(e.to_string().contains("backend shard-1 unavailable"), "{e}");
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "took {:?}",
            start.elapsed()
        );
    }
    // Other shards are untouched, and MGET spanning the dead one fails as a whole.
    for k in [&keys[0], &keys[2]] {
        let v: String = c.get(k).await.unwrap();
        assert_eq!(v, "v");
    }
    let e = redis::cmd("MGET")
        .arg(&keys)
        .query_async::<Vec<Option<String>>>(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("shard-1"), "{e}");
    // The key is never served by another shard.
    let e = c.set::<_, _, ()>(&keys[1], "elsewhere").await.unwrap_err();
    assert!(e.to_string().contains("shard-1"));
    for n in [&nodes[0], &nodes[2]] {
        let v: Option<String> = redis::cmd("GET").arg(&keys[1]).query(&mut n.client()).unwrap();
        assert_eq!(v, None);
    }
    nodes[1].restart();
    let took = wait_until_ok(&mut c, &keys[1]).await;
    assert!(took < Duration::from_secs(3), "recovery took {took:?}");
    let v: String = c.get(&keys[1]).await.unwrap();
    assert_eq!(v, "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_shard_times_out_without_stalling_others() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await; // command timeout 500 ms
    let keys = key_per_shard(&proxy);
    let mut c = proxy.conn().await;
    let mut other = proxy.conn().await;
    for k in &keys {
        let _: () = c.set(k, "v").await.unwrap();
    }
    nodes[2].pause();
    let hung = {
        let mut c = c.clone();
        let k = keys[2].clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = c.get::<_, String>(&k).await;
            (r, start.elapsed())
        })
    };
    // While that request hangs, other shards answer promptly.
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let start = Instant::now();
        let v: String = other.get(&keys[i % 2]).await.unwrap();
        assert_eq!(v, "v");
        worst = worst.max(start.elapsed());
    }
    assert!(worst < Duration::from_millis(200), "other shards stalled: {worst:?}");
    let (r, took) = hung.await.unwrap();
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("backend shard-2 unavailable") && e.to_string().contains("timed out"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    // While hung, later requests also fail within the timeout.
    let start = Instant::now();
    assert!(c.get::<_, String>(&keys[2]).await.is_err());
    assert!(start.elapsed() < Duration::from_millis(1500));
    nodes[2].resume();
    wait_until_ok(&mut c, &keys[2]).await;
    let v: String = c.get(&keys[0]).await.unwrap();
    assert_eq!(v, "v");
}

//! SCAN through the proxy: a small keyspace comes back whole in one call
//! (cursor 0), as from one Redis; a large one is walked shard after shard,
//! every key once, with MATCH and TYPE applied on every shard.

use std::collections::HashSet;

use redis::AsyncCommands;

use crate::support::{Proxy, three_nodes};

async fn scan(c: &mut redis::aio::MultiplexedConnection, cursor: &str, extra: &[&str]) -> (String, Vec<String>) {
    redis::cmd("SCAN").arg(cursor).arg(extra).query_async(c).await.unwrap()
}

/// Every key of a full iteration, and how many calls it took.
async fn walk(c: &mut redis::aio::MultiplexedConnection, extra: &[&str]) -> (Vec<String>, usize) {
    let (mut cursor, mut seen, mut calls) = ("0".to_string(), Vec::new(), 0);
    loop {
        let (next, page) = scan(c, &cursor, extra).await;
        seen.extend(page);
        calls += 1;
        if next == "0" {
            return (seen, calls);
        }
        assert!(calls < 10_000, "SCAN never ended");
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_keyspace_comes_back_in_one_call() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    // Empty: one call, cursor 0, nothing.
    assert_eq!(scan(&mut c, "0", &[]).await, ("0".to_string(), vec![]));
    let keys: Vec<String> = (0..5).map(|i| format!("small:{i}")).collect();
    for k in &keys {
        let _: () = c.set(k, 1).await.unwrap();
    }
    let spread: HashSet<usize> = keys.iter().map(|k| proxy.shard_of(k)).collect();
    assert!(spread.len() > 1, "the keys should be on several shards: {spread:?}");
    // Default COUNT 10, 5 keys on 3 shards: all of them and cursor 0.
    let (next, mut page) = scan(&mut c, "0", &[]).await;
    page.sort();
    assert_eq!((next.as_str(), page), ("0", keys.clone()));
    // MATCH and TYPE still apply on every shard.
    let _: () = c.rpush("small:list", "x").await.unwrap();
    let (next, page) = scan(&mut c, "0", &["TYPE", "list"]).await;
    assert_eq!((next.as_str(), page), ("0", vec!["small:list".to_string()]));
    let (next, page) = scan(&mut c, "0", &["MATCH", "small:3"]).await;
    assert_eq!((next.as_str(), page), ("0", vec!["small:3".to_string()]));
    // COUNT 1: the call ends once a shard's iteration gave at least one key.
    let (all, calls) = walk(&mut c, &["COUNT", "1"]).await;
    assert_eq!(all.len(), 6);
    assert!(calls > 1, "COUNT 1 over keys on several shards takes several calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_keyspace_is_walked_every_key_once() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let mut want: Vec<String> = (0..2000).map(|i| format!("big:{i}")).collect();
    for chunk in want.chunks(100) {
        let mut p = redis::pipe();
        for k in chunk {
            p.set(k, 1).ignore();
        }
        let _: () = p.query_async(&mut c).await.unwrap();
    }
    for i in 0..50 {
        let _: () = c.hset(format!("bighash:{i}"), "f", 1).await.unwrap();
    }
    want.sort();
    for extra in [&[][..], &["COUNT", "7"], &["COUNT", "500"]] {
        let (mut seen, calls) = walk(&mut c, &[&["MATCH", "big:*"][..], extra].concat()).await;
        assert!(calls > 1, "{extra:?}");
        seen.sort();
        assert_eq!(seen, want, "no key skipped or repeated ({extra:?})");
    }
    let (seen, _) = walk(&mut c, &["TYPE", "hash", "COUNT", "20"]).await;
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|k| k.starts_with("bighash:")));
}

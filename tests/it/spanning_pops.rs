//! Blocking pops over several shards (issue 12, item 4): `[crossshard]
//! blocking = "all-shards"` against real redis-server shards: one element
//! delivered, any other popped meanwhile given back, timeouts, clients that
//! leave. Helpers and transactions: `spanning.rs`.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::{AsyncCommands, Value};

use crate::spanning::{ON, spread, wait_blocked};
use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_over_three_shards_delivers_each_push_once() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, ON).await;
    let q = spread(&proxy, "q", 3);
    // Non-empty at the call: the first non-empty key in argument order wins.
    let mut c = proxy.conn().await;
    let _: () = c.rpush(&q[2], "from2").await.unwrap();
    let _: () = c.rpush(&q[1], "from1").await.unwrap();
    let got: Option<(String, String)> = c.blpop(&q, 1.0).await.unwrap();
    assert_eq!(got, Some((q[1].clone(), "from1".into())));
    let got: Option<(String, String)> = c.brpop(&q, 1.0).await.unwrap();
    assert_eq!(got, Some((q[2].clone(), "from2".into())));
    // Empty: it waits on all three, and a push on any one is delivered once.
    for (round, target) in [0usize, 2, 1, 0].into_iter().enumerate() {
        let mut consumer = proxy.conn().await;
        let keys = q.clone();
        let waiter = tokio::spawn(async move {
            let got: Option<(String, String)> = consumer.blpop(&keys, 0.0).await.unwrap();
            got
        });
        wait_blocked(&refs, 1).await;
        let owner = &nodes[proxy.shard_of(&q[target])];
        let _: () = redis::cmd("RPUSH")
            .arg(&q[target])
            .arg(format!("e{round}"))
            .query(&mut owner.client())
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Some((q[target].clone(), format!("e{round}"))));
        // Every other shard's wait was stopped, and nothing is left behind.
        wait_blocked(&refs, 0).await;
        for key in &q {
            let n: i64 = c.llen(key).await.unwrap();
            assert_eq!(n, 0, "{key}");
        }
    }
    // Sorted sets too, with the score.
    let _: () = c.zadd(&q[1], "m", 2.5).await.unwrap();
    let got: Value = redis::cmd("BZPOPMIN").arg(&q).arg(1).query_async(&mut c).await.unwrap();
    assert_eq!(
        format!("{got:?}"),
        format!(
            "{:?}",
            Value::Array(vec![
                Value::BulkString(q[1].clone().into_bytes()),
                Value::BulkString(b"m".to_vec()),
                Value::BulkString(b"2.5".to_vec()),
            ])
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_answer_nil_and_a_client_that_leaves_frees_every_shard() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, ON).await;
    let q = spread(&proxy, "t", 3);
    let mut c = proxy.conn().await;
    let t = Instant::now();
    let got: Option<(String, String)> = c.blpop(&q, 1.0).await.unwrap();
    assert_eq!(got, None);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let got: Value = redis::cmd("BLMPOP")
        .arg(0.3)
        .arg(3)
        .arg(&q)
        .arg("LEFT")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, Value::Nil);
    // A client blocked for ever leaves: every shard's wait ends, and an
    // element pushed afterwards stays where it is.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    let req = format!(
        "*5\r\n$5\r\nBLPOP\r\n${}\r\n{}\r\n${}\r\n{}\r\n${}\r\n{}\r\n$1\r\n0\r\n",
        q[0].len(),
        q[0],
        q[1].len(),
        q[1],
        q[2].len(),
        q[2]
    );
    s.write_all(req.as_bytes()).unwrap();
    wait_blocked(&refs, 1).await;
    drop(s);
    wait_blocked(&refs, 0).await;
    let _: () = c.rpush(&q[1], "kept").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n: i64 = c.llen(&q[1]).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_and_consumers_lose_and_duplicate_nothing() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, ON).await;
    let q = spread(&proxy, "c", 3);
    const PRODUCERS: usize = 4;
    const PER: usize = 150;
    let mut consumers = Vec::new();
    for _ in 0..6 {
        let mut conn = proxy.conn().await;
        let keys = q.clone();
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            // Until the queues stay empty for a second after the producers.
            while let Some((_, v)) = conn.blpop::<_, Option<(String, String)>>(&keys, 1.0).await.unwrap() {
                got.push(v);
            }
            got
        }));
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        // Straight to the shards, at once on all three: the race where two
        // shards answer the same waiting consumer.
        let mut conns: Vec<redis::Connection> = q.iter().map(|k| nodes[proxy.shard_of(k)].client()).collect();
        let keys = q.clone();
        producers.push(std::thread::spawn(move || {
            for i in 0..PER {
                let which = (i + p) % 3;
                let _: () = redis::cmd("RPUSH")
                    .arg(&keys[which])
                    .arg(format!("{p}-{i}"))
                    .query(&mut conns[which])
                    .unwrap();
            }
        }));
    }
    for p in producers {
        p.join().unwrap();
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for c in consumers {
        for v in c.await.unwrap() {
            *seen.entry(v).or_default() += 1;
        }
    }
    let mut c = proxy.conn().await;
    let mut left = 0;
    for k in &q {
        let rest: Vec<String> = c.lrange(k, 0, -1).await.unwrap();
        left += rest.len();
        for v in rest {
            *seen.entry(v).or_default() += 1;
        }
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "delivered twice: {dup:?}");
    assert_eq!(seen.len(), PRODUCERS * PER, "{left} left in the queues");
    assert_eq!(left, 0, "consumers stopped with elements left");
    let given_back: u64 = nodes.iter().map(|n| calls(n, "lpush")).sum();
    eprintln!(
        "{} elements, 6 consumers over 3 shards: {given_back} given back",
        PRODUCERS * PER
    );
}

/// `cmdstat_<cmd>`'s calls on `node` (0 before the first).
fn calls(node: &RedisNode, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut node.client())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_on_every_shard_at_once_deliver_one_and_give_the_others_back() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, ON).await;
    let q = spread(&proxy, "g", 3);
    let mut c = proxy.conn().await;
    for round in 0..20 {
        let mut consumer = proxy.conn().await;
        let keys = q.clone();
        let waiter = tokio::spawn(async move {
            let got: Option<(String, String)> = consumer.blpop(&keys, 0.0).await.unwrap();
            got
        });
        wait_blocked(&refs, 1).await;
        // The three pushes leave together: several shards wake the consumer.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let pushers: Vec<_> = (0..3)
            .map(|i| {
                let mut conn = nodes[proxy.shard_of(&q[i])].client();
                let (key, barrier) = (q[i].clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let _: () = redis::cmd("RPUSH")
                        .arg(&key)
                        .arg(format!("r{round}-{i}"))
                        .query(&mut conn)
                        .unwrap();
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        let (key, v) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        wait_blocked(&refs, 0).await;
        // Exactly the two others are left, each in its own list.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut left = Vec::new();
            for k in &q {
                let rest: Vec<String> = c.lrange(k, 0, -1).await.unwrap();
                left.extend(rest.into_iter().map(|e| (k.clone(), e)));
            }
            left.sort();
            let mut want: Vec<(String, String)> = (0..3)
                .map(|i| (q[i].clone(), format!("r{round}-{i}")))
                .filter(|(_, e)| *e != v)
                .collect();
            want.sort();
            if left == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: delivered {key}={v}, left {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for k in &q {
            let _: () = c.del(k).await.unwrap();
        }
    }
    let given_back: u64 = nodes.iter().map(|n| calls(n, "lpush")).sum();
    eprintln!("20 rounds of pushes on three shards at once: {given_back} elements given back");
    assert!(
        given_back > 0,
        "the race never happened: the give-back path was not tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorted_set_members_popped_too_many_go_back_with_their_scores() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, ON).await;
    let z = spread(&proxy, "z", 3);
    let mut c = proxy.conn().await;
    for round in 0..10 {
        let mut consumer = proxy.conn().await;
        let keys = z.clone();
        let waiter = tokio::spawn(async move {
            let got: Value = redis::cmd("BZPOPMAX")
                .arg(&keys)
                .arg(0)
                .query_async(&mut consumer)
                .await
                .unwrap();
            got
        });
        wait_blocked(&refs, 1).await;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let adders: Vec<_> = (0..3)
            .map(|i| {
                let mut conn = nodes[proxy.shard_of(&z[i])].client();
                let (key, barrier) = (z[i].clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let _: () = redis::cmd("ZADD")
                        .arg(&key)
                        .arg(format!("{i}.5"))
                        .arg(format!("m{round}"))
                        .query(&mut conn)
                        .unwrap();
                })
            })
            .collect();
        for a in adders {
            a.join().unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        let Value::Array(got) = got else { panic!("{got:?}") };
        let key = redis::from_redis_value::<String>(got[0].clone()).unwrap();
        wait_blocked(&refs, 0).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut left = Vec::new();
            for (i, k) in z.iter().enumerate() {
                let rest: Vec<(String, f64)> = c.zrange_withscores(k, 0, -1).await.unwrap();
                left.extend(rest.into_iter().map(|(m, s)| (i, m, s)));
            }
            let want: Vec<(usize, String, f64)> = (0..3)
                .filter(|&i| z[i] != key)
                .map(|i| (i, format!("m{round}"), i as f64 + 0.5))
                .collect();
            if left == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: popped from {key}, left {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for k in &z {
            let _: () = c.del(k).await.unwrap();
        }
    }
    let given_back: u64 = nodes.iter().map(|n| calls(n, "zadd")).sum::<u64>() - 30;
    eprintln!("10 rounds of ZADD on three shards at once under BZPOPMAX: {given_back} given back");
}

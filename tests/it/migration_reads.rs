//! Reads during a migration: a read-only command on a key that changes owner
//! is read where the key is (the old owner while it is still there, else
//! the new one) without moving it, against real servers and real MIGRATE.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;

use crate::migration::{TIMEOUTS, config_named, get_direct, info_migration, reload, wait_until_done};
use crate::support::{NodeClient, Proxy, RedisNode, raw_roundtrip};

/// While no key can move (the new shard refuses RESTORE), reads of moving
/// keys are answered by their old owner, of every type, in RESP2 and RESP3,
/// errors included; a missing key reads nil; writes still move first (and
/// so fail with TRYAGAIN). Once RESTORE is allowed, the keys move and read
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_answered_by_the_old_owner_while_keys_cannot_move() {
    let no_restore = [
        "--user",
        "mover",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-restore",
        "-restore-asking",
    ];
    let nodes = [
        RedisNode::start(),
        RedisNode::start(),
        RedisNode::start_with(&no_restore),
    ];
    let backend = |name: &str, n: &RedisNode| format!("[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n", n.addr());
    let two = format!(
        "listen = \"127.0.0.1:0\"\n{TIMEOUTS}\n{}{}",
        backend("a", &nodes[0]),
        backend("b", &nodes[1])
    );
    let proxy = Proxy::start_text(&two, 2).await;
    let mut c = proxy.conn().await;
    let n = 600;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("s:{i}"), format!("v{i}")).ignore();
        pipe.hset(format!("h:{i}"), "f", i).ignore();
        pipe.rpush(format!("l:{i}"), &[i, i + 1]).ignore();
        pipe.set_ex(format!("t:{i}"), i, 1000).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();

    let three = format!(
        "{two}{}username = \"mover\"\npassword = \"pw\"\n",
        backend("c", &nodes[2])
    );
    assert!(reload(&proxy, &three, "reads3", false).await.is_ok());
    let moving: Vec<usize> = (0..n).filter(|&i| proxy.shard_of(&format!("s:{i}")) == 2).collect();
    assert!(moving.len() > n / 8, "{}", moving.len());
    let mut reads = moving.len();
    for &i in &moving {
        let v: Option<String> = c.get(format!("s:{i}")).await.unwrap();
        assert_eq!(v, Some(format!("v{i}")), "s:{i}");
    }
    for i in (0..n).filter(|&i| proxy.shard_of(&format!("h:{i}")) == 2) {
        reads += 1;
        let v: i64 = c.hget(format!("h:{i}"), "f").await.unwrap();
        assert_eq!(v, i as i64, "h:{i}");
    }
    for i in (0..n).filter(|&i| proxy.shard_of(&format!("l:{i}")) == 2) {
        reads += 1;
        let v: Vec<i64> = c.lrange(format!("l:{i}"), 0, -1).await.unwrap();
        assert_eq!(v, vec![i as i64, i as i64 + 1], "l:{i}");
    }
    for i in (0..n).filter(|&i| proxy.shard_of(&format!("t:{i}")) == 2) {
        reads += 1;
        let ttl: i64 = c.ttl(format!("t:{i}")).await.unwrap();
        assert!((990..=1000).contains(&ttl), "t:{i}: {ttl}");
    }
    // The old owner's error reply is the answer; a key that exists nowhere
    // reads nil (from the new owner).
    let s = format!("s:{}", moving[0]);
    let e = c.hget::<_, _, Option<String>>(&s, "f").await.unwrap_err();
    assert_eq!(e.code(), Some("WRONGTYPE"), "{e}");
    let nowhere = (0..)
        .map(|i| format!("none:{i}"))
        .find(|k| proxy.shard_of(k) == 2)
        .unwrap();
    let v: Option<String> = c.get(&nowhere).await.unwrap();
    assert_eq!(v, None);
    // RESP3: the map reply comes through the transaction as it is.
    let h = (0..n)
        .map(|i| format!("h:{i}"))
        .find(|k| proxy.shard_of(k) == 2)
        .unwrap();
    let req = format!(
        "*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$7\r\nHGETALL\r\n${}\r\n{h}\r\n",
        h.len()
    );
    let want = format!("%1\r\n$1\r\nf\r\n${}\r\n{}\r\n", h[2..].len(), &h[2..]);
    let addr = proxy.addr;
    let out = tokio::task::spawn_blocking(move || {
        raw_roundtrip(addr, req.as_bytes(), usize::MAX, Duration::from_millis(800))
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(out.ends_with(&want), "{out:?} should end with {want:?}");

    let info = info_migration(&mut c).await;
    assert_eq!(info["migration_in_progress"], "1", "{info:?}");
    assert_eq!(info["migration_keys_moved"], "0", "{info:?}");
    assert_eq!(
        info["migration_keys_moved_on_demand"], "0",
        "reads moved nothing: {info:?}"
    );
    // Each read above, the WRONGTYPE one and HGETALL included.
    assert_eq!(info["migration_reads_old_owner"], (reads + 2).to_string(), "{info:?}");
    assert_eq!(
        info["migration_reads_new_owner"], "1",
        "the key that exists nowhere: {info:?}"
    );
    assert_eq!(get_direct(&nodes[2], &s), None, "still on its old owner");
    // A write still moves its key first, which cannot happen yet.
    let e = c.set::<_, _, ()>(&s, "w").await.unwrap_err();
    assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");

    // RESTORE allowed: everything moves, and reads the same.
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "mover", "+restore", "+restore-asking"])
        .query(&mut nodes[2].client())
        .unwrap();
    let info = wait_until_done(&mut c).await;
    assert_eq!(info["migration_abandoned"], "0", "{info:?}");
    for &i in &moving {
        let k = format!("s:{i}");
        let v: Option<String> = c.get(&k).await.unwrap();
        assert_eq!(v, Some(format!("v{i}")), "{k}");
        assert_eq!(get_direct(&nodes[2], &k), Some(format!("v{i}")), "{k} on its new owner");
        assert_eq!(
            (get_direct(&nodes[0], &k), get_direct(&nodes[1], &k)),
            (None, None),
            "{k}"
        );
    }
}

/// Readers and writers through the whole migration, the migrator running:
/// a read never goes back in time. Counters on moving keys are INCRed in
/// rounds; a GET sent after round `r` was acknowledged must answer at least
/// `r` (a stale copy on the old owner would answer less), and successive
/// GETs of one reader never decrease. Keys DELeted through the proxy read
/// nil right after (the old owner's copy never answers again), and
/// overwritten ones read their new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_go_back_in_time_while_writers_and_the_migrator_run() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c", "d"].into_iter().zip(nodes.iter()).collect();
    let proxy = Proxy::start_text(&config_named(&named[..3]), 2).await;
    let mut c = proxy.conn().await;
    let n = 40_000;
    // Values of half a kilobyte: the move takes long enough for reads to
    // meet keys on both sides.
    let value = |i: usize| format!("v{i}:{}", "x".repeat(500));
    for chunk in 0..n / 5000 {
        let mut pipe = redis::pipe();
        for i in chunk * 5000..(chunk + 1) * 5000 {
            pipe.set(format!("p:{i}"), value(i)).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    let four = config_named(&named);
    let ring = shardis::ring::Ring::for_config(&shardis::config::Config::parse(&four).unwrap());
    let to_d = |k: &str| ring.shard_of(k.as_bytes()) == 3;
    let counters: Arc<Vec<String>> = Arc::new((0..).map(|j| format!("ctr:{j}")).filter(|k| to_d(k)).take(40).collect());
    let mut pipe = redis::pipe();
    for k in counters.iter() {
        pipe.set(k, 0).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let moving: Arc<Vec<usize>> = Arc::new((0..n).filter(|&i| to_d(&format!("p:{i}"))).collect());
    assert!(moving.len() > n / 8, "{}", moving.len());

    let acked = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let rounds = 200i64;
    let counter = {
        let (mut c, counters, acked) = (proxy.conn().await, counters.clone(), acked.clone());
        tokio::spawn(async move {
            for round in 1..=rounds {
                let mut pipe = redis::pipe();
                for k in counters.iter() {
                    pipe.incr(k, 1);
                }
                let got: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
                assert!(got.iter().all(|&v| v == round), "round {round}: {got:?}");
                acked.store(round, Ordering::SeqCst);
            }
        })
    };
    let mut handles = Vec::new();
    for r in 0..2 {
        let (counters, acked, done, moving) = (counters.clone(), acked.clone(), done.clone(), moving.clone());
        let mut c = proxy.conn().await;
        handles.push(tokio::spawn(async move {
            let mut last = vec![0i64; counters.len()];
            let mut reads = 0u64;
            let mut k = r;
            while !done.load(Ordering::SeqCst) {
                for (j, key) in counters.iter().enumerate() {
                    let floor = acked.load(Ordering::SeqCst);
                    let v: i64 = c.get(key).await.unwrap();
                    let ceiling = acked.load(Ordering::SeqCst) + 1;
                    assert!(v >= floor && v <= ceiling, "{key}: {v} outside {floor}..={ceiling}");
                    assert!(v >= last[j], "{key} went back from {} to {v}", last[j]);
                    last[j] = v;
                    reads += 1;
                }
                // Untouched moving keys keep their value wherever they are.
                for _ in 0..100 {
                    k = (k * 7 + 13) % moving.len();
                    let i = moving[k];
                    if i % 4 > 1 {
                        let v: Option<String> = c.get(format!("p:{i}")).await.unwrap();
                        assert_eq!(v, Some(value(i)), "p:{i}");
                    }
                }
            }
            reads
        }));
    }
    // The reload lands while the counters and the readers run; the writer
    // starts with the migration.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(reload(&proxy, &four, "rt4", false).await.is_ok());
    // Every 4th moving key deleted, every 4th + 1 overwritten; each batch is
    // read back on another connection once acknowledged.
    let writer = {
        let (mut c, mut r, moving) = (proxy.conn().await, proxy.conn().await, moving.clone());
        tokio::spawn(async move {
            for chunk in moving.chunks(100) {
                let mut pipe = redis::pipe();
                let mut written = Vec::new();
                for &i in chunk {
                    match i % 4 {
                        0 => pipe.del(format!("p:{i}")),
                        1 => pipe.set(format!("p:{i}"), format!("new{i}")),
                        _ => continue,
                    };
                    written.push(i);
                }
                let _: Vec<redis::Value> = pipe.query_async(&mut c).await.unwrap();
                for i in written {
                    let v: Option<String> = r.get(format!("p:{i}")).await.unwrap();
                    let want = (i % 4 == 1).then(|| format!("new{i}"));
                    assert_eq!(v, want, "p:{i} read after its write was acknowledged");
                }
            }
        })
    };
    counter.await.unwrap();
    writer.await.unwrap();
    done.store(true, Ordering::SeqCst);
    for h in handles {
        assert!(h.await.unwrap() > 0);
    }
    let info = wait_until_done(&mut c).await;
    eprintln!("reads through a migration: {info:?}");
    assert_eq!(info["migration_errors"], "0", "{info:?}");
    let old: u64 = info["migration_reads_old_owner"].parse().unwrap();
    let new: u64 = info["migration_reads_new_owner"].parse().unwrap();
    assert!(old > 0 && new > 0, "reads of moving keys on both owners: {info:?}");

    // Every key is on exactly its owner, with the value its writes left.
    for i in 0..n {
        let k = format!("p:{i}");
        let owner = proxy.shard_of(&k);
        let want = match (to_d(&k), i % 4) {
            (true, 0) => None,
            (true, 1) => Some(format!("new{i}")),
            _ => Some(value(i)),
        };
        for (s, node) in nodes.iter().enumerate() {
            assert_eq!(
                get_direct(node, &k),
                want.clone().filter(|_| s == owner),
                "{k}: shard {s}"
            );
        }
    }
    for k in counters.iter() {
        let v: i64 = c.get(k).await.unwrap();
        assert_eq!(v, rounds, "{k}");
    }
}

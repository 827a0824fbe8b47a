//! Data migration: after a shard joins or leaves, keys move to the shard the
//! new ring names, and clients read every value throughout (real Redis
//! servers, real MIGRATE between them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::support::{NodeClient, Proxy, RedisNode, wait_for_ping, wait_until_async};

pub(crate) const TIMEOUTS: &str =
    "[timeouts]\ncommand_ms = 1000\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n";

/// A configuration naming each node explicitly (a shard's name is its place
/// on the ring, so a removed shard must not shift the others' names).
pub(crate) fn config_named(nodes: &[(&str, &RedisNode)]) -> String {
    let mut s = format!("listen = \"127.0.0.1:0\"\n{TIMEOUTS}\n");
    for (name, n) in nodes {
        s.push_str(&format!("[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n", n.addr()));
    }
    s
}

/// Writes `text` to a fresh file and reloads the proxy from it.
pub(crate) async fn reload(proxy: &Proxy, text: &str, tag: &str, force: bool) -> Result<u64, String> {
    let dir = std::env::temp_dir().join(format!("shardis-migration-{tag}-{}", proxy.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let r = shardis::control::reload_forced(&proxy.shared, &path, force)
        .await
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    r
}

pub(crate) async fn info_migration(c: &mut redis::aio::MultiplexedConnection) -> HashMap<String, String> {
    let text: String = redis::cmd("INFO").arg("migration").query_async(c).await.unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

pub(crate) async fn wait_until_done(c: &mut redis::aio::MultiplexedConnection) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = info_migration(c).await;
        if info.get("migration_in_progress").map(String::as_str) == Some("0") {
            return info;
        }
        assert!(Instant::now() < deadline, "migration did not finish: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dbsize(n: &RedisNode) -> i64 {
    redis::cmd("DBSIZE").query(&mut n.client()).unwrap()
}

pub(crate) fn get_direct(n: &RedisNode, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut n.client()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shard_receives_its_keys_and_no_read_misses_meanwhile() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c", "d"].into_iter().zip(nodes.iter()).collect();
    // The proxy on 2 worker threads, as the binary runs by default.
    let proxy = Proxy::start_text(&config_named(&named[..3]), 2).await;
    let mut c = proxy.conn().await;
    assert_eq!(info_migration(&mut c).await["migration_in_progress"], "0");
    let n = 3000;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("s:{i}"), format!("v{i}")).ignore();
    }
    for i in 0..100 {
        pipe.hset(format!("h:{i}"), "f", i).ignore();
        pipe.rpush(format!("l:{i}"), &[1, 2, 3]).ignore();
        pipe.set_ex(format!("t:{i}"), i, 1000).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();

    // The fourth shard joins.
    assert!(reload(&proxy, &config_named(&named), "a4", false).await.is_ok());
    let moving = (0..n).filter(|i| proxy.shard_of(&format!("s:{i}")) == 3).count();
    assert!(moving > n / 8, "about a quarter of the keys change owner ({moving})");
    // Every read right away sees its value: keys not moved yet are moved by
    // the command that touches them.
    for i in 0..n {
        let v: Option<String> = c.get(format!("s:{i}")).await.unwrap();
        assert_eq!(v, Some(format!("v{i}")), "s:{i} right after the reload");
    }
    let keys: Vec<String> = (0..100).map(|i| format!("t:{i}")).collect();
    let got: Vec<Option<i64>> = c.mget(&keys).await.unwrap();
    assert_eq!(got, (0..100).map(Some).collect::<Vec<_>>(), "MGET across shards");
    let info = wait_until_done(&mut c).await;
    eprintln!("after adding a shard: {info:?}");
    let moved: u64 = info["migration_keys_moved"].parse().unwrap();
    let on_demand: u64 = info["migration_keys_moved_on_demand"].parse().unwrap();
    assert!(moved + on_demand >= moving as u64, "{info:?}");
    assert_eq!(info["migration_abandoned"], "0");

    // Every key now lives on exactly the shard the ring names, with its type and TTL.
    for i in 0..n {
        let k = format!("s:{i}");
        let owner = proxy.shard_of(&k);
        for (s, node) in nodes.iter().enumerate() {
            let want = (s == owner).then(|| format!("v{i}"));
            assert_eq!(get_direct(node, &k), want, "{k}: owner {owner}, shard {s}");
        }
    }
    for i in 0..100 {
        let owner = &nodes[proxy.shard_of(&format!("h:{i}"))];
        let v: i64 = redis::cmd("HGET")
            .arg(format!("h:{i}"))
            .arg("f")
            .query(&mut owner.client())
            .unwrap();
        assert_eq!(v, i);
        let owner = &nodes[proxy.shard_of(&format!("l:{i}"))];
        let l: Vec<i64> = redis::cmd("LRANGE")
            .arg(format!("l:{i}"))
            .arg(0)
            .arg(-1)
            .query(&mut owner.client())
            .unwrap();
        assert_eq!(l, vec![1, 2, 3]);
        let owner = &nodes[proxy.shard_of(&format!("t:{i}"))];
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("t:{i}"))
            .query(&mut owner.client())
            .unwrap();
        assert!((900..=1000).contains(&ttl), "t:{i} kept its TTL: {ttl}");
    }
    let total: i64 = nodes.iter().map(dbsize).sum();
    assert_eq!(total, n as i64 + 300, "no key lost or duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_shard_is_drained_and_deleted_keys_stay_deleted() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c"].into_iter().zip(nodes.iter()).collect();
    let proxy = Proxy::start_text(&config_named(&named), 0).await;
    let mut c = proxy.conn().await;
    let n = 2000;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("k:{i}"), format!("v{i}")).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let on_b: Vec<usize> = (0..n).filter(|i| proxy.shard_of(&format!("k:{i}")) == 1).collect();
    assert!(on_b.len() > 300, "{}", on_b.len());

    // "b" leaves; at once, delete some of its keys and overwrite others.
    let remaining = [named[0], named[2]];
    assert!(reload(&proxy, &config_named(&remaining), "r2", false).await.is_ok());
    let (deleted, rewritten) = on_b.split_at(on_b.len() / 2);
    for i in deleted {
        let d: i64 = c.del(format!("k:{i}")).await.unwrap();
        assert_eq!(d, 1, "k:{i} existed (on the leaving shard) and is deleted");
    }
    for i in rewritten {
        let () = c.set(format!("k:{i}"), "new").await.unwrap();
    }
    let info = wait_until_done(&mut c).await;
    assert_eq!(info["migration_shards_left"], "0", "{info:?}");
    assert_eq!(dbsize(&nodes[1]), 0, "the removed shard is empty");
    for i in 0..n {
        let v: Option<String> = c.get(format!("k:{i}")).await.unwrap();
        let want = if deleted.contains(&i) {
            None
        } else if rewritten.contains(&i) {
            Some("new".to_string())
        } else {
            Some(format!("v{i}"))
        };
        assert_eq!(v, want, "k:{i}");
    }
    assert_eq!(dbsize(&nodes[0]) + dbsize(&nodes[2]), (n - deleted.len()) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_gives_tryagain_and_a_forced_reload_abandons() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c"].into_iter().zip(nodes.iter()).collect();
    let proxy = Proxy::start_text(&config_named(&named[..2]), 0).await;
    let mut c = proxy.conn().await;
    for i in 0..500 {
        let () = c.set(format!("k:{i}"), i).await.unwrap();
    }
    // "a" hangs; "c" joins and takes some of a's keys, which cannot move.
    nodes[0].pause();
    assert!(reload(&proxy, &config_named(&named), "u3", false).await.is_ok());
    let stuck = (0..500)
        .map(|i| format!("k:{i}"))
        .find(|k| {
            proxy.shard_of(k) == 2 && {
                let t = proxy.shared.topology.load();
                t.migration.as_ref().and_then(|m| m.source_of(k.as_bytes(), "c")) == Some(0)
            }
        })
        .expect("a key moving from a to c");
    let e = c.get::<_, Option<i64>>(&stuck).await.unwrap_err();
    assert!(
        e.code() == Some("TRYAGAIN") && e.to_string().contains("moving from shard a"),
        "{e}"
    );
    // A reload that keeps the ring carries the migration over...
    let carried = format!("{}[pool]\nconnections = 1\n", config_named(&named));
    assert!(reload(&proxy, &carried, "u3a", false).await.is_ok());
    assert_eq!(info_migration(&mut c).await["migration_in_progress"], "1");
    // ... one that moves slots again waits for it...
    let e = reload(&proxy, &config_named(&named[1..]), "u3b", false)
        .await
        .unwrap_err();
    assert!(e.contains("migration") && e.contains("FORCE"), "{e}");
    // ... unless forced, which abandons it: the key stays on "a".
    assert!(reload(&proxy, &config_named(&named), "u3c", true).await.is_ok());
    let info = info_migration(&mut c).await;
    assert_eq!(info["migration_in_progress"], "0", "{info:?}");
    nodes[0].resume();
    // A MIGRATE the proxy gave up on may still run once "a" wakes (it was in
    // a's socket buffer); either way the key is in exactly one place. Redis
    // serves what its sockets held before the commands of a connection made
    // after it woke, so once "a" answers a new connection that has run.
    wait_for_ping(nodes[0].port);
    let via_proxy: Option<i64> = c.get(&stuck).await.unwrap();
    let on_a = get_direct(&nodes[0], &stuck);
    let want = stuck.trim_start_matches("k:").parse::<i64>().unwrap();
    match (via_proxy, on_a) {
        (Some(v), None) => assert_eq!(v, want, "moved to c by the late MIGRATE"),
        (None, Some(v)) => assert_eq!(v, want.to_string(), "abandoned on a"),
        other => panic!("{stuck} must be in exactly one place: {other:?}"),
    }
}

/// Pipelined INCRs and MULTI/EXEC transactions on keys that change owner,
/// running through the reload and the whole migration: every counter must
/// answer 1, 2, 3, ... in order. A lost update, a stale read from the old owner or a request that
/// overtook an earlier one on the same key would break the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_keep_their_order_and_count_through_a_migration() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c", "d"].into_iter().zip(nodes.iter()).collect();
    let proxy = Proxy::start_text(&config_named(&named[..3]), 2).await;
    let mut c = proxy.conn().await;
    // Enough other keys that the migrator takes a while.
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.set(format!("filler:{chunk}:{i}"), i).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    let counters: Vec<String> = (0..40).map(|j| format!("ctr:{j}")).collect();
    let writer = {
        let mut c = proxy.conn().await;
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut seen = vec![0i64; counters.len()];
            for _round in 0..60 {
                let mut pipe = redis::pipe();
                for _ in 0..5 {
                    for k in &counters {
                        pipe.incr(k, 1);
                    }
                }
                let got: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
                for (n, v) in got.into_iter().enumerate() {
                    let j = n % counters.len();
                    assert_eq!(v, seen[j] + 1, "{} went {} -> {v}", counters[j], seen[j]);
                    seen[j] = v;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    // Transactions (MULTI/EXEC, one hash tag each) on moving keys too: their
    // keys are moved first, like any command's, and none fails.
    let transactor = {
        let mut c = proxy.conn().await;
        tokio::spawn(async move {
            for round in 1..=60i64 {
                for j in 0..20 {
                    let (a, b): (i64, i64) = redis::pipe()
                        .atomic()
                        .incr(format!("{{tx{j}}}:a"), 1)
                        .incr(format!("{{tx{j}}}:b"), 2)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    assert_eq!((a, b), (round, 2 * round), "{{tx{j}}} in round {round}");
                }
            }
        })
    };
    // The reload comes once both are under way.
    wait_until_async(
        Duration::from_secs(10),
        "the first INCRs and transactions",
        async || {
            let started: (Option<i64>, Option<i64>) = redis::pipe()
                .get("ctr:0")
                .get("{tx0}:a")
                .query_async(&mut c)
                .await
                .unwrap();
            started.0.is_some() && started.1.is_some()
        },
    )
    .await;
    assert!(reload(&proxy, &config_named(&named), "p4", false).await.is_ok());
    let seen = writer.await.unwrap();
    assert!(seen.iter().all(|&v| v == 300), "{seen:?}");
    transactor.await.unwrap();
    wait_until_done(&mut c).await;
    let moved = counters.iter().filter(|k| proxy.shard_of(k) == 3).count();
    assert!(moved > 0, "some counters changed owner");
    for k in &counters {
        let owner = &nodes[proxy.shard_of(k)];
        let v: i64 = redis::cmd("GET").arg(k).query(&mut owner.client()).unwrap();
        assert_eq!(v, 300, "{k} on its new owner");
    }
}

/// Shards that want credentials: the proxy logs in (AUTH, or AUTH with a
/// username for an ACL user) and MIGRATE passes the target's credentials on
/// (AUTH / AUTH2), against real servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_move_between_shards_that_want_credentials() {
    let acl = [
        "--user",
        "shardis",
        "on",
        ">acl-pw",
        "~*",
        "&*",
        "+@all",
        "--requirepass",
        "pw",
    ];
    let nodes = [
        RedisNode::start_with(&["--requirepass", "pw"]),
        RedisNode::start_with(&acl),
        RedisNode::start_with(&acl),
    ];
    let backend = |name: &str, n: &RedisNode, acl_user: bool| {
        let creds = if acl_user {
            "username = \"shardis\"\npassword = \"acl-pw\"\n"
        } else {
            "password = \"pw\"\n"
        };
        format!("[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n{creds}", n.addr())
    };
    let head = format!("listen = \"127.0.0.1:0\"\n{TIMEOUTS}\n");
    let two = format!(
        "{head}{}{}",
        backend("a", &nodes[0], false),
        backend("b", &nodes[1], true)
    );
    let proxy = Proxy::start_text(&two, 0).await;
    let mut c = proxy.conn().await;
    for i in 0..500 {
        let () = c.set(format!("k:{i}"), i).await.unwrap();
    }
    // "c" (an ACL user) joins: keys move from "a" (AUTH) and "b" (AUTH2 user).
    let three = format!("{two}{}", backend("c", &nodes[2], true));
    assert!(reload(&proxy, &three, "auth3", false).await.is_ok());
    for i in 0..500 {
        let v: Option<i64> = c.get(format!("k:{i}")).await.unwrap();
        assert_eq!(v, Some(i), "k:{i}");
    }
    let info = wait_until_done(&mut c).await;
    assert_eq!(info["migration_errors"], "0", "{info:?}");
    let mut on_c = redis::Client::open(format!("redis://shardis:acl-pw@{}/", nodes[2].addr()))
        .and_then(|cl| cl.get_connection())
        .unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut on_c).unwrap();
    let want = (0..500).filter(|i| proxy.shard_of(&format!("k:{i}")) == 2).count() as i64;
    assert!(want > 50, "{want}");
    assert_eq!(n, want, "c holds exactly the keys the ring gives it");
}

/// A shard that joins is given the function libraries and the scripts
/// loaded through the proxy before any key routes to it: FCALL and EVALSHA
/// on a key that now lives there work at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shard_receives_the_function_libraries_and_scripts() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c"].into_iter().zip(nodes.iter()).collect();
    let proxy = Proxy::start_text(&config_named(&named[..2]), 0).await;
    let mut c = proxy.conn().await;
    let lib: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(crate::functions::LIB)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(lib, "shardislib");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1])")
        .query_async(&mut c)
        .await
        .unwrap();

    assert!(reload(&proxy, &config_named(&named), "fn3", false).await.is_ok());
    let key = (0..1000)
        .map(|i| format!("fn:{i}"))
        .find(|k| proxy.shard_of(k) == 2)
        .expect("a key on the new shard");
    let v: i64 = redis::cmd("FCALL")
        .arg("incr_by")
        .arg(1)
        .arg(&key)
        .arg(7)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(
        get_direct(&nodes[2], &key),
        Some("7".to_string()),
        "written on the new shard"
    );
    let got: i64 = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, 7);
    // FUNCTION LIST agrees on all three.
    let list: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").query_async(&mut c).await.unwrap();
    assert_eq!(list.len(), 1);
}

/// A fourth shard joins three: every old shard loses keys, and the migrator
/// walks all three at once (a task per source, batches of adaptive size).
/// Meanwhile one client overwrites and deletes moving keys and another
/// counts with pipelined INCRs, and some moving keys were already written on
/// the new shard (its copy wins). At the end every key is on exactly the
/// shard the ring names, with its last value; deleted keys stay deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_old_shards_are_walked_at_once_and_concurrent_writes_win() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c", "d"].into_iter().zip(nodes.iter()).collect();
    let proxy = Proxy::start_text(&config_named(&named[..3]), 2).await;
    let mut c = proxy.conn().await;
    let n = 40_000;
    for chunk in 0..n / 5000 {
        let mut pipe = redis::pipe();
        for i in chunk * 5000..(chunk + 1) * 5000 {
            pipe.set(format!("p:{i}"), format!("v{i}")).ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    let mut pipe = redis::pipe();
    for j in 0..50 {
        pipe.set(format!("ctr:{j}"), 0).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let was: Vec<usize> = (0..n).map(|i| proxy.shard_of(&format!("p:{i}"))).collect();
    // Some keys that will move are written on "d" directly beforehand: the
    // target's copy wins over the one a batch brings (BUSYKEY), and the
    // source's is deleted.
    let four = config_named(&named);
    let ring = shardis::ring::Ring::for_config(&shardis::config::Config::parse(&four).unwrap());
    let direct: Vec<usize> = (0..n)
        .filter(|&i| i % 3 == 2 && i % 7 == 0 && ring.shard_of(format!("p:{i}").as_bytes()) == 3)
        .collect();
    assert!(direct.len() > 50, "{}", direct.len());
    let mut on_d = nodes[3].client();
    for &i in &direct {
        let () = redis::cmd("SET")
            .arg(format!("p:{i}"))
            .arg(format!("direct{i}"))
            .query(&mut on_d)
            .unwrap();
    }

    assert!(reload(&proxy, &four, "all4", false).await.is_ok());
    assert_eq!(
        info_migration(&mut c).await["migration_shards_left"],
        "3",
        "every old shard loses keys"
    );
    // Keys that change owner, from each of the three old shards.
    let moving: Vec<usize> = (0..n).filter(|&i| proxy.shard_of(&format!("p:{i}")) == 3).collect();
    for s in 0..3 {
        assert!(
            moving.iter().filter(|&&i| was[i] == s).count() > n / 40,
            "keys move off shard {s}"
        );
    }
    // One writer: every 3rd moving key deleted, every 3rd + 1 overwritten,
    // in pipelines, while the migrator runs.
    let writer = {
        let mut c = proxy.conn().await;
        let moving = moving.clone();
        tokio::spawn(async move {
            for chunk in moving.chunks(200) {
                let mut pipe = redis::pipe();
                for &i in chunk {
                    match i % 3 {
                        0 => pipe.del(format!("p:{i}")),
                        1 => pipe.set(format!("p:{i}"), format!("new{i}")),
                        _ => continue,
                    };
                }
                let _: Vec<redis::Value> = pipe.query_async(&mut c).await.unwrap();
            }
        })
    };
    let counter = {
        let mut c = proxy.conn().await;
        tokio::spawn(async move {
            for round in 1..=30i64 {
                let mut pipe = redis::pipe();
                for j in 0..50 {
                    pipe.incr(format!("ctr:{j}"), 1);
                }
                let got: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
                assert!(got.iter().all(|&v| v == round), "round {round}: {got:?}");
            }
        })
    };
    writer.await.unwrap();
    counter.await.unwrap();
    let info = wait_until_done(&mut c).await;
    eprintln!("after walking three shards at once: {info:?}");
    assert_eq!(info["migration_abandoned"], "0", "{info:?}");
    assert_eq!(info["migration_errors"], "0", "{info:?}");
    let superseded: usize = info["migration_keys_superseded"].parse().unwrap();
    assert_eq!(superseded, direct.len(), "{info:?}");

    // What each shard holds of p:0 .. p:n-1 (MGET, one connection each).
    let held: Vec<Vec<Option<String>>> = nodes
        .iter()
        .map(|node| {
            let mut conn = node.client();
            (0..n)
                .collect::<Vec<_>>()
                .chunks(1000)
                .flat_map(|ch| {
                    let keys: Vec<String> = ch.iter().map(|i| format!("p:{i}")).collect();
                    redis::cmd("MGET")
                        .arg(&keys)
                        .query::<Vec<Option<String>>>(&mut conn)
                        .unwrap()
                })
                .collect()
        })
        .collect();
    let mut want_total = 50; // the counters
    for i in 0..n {
        let owner = proxy.shard_of(&format!("p:{i}"));
        let want = match (owner == 3, i % 3) {
            (true, _) if direct.contains(&i) => Some(format!("direct{i}")),
            (true, 0) => None,
            (true, 1) => Some(format!("new{i}")),
            _ => Some(format!("v{i}")),
        };
        want_total += usize::from(want.is_some());
        for (s, on_s) in held.iter().enumerate() {
            assert_eq!(
                on_s[i],
                want.clone().filter(|_| s == owner),
                "p:{i}: owner {owner}, shard {s}"
            );
        }
    }
    for j in 0..50 {
        let k = format!("ctr:{j}");
        let v: i64 = redis::cmd("GET")
            .arg(&k)
            .query(&mut nodes[proxy.shard_of(&k)].client())
            .unwrap();
        assert_eq!(v, 30, "{k}");
    }
    let total: i64 = nodes.iter().map(dbsize).sum();
    assert_eq!(total, want_total as i64, "no key lost, duplicated or brought back");
}

/// WATCH across a reload: a watched key that the new ring gives to another
/// shard cannot stay watched (the watch lives on the old shard's
/// connection), so EXEC answers nil, as Redis does when a watched key
/// changed, and the client's retry runs on the new owner. A watched key that
/// stays where it was keeps its watch: EXEC runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_after_a_reload_moved_the_watched_key_answers_nil() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let named: Vec<(&str, &RedisNode)> = ["a", "b", "c", "d"].into_iter().zip(nodes.iter()).collect();
    let before = config_named(&named[..3]);
    let after = config_named(&named);
    let proxy = Proxy::start_text(&before, 2).await;
    // Which keys the fourth shard takes, from the ring the reload will build.
    let old_ring = shardis::ring::Ring::for_config(&shardis::config::Config::parse(&before).unwrap());
    let new_ring = shardis::ring::Ring::for_config(&shardis::config::Config::parse(&after).unwrap());
    let keys: Vec<String> = (0..200).map(|i| format!("w:{i}")).collect();
    let moving = keys
        .iter()
        .find(|k| new_ring.shard_of(k.as_bytes()) != old_ring.shard_of(k.as_bytes()))
        .unwrap()
        .clone();
    let staying = keys
        .iter()
        .find(|k| new_ring.shard_of(k.as_bytes()) == old_ring.shard_of(k.as_bytes()))
        .unwrap()
        .clone();

    let mut moved_conn = proxy.conn().await;
    let mut stayed_conn = proxy.conn().await;
    for (c, k) in [(&mut moved_conn, &moving), (&mut stayed_conn, &staying)] {
        let _: () = c.set(k, "0").await.unwrap();
        let _: () = redis::cmd("WATCH").arg(k).query_async(c).await.unwrap();
    }
    assert!(reload(&proxy, &after, "watch", false).await.is_ok());
    let mut c = proxy.conn().await;
    wait_until_done(&mut c).await;

    for (c, k) in [(&mut moved_conn, &moving), (&mut stayed_conn, &staying)] {
        let _: () = redis::cmd("MULTI").query_async(c).await.unwrap();
        let _: () = redis::cmd("SET").arg(k).arg("1").query_async(c).await.unwrap();
    }
    let moved: redis::Value = redis::cmd("EXEC").query_async(&mut moved_conn).await.unwrap();
    assert_eq!(moved, redis::Value::Nil, "EXEC on the moved key");
    let stayed: redis::Value = redis::cmd("EXEC").query_async(&mut stayed_conn).await.unwrap();
    assert_ne!(stayed, redis::Value::Nil, "EXEC on the key that stayed");
    let v: Option<String> = c.get(&moving).await.unwrap();
    assert_eq!(v.as_deref(), Some("0"), "the aborted transaction wrote nothing");
    let v: Option<String> = c.get(&staying).await.unwrap();
    assert_eq!(v.as_deref(), Some("1"));
}

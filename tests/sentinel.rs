//! Sentinel and replica tests (issue 15): real `redis-server` masters and
//! replicas, three real Sentinels (`redis-server --sentinel`, short
//! `down-after-milliseconds`), shardis in front.
//!
//! - a master is killed: its shard answers again within the failover time
//!   plus 1 s, other shards never stop, and the old master restarted empty
//!   (a master until Sentinel turns it into a replica) takes no write;
//! - a missed `+switch-master` (no subscription) is followed by the periodic
//!   re-ask, and the subscription survives the death of its Sentinel;
//! - reads go to replicas (their `INFO commandstats`), a dead replica is
//!   skipped, writes never land on one; static replicas with
//!   `read_from = "prefer-replica"`, and a shard whose `addr` is a replica
//!   refusing writes (ROLE check) ([`replicas`]);
//! - a lock-group member's failover keeps Redlock's mutual exclusion
//!   ([`locks`]);
//! - keys migrate to the current master of a followed shard added by a
//!   reload;
//! - a stopped or lagging replica is skipped and read from again once back
//!   ([`lag`]), and the admin endpoint's `/metrics` and `/api/status`
//!   count the failover and show the replicas.
//!
//! This file holds the shared harness ([`Group`], [`calls`], [`serial`])
//! and the failover scenarios; `tests/sentinel/*.rs` are its modules.
//!
//! The scenarios run one at a time (a static lock): each starts a dozen
//! processes, and the machines have two cores. Each prints what it measured;
//! `cargo test --test sentinel -- --nocapture` shows it.

#[path = "support/mod.rs"]
mod support;

#[path = "sentinel/lag.rs"]
mod lag;
#[path = "sentinel/locks.rs"]
mod locks;
#[path = "sentinel/replicas.rs"]
mod replicas;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use support::{NodeClient, Proxy, RedisNode, SentinelNode, SentinelTiming, ask, wait_replica_synced, wait_until_async};

/// One scenario at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Masters `shard-0`.., each with `replicas` replicas, and three Sentinels
/// monitoring every master under the shard's name.
struct Group {
    masters: Vec<RedisNode>,
    replicas: Vec<Vec<RedisNode>>,
    sentinels: Vec<SentinelNode>,
}

impl Group {
    fn start(shards: usize, per: usize) -> Group {
        let masters: Vec<RedisNode> = (0..shards).map(|_| RedisNode::start()).collect();
        let replicas: Vec<Vec<RedisNode>> = masters
            .iter()
            .map(|m| (0..per).map(|_| RedisNode::start_replica_of(m)).collect())
            .collect();
        for r in replicas.iter().flatten() {
            wait_replica_synced(r.port);
        }
        let names: Vec<String> = (0..shards).map(|i| format!("shard-{i}")).collect();
        let monitored: Vec<(&str, u16)> = names
            .iter()
            .map(|n| n.as_str())
            .zip(masters.iter().map(|m| m.port))
            .collect();
        let sentinels: Vec<SentinelNode> = (0..3)
            .map(|_| SentinelNode::start(&monitored, SentinelTiming::default()))
            .collect();
        for s in &sentinels {
            for n in &names {
                s.wait_knows(n, per, 2);
            }
        }
        Group {
            masters,
            replicas,
            sentinels,
        }
    }

    /// Proxy configuration: every shard by its Sentinel master name.
    fn config(&self, sentinel_extra: &str, backend_extra: &str) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(|s| format!("\"{}\"", s.addr())).collect();
        let mut t = format!(
            "listen = \"127.0.0.1:0\"\n[timeouts]\ncommand_ms = 500\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n\
             [sentinel]\naddrs = [{}]\n{sentinel_extra}\n",
            addrs.join(", ")
        );
        for i in 0..self.masters.len() {
            t.push_str(&format!(
                "[[backends]]\nname = \"shard-{i}\"\nmaster = \"shard-{i}\"\n{backend_extra}\n"
            ));
        }
        t
    }

    /// Waits until a Sentinel names a master of `name` other than `old`
    /// (the failover is done); its port.
    async fn wait_new_master(&self, name: &str, old: u16, within: Duration) -> u16 {
        let start = Instant::now();
        loop {
            for s in &self.sentinels {
                if let Some(p) = s.master_port(name).filter(|p| *p != old) {
                    return p;
                }
            }
            assert!(start.elapsed() < within, "no failover of {name} within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The node (master or replica) on `port`.
    fn node(&self, port: u16) -> &RedisNode {
        self.masters
            .iter()
            .chain(self.replicas.iter().flatten())
            .find(|n| n.port == port)
            .expect("a node of the group")
    }
}

/// A key the proxy places on each shard.
fn key_per_shard(proxy: &Proxy, n: usize, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|s| {
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .find(|k| proxy.shard_of(k) == s)
                .expect("a key for every shard")
        })
        .collect()
}

async fn info(c: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query_async(c).await.unwrap_or_default()
}

/// `calls=` of `cmdstat_<cmd>` in a server's INFO commandstats (0 if none).
fn calls(node: &RedisNode, cmd: &str) -> u64 {
    let text = ask(node.port, &["INFO", "commandstats"]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What one shard's writer saw.
#[derive(Default, Debug)]
struct Seen {
    acked: u64,
    errors: Vec<(Instant, String)>,
    /// INCR replies after `mark` was set, in order.
    after_mark: Vec<i64>,
    last_ok: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_and_the_old_one_takes_no_write() {
    let _serial = serial().await;
    let mut g = Group::start(3, 1);
    let admin = "poll_ms = 1000\n[admin]\nlisten = \"127.0.0.1:0\"";
    let proxy = Proxy::start_text(&g.config(admin, ""), 0).await;
    let keys = key_per_shard(&proxy, 3, "fo:");
    let mut c = proxy.conn().await;
    for k in &keys {
        let _: () = redis::cmd("SET").arg(k).arg(0).query_async(&mut c).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mark = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..3).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let mut c = proxy.conn().await;
        let (k, stop, mark, seen) = (k.clone(), stop.clone(), mark.clone(), seen[i].clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r: redis::RedisResult<i64> = redis::cmd("INCR").arg(&k).query_async(&mut c).await;
                let read: redis::RedisResult<Option<i64>> = redis::cmd("GET").arg(&k).query_async(&mut c).await;
                {
                    let mut s = seen.lock().unwrap();
                    match (r, read) {
                        (Ok(v), Ok(_)) => {
                            s.acked += 1;
                            s.last_ok = Some(Instant::now());
                            if mark.load(Ordering::Relaxed) {
                                s.after_mark.push(v);
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => s.errors.push((Instant::now(), e.to_string())),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    let old_port = g.masters[1].port;
    let killed_at = Instant::now();
    g.masters[1].kill();
    let new_port = g.wait_new_master("shard-1", old_port, Duration::from_secs(30)).await;
    let failover = killed_at.elapsed();
    // The shard answers again within the failover time + 1 s.
    let recovered = wait_until_async(
        Duration::from_secs(1),
        "shard-1 to answer after the failover",
        async || {
            seen[1]
                .lock()
                .unwrap()
                .last_ok
                .is_some_and(|t| t > killed_at + failover)
        },
    )
    .await;
    let until_ok = seen[1]
        .lock()
        .unwrap()
        .last_ok
        .map(|t| t - killed_at)
        .unwrap_or_default();
    mark.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The old master comes back empty, a master until Sentinel reconfigures it.
    g.masters[1].restart();
    let old_role = ask(old_port, &["ROLE"]);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let s1 = std::mem::take(&mut *seen[1].lock().unwrap());
    let errors = s1.errors.len();
    let first_error = s1.errors.first().map(|(t, _)| *t - killed_at);
    let last_error = s1.errors.last().map(|(t, _)| *t - killed_at);
    let kinds: HashMap<String, usize> = s1.errors.iter().fold(HashMap::new(), |mut m, (_, e)| {
        let kind: String = e.split(':').take(2).collect::<Vec<_>>().join(":");
        *m.entry(kind).or_default() += 1;
        m
    });
    println!(
        "failover: sentinel promoted port {new_port} {:.2}s after the kill; shard-1 answered again {:.2}s after the kill \
         ({:.2}s after the promotion was visible); errors on shard-1: {errors} (first {first_error:?}, last {last_error:?}): {kinds:?}; \
         restarted old master's first ROLE: {:?}",
        failover.as_secs_f64(),
        until_ok.as_secs_f64(),
        recovered.as_secs_f64(),
        old_role.lines().nth(2).unwrap_or("")
    );
    for (_, e) in &s1.errors {
        assert!(e.contains("shard-1"), "an error that does not name the shard: {e}");
    }
    for (i, s) in seen.iter().enumerate().filter(|(i, _)| *i != 1) {
        let s = s.lock().unwrap();
        assert!(s.errors.is_empty(), "shard-{i} stopped: {:?}", s.errors);
        assert!(s.acked > 50, "shard-{i} made little progress: {}", s.acked);
    }
    // No write acknowledged by the restarted old master: INCR's replies go
    // on rising from the new master's count (the empty old one would have
    // answered 1, 2, ...).
    assert!(
        s1.after_mark.len() > 20,
        "too few writes after the failover: {}",
        s1.after_mark.len()
    );
    assert!(
        s1.after_mark.windows(2).all(|w| w[1] > w[0]),
        "INCR went back: a write reached another server: {:?}",
        s1.after_mark
    );
    let on_new: Option<i64> = redis::cmd("GET")
        .arg(&keys[1])
        .query(&mut g.node(new_port).client())
        .unwrap();
    assert_eq!(
        on_new,
        s1.after_mark.last().copied(),
        "the new master holds the last acknowledged value"
    );

    let text = info(&mut c, "proxy").await;
    let line = text
        .lines()
        .find(|l| l.starts_with("shard1:"))
        .unwrap_or_default()
        .to_string();
    println!("INFO proxy: {line}");
    assert!(line.contains(&format!("master=127.0.0.1:{new_port}")), "{line}");
    assert!(line.contains("failovers=1"), "{line}");
    assert!(line.contains(",replicas="), "{line}");
    assert!(text.contains("sentinel_switch_events:"), "{text}");
    // The admin endpoint counts the failover and names the new master.
    let admin = proxy.admin.expect("the admin endpoint is on");
    let m = lag::metrics(admin).await;
    let get = |s: &str| shardis::admin::metrics::value(&m, s);
    assert_eq!(get("shardis_shard_failovers_total{shard=\"shard-1\"}"), Some(1.0));
    assert_eq!(get("shardis_shard_failovers_total{shard=\"shard-0\"}"), Some(0.0));
    let master = format!("shardis_shard_master{{shard=\"shard-1\",addr=\"127.0.0.1:{new_port}\"}}");
    assert_eq!(get(&master), Some(1.0), "{m}");
    let st = lag::status(admin).await;
    assert_eq!(st["shards"][1]["replication"]["failovers"], 1, "{st}");
    assert_eq!(
        st["shards"][1]["replication"]["master"],
        format!("127.0.0.1:{new_port}")
    );
    // The ring did not change: the keys are where they were.
    assert_eq!(key_per_shard(&proxy, 3, "fo:"), keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_switch_master_is_followed_by_asking_again() {
    let _serial = serial().await;
    // Without the subscription: the periodic re-ask alone. A manual
    // failover (SENTINEL FAILOVER) demotes the old master while it lives:
    // no connection fails, only a poll can tell.
    let mut g = Group::start(1, 1);
    let proxy = Proxy::start_text(&g.config("poll_ms = 500\nsubscribe = false", ""), 0).await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let old = g.masters[0].port;
    let asked_at = Instant::now();
    let r = ask(g.sentinels[0].port, &["SENTINEL", "FAILOVER", "shard-0"]);
    assert!(r.starts_with("+OK"), "SENTINEL FAILOVER: {r}");
    let new_port = g.wait_new_master("shard-0", old, Duration::from_secs(30)).await;
    let failover = asked_at.elapsed();
    // Until the proxy follows, writes go to the old master: it takes them
    // until the Sentinels demote it (Sentinel's own window; with the
    // subscription it is milliseconds). Measure how long and how many.
    let master_now = format!("master=127.0.0.1:{new_port}");
    let (mut errors, mut on_old) = (Vec::new(), 0);
    let took = wait_until_async(
        Duration::from_millis(1500),
        "the proxy to follow the failover",
        async || {
            match redis::cmd("INCR").arg("n").query_async::<i64>(&mut c).await {
                Ok(_) => on_old += 1,
                Err(e) => errors.push(e.to_string()),
            }
            info(&mut c, "proxy").await.contains(&master_now)
        },
    )
    .await;
    let before = calls(g.node(new_port), "incr");
    let _: i64 = redis::cmd("INCR").arg("n").query_async(&mut c).await.unwrap();
    assert_eq!(
        calls(g.node(new_port), "incr"),
        before + 1,
        "a write after the follow went elsewhere"
    );
    let text = info(&mut c, "proxy").await;
    println!(
        "poll only, manual failover: promoted {:.2}s after SENTINEL FAILOVER, followed {:.2}s later; \
         meanwhile {on_old} INCRs answered by the old master, errors {:?}; {}",
        failover.as_secs_f64(),
        took.as_secs_f64(),
        errors.iter().take(2).collect::<Vec<_>>(),
        text.lines()
            .filter(|l| l.starts_with("s"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for e in &errors {
        assert!(e.contains("shard-0"), "an error that does not name the shard: {e}");
    }
    assert!(text.contains("sentinel_switch_events:0"), "{text}");
    assert!(text.contains("failovers=1"), "{text}");
    drop(proxy);
    // The demoted master is a replica of the new one now.
    wait_replica_synced_async(old).await;

    // With the subscription: its Sentinel dies; it moves to another one,
    // which tells of the next failover.
    let proxy = Proxy::start_text(&g.config("poll_ms = 5000", ""), 0).await;
    let mut c = proxy.conn().await;
    let subscribed = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("sentinel_subscribed:"))
            .unwrap_or("")
            .to_string()
    };
    let mut first = String::new();
    wait_until_async(Duration::from_secs(5), "the proxy to subscribe", async || {
        first = subscribed(&info(&mut c, "proxy").await);
        !first.is_empty()
    })
    .await;
    let i = g
        .sentinels
        .iter()
        .position(|s| s.addr() == first)
        .expect("a Sentinel of ours");
    g.sentinels[i].kill();
    wait_until_async(Duration::from_secs(5), "the subscription to move", async || {
        let now = subscribed(&info(&mut c, "proxy").await);
        !now.is_empty() && now != first
    })
    .await;
    // The master dies: the first one, its replica now, is promoted back.
    let killed_at = Instant::now();
    let victim = g
        .replicas
        .iter_mut()
        .flatten()
        .find(|n| n.port == new_port)
        .expect("the promoted replica");
    victim.kill();
    let back = g.wait_new_master("shard-0", new_port, Duration::from_secs(30)).await;
    let failover = killed_at.elapsed();
    let took = wait_until_async(
        Duration::from_millis(1500),
        "a write after the second failover",
        async || {
            redis::cmd("SET")
                .arg("k")
                .arg("x")
                .query_async::<()>(&mut c)
                .await
                .is_ok()
        },
    )
    .await;
    let text = info(&mut c, "proxy").await;
    println!(
        "subscribed: failover {:.2}s, followed {:.2}s later (poll every 5 s); {}",
        failover.as_secs_f64(),
        took.as_secs_f64(),
        text.lines()
            .filter(|l| l.starts_with("s"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(back, old);
    assert!(
        !text.contains("sentinel_switch_events:0"),
        "the event was not heard: {text}"
    );
}

async fn wait_replica_synced_async(port: u16) {
    tokio::task::spawn_blocking(move || wait_replica_synced(port))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_migrate_to_the_current_master_of_a_followed_shard() {
    let _serial = serial().await;
    let mut g = Group::start(1, 1);
    // The monitored master fails over before the proxy knows the shard.
    let old = g.masters[0].port;
    g.masters[0].kill();
    let master = g.wait_new_master("shard-0", old, Duration::from_secs(30)).await;
    let (a, b) = (RedisNode::start(), RedisNode::start());
    let timeouts = "[timeouts]\ncommand_ms = 500\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n";
    let plain = format!(
        "listen = \"127.0.0.1:0\"\n{timeouts}[[backends]]\nname = \"a\"\naddr = \"{}\"\n[[backends]]\nname = \"b\"\naddr = \"{}\"\n",
        a.addr(),
        b.addr()
    );
    let proxy = Proxy::start_text(&plain, 0).await;
    let mut c = proxy.conn().await;
    for i in 0..300 {
        let _: () = redis::cmd("SET")
            .arg(format!("m{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Reload: a third shard, given by its Sentinel master name.
    let addrs: Vec<String> = g.sentinels.iter().map(|s| format!("\"{}\"", s.addr())).collect();
    let text = format!(
        "{plain}[[backends]]\nname = \"c\"\nmaster = \"shard-0\"\n[sentinel]\naddrs = [{}]\n",
        addrs.join(", ")
    );
    let dir = std::env::temp_dir().join(format!("shardis-sentinel-reload-{}", proxy.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    shardis::control::reload(&proxy.shared, &path).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    wait_until_async(Duration::from_secs(30), "the migration to finish", async || {
        info(&mut c, "migration").await.contains("migration_in_progress:0")
    })
    .await;
    let on_c = (0..300).filter(|i| proxy.shard_of(&format!("m{i}")) == 2).count();
    for i in 0..300 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("m{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, i);
    }
    let dbsize = ask(master, &["DBSIZE"]);
    println!(
        "{on_c} keys moved to shard c's master (port {master}): DBSIZE {}",
        dbsize.trim()
    );
    assert!(on_c > 50, "{on_c}");
    assert_eq!(dbsize.trim(), format!(":{on_c}"));
    let t = info(&mut c, "proxy").await;
    assert!(t.contains(&format!("master=127.0.0.1:{master}")), "{t}");
}

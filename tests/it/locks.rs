//! Redlock through the proxy, against real redis-server members: placement,
//! majority answers, mutual exclusion under member failures, fencing tokens,
//! timeouts, validity and cleanup, lock-group changes, redis-py's `Lock`.

use std::process::Command;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::support::mutex::{Hammer, acquire, release};
use crate::support::{NodeClient, Proxy, RedisNode, three_nodes, wait_until_async};

const TIMEOUTS: &str = "[timeouts]\ncommand_ms = 500\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n";

async fn proxy_with(nodes: &[&RedisNode], redlock: &str) -> Proxy {
    Proxy::start_with(nodes, &format!("{TIMEOUTS}[redlock]\n{redlock}\n")).await
}

/// A proxy in front of `nodes` (which the test keeps mutable, to kill and restart them).
async fn proxy_for(nodes: &[RedisNode], redlock: &str) -> Proxy {
    let refs: Vec<_> = nodes.iter().collect();
    proxy_with(&refs, redlock).await
}

/// Retries an acquisition (errors count as "not yet") until it is granted;
/// fails the test if that takes until `deadline`. Returns when it was granted.
async fn acquire_before(c: &mut MultiplexedConnection, key: &str, token: &str, px: u64, deadline: Instant, why: &str) {
    while !acquire(c, key, token, px).await.unwrap_or(false) {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn get_direct(node: &RedisNode, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut node.client())
        .expect("GET on a member")
}

/// Waits (up to 2 s) until `node` holds `want` at `key`, then asserts it. An
/// answer needs only a majority, so the last member's write may land just
/// after the client has it.
async fn settled(node: &RedisNode, key: &str, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while get_direct(node, key).as_deref() != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get_direct(node, key).as_deref(), want, "{key} on member {}", node.port);
}

/// `INFO commandstats` of a member: which commands it has run.
fn commandstats(node: &RedisNode) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut node.client())
        .expect("INFO on a member")
}

fn python(script: &str, args: &[String]) -> std::process::Child {
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    Command::new("python3")
        .arg(path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 must be installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_live_on_every_member_and_answer_by_majority() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = proxy_with(&refs, "").await; // defaults: keys = ["lock:*"], every backend
    let mut c = proxy.conn().await;

    assert!(acquire(&mut c, "lock:a", "t1", 10_000).await.unwrap());
    for n in &nodes {
        settled(n, "lock:a", Some("t1")).await;
    }
    assert!(
        !acquire(&mut c, "lock:a", "t2", 10_000).await.unwrap(),
        "held lock granted twice"
    );
    let v: Option<String> = redis::cmd("GET").arg("lock:a").query_async(&mut c).await.unwrap();
    assert_eq!(v.as_deref(), Some("t1"));
    let pttl: i64 = redis::cmd("PTTL").arg("lock:a").query_async(&mut c).await.unwrap();
    assert!(0 < pttl && pttl <= 10_000, "{pttl}");

    // A minority disagreeing does not change the majority's answer.
    redis::cmd("SET")
        .arg("lock:a")
        .arg("rogue")
        .exec(&mut nodes[0].client())
        .unwrap();
    let v: Option<String> = redis::cmd("GET").arg("lock:a").query_async(&mut c).await.unwrap();
    assert_eq!(v.as_deref(), Some("t1"));
    assert_eq!(release(&mut c, "lock:a", "t1").await.unwrap(), 1);
    settled(&nodes[1], "lock:a", None).await;
    assert_eq!(
        get_direct(&nodes[0], "lock:a").as_deref(),
        Some("rogue"),
        "compare-and-delete kept the minority's foreign value"
    );
    let v: Option<String> = redis::cmd("GET").arg("lock:a").query_async(&mut c).await.unwrap();
    assert_eq!(v, None, "a value held by one member of three is not the lock's value");
    let n: i64 = redis::cmd("EXISTS").arg("lock:a").query_async(&mut c).await.unwrap();
    assert_eq!(n, 0);
    let pttl: i64 = redis::cmd("PTTL").arg("lock:a").query_async(&mut c).await.unwrap();
    assert_eq!(pttl, -2);
    redis::cmd("DEL").arg("lock:a").exec(&mut nodes[0].client()).unwrap();

    // KEYS and SCAN list a lock key once, next to ordinary keys.
    assert!(acquire(&mut c, "lock:listed", "t", 10_000).await.unwrap());
    for n in &nodes {
        settled(n, "lock:listed", Some("t")).await;
    }
    redis::cmd("MSET")
        .arg("x1")
        .arg(1)
        .arg("x2")
        .arg(2)
        .arg("x3")
        .arg(3)
        .exec_async(&mut c)
        .await
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    keys.sort();
    // The fencing counter lives on every member too, and is listed once.
    assert_eq!(keys, ["lock:listed", shardis::lock::FENCE_KEY, "x1", "x2", "x3"]);
    let mut scanned = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("lock:*")
            .query_async(&mut c)
            .await
            .unwrap();
        scanned.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(scanned, ["lock:listed"]);
    let deleted: i64 = redis::cmd("DEL").arg("lock:listed").query_async(&mut c).await.unwrap();
    assert_eq!(deleted, 1);
    for n in &nodes {
        settled(n, "lock:listed", None).await;
    }

    // Clear errors for what cannot be served; the connection stays usable.
    let refused: [(&[&str], &str); 5] = [
        (&["INCR", "lock:a"], "not supported on lock keys"),
        (&["DEL", "lock:a", "x1"], "cannot be combined"),
        (&["EVAL", "return 1", "2", "lock:a", "x1"], "cannot be combined"),
        (&["WATCH", "lock:a"], "lock keys (redlock.keys) cannot be watched"),
        (&["SET", "lock:a", "t", "NX", "PXAT", "1"], "PX or EX"),
    ];
    for (args, expected) in refused {
        let e = redis::Cmd::new()
            .arg(args)
            .query_async::<redis::Value>(&mut c)
            .await
            .expect_err(args[0]);
        assert!(e.to_string().contains(expected), "{args:?}: {e}");
    }
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");

    // Counters in INFO.
    let info: String = redis::cmd("INFO").arg("locks").query_async(&mut c).await.unwrap();
    assert!(info.contains("lock_group:shard-0,shard-1,shard-2"), "{info}");
    assert!(info.contains("lock_granted:2"), "{info}");
    assert!(info.contains("lock_denied:1"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_with_a_member_hung_then_killed() {
    let mut nodes = three_nodes();
    let check = RedisNode::start(); // the independent store: not behind the proxy
    let proxy = proxy_for(&nodes, "").await;
    // 8 redis-rs clients, each with its own connection.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(proxy.conn().await);
    }
    let hammer = Hammer::start(conns, check.addr()).await;

    // 2 redis-py clients using its Lock class.
    let port = proxy.addr.port().to_string();
    let pys: Vec<_> = (0..2)
        .map(|i| {
            python(
                "lock_hammer.py",
                &[port.clone(), check.port.to_string(), format!("py{i}"), "7".into()],
            )
        })
        .collect();

    let mut phases = vec![hammer.phase("all members up", 1500).await];
    nodes[1].pause();
    phases.push(hammer.phase("a member is SIGSTOPped", 1500).await);
    nodes[1].resume();
    phases.push(hammer.phase("the member is back", 1500).await);
    nodes[2].kill();
    phases.push(hammer.phase("a member is killed", 1500).await);
    let overlaps = hammer.stop().await;
    let mut py_entries = 0;
    for p in pys {
        let out = tokio::task::spawn_blocking(move || p.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let errors = String::from_utf8_lossy(&out.stderr).to_string();
        println!(
            "redis-py client: {text}{}",
            errors.lines().take(5).collect::<Vec<_>>().join("\n")
        );
        assert!(out.status.success(), "redis-py client failed: {text}\n{errors}");
        assert!(
            text.contains("overlaps=0"),
            "redis-py client saw overlapping critical sections: {text}"
        );
        py_entries += text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("entries="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    println!("critical sections by redis-rs clients per phase: {phases:?}; by redis-py clients: {py_entries}");
    assert_eq!(overlaps, 0, "overlapping critical sections");
    assert!(py_entries > 0, "redis-py clients never got the lock");
    for (label, n) in phases {
        assert!(n > 0, "no progress while {label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_down_or_hung_fails_fast_and_recovers() {
    let mut nodes = three_nodes();
    let proxy = proxy_for(&nodes, "member_timeout_ms = 150").await;
    let strict = proxy_for(&nodes, "member_timeout_ms = 150\non_no_quorum = \"error\"").await;
    let mut c = proxy.conn().await;
    let mut s = strict.conn().await;

    // Hung majority: the answer comes within the member timeout, not the command timeout.
    nodes[0].pause();
    nodes[1].pause();
    let start = Instant::now();
    assert!(!acquire(&mut c, "lock:h", "t1", 1000).await.unwrap());
    let took = start.elapsed();
    assert!(took < Duration::from_millis(450), "took {took:?}");
    let e = acquire(&mut s, "lock:h", "t2", 1000).await.unwrap_err();
    assert!(
        e.to_string().contains("lock quorum unavailable") && e.to_string().contains("shard-0"),
        "{e}"
    );
    nodes[0].resume();
    nodes[1].resume();
    // The late grants on the resumed members were undone; the lock is free.
    let deadline = Instant::now() + Duration::from_secs(5);
    acquire_before(
        &mut c,
        "lock:h",
        "t3",
        1000,
        deadline,
        "no acquisition after the members came back",
    )
    .await;
    assert!(release(&mut c, "lock:h", "t3").await.unwrap() == 1);

    // Dead majority: fails at once, then works again when they return.
    nodes[0].kill();
    nodes[1].kill();
    let start = Instant::now();
    assert!(!acquire(&mut c, "lock:d", "t1", 1000).await.unwrap());
    assert!(start.elapsed() < Duration::from_millis(450));
    let e = acquire(&mut s, "lock:d", "t1", 1000).await.unwrap_err();
    assert!(e.to_string().contains("shard-1"), "{e}");
    nodes[0].restart();
    nodes[1].restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    acquire_before(
        &mut c,
        "lock:d",
        "t2",
        1000,
        deadline,
        "no acquisition after the members came back",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_delayed_past_the_ttl_denies_and_cleans_up_everywhere() {
    let mut nodes = three_nodes();
    let proxy = proxy_for(&nodes, "member_timeout_ms = 150").await;
    let mut c = proxy.conn().await;
    // One member dead, one hung: the only member that answers grants, which is
    // not a majority.
    nodes[0].kill();
    nodes[1].pause();
    assert!(!acquire(&mut c, "lock:v", "t1", 3000).await.unwrap());
    // The granting member is released (the release may land just after the answer).
    settled(&nodes[2], "lock:v", None).await;
    // The hung member now runs the queued acquisition and then the release
    // queued behind it: it must not keep the key (its TTL is still running).
    nodes[1].resume();
    wait_until_async(
        Duration::from_secs(5),
        "the hung member to run the acquisition and the release",
        async || {
            let stats = commandstats(&nodes[1]);
            stats.contains("cmdstat_set:") && stats.contains("cmdstat_eval:")
        },
    )
    .await;
    assert_eq!(get_direct(&nodes[1], "lock:v"), None, "a late grant was left behind");
    let info: String = redis::cmd("INFO").arg("locks").query_async(&mut c).await.unwrap();
    assert!(info.contains("lock_no_quorum:1"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_owners_lock_is_not_granted_before_its_ttl() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = proxy_with(&refs, "").await;
    // The owner is a redis-cli process that takes the lock and exits.
    let port = proxy.addr.port().to_string();
    let out = Command::new("redis-cli")
        .args(["-p", &port, "SET", "lock:owner", "gone", "NX", "PX", "1500"])
        .output()
        .expect("redis-cli");
    let granted_at = Instant::now();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    let mut c = proxy.conn().await;
    acquire_before(
        &mut c,
        "lock:owner",
        "next",
        5000,
        granted_at + Duration::from_secs(4),
        "never granted after the TTL",
    )
    .await;
    let waited = granted_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "granted after {waited:?}, before the owner's TTL ran out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase_across_member_failures() {
    let mut nodes = three_nodes();
    // Two proxies take turns, so no single proxy's memory carries the order:
    // it must come from the members.
    let (a, b) = {
        let refs: Vec<_> = nodes.iter().collect();
        (proxy_with(&refs, "").await, proxy_with(&refs, "").await)
    };
    let mut conns = [a.conn().await, b.conn().await];
    let mut last = 0i64;
    let mut granted = 0;
    let mut i = 0u64;
    while granted < 1000 {
        i += 1;
        // Every 100 grants a different member dies, and comes back empty 50 grants later.
        if granted % 100 == 0 && granted > 0 {
            let victim = (granted / 100) % 3;
            if nodes[victim].pid() != 0 {
                nodes[victim].kill();
            }
        }
        if granted % 100 == 50 {
            for n in nodes.iter_mut().filter(|n| n.pid() == 0) {
                n.restart();
            }
        }
        let c = &mut conns[(i % 2) as usize];
        let token = format!("f{i}");
        let r: Option<(i64, i64)> = redis::cmd("SHARDIS.LOCK")
            .arg("lock:fenced")
            .arg(&token)
            .arg(300)
            .query_async(c)
            .await
            .unwrap();
        let Some((fence, validity)) = r else {
            continue; // a member connection was still failing over
        };
        assert!(fence > last, "fencing token {fence} after {last} (grant {granted})");
        assert!(validity > 0 && validity <= 300, "{validity}");
        let looked_up: Option<i64> = redis::cmd("SHARDIS.FENCE")
            .arg("lock:fenced")
            .arg(&token)
            .query_async(c)
            .await
            .unwrap();
        assert_eq!(looked_up, Some(fence));
        last = fence;
        granted += 1;
        assert_eq!(release(c, "lock:fenced", &token).await.unwrap(), 1);
    }
    // A plain SET NX PX also gets a token, larger than every one before.
    let c = &mut conns[0];
    assert!(acquire(c, "lock:fenced", "plain", 5000).await.unwrap());
    let f: Option<i64> = redis::cmd("SHARDIS.FENCE")
        .arg("lock:fenced")
        .arg("plain")
        .query_async(c)
        .await
        .unwrap();
    assert!(f.unwrap_or(0) > last);
    let none: Option<i64> = redis::cmd("SHARDIS.FENCE")
        .arg("lock:fenced")
        .arg("wrong")
        .query_async(c)
        .await
        .unwrap();
    assert_eq!(none, None);
    println!("1000 grants over {i} attempts, last fencing token {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_lock_group_needs_both_majorities_until_the_longest_ttl() {
    let nodes: Vec<RedisNode> = (0..6).map(|_| RedisNode::start()).collect();
    let refs: Vec<_> = nodes.iter().collect();
    let group = |names: &[&str]| {
        format!(
            "group = [{}]",
            names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
        )
    };
    let proxy = proxy_with(&refs, &group(&["shard-0", "shard-1", "shard-2"])).await;
    let mut c = proxy.conn().await;
    assert!(acquire(&mut c, "lock:g", "old", 2500).await.unwrap());
    let granted_at = Instant::now();
    for n in &nodes[3..] {
        assert_eq!(get_direct(n, "lock:g"), None, "only the group holds lock keys");
    }

    // Switch to a disjoint group, which knows nothing of the lock.
    let dir = std::env::temp_dir().join(format!("shardis-lockgroup-{}", proxy.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let text = crate::support::config_text(
        &refs,
        &format!("{TIMEOUTS}[redlock]\n{}\n", group(&["shard-3", "shard-4", "shard-5"])),
    );
    std::fs::write(&path, text).unwrap();
    assert_eq!(shardis::control::reload(&proxy.shared, &path).await, Ok(2));
    assert_eq!(proxy.shared.topology.load().locks.previous.len(), 1);

    // The new group alone would grant it; the old group still says no.
    assert!(
        !acquire(&mut c, "lock:g", "new", 2500).await.unwrap(),
        "granted while the old group's lock is live"
    );
    for n in &nodes[3..] {
        settled(n, "lock:g", None).await; // the denied attempt was released
    }
    // Reads see the lock the old group still holds.
    let v: Option<String> = redis::cmd("GET").arg("lock:g").query_async(&mut c).await.unwrap();
    assert_eq!(v.as_deref(), Some("old"));
    let pttl: i64 = redis::cmd("PTTL").arg("lock:g").query_async(&mut c).await.unwrap();
    assert!(pttl > 0 && pttl <= 2500, "{pttl}");
    // After the old lock's TTL the grant comes from both groups.
    acquire_before(
        &mut c,
        "lock:g",
        "new",
        2500,
        granted_at + Duration::from_secs(6),
        "never granted after the TTL",
    )
    .await;
    assert!(granted_at.elapsed() >= Duration::from_millis(2300));
    for n in &nodes[3..] {
        settled(n, "lock:g", Some("new")).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_behaves_as_against_one_redis() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = proxy_with(&refs, "").await;
    let child = python("lock_api.py", &[proxy.addr.port().to_string()]);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-py Lock failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_stays_out_of_quorums_for_the_longest_ttl() {
    let mut nodes = three_nodes();
    let proxy = proxy_for(&nodes, "").await;
    let mut c = proxy.conn().await;
    // The holder gets its majority from members 0 and 1 while 2 is down.
    nodes[2].kill();
    assert!(acquire(&mut c, "lock:r", "holder", 2500).await.unwrap());
    let granted_at = Instant::now();
    // Member 2 returns empty, and member 0 crashes and returns empty: two
    // empty members would now make a majority for anyone, unless a member
    // that restarted stays out until the holder's TTL has passed.
    nodes[2].restart();
    nodes[0].restart();
    let mut attempts = 0;
    while granted_at.elapsed() < Duration::from_millis(2000) {
        assert!(
            !acquire(&mut c, "lock:r", "intruder", 2500).await.unwrap(),
            "granted to a second client while the holder's lock was live ({attempts} attempts)"
        );
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info: String = redis::cmd("INFO").arg("locks").query_async(&mut c).await.unwrap();
    assert!(info.contains("restarted"), "{info}");
    // Once the longest TTL has passed, the restarted members vote again.
    acquire_before(
        &mut c,
        "lock:r",
        "intruder",
        2500,
        granted_at + Duration::from_secs(8),
        "restarted members never came back into quorums",
    )
    .await;
    assert!(granted_at.elapsed() >= Duration::from_millis(2400));
}

//! Transactions over several shards (issue 12, item 4): `[crossshard]
//! transactions = "per-shard"` against real redis-server shards (and one
//! plain Redis to compare with), the refusals with the settings off, and RQ
//! through shardis. Blocking pops: `spanning_pops.rs`.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::{AsyncCommands, Value};

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

pub const ON: &str = "[timeouts]\ncommand_ms = 1000\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n\
                  [crossshard]\ntransactions = \"per-shard\"\nblocking = \"all-shards\"\n";

/// `n` keys named `prefix…`, each on another shard.
pub fn spread(proxy: &Proxy, prefix: &str, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in 0..10_000 {
        let k = format!("{prefix}{i}");
        if !out.iter().any(|o| proxy.shard_of(o) == proxy.shard_of(&k)) {
            out.push(k);
            if out.len() == n {
                return out;
            }
        }
    }
    panic!("no {n} keys on distinct shards");
}

fn blocked_clients(node: &RedisNode) -> i64 {
    let info: String = redis::cmd("INFO").arg("clients").query(&mut node.client()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

pub async fn wait_blocked(nodes: &[&RedisNode], want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes.iter().any(|n| blocked_clients(n) != want) {
        assert!(Instant::now() < deadline, "shards never had {want} blocked clients");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// MULTI, `cmds`, EXEC on one connection: EXEC's reply.
async fn tx(conn: &mut redis::aio::MultiplexedConnection, cmds: &[Vec<String>]) -> redis::RedisResult<Value> {
    let () = redis::cmd("MULTI").query_async(conn).await?;
    for c in cmds {
        let mut cmd = redis::cmd(&c[0]);
        for a in &c[1..] {
            cmd.arg(a);
        }
        let _: Value = cmd.query_async(conn).await?;
    }
    redis::cmd("EXEC").query_async(conn).await
}

/// MULTI, `cmds`, EXEC, then `after`, in one write over a plain socket to
/// `addr`: every reply frame as text, so error elements compare too.
fn raw_tx(addr: &str, cmds: &[Vec<String>], after: &[Vec<String>]) -> Vec<String> {
    use std::io::Read;
    let mut all = vec![words("MULTI")];
    all.extend(cmds.iter().cloned());
    all.push(words("EXEC"));
    all.extend(after.iter().cloned());
    let mut req = Vec::new();
    for c in &all {
        req.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
        for a in c {
            req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&req).unwrap();
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    while out.len() < all.len() {
        while let Some(n) = shardis::protocol::reply::frame_len(&buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            buf.drain(..n);
        }
        if out.len() == all.len() {
            break;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {out:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_settings_off_the_refusal_names_them() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let k = spread(&proxy, "k", 3);
    let mut c = proxy.conn().await;
    let e = tx(
        &mut c,
        &[words(&format!("SET {} 1", k[0])), words(&format!("SET {} 1", k[1]))],
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("crossshard.transactions = \"per-shard\""), "{e}");
    let _ = redis::cmd("DISCARD").query_async::<Value>(&mut c).await;
    let e = redis::cmd("BLPOP")
        .arg(&k[0])
        .arg(&k[1])
        .arg(1)
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSHARD"), "{e}");
    assert!(e.to_string().contains("crossshard.blocking = \"all-shards\""), "{e}");
    let n: Option<String> = c.get(&k[1]).await.unwrap();
    assert_eq!(n, None, "nothing of the refused transaction ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_three_shards_answers_as_one_redis() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, ON).await;
    let plain = RedisNode::start();
    let k = spread(&proxy, "job", 3);
    let (a, b, c) = (&k[0], &k[1], &k[2]);
    let script: Vec<Vec<String>> = [
        "PING".to_string(),
        format!("HSET {a} status queued data x"),
        format!("RPUSH {b} {a}"),
        "ECHO hi".into(),
        format!("SADD {c} {b}"),
        format!("INCR {a}"), // WRONGTYPE: an error in its place, the rest runs
        format!("HGET {a} status"),
        format!("LRANGE {b} 0 -1"),
        "PUBLISH news hello".into(),
        format!("SMEMBERS {c}"),
        format!("EXPIRE {b} 100"),
        "PING again".into(),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    // Pipelined behind EXEC: reads of every shard see the whole transaction.
    let after: Vec<Vec<String>> = [format!("HGETALL {a}"), format!("LRANGE {b} 0 -1"), format!("SCARD {c}")]
        .iter()
        .map(|s| words(s))
        .collect();
    let (paddr, daddr, s2) = (proxy.addr.to_string(), plain.addr(), script.clone());
    let (got, want) = tokio::task::spawn_blocking(move || (raw_tx(&paddr, &s2, &after), raw_tx(&daddr, &s2, &after)))
        .await
        .unwrap();
    assert_eq!(got, want);
    assert!(got[script.len() + 1].contains("WRONGTYPE"), "{got:?}");
    let mut via = proxy.conn().await;
    // Every write landed on its own shard.
    for key in [a, b, c] {
        let t: String = redis::cmd("TYPE")
            .arg(key)
            .query(&mut nodes[proxy.shard_of(key)].client())
            .unwrap();
        assert_ne!(t, "none", "{key}");
    }
    // A command after EXEC sees the whole transaction.
    let got: Vec<String> = via.lrange(b, 0, -1).await.unwrap();
    assert_eq!(got, vec![a.clone()]);
    // Queue-time errors abort as on Redis.
    let e = tx(&mut via, &[words(&format!("SET {a}x 1")), words("NOSUCH cmd")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown command"), "{e}");
    let e = redis::cmd("EXEC").query_async::<Value>(&mut via).await.unwrap_err();
    assert_eq!(e.code(), Some("EXECABORT"), "{e}");
    // One command's own keys must share a shard.
    let _: () = redis::cmd("MULTI").query_async(&mut via).await.unwrap();
    let e = redis::cmd("MSET")
        .arg(a)
        .arg(1)
        .arg(b)
        .arg(2)
        .query_async::<Value>(&mut via)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSHARD"), "{e}");
    let _ = redis::cmd("DISCARD").query_async::<Value>(&mut via).await;
    // WATCH guards one shard: keys of several shards are refused.
    let e = redis::cmd("WATCH")
        .arg(a)
        .arg(b)
        .query_async::<Value>(&mut via)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSHARD"), "{e}");
    // Watched keys on one shard, the transaction over several: the watched
    // shard's part commits first, under the WATCH.
    let w = spread(&proxy, "w", 3);
    let script = [words(&format!("SET {} 1", w[1])), words(&format!("SET {} 1", w[0]))];
    let _: () = redis::cmd("WATCH").arg(&w[0]).query_async(&mut via).await.unwrap();
    let got = tx(&mut via, &script).await.unwrap();
    assert_eq!(got, Value::Array(vec![Value::Okay, Value::Okay]));
    // A watched key changed: nil, and nothing applied on any shard.
    let _: () = redis::cmd("WATCH").arg(&w[0]).query_async(&mut via).await.unwrap();
    let mut other = proxy.conn().await;
    let _: () = other.del(&w[0]).await.unwrap();
    let script = [words(&format!("SET {} 2", w[2])), words(&format!("SET {} 2", w[0]))];
    let got = tx(&mut via, &script).await.unwrap();
    assert_eq!(got, Value::Nil);
    let n: i64 = via.exists(&w).await.unwrap();
    assert_eq!(
        n, 1,
        "only the first transaction's write on the unwatched shard is there"
    );
    // Scripts over several shards are still refused.
    let e = redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg(a)
        .arg(b)
        .query_async::<Value>(&mut via)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSHARD"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_down_mid_transaction_is_named_with_what_was_applied() {
    let mut nodes = three_nodes();
    let proxy = {
        let refs: Vec<_> = nodes.iter().collect();
        Proxy::start_with(&refs, ON).await
    };
    let k = spread(&proxy, "p", 3);
    let (first, down, last) = (proxy.shard_of(&k[0]), proxy.shard_of(&k[1]), proxy.shard_of(&k[2]));
    let mut c = proxy.conn().await;
    // Stopped (SIGSTOP): its part is sent and not answered within
    // command_ms, so it may or may not have been applied.
    nodes[down].pause();
    let script: Vec<Vec<String>> = [
        format!("SET {} a", k[0]),
        format!("SET {} b", k[1]),
        format!("SET {} c", k[2]),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    let m = tx(&mut c, &script).await.unwrap_err().to_string();
    assert!(
        m.contains("failed at part 2 of 3") && m.contains("may or may not have been applied"),
        "{m}"
    );
    nodes[down].resume();
    // A shard stopped while a blocking pop waits on it: an error once the
    // pop's timeout and command_ms have passed, not a wait for ever.
    let sq = spread(&proxy, "sq", 3);
    let on = |shard: usize| sq.iter().find(|q| proxy.shard_of(q) == shard).unwrap().clone();
    let keys = [on(first), on(down)];
    let mut waiter = proxy.conn().await;
    let pop = tokio::spawn(async move {
        loop {
            // The pool may still be reconnecting to the resumed shard.
            match waiter.blpop::<_, Option<(String, String)>>(&keys, 1.0).await {
                Err(e) if !e.to_string().contains("no answer") => tokio::time::sleep(Duration::from_millis(50)).await,
                r => return r,
            }
        }
    });
    let both = [&nodes[first], &nodes[down]];
    wait_blocked(&both, 1).await;
    let t_pause = Instant::now();
    nodes[down].pause();
    let got = tokio::time::timeout(Duration::from_secs(6), pop)
        .await
        .unwrap()
        .unwrap();
    let took = t_pause.elapsed();
    nodes[down].resume();
    let e = got.unwrap_err().to_string();
    assert!(e.contains("no answer to a blocking pop"), "{e}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    nodes[down].kill();
    let script: Vec<Vec<String>> = [
        format!("SET {} one", k[0]),
        format!("SET {} two", k[1]),
        format!("SET {} three", k[2]),
        format!("APPEND {} more", k[0]),
    ]
    .iter()
    .map(|s| words(s))
    .collect();
    let e = tx(&mut c, &script).await.unwrap_err();
    let m = e.to_string();
    assert!(m.contains("failed at part 2 of 3"), "{m}");
    assert!(m.contains("applied: shard") && m.contains("(commands 1,4)"), "{m}");
    assert!(m.contains("not applied: shard") && m.contains("(commands 3)"), "{m}");
    // The first part committed, the last was never sent.
    let v: String = redis::cmd("GET").arg(&k[0]).query(&mut nodes[first].client()).unwrap();
    assert_eq!(v, "onemore");
    let v: Option<String> = redis::cmd("GET").arg(&k[2]).query(&mut nodes[last].client()).unwrap();
    assert_eq!(v, None);
    // The down shard first: nothing applied.
    let script: Vec<Vec<String>> = [format!("SET {} x", k[1]), format!("SET {} x", k[2])]
        .iter()
        .map(|s| words(s))
        .collect();
    let m = tx(&mut c, &script).await.unwrap_err().to_string();
    assert!(
        m.contains("failed at part 1 of 2") && m.contains("applied: none"),
        "{m}"
    );
    let v: String = redis::cmd("GET")
        .arg(&k[2])
        .query(&mut nodes[last].client())
        .unwrap_or_default();
    assert_eq!(v, "", "the part after the failed one was not sent");
}

/// Runs `tests/py/rq_flow.py` against the proxy: RQ's own enqueue, worker and
/// result through shardis, with its default key names.
async fn rq_flow(proxy: &Proxy, mode: &str, other: &str) -> std::process::Output {
    let path = format!("{}/tests/py/rq_flow.py", env!("CARGO_MANIFEST_DIR"));
    let args = [path, proxy.addr.port().to_string(), mode.to_string(), other.to_string()];
    tokio::task::spawn_blocking(move || std::process::Command::new("python3").args(args).output())
        .await
        .unwrap()
        .expect("python3 must be installed (with redis and rq: scripts/install-deps.sh)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rq_enqueues_and_runs_jobs_through_shardis() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let off = Proxy::start(&refs).await;
    // A second queue whose list is on another shard than "default"'s, so the
    // waiting worker's BLPOP spans shards.
    let other = (0..100)
        .map(|i| format!("other{i}"))
        .find(|q| off.shard_of(&format!("rq:queue:{q}")) != off.shard_of("rq:queue:default"))
        .unwrap();
    let out = rq_flow(&off, "off", &other).await;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("refused:") && text.contains("CROSSSHARD"), "{text}");
    drop(off);
    // The jobs that went through with the setting off (see rq_flow.py).
    for n in &nodes {
        let () = redis::cmd("FLUSHALL").query(&mut n.client()).unwrap();
    }
    let proxy = Proxy::start_with(&refs, ON).await;
    let out = rq_flow(&proxy, "on", &other).await;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: [10, 11, 12, 101, 22, 33]"), "{text}");
}

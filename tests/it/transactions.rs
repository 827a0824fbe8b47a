//! MULTI / EXEC / DISCARD through shardis: byte for byte what one Redis
//! answers when every key is on one shard, a clear refusal otherwise.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

/// Sends `input` and reads until the reply bytes stop growing (200 ms quiet)
/// or `want_len` bytes arrived.
fn exchange(addr: &str, input: &str, want_len: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s.write_all(input.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) if out.len() >= want_len => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Inline commands, every key in hash tag {t} (one shard).
const SCRIPT: &str = "EXEC\r\nDISCARD\r\nMULTI\r\nSET {t}a 1\r\nINCR {t}a\r\nMULTI\r\nLPUSH {t}l x y\r\n\
    INCR {t}l\r\nMGET {t}a {t}l {t}missing\r\nPING\r\nECHO hi\r\nEXEC\r\n\
    MULTI\r\nSET {t}b 1\r\nNOSUCHCOMMAND\r\nEXEC\r\nGET {t}b\r\n\
    MULTI\r\nSET {t}c 1\r\nDISCARD\r\nGET {t}c\r\nMULTI\r\nEXEC\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_on_one_shard_answer_as_redis_does() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let plain = RedisNode::start();
    let (paddr, raddr) = (proxy.addr.to_string(), plain.addr());
    let (via_proxy, direct) = tokio::task::spawn_blocking(move || {
        let direct = exchange(&raddr, SCRIPT, 0);
        let via_proxy = exchange(&paddr, SCRIPT, direct.len());
        (via_proxy, direct)
    })
    .await
    .unwrap();
    // Redis words a few errors differently from shardis's unknown-command text; compare the rest.
    let norm = |s: &str| {
        s.lines()
            .map(|l| {
                if l.starts_with("-ERR unknown command") {
                    "-ERR unknown command"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        norm(&via_proxy),
        norm(&direct),
        "via shardis:\n{via_proxy}\ndirect:\n{direct}"
    );
    assert!(direct.contains("-EXECABORT"), "{direct}");
    assert!(direct.contains("-WRONGTYPE"), "{direct}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_pipelines_and_their_limits() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    // redis-rs atomic pipeline: MULTI ... EXEC.
    let (a, b, l): (i64, i64, Vec<String>) = redis::pipe()
        .atomic()
        .set("{user:1}:visits", 10)
        .ignore()
        .incr("{user:1}:visits", 5)
        .incr("{user:1}:clicks", 1)
        .rpush("{user:1}:log", "x")
        .ignore()
        .lrange("{user:1}:log", 0, -1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, b, l), (15, 1, vec!["x".to_string()]));
    // It ran on the one shard that owns {user:1}, and only there.
    let owner = proxy.shard_of("{user:1}:visits");
    for (i, n) in nodes.iter().enumerate() {
        let v: Option<i64> = redis::cmd("GET").arg("{user:1}:visits").query(&mut n.client()).unwrap();
        assert_eq!(v, (i == owner).then_some(15), "shard {i}");
    }
    // Keys on two shards: CROSSSHARD at once, EXECABORT at EXEC, nothing ran.
    let other = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| proxy.shard_of(k) != owner)
        .unwrap();
    let r: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .set("{user:1}:visits", 0)
        .set(&other, 1)
        .query_async(&mut c)
        .await;
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("CROSSSHARD") || e.code() == Some("EXECABORT"),
        "{e}"
    );
    let v: i64 = c.get("{user:1}:visits").await.unwrap();
    assert_eq!(v, 15, "the aborted transaction changed nothing");
    let v: Option<i64> = c.get(&other).await.unwrap();
    assert_eq!(v, None);
    // Commands that do not run on one shard are refused inside MULTI.
    let addr = proxy.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        exchange(
            &addr,
            "MULTI\r\nDBSIZE\r\nEXEC\r\nWATCH a\r\nMULTI\r\nSHARDIS.FENCE x y\r\nDISCARD\r\n",
            10,
        )
    })
    .await
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "+OK");
    assert!(
        lines[1].starts_with("-ERR shardis: 'dbsize' cannot be used inside MULTI"),
        "{out}"
    );
    assert!(lines[2].starts_with("-EXECABORT"), "{out}");
    assert_eq!(lines[3], "+OK", "{out}");
    assert_eq!(lines[4], "+OK");
    assert!(
        lines[5].contains("SHARDIS.* commands cannot be used inside MULTI"),
        "{out}"
    );
    assert_eq!(lines[6], "+OK");
    // Other clients keep being served while transactions run on shared backend
    // connections: many concurrent atomic pipelines, each all-or-nothing.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = proxy.conn().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let (x, y): (i64, i64) = redis::pipe()
                    .atomic()
                    .incr(format!("{{ctr:{t}}}:x"), 1)
                    .incr(format!("{{ctr:{t}}}:y"), 2)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert_eq!((x, y), (i + 1, 2 * (i + 1)));
                let plain: i64 = c.incr(format!("plain:{t}"), 1).await.unwrap();
                assert_eq!(plain, i + 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs `steps` (connection 0 or 1, an inline command, whether its reply is
/// compared) on two connections to `addr`; each step's reply is read until
/// it stops growing (100 ms quiet).
fn conversation(addr: &str, steps: &[(usize, &str, bool)]) -> Vec<String> {
    let mut conns: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for c in &conns {
        c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    for &(i, cmd, compared) in steps {
        let c = &mut conns[i];
        c.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) if !got.is_empty() => break,
                Err(_) => {}
            }
        }
        let got = String::from_utf8_lossy(&got).into_owned();
        out.push(if compared {
            format!("{i} {cmd} -> {got}")
        } else {
            format!("{i} {cmd}")
        });
    }
    out
}

/// WATCH with a concurrent writer on another connection, every key in hash
/// tag {w} (one shard).
const WATCH_STEPS: &[(usize, &str, bool)] = &[
    (0, "WATCH {w}k", true),
    (0, "MULTI", true),
    (0, "SET {w}k 1", true),
    (0, "EXEC", true),
    // Another client writes between WATCH and EXEC: EXEC answers nil.
    (0, "WATCH {w}k", true),
    (0, "GET {w}k", true),
    (1, "SET {w}k 2", true),
    (0, "MULTI", true),
    (0, "INCR {w}k", true),
    (0, "EXEC", true),
    (0, "GET {w}k", true),
    // UNWATCH: the write no longer matters.
    (0, "WATCH {w}k", true),
    (0, "UNWATCH", true),
    (1, "SET {w}k 3", true),
    (0, "MULTI", true),
    (0, "INCR {w}k", true),
    (0, "EXEC", true),
    // The client's own write counts too; an empty transaction is nil then.
    (0, "WATCH {w}k {w}j", true),
    (0, "SET {w}j 10", true),
    (0, "MULTI", true),
    (0, "EXEC", true),
    // WATCH inside MULTI is an error that does not abort; UNWATCH is queued.
    (0, "WATCH {w}k", true),
    (0, "MULTI", true),
    (0, "WATCH {w}j", true),
    (0, "UNWATCH", true),
    (0, "GET {w}k", true),
    (1, "SET {w}k 5", true),
    (0, "EXEC", true),
    // DISCARD without MULTI keeps the watch; DISCARD ends it.
    (0, "WATCH {w}k", true),
    (0, "DISCARD", true),
    (0, "MULTI", true),
    (0, "DISCARD", true),
    (1, "SET {w}k 6", true),
    (0, "MULTI", true),
    (0, "GET {w}k", true),
    (0, "EXEC", true),
    // RESET ends the watch.
    (0, "WATCH {w}k", true),
    (0, "RESET", true),
    (1, "SET {w}k 8", true),
    (0, "MULTI", true),
    (0, "GET {w}k", true),
    (0, "EXEC", true),
    // RESP3: nil is `_`; HELLO while watching keeps the watch.
    (0, "WATCH {w}k", true),
    (0, "HELLO 3", false),
    (1, "SET {w}k 7", true),
    (0, "MULTI", true),
    (0, "GET {w}k", true),
    (0, "EXEC", true),
    (0, "WATCH {w}k", true),
    (0, "MULTI", true),
    (0, "GET {w}k", true),
    (0, "EXEC", true),
    (0, "WATCH", true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_as_redis_does() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let plain = RedisNode::start();
    let (paddr, raddr) = (proxy.addr.to_string(), plain.addr());
    let (via_proxy, direct) =
        tokio::task::spawn_blocking(move || (conversation(&paddr, WATCH_STEPS), conversation(&raddr, WATCH_STEPS)))
            .await
            .unwrap();
    for (p, d) in via_proxy.iter().zip(&direct) {
        assert_eq!(p, d, "via shardis:\n{via_proxy:#?}\ndirect:\n{direct:#?}");
    }
    let nil = direct.iter().filter(|l| l.ends_with("EXEC -> *-1\r\n")).count();
    assert_eq!(nil, 3, "{direct:#?}");
    assert!(direct.iter().any(|l| l.ends_with("EXEC -> _\r\n")), "{direct:#?}");

    // Keys on two shards: CROSSSHARD, for WATCH and for what is queued after it.
    let a = "{w}k".to_string();
    let owner = proxy.shard_of(&a);
    let b = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| proxy.shard_of(k) != owner)
        .unwrap();
    let paddr = proxy.addr.to_string();
    let steps: Vec<String> = vec![
        format!("WATCH {a} {b}"),
        format!("WATCH {a}"),
        format!("WATCH {b}"),
        "MULTI".into(),
        format!("SET {b} 1"),
        "EXEC".into(),
        format!("GET {b}"),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let steps: Vec<(usize, &str, bool)> = steps.iter().map(|s| (0, s.as_str(), true)).collect();
        conversation(&paddr, &steps)
    })
    .await
    .unwrap();
    let replies: Vec<&str> = out.iter().filter_map(|l| l.split(" -> ").nth(1)).collect();
    assert!(replies[0].starts_with("-CROSSSHARD"), "{out:#?}");
    assert_eq!(replies[1], "+OK\r\n", "{out:#?}");
    assert!(replies[2].starts_with("-CROSSSHARD"), "{out:#?}");
    assert_eq!(replies[3], "+OK\r\n", "{out:#?}");
    assert!(replies[4].starts_with("-CROSSSHARD"), "{out:#?}");
    assert!(replies[5].starts_with("-EXECABORT"), "{out:#?}");
    assert_eq!(replies[6], "$-1\r\n", "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_transactions_of_redis_py_and_redis_rs_count_exactly() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    crate::support::run_py("watch_counter.py", proxy.addr).await;
    // redis-rs: 4 threads, 50 WATCH/GET/MULTI/SET/EXEC each, retried on nil.
    let url = format!("redis://{}/", proxy.addr);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                for _ in 0..50 {
                    let _: () = redis::transaction(&mut con, &["rs:counter"], |con, pipe| {
                        let v: Option<i64> = redis::cmd("GET").arg("rs:counter").query(con)?;
                        pipe.set("rs:counter", v.unwrap_or(0) + 1).ignore().query(con)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = proxy.conn().await;
    let v: i64 = c.get("rs:counter").await.unwrap();
    assert_eq!(v, 200);
}

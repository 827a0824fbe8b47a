//! Differential test: the same random command stream through shardis (three
//! shards) and to one plain Redis must give identical replies and leave an
//! identical keyspace. The stream includes FUNCTION LOAD, FCALL and CONFIG
//! GET/SET, whose replies a proxy in front of several shards gives as one
//! Redis does. Then SCAN's full iterations (same key sets, MATCH / TYPE /
//! COUNT) and a transaction with PUBLISH inside (same reply array).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

const COMMANDS: usize = 6000;
const BATCH: usize = 40;

fn key(rng: &mut StdRng, kind: &str) -> String {
    // A few tagged keys so same-shard multi-key commands get exercised.
    if rng.random_bool(0.2) {
        format!("{{tag{}}}:{kind}{}", rng.random_range(0..3), rng.random_range(0..4))
    } else {
        format!("{kind}:{}", rng.random_range(0..25))
    }
}

fn tagged_pair(rng: &mut StdRng, kind: &str) -> (String, String) {
    let t = rng.random_range(0..3);
    (
        format!("{{tag{t}}}:{kind}{}", rng.random_range(0..4)),
        format!("{{tag{t}}}:{kind}{}", rng.random_range(0..4)),
    )
}

fn val(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => rng.random_range(-100..100).to_string(),
        1 => String::new(),
        _ => (0..rng.random_range(1..12))
            .map(|_| rng.random_range(b'a'..=b'z') as char)
            .collect(),
    }
}

/// One random command, and whether its reply is an unordered collection.
fn random_command(rng: &mut StdRng) -> (Vec<String>, bool) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let n = rng.random_range(1..5);
    let cmd = match rng.random_range(0..45) {
        0 => s(&["SET", &key(rng, "s"), &val(rng)]),
        1 => s(&["GET", &key(rng, "s")]),
        2 => s(&["APPEND", &key(rng, "s"), &val(rng)]),
        3 => s(&["INCRBY", &key(rng, "s"), &rng.random_range(-5..5).to_string()]),
        4 => s(&["STRLEN", &key(rng, "s")]),
        5 => s(&["GETRANGE", &key(rng, "s"), "0", "3"]),
        6 => s(&["SETNX", &key(rng, "s"), &val(rng)]),
        7 => {
            let mut v = s(&["MSET"]);
            for _ in 0..n {
                v.push(key(rng, "s"));
                v.push(val(rng));
            }
            v
        }
        8 => {
            let mut v = s(&["MGET"]);
            v.extend((0..n + 2).map(|_| key(rng, "s")));
            v
        }
        9 | 10 => {
            let mut v = s(&[["DEL", "EXISTS", "UNLINK", "TOUCH"][rng.random_range(0..4)]]);
            let kinds = ["s", "l", "h", "z", "t"];
            for _ in 0..n {
                let kind = kinds[rng.random_range(0..kinds.len())];
                v.push(key(rng, kind));
            }
            v
        }
        11 => s(&[
            ["LPUSH", "RPUSH"][rng.random_range(0..2)],
            &key(rng, "l"),
            &val(rng),
            &val(rng),
        ]),
        12 => s(&[["LPOP", "RPOP"][rng.random_range(0..2)], &key(rng, "l")]),
        13 => s(&["LRANGE", &key(rng, "l"), "0", "-1"]),
        14 => s(&["LLEN", &key(rng, "l")]),
        15 => {
            let (a, b) = tagged_pair(rng, "l");
            s(&["LMOVE", &a, &b, "LEFT", "RIGHT"])
        }
        16 => s(&["HSET", &key(rng, "h"), &val(rng), &val(rng)]),
        17 => s(&["HGET", &key(rng, "h"), &val(rng)]),
        18 => s(&["HDEL", &key(rng, "h"), &val(rng)]),
        19 => s(&["HGETALL", &key(rng, "h")]),
        20 => s(&["HINCRBY", &key(rng, "h"), "n", "3"]),
        21 => s(&["SADD", &key(rng, "t"), &val(rng), &val(rng)]),
        22 => s(&["SREM", &key(rng, "t"), &val(rng)]),
        23 => return (s(&["SMEMBERS", &key(rng, "t")]), true),
        24 => s(&["SCARD", &key(rng, "t")]),
        25 => {
            let (a, b) = tagged_pair(rng, "t");
            return (s(&["SUNION", &a, &b]), true);
        }
        26 => s(&[
            "ZADD",
            &key(rng, "z"),
            &rng.random_range(-10..10).to_string(),
            &val(rng),
        ]),
        27 => s(&["ZRANGE", &key(rng, "z"), "0", "-1", "WITHSCORES"]),
        28 => s(&["ZINCRBY", &key(rng, "z"), "1.5", &val(rng)]),
        29 => s(&["ZSCORE", &key(rng, "z"), &val(rng)]),
        30 => s(&["TYPE", &key(rng, "s")]),
        31 => {
            let (a, b) = tagged_pair(rng, "s");
            s(&["RENAME", &a, &b])
        }
        32 => s(&["EXPIRE", &key(rng, "s"), "100000"]),
        33 => s(&["PERSIST", &key(rng, "s")]),
        34 => s(&["GETDEL", &key(rng, "s")]),
        35 => s(&["DBSIZE"]),
        36 => return (s(&["KEYS", "*"]), true),
        37 => s(&["EVAL", "return redis.call('INCR', KEYS[1])", "1", &key(rng, "s")]),
        38 => s(&["PING"]),
        40 => s(&[
            "FCALL",
            "incr_by",
            "1",
            &key(rng, "s"),
            &rng.random_range(-5..5).to_string(),
        ]),
        41 => s(&["FCALL_RO", "get_ro", "1", &key(rng, "s")]),
        42 => s(&[
            "CONFIG",
            "SET",
            "list-max-listpack-size",
            ["64", "128", "-2", "nope"][rng.random_range(0..4)],
        ]),
        43 => s(&["CONFIG", "GET", "list-max-listpack-size"]),
        44 => s(&["FUNCTION", "LOAD", crate::functions::LIB]),
        _ => s(&["SET", &key(rng, "s"), &val(rng), "GET"]),
    };
    (cmd, false)
}

/// Makes replies comparable: sorts unordered collections.
fn normalize(v: Value, unordered: bool) -> Value {
    match v {
        Value::Array(mut items) if unordered => {
            items.sort_by_key(|x| format!("{x:?}"));
            Value::Array(items)
        }
        Value::Set(mut items) => {
            items.sort_by_key(|x| format!("{x:?}"));
            Value::Array(items)
        }
        other => other,
    }
}

fn keyspace(c: &mut redis::Connection) -> Vec<(String, String, Value)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let t: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
            let (cmd, args, unordered): (&str, Vec<&str>, bool) = match t.as_str() {
                "string" => ("GET", vec![], false),
                "list" => ("LRANGE", vec!["0", "-1"], false),
                "hash" => ("HGETALL", vec![], true),
                "set" => ("SMEMBERS", vec![], true),
                "zset" => ("ZRANGE", vec!["0", "-1", "WITHSCORES"], false),
                other => panic!("unexpected type {other}"),
            };
            let v: Value = redis::cmd(cmd).arg(&k).arg(args).query(c).unwrap();
            (k, t, normalize(v, unordered))
        })
        .collect()
}

/// Every key a full SCAN iteration returns, as a sorted set (SCAN may
/// return a key twice, on one Redis too).
fn scan_all(c: &mut redis::Connection, extra: &[&str]) -> Vec<String> {
    let (mut cursor, mut seen) = ("0".to_string(), Vec::new());
    for _ in 0..100_000 {
        let (next, page): (String, Vec<String>) = redis::cmd("SCAN").arg(&cursor).arg(extra).query(c).unwrap();
        seen.extend(page);
        if next == "0" {
            seen.sort();
            seen.dedup();
            return seen;
        }
        cursor = next;
    }
    panic!("SCAN {extra:?} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_replies_and_keyspace_as_one_redis() {
    let nodes = three_nodes();
    let reference = RedisNode::start();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "").await;
    let url = proxy.url();
    let (mismatches, keys) = tokio::task::spawn_blocking(move || {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut via_proxy = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let mut direct = reference.client();
        // The same library on both sides, for FCALL.
        for c in [&mut via_proxy, &mut direct] {
            let name: String = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg(crate::functions::LIB)
                .query(c)
                .unwrap();
            assert_eq!(name, "shardislib");
        }
        let mut mismatches = Vec::new();
        let mut sent = 0;
        while sent < COMMANDS {
            let batch: Vec<(Vec<String>, bool)> = (0..BATCH).map(|_| random_command(&mut rng)).collect();
            let mut p1 = redis::pipe();
            let mut p2 = redis::pipe();
            p1.ignore_errors();
            p2.ignore_errors();
            for (c, _) in &batch {
                p1.cmd(&c[0]).arg(&c[1..]);
                p2.cmd(&c[0]).arg(&c[1..]);
            }
            let r1: Vec<Value> = p1.query(&mut via_proxy).unwrap();
            let r2: Vec<Value> = p2.query(&mut direct).unwrap();
            for (((cmd, unordered), a), b) in batch.iter().zip(r1).zip(r2) {
                let (a, b) = (normalize(a, *unordered), normalize(b, *unordered));
                if a != b {
                    mismatches.push(format!("{cmd:?}: proxy {a:?} vs redis {b:?}"));
                }
            }
            sent += BATCH;
        }
        for extra in [
            &[][..],
            &["COUNT", "3"],
            &["MATCH", "s:*"],
            &["TYPE", "list", "COUNT", "1000"],
        ] {
            assert_eq!(
                scan_all(&mut via_proxy, extra),
                scan_all(&mut direct, extra),
                "SCAN {extra:?}: different keys"
            );
        }
        for c in ["PUBLISH", "SPUBLISH"] {
            let tx = |conn: &mut redis::Connection| -> Vec<Value> {
                let mut p = redis::pipe();
                p.ignore_errors();
                p.cmd("MULTI").cmd(c).arg("diff:chan").arg("m");
                p.cmd("INCR").arg("{tag1}:sn").cmd(c).arg("diff:chan").arg("n");
                p.cmd("LPUSH").arg("{tag1}:ln").arg("x").cmd("EXEC");
                p.query(conn).unwrap()
            };
            assert_eq!(tx(&mut via_proxy), tx(&mut direct), "{c} inside MULTI");
        }
        let via = keyspace(&mut via_proxy);
        let dir = keyspace(&mut direct);
        assert_eq!(via.len(), dir.len(), "keyspace sizes differ");
        for (a, b) in via.iter().zip(&dir) {
            assert_eq!(a, b, "final keyspace differs");
        }
        (mismatches, via.len())
    })
    .await
    .unwrap();
    assert!(
        mismatches.is_empty(),
        "{} of {COMMANDS} replies differ, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    assert!(keys > 30, "the stream should leave a real keyspace, got {keys} keys");
    eprintln!("differential: {COMMANDS} commands, identical replies, {keys} keys identical");
}

/// A function that runs for `args[1]` milliseconds (TIME in a loop) on its
/// key's shard: a long-running script FUNCTION STATS shows.
const SPIN_LIB: &str = "#!lua name=spinlib\n\
    redis.register_function('spin', function(keys, args) \
    local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] \
    while true do local n = redis.call('TIME') \
    if n[1] * 1000000 + n[2] - start > tonumber(args[1]) * 1000 then break end end \
    return 1 end)";

/// A plain socket speaking RESP: sends one command, reads one whole reply.
fn raw_cmd(s: &mut std::net::TcpStream, args: &[&str]) -> Vec<u8> {
    raw_send(s, args);
    raw_reply(s)
}

fn raw_send(s: &mut std::net::TcpStream, args: &[&str]) {
    use std::io::Write;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes()).expect("write");
}

fn raw_reply(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while shardis::protocol::reply::frame_len(&got).is_none() {
        let n = s.read(&mut chunk).expect("a reply within 10 s");
        assert!(n > 0, "connection closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// A connection in RESP `proto` (its HELLO reply read and dropped).
fn raw_conn(addr: &str, proto: u8) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    if proto == 3 {
        raw_cmd(&mut s, &["HELLO", "3"]);
    }
    s
}

/// `duration_ms`'s value, the one field that depends on when it is asked.
fn without_duration(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply).into_owned();
    match text.split_once("duration_ms\r\n:") {
        Some((head, tail)) => {
            let rest = tail.split_once("\r\n").map_or("", |(_, r)| r);
            format!("{head}duration_ms\r\n:N\r\n{rest}")
        }
        None => text,
    }
}

/// FUNCTION STATS through shardis (three shards) and from one Redis, in
/// RESP2 and RESP3: the same bytes when idle, and while a function runs on
/// one shard (the proxy shows it as `running_script`) the same bytes but
/// for `duration_ms`'s value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_stats_is_byte_identical_to_one_redis() {
    let nodes = three_nodes();
    let reference = RedisNode::start();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "[timeouts]\ncommand_ms = 5000\n").await;
    let via = proxy.addr.to_string();
    let direct = reference.addr().to_string();
    // Not on the first shard, whose reply alone shardis used to send.
    let key = (0..100)
        .map(|i| format!("spin:{i}"))
        .find(|k| proxy.shard_of(k) != 0)
        .expect("a key on another shard");
    tokio::task::spawn_blocking(move || {
        for addr in [&via, &direct] {
            let mut c = raw_conn(addr, 2);
            for lib in [crate::functions::LIB, SPIN_LIB] {
                let r = raw_cmd(&mut c, &["FUNCTION", "LOAD", lib]);
                assert!(r.starts_with(b"$"), "{}", String::from_utf8_lossy(&r));
            }
            // Redis answers other clients once a script has run this long.
            let r = raw_cmd(&mut c, &["CONFIG", "SET", "busy-reply-threshold", "100"]);
            assert_eq!(r, b"+OK\r\n");
        }
        for proto in [2, 3] {
            let a = raw_cmd(&mut raw_conn(&via, proto), &["FUNCTION", "STATS"]);
            let b = raw_cmd(&mut raw_conn(&direct, proto), &["FUNCTION", "STATS"]);
            assert_eq!(
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b),
                "idle FUNCTION STATS, RESP{proto}"
            );
            let libs = String::from_utf8_lossy(&a);
            assert!(
                libs.contains("libraries_count\r\n:2\r\n"),
                "both libraries counted: {libs:?}"
            );
        }
        // The asking connections first, on another lane of the busy shard's
        // pool than the FCALL's (a lane answers in order: STATS would wait
        // behind the FCALL).
        let mut runner = raw_conn(&via, 2);
        let lane = |c: &mut std::net::TcpStream| raw_cmd(c, &["CLIENT", "ID"]);
        let runner_id = String::from_utf8_lossy(&lane(&mut runner)).into_owned();
        let parity = |id: &str| id.trim().trim_start_matches(':').parse::<u64>().expect("an id") % 2;
        let mut ask2 = raw_conn(&via, 2);
        while parity(&String::from_utf8_lossy(&lane(&mut ask2))) == parity(&runner_id) {
            ask2 = raw_conn(&via, 2);
        }
        let mut ask3 = raw_conn(&via, 3);
        let mut direct_runner = raw_conn(&direct, 2);
        let (mut direct2, mut direct3) = (raw_conn(&direct, 2), raw_conn(&direct, 3));
        let call = ["FCALL", "spin", "1", key.as_str(), "900"];
        raw_send(&mut runner, &call);
        raw_send(&mut direct_runner, &call);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let asked: Vec<(u8, Vec<u8>, Vec<u8>)> = [(2, &mut ask2, &mut direct2), (3, &mut ask3, &mut direct3)]
            .into_iter()
            .map(|(proto, a, b)| {
                raw_send(a, &["FUNCTION", "STATS"]);
                raw_send(b, &["FUNCTION", "STATS"]);
                (proto, raw_reply(a), raw_reply(b))
            })
            .collect();
        assert_eq!(raw_reply(&mut runner), b":1\r\n");
        assert_eq!(raw_reply(&mut direct_runner), b":1\r\n");
        for (proto, a, b) in asked {
            let (a, b) = (without_duration(&a), without_duration(&b));
            assert!(
                b.contains("name\r\n$4\r\nspin\r\n") && b.contains("duration_ms"),
                "Redis answered after the function ended, RESP{proto}: {b:?}"
            );
            assert_eq!(a, b, "FUNCTION STATS while a function runs, RESP{proto}");
        }
    })
    .await
    .unwrap();
}

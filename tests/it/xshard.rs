//! Cross-shard multi-key commands (src/xshard): a differential test of
//! every command family with options, keys not hash-tagged (so they spread
//! over three shards), against one plain Redis: identical replies and
//! identical final keyspace, TTL presence included, and no temporary left
//! on any shard. Then the refusals (`commands = false`, `max_bytes`).
//! Concurrency and failures of the two-shard writes: tests/it/xshard_moves.rs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

const COMMANDS: usize = 3000;
const BATCH: usize = 30;

fn k(rng: &mut StdRng, kind: &str) -> String {
    format!("{kind}:{}", rng.random_range(0..5))
}

/// A key of the kind most of the time, of any kind sometimes (WRONGTYPE).
fn op(rng: &mut StdRng, kind: &str) -> String {
    if rng.random_bool(0.05) {
        let kinds = ["s", "z", "l", "t", "h"];
        let kind = kinds[rng.random_range(0..kinds.len())];
        k(rng, kind)
    } else {
        k(rng, kind)
    }
}

fn keys(rng: &mut StdRng, kind: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| op(rng, kind)).collect()
}

fn member(rng: &mut StdRng) -> String {
    format!("m{}", rng.random_range(0..12))
}

fn word(rng: &mut StdRng) -> String {
    (0..rng.random_range(0..10))
        .map(|_| rng.random_range(b'a'..=b'e') as char)
        .collect()
}

/// One random command and whether its reply is an unordered collection.
fn random_command(rng: &mut StdRng) -> (Vec<String>, bool) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let n = rng.random_range(1..4);
    let pick = |rng: &mut StdRng, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_string();
    let mut unordered = false;
    let cmd: Vec<String> = match rng.random_range(0..34) {
        // Writers that build the operands.
        0 | 1 => {
            let mut v = s(&["SADD", &k(rng, "s")]);
            v.extend((0..n + 1).map(|_| member(rng)));
            v
        }
        2 | 3 => s(&[
            "ZADD",
            &k(rng, "z"),
            &rng.random_range(-5..5).to_string(),
            &member(rng),
            &rng.random_range(-5..5).to_string(),
            &member(rng),
        ]),
        4 => {
            let mut v = s(&["RPUSH", &k(rng, "l")]);
            v.extend((0..n + 1).map(|_| rng.random_range(0..20).to_string()));
            v
        }
        5 => {
            let mut v = s(&["PFADD", &k(rng, "h")]);
            v.extend((0..n + 2).map(|_| member(rng)));
            v
        }
        6 => s(&["SET", &k(rng, "t"), &word(rng)]),
        7 => s(&[
            "GEOADD",
            &k(rng, "g"),
            &format!("{:.4}", rng.random_range(13.0..14.0)),
            &format!("{:.4}", rng.random_range(37.0..38.0)),
            &member(rng),
        ]),
        8 => {
            let kinds = ["s", "z", "l", "t", "h", "g"];
            let kind = pick(rng, &kinds);
            s(&["PEXPIRE", &k(rng, &kind), "100000"])
        }
        // Set algebra.
        9 | 10 => {
            unordered = true;
            let mut v = vec![pick(rng, &["SINTER", "SUNION", "SDIFF"])];
            v.extend(keys(rng, "s", n + 1));
            v
        }
        11 => {
            let mut v = vec![pick(rng, &["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"]), k(rng, "s")];
            v.extend(keys(rng, "s", n + 1));
            v
        }
        12 => {
            let mut v = s(&["SINTERCARD", &(n + 1).to_string()]);
            v.extend(keys(rng, "s", n + 1));
            if rng.random_bool(0.5) {
                v.extend(s(&["LIMIT", &rng.random_range(0..4).to_string()]));
            }
            v
        }
        // Sorted sets (sets are accepted as operands).
        13..=15 => {
            let name = pick(rng, &["ZUNION", "ZINTER", "ZDIFF"]);
            let mut v = vec![name.clone(), (n + 1).to_string()];
            v.extend((0..n + 1).map(|_| {
                if rng.random_bool(0.2) {
                    op(rng, "s")
                } else {
                    op(rng, "z")
                }
            }));
            if name != "ZDIFF" && rng.random_bool(0.5) {
                v.push("WEIGHTS".into());
                v.extend((0..n + 1).map(|_| rng.random_range(-2..4).to_string()));
            }
            if name != "ZDIFF" && rng.random_bool(0.5) {
                v.extend(s(&["AGGREGATE", &pick(rng, &["SUM", "MIN", "MAX"])]));
            }
            if rng.random_bool(0.5) {
                v.push("WITHSCORES".into());
            }
            v
        }
        16 | 17 => {
            let name = pick(rng, &["ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"]);
            let mut v = vec![name.clone(), k(rng, "z"), (n + 1).to_string()];
            v.extend(keys(rng, "z", n + 1));
            if name != "ZDIFFSTORE" && rng.random_bool(0.5) {
                v.extend(s(&["AGGREGATE", &pick(rng, &["SUM", "MIN", "MAX"])]));
            }
            v
        }
        18 => {
            let mut v = s(&["ZINTERCARD", &(n + 1).to_string()]);
            v.extend(keys(rng, "z", n + 1));
            if rng.random_bool(0.5) {
                v.extend(s(&["LIMIT", &rng.random_range(0..3).to_string()]));
            }
            v
        }
        19 => {
            let mut v = s(&["ZRANGESTORE", &k(rng, "z"), &op(rng, "z")]);
            match rng.random_range(0..3) {
                0 => v.extend(s(&["0", "-1"])),
                1 => v.extend(s(&["(0", "5", "BYSCORE", "LIMIT", "0", "2"])),
                _ => v.extend(s(&["1", "-1", "REV"])),
            }
            v
        }
        // HyperLogLog.
        20 => {
            let mut v = s(&["PFCOUNT"]);
            v.extend(keys(rng, "h", n + 1));
            v
        }
        21 => {
            let mut v = s(&["PFMERGE", &k(rng, "h")]);
            v.extend(keys(rng, "h", n));
            v
        }
        // Strings.
        22 => {
            let mut v = s(&["LCS", &op(rng, "t"), &op(rng, "t")]);
            match rng.random_range(0..4) {
                0 => v.push("LEN".into()),
                1 => v.extend(s(&["IDX", "MINMATCHLEN", "1", "WITHMATCHLEN"])),
                2 => v.push("IDX".into()),
                _ => {}
            }
            v
        }
        23 => {
            let bop = pick(rng, &["AND", "OR", "XOR", "NOT"]);
            let mut v = s(&["BITOP", &bop, &k(rng, "t")]);
            v.extend(keys(rng, "t", if bop == "NOT" { 1 } else { n + 1 }));
            v
        }
        24 => {
            let kinds = ["s", "z", "l", "t"];
            let kind = pick(rng, &kinds);
            let mut v = s(&["COPY", &k(rng, &kind), &k(rng, &kind)]);
            if rng.random_bool(0.5) {
                v.push("REPLACE".into());
            }
            v
        }
        // Geo and SORT, STORE forms.
        25 => {
            let mut v = s(&[
                "GEOSEARCHSTORE",
                &k(rng, "g"),
                &op(rng, "g"),
                "FROMLONLAT",
                "13.5",
                "37.5",
                "BYRADIUS",
                "80",
                "km",
                "ASC",
            ]);
            if rng.random_bool(0.5) {
                v.push("STOREDIST".into());
            }
            v
        }
        26 => s(&[
            "GEORADIUS",
            &op(rng, "g"),
            "13.5",
            "37.5",
            "60",
            "km",
            &pick(rng, &["STORE", "STOREDIST"]),
            &k(rng, "g"),
        ]),
        27 => {
            let mut v = s(&["SORT", &op(rng, "l")]);
            if rng.random_bool(0.5) {
                v.push("DESC".into());
            }
            if rng.random_bool(0.3) {
                v.extend(s(&["LIMIT", "1", "3"]));
            }
            v.extend(s(&["STORE", &k(rng, "l")]));
            v
        }
        // Two-shard writes.
        28 => {
            let kinds = ["s", "z", "l", "t"];
            let kind = pick(rng, &kinds);
            s(&[&pick(rng, &["RENAME", "RENAMENX"]), &k(rng, &kind), &k(rng, &kind)])
        }
        29 => s(&["SMOVE", &op(rng, "s"), &op(rng, "s"), &member(rng)]),
        30 => s(&[
            "LMOVE",
            &op(rng, "l"),
            &op(rng, "l"),
            &pick(rng, &["LEFT", "RIGHT"]),
            &pick(rng, &["LEFT", "RIGHT"]),
        ]),
        31 => s(&["RPOPLPUSH", &op(rng, "l"), &op(rng, "l")]),
        32 => {
            let mut v = s(&["MSETNX"]);
            for _ in 0..n + 1 {
                v.push(format!("n:{}", rng.random_range(0..8)));
                v.push(word(rng));
            }
            v
        }
        _ => {
            let mut v = vec![pick(rng, &["BLMOVE", "BRPOPLPUSH"]), op(rng, "l"), op(rng, "l")];
            if v[0] == "BLMOVE" {
                v.extend(s(&[&pick(rng, &["LEFT", "RIGHT"]), &pick(rng, &["LEFT", "RIGHT"])]));
            }
            v.push("0.01".into());
            v
        }
    };
    (cmd, unordered)
}

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

/// Every key with its type, value and whether it has a TTL.
fn keyspace(c: &mut redis::Connection) -> Vec<(String, String, Value, bool)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let t: String = redis::cmd("TYPE").arg(&key).query(c).unwrap();
            let (cmd, args, unordered): (&str, Vec<&str>, bool) = match t.as_str() {
                // HLLs: their bytes hold a cache PFCOUNT may refresh.
                "string" if key.starts_with("h:") => ("PFCOUNT", vec![], false),
                "string" => ("GET", vec![], false),
                "list" => ("LRANGE", vec!["0", "-1"], false),
                "set" => ("SMEMBERS", vec![], true),
                "zset" => ("ZRANGE", vec!["0", "-1", "WITHSCORES"], false),
                other => panic!("unexpected type {other}"),
            };
            let v: Value = redis::cmd(cmd).arg(&key).arg(args).query(c).unwrap();
            let pttl: i64 = redis::cmd("PTTL").arg(&key).query(c).unwrap();
            (key, t, normalize(v, unordered), pttl > 0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_commands_answer_as_one_redis() {
    differential("", COMMANDS).await;
}

/// The same in RESP3 (maps, doubles, nulls of RESP3 through the temporaries'
/// EXEC and the moves' own replies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_commands_answer_as_one_redis_in_resp3() {
    differential("?protocol=resp3", COMMANDS / 2).await;
}

async fn differential(params: &str, commands: usize) {
    let nodes = three_nodes();
    let reference = RedisNode::start();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "").await;
    // The keys really spread: every kind has keys on at least two shards.
    for kind in ["s", "z", "l", "t", "h", "g"] {
        let mut shards: Vec<usize> = (0..5).map(|i| proxy.shard_of(&format!("{kind}:{i}"))).collect();
        shards.sort();
        shards.dedup();
        assert!(shards.len() >= 2, "{kind}: all keys on one shard");
    }
    let url = format!("{}{params}", proxy.url());
    let direct_url = format!("redis://{}/{params}", reference.addr());
    let (mismatches, n_keys, cross) = tokio::task::spawn_blocking(move || {
        let mut rng = StdRng::seed_from_u64(0x5eed12);
        let mut via_proxy = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let mut direct = redis::Client::open(direct_url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut mismatches = Vec::new();
        let mut sent = 0;
        while sent < commands {
            let batch: Vec<(Vec<String>, bool)> = (0..BATCH).map(|_| random_command(&mut rng)).collect();
            let (mut p1, mut p2) = (redis::pipe(), redis::pipe());
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
            if std::env::var("XSHARD_DEBUG").is_ok() && keyspace(&mut via_proxy) != keyspace(&mut direct) {
                panic!(
                    "keyspace differs after batch ending at {sent}: {batch:?}\n{:?}\n{:?}\nmismatches {mismatches:?}",
                    keyspace(&mut via_proxy),
                    keyspace(&mut direct)
                );
            }
        }
        let via = keyspace(&mut via_proxy);
        let dir = keyspace(&mut direct);
        assert!(
            mismatches.is_empty(),
            "{} of {commands} replies differ, first: {:#?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(8)]
        );
        assert_eq!(
            via.iter().map(|k| &k.0).collect::<Vec<_>>(),
            dir.iter().map(|k| &k.0).collect::<Vec<_>>(),
            "different keys"
        );
        for (a, b) in via.iter().zip(&dir) {
            assert_eq!(a, b, "final keyspace differs");
        }
        // The commands did run across shards (INFO commandstats of the
        // shards show the RESTOREs of the temporaries).
        let restores: u64 = nodes
            .iter()
            .map(|n| {
                let info: String = redis::cmd("INFO").arg("commandstats").query(&mut n.client()).unwrap();
                info.lines()
                    .find(|l| l.starts_with("cmdstat_restore:"))
                    .and_then(|l| l.split("calls=").nth(1))
                    .and_then(|x| x.split(',').next())
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        // No temporary left on any shard.
        for n in &nodes {
            let left: Vec<String> = redis::cmd("KEYS").arg("*shardis:xs*").query(&mut n.client()).unwrap();
            assert!(left.is_empty(), "temporaries left: {left:?}");
        }
        (mismatches, via.len(), restores)
    })
    .await
    .unwrap();
    assert!(
        mismatches.is_empty(),
        "{} of {commands} replies differ, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(8)]
    );
    assert!(
        n_keys > 20,
        "the stream should leave a real keyspace, got {n_keys} keys"
    );
    assert!(
        cross as usize > commands / 10,
        "only {cross} operands were copied between shards"
    );
    eprintln!(
        "xshard differential{params}: {commands} commands, identical replies, {n_keys} keys identical, {cross} operands copied"
    );
}

/// Two keys on different shards, named `prefix...`.
pub fn apart(proxy: &Proxy, prefix: &str) -> (String, String) {
    let a = format!("{prefix}0");
    let b = (1..100)
        .map(|i| format!("{prefix}{i}"))
        .find(|b| proxy.shard_of(b) != proxy.shard_of(&a))
        .expect("a key on another shard");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_when_off_and_over_max_bytes() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let off = Proxy::start_with(&refs, "[crossshard]\ncommands = false\n").await;
    let (a, b) = apart(&off, "off:");
    let mut c = off.conn().await;
    let e = redis::cmd("SUNION")
        .arg(&a)
        .arg(&b)
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CROSSSHARD"), "{e}");
    drop(c);
    drop(off);

    let small = Proxy::start_with(&refs, "[crossshard]\nmax_bytes = 200\n").await;
    let (a, b) = apart(&small, "big:");
    let mut c = small.conn().await;
    let members: Vec<String> = (0..100).map(|i| format!("member-{i}")).collect();
    let _: i64 = redis::cmd("SADD")
        .arg(&a)
        .arg(&members)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("SADD").arg(&b).arg("x").query_async(&mut c).await.unwrap();
    for cmd in [
        vec!["SUNION", &b, &a],
        vec!["SUNIONSTORE", &b, &a],
        vec!["RENAME", &a, &b],
    ] {
        let e = redis::cmd(cmd[0])
            .arg(&cmd[1..])
            .query_async::<Value>(&mut c)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("crossshard.max_bytes"), "{cmd:?}: {e}");
    }
    // Nothing moved: the source is whole, the destination untouched.
    let n: i64 = redis::cmd("SCARD").arg(&a).query_async(&mut c).await.unwrap();
    assert_eq!(n, 100);
    let m: Vec<String> = redis::cmd("SMEMBERS").arg(&b).query_async(&mut c).await.unwrap();
    assert_eq!(m, ["x"]);
    // Under the limit it runs.
    let n: i64 = redis::cmd("SINTERCARD")
        .arg(2)
        .arg(&a)
        .arg(&b)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// Latency of a cross-shard SUNIONSTORE and RENAME against the same-shard
/// (hash-tagged) form: `cargo test --test it -- --ignored xshard::latency
/// --nocapture` (figures in README.md, "Cross-shard commands").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "").await;
    let mut c = proxy.conn().await;
    let (a, b) = apart(&proxy, "lat:");
    let (ta, tb) = ("{lat}a".to_string(), "{lat}b".to_string());
    let members: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for k in [&a, &b, &ta, &tb] {
        let _: i64 = redis::cmd("SADD")
            .arg(k)
            .arg(&members)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    const N: usize = 1000;
    let mut report = Vec::new();
    for (what, x, y) in [("same shard", &ta, &tb), ("cross shard", &a, &b)] {
        for cmd in ["SUNIONSTORE", "RENAME"] {
            let mut t = Vec::with_capacity(N);
            for i in 0..N {
                let (from, to) = if i % 2 == 0 { (x, y) } else { (y, x) };
                let start = std::time::Instant::now();
                let r = if cmd == "RENAME" {
                    redis::cmd("RENAME")
                        .arg(from)
                        .arg(to)
                        .query_async::<Value>(&mut c)
                        .await
                } else {
                    redis::cmd("SUNIONSTORE")
                        .arg(to)
                        .arg(from)
                        .arg(to)
                        .query_async::<Value>(&mut c)
                        .await
                };
                t.push(start.elapsed());
                r.unwrap();
            }
            t.sort();
            report.push(format!("{cmd} {what}: median {:?} p99 {:?}", t[N / 2], t[N * 99 / 100]));
        }
    }
    eprintln!("{}", report.join("\n"));
}

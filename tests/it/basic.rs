//! Routing, fan-out, broadcast and locally answered commands.

use std::collections::HashSet;

use redis::{AsyncCommands, Value};

use crate::support::{NodeClient, Proxy, three_nodes};

async fn q<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_on_the_shard_the_ring_names_and_nowhere_else() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let mut used = HashSet::new();
    for i in 0..300 {
        let k = format!("user:{i}");
        let _: () = c.set(&k, i).await.unwrap();
        used.insert(proxy.shard_of(&k));
    }
    assert_eq!(used.len(), 3, "300 keys should touch all three shards");
    let mut direct: Vec<_> = nodes.iter().map(|n| n.client()).collect();
    for i in 0..300 {
        let k = format!("user:{i}");
        let owner = proxy.shard_of(&k);
        for (s, d) in direct.iter_mut().enumerate() {
            let v: Option<i64> = redis::cmd("GET").arg(&k).query(d).unwrap();
            assert_eq!(v, if s == owner { Some(i) } else { None }, "key {k} on shard {s}");
        }
        let v: i64 = c.get(&k).await.unwrap();
        assert_eq!(v, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_fan_out_and_merge() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let mut mset = vec!["MSET"];
    let vals: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
    for (k, v) in keys.iter().zip(&vals) {
        mset.push(k);
        mset.push(v);
    }
    let ok: String = q(&mut c, &mset).await.unwrap();
    assert_eq!(ok, "OK");
    // MGET in request order, with missing keys as nil, and duplicates.
    let mut mget = vec!["MGET", "missing"];
    mget.extend(keys.iter().map(String::as_str));
    mget.push("k3");
    let got: Vec<Option<String>> = q(&mut c, &mget).await.unwrap();
    let mut want: Vec<Option<String>> = vec![None];
    want.extend(vals.iter().cloned().map(Some));
    want.push(Some("v3".into()));
    assert_eq!(got, want);
    // Counts are summed; EXISTS counts repeats like Redis.
    let n: i64 = q(&mut c, &["EXISTS", "k1", "k2", "k1", "nope", "k30"]).await.unwrap();
    assert_eq!(n, 4);
    let n: i64 = q(&mut c, &["TOUCH", "k1", "k2", "nope"]).await.unwrap();
    assert_eq!(n, 2);
    let n: i64 = q(&mut c, &["DEL", "k1", "k2", "k3", "nope"]).await.unwrap();
    assert_eq!(n, 3);
    let n: i64 = q(&mut c, &["UNLINK", "k4", "k5", "k4"]).await.unwrap();
    assert_eq!(n, 2);
    let n: i64 = q(&mut c, &["DBSIZE"]).await.unwrap();
    assert_eq!(n, 35);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_commands_are_refused_and_hash_tags_colocate() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    // With `[crossshard] commands = false` (tests/it/xshard.rs: on, the default).
    let proxy = Proxy::start_with(&refs, "[crossshard]\ncommands = false\n").await;
    let mut c = proxy.conn().await;
    // Two keys on different shards.
    let a = "a0".to_string();
    let b = (0..)
        .map(|i| format!("b{i}"))
        .find(|k| proxy.shard_of(k) != proxy.shard_of(&a))
        .unwrap();
    let _: () = c.set(&a, 1).await.unwrap();
    for cmd in [
        vec!["RENAME", a.as_str(), b.as_str()],
        vec!["SINTER", a.as_str(), b.as_str()],
        vec!["LMOVE", a.as_str(), b.as_str(), "LEFT", "RIGHT"],
        vec!["MSETNX", a.as_str(), "1", b.as_str(), "2"],
        vec!["EVAL", "return 1", "2", a.as_str(), b.as_str()],
    ] {
        let e = q::<Value>(&mut c, &cmd).await.unwrap_err();
        assert_eq!(e.code(), Some("CROSSSHARD"), "{cmd:?}: {e}");
    }
    // The connection is still fine.
    let v: i64 = c.get(&a).await.unwrap();
    assert_eq!(v, 1);
    // Hash tags put keys together: multi-key commands then work.
    let _: () = c.set("{user7}.name", "x").await.unwrap();
    let _: () = q(&mut c, &["RENAME", "{user7}.name", "{user7}.alias"]).await.unwrap();
    let _: () = q(&mut c, &["SADD", "{t}a", "1", "2"]).await.unwrap();
    let _: () = q(&mut c, &["SADD", "{t}b", "2", "3"]).await.unwrap();
    let inter: Vec<String> = q(&mut c, &["SINTER", "{t}a", "{t}b"]).await.unwrap();
    assert_eq!(inter, vec!["2"]);
    let r: i64 = q(
        &mut c,
        &[
            "EVAL",
            "return redis.call('EXISTS', KEYS[1], KEYS[2])",
            "2",
            "{user7}.alias",
            "{user7}.none",
        ],
    )
    .await
    .unwrap();
    assert_eq!(r, 1);
    let keyless: i64 = q(&mut c, &["EVAL", "return 7", "0"]).await.unwrap();
    assert_eq!(keyless, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_commands() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    for i in 0..500 {
        let _: () = c.set(format!("s{i}"), i).await.unwrap();
    }
    let mut keys: Vec<String> = q(&mut c, &["KEYS", "s*"]).await.unwrap();
    keys.sort();
    let mut want: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
    // SCAN walks every shard; every key exactly once.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, page): (String, Vec<String>) = q(&mut c, &["SCAN", &cursor, "COUNT", "50"]).await.unwrap();
        seen.extend(page);
        rounds += 1;
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(rounds < 1000);
    }
    seen.sort();
    assert_eq!(seen, want);
    let typed: (String, Vec<String>) = q(&mut c, &["SCAN", "0", "MATCH", "nomatch*", "TYPE", "string"])
        .await
        .unwrap();
    assert!(typed.1.is_empty());
    assert!(q::<Value>(&mut c, &["SCAN", "notanumber"]).await.is_err());
    let rk: Option<String> = q(&mut c, &["RANDOMKEY"]).await.unwrap();
    assert!(rk.is_some_and(|k| k.starts_with('s')));
    // Scripts are loaded everywhere, so EVALSHA works whatever the key.
    let sha: String = q(&mut c, &["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"])
        .await
        .unwrap();
    for i in [1, 2, 3, 250, 499] {
        let v: String = q(&mut c, &["EVALSHA", &sha, "1", &format!("s{i}")]).await.unwrap();
        assert_eq!(v, i.to_string());
    }
    let ex: Vec<i64> = q(
        &mut c,
        &["SCRIPT", "EXISTS", &sha, "0000000000000000000000000000000000000000"],
    )
    .await
    .unwrap();
    assert_eq!(ex, vec![1, 0]);
    let _: () = q(&mut c, &["SCRIPT", "FLUSH"]).await.unwrap();
    let ex: Vec<i64> = q(&mut c, &["SCRIPT", "EXISTS", &sha]).await.unwrap();
    assert_eq!(ex, vec![0]);
    let _: () = q(&mut c, &["FLUSHDB"]).await.unwrap();
    let n: i64 = q(&mut c, &["DBSIZE"]).await.unwrap();
    assert_eq!(n, 0);
    let none: Option<String> = q(&mut c, &["RANDOMKEY"]).await.unwrap();
    assert_eq!(none, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_commands() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let pong: String = q(&mut c, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = q(&mut c, &["ECHO", "hi there"]).await.unwrap();
    assert_eq!(echo, "hi there");
    let _: () = q(&mut c, &["SELECT", "0"]).await.unwrap();
    let e = q::<Value>(&mut c, &["SELECT", "1"]).await.unwrap_err();
    assert!(e.to_string().contains("DB index is out of range"), "{e}");
    let _: () = q(&mut c, &["CLIENT", "SETNAME", "tester"]).await.unwrap();
    let name: String = q(&mut c, &["CLIENT", "GETNAME"]).await.unwrap();
    assert_eq!(name, "tester");
    let _: () = q(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "mylib"]).await.unwrap();
    let _: () = q(&mut c, &["CLIENT", "SETINFO", "LIB-VER", "1.2"]).await.unwrap();
    let info: String = q(&mut c, &["CLIENT", "INFO"]).await.unwrap();
    assert!(
        info.contains("name=tester") && info.contains("lib-name=mylib") && info.contains("lib-ver=1.2"),
        "{info}"
    );
    let id: i64 = q(&mut c, &["CLIENT", "ID"]).await.unwrap();
    assert!(info.contains(&format!("id={id} ")));
    let count: i64 = q(&mut c, &["COMMAND", "COUNT"]).await.unwrap();
    assert!(count > 150, "{count}");
    // Bare COMMAND (some clients read it on connect): one entry per served command.
    let all: Vec<Value> = q(&mut c, &["COMMAND"]).await.unwrap();
    assert_eq!(all.len() as i64, count);
    let list: Vec<String> = q(&mut c, &["COMMAND", "LIST"]).await.unwrap();
    assert!(list.contains(&"get".to_string()) && !list.contains(&"bgsave".to_string()));
    let info: Vec<Value> = q(&mut c, &["COMMAND", "INFO", "get", "nosuch"]).await.unwrap();
    assert_eq!(info.len(), 2);
    assert_eq!(info[1], Value::Nil);
    let keys: Vec<String> = q(&mut c, &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"])
        .await
        .unwrap();
    assert_eq!(keys, vec!["a", "b"]);
    let cfg: Vec<String> = q(&mut c, &["CONFIG", "GET", "appendonly"]).await.unwrap();
    assert_eq!(cfg, vec!["appendonly", "no"]);
    let t: Vec<String> = q(&mut c, &["TIME"]).await.unwrap();
    let secs: u64 = t[0].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) < 5);
    for i in 0..30 {
        let _: () = c.set(format!("i{i}"), i).await.unwrap();
    }
    let _: () = q(&mut c, &["PEXPIRE", "i1", "100000"]).await.unwrap();
    let text: String = q(&mut c, &["INFO"]).await.unwrap();
    assert!(text.contains("# Proxy") && text.contains("shards:3"), "{text}");
    assert!(text.contains("db0:keys=30,expires=1,"), "{text}");
    let text: String = q(&mut c, &["INFO", "keyspace"]).await.unwrap();
    assert!(!text.contains("# Server") && text.contains("db0:keys=30"), "{text}");
    // One section is that section only, as on Redis.
    let text: String = q(&mut c, &["INFO", "proxy"]).await.unwrap();
    assert!(text.starts_with("# Proxy\r\n") && text.contains("shards:3"), "{text}");
    assert!(!text.contains("# Keyspace") && !text.contains("# Server"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_unknown_commands_keep_the_connection() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let e = q::<Value>(&mut c, &["BGSAVE"]).await.unwrap_err();
    assert!(e.to_string().contains("unsupported command 'bgsave' in shardis"), "{e}");
    let e = q::<Value>(&mut c, &["WAIT", "0", "0"]).await.unwrap_err();
    assert!(e.to_string().contains("unsupported command 'wait'"), "{e}");
    let e = q::<Value>(&mut c, &["CLIENT", "TRACKING", "on"]).await.unwrap_err();
    assert!(
        e.to_string().contains("CLIENT TRACKING is not supported by shardis"),
        "{e}"
    );
    let e = q::<Value>(&mut c, &["NOSUCHCMD", "a"]).await.unwrap_err();
    assert!(e.to_string().contains("unknown command 'NOSUCHCMD'"), "{e}");
    let e = q::<Value>(&mut c, &["GET"]).await.unwrap_err();
    assert!(
        e.to_string().contains("wrong number of arguments for 'get' command"),
        "{e}"
    );
    let e = q::<Value>(&mut c, &["BGSAVE"]).await.unwrap_err();
    assert!(e.to_string().contains("unsupported command 'bgsave'"), "{e}");
    let pong: String = q(&mut c, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// The binary's default (`threads` > 1): sessions and backend connections on
/// thread-per-core worker runtimes. Clients land on different workers, each
/// with its own connections to every shard; every write must reach the shard
/// the ring names, fan-out must merge across them, a RESP3 client's lazily
/// started pools must start on the workers, and a reload must start the new
/// shard's connections there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_backend_connections_on_worker_threads() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_on(&refs, "[timeouts]\ncommand_ms = 2000\n", 3).await;
    let mut tasks = Vec::new();
    for c in 0..6 {
        let mut conn = proxy.conn().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let k = format!("w{c}:{i}");
                let _: () = conn.set(&k, i).await.unwrap();
            }
            let keys: Vec<String> = (0..100).map(|i| format!("w{c}:{i}")).collect();
            let got: Vec<i64> = conn.mget(&keys).await.unwrap();
            assert_eq!(got, (0..100).collect::<Vec<i64>>());
            let n: i64 = conn.del(&keys[..50]).await.unwrap();
            assert_eq!(n, 50);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut direct: Vec<_> = nodes.iter().map(|n| n.client()).collect();
    let mut per_shard = [0usize; 3];
    for c in 0..6 {
        for i in 50..100 {
            let k = format!("w{c}:{i}");
            let owner = proxy.shard_of(&k);
            per_shard[owner] += 1;
            let v: Option<i64> = redis::cmd("GET").arg(&k).query(&mut direct[owner]).unwrap();
            assert_eq!(v, Some(i), "{k} on its shard {owner}");
        }
    }
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    // RESP3 pools start on first use, from a session on a worker.
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        s.write_all(b"HELLO 3\r\nMGET w0:60 w1:70 w2:80 nope\r\n").unwrap();
        let want = b"*4\r\n$2\r\n60\r\n$2\r\n70\r\n$2\r\n80\r\n_\r\n";
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(want) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    // A fourth shard joins: its connections start on the workers.
    let fourth = crate::support::RedisNode::start();
    let all: Vec<_> = nodes.iter().chain(std::iter::once(&fourth)).collect();
    let path = std::env::temp_dir().join(format!("shardis-workers-{}.toml", std::process::id()));
    std::fs::write(&path, crate::support::config_text(&all, "")).unwrap();
    assert_eq!(shardis::control::reload(&proxy.shared, &path).await, Ok(2));
    let _ = std::fs::remove_file(&path);
    let k = (0..1000)
        .map(|i| format!("new:{i}"))
        .find(|k| proxy.shard_of(k) == 3)
        .expect("some key on the new shard");
    let mut c = proxy.conn().await;
    let _: () = c.set(&k, "on-four").await.unwrap();
    let v: String = redis::cmd("GET").arg(&k).query(&mut fourth.client()).unwrap();
    assert_eq!(v, "on-four");
}

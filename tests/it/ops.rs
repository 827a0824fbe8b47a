//! Operator commands on the proxy's own clients, against real shards: CLIENT
//! LIST / INFO (a subscriber's counts too) / KILL / PAUSE / REPLY, MONITOR,
//! SLOWLOG, MEMORY / OBJECT
//! routed to the key's shard, and the commands refused with a reason.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{NodeClient, Proxy, RedisNode};

/// A plain socket speaking RESP, to see exactly what the proxy sends and
/// when the connection ends.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.s.write_all(out.as_bytes()).expect("write");
    }

    /// Reads until `pred` holds for what arrived or `timeout` passes; what
    /// arrived. `None` if the connection ended first.
    fn read_until(&mut self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        while !pred(&self.buf) && Instant::now() < deadline {
            self.s.set_read_timeout(Some(Duration::from_millis(50))).ok();
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        Some(std::mem::take(&mut self.buf))
    }

    /// One whole reply.
    fn reply(&mut self) -> String {
        let got = self
            .read_until(Duration::from_secs(5), |b| {
                shardis::protocol::reply::frame_len(b).is_some()
            })
            .expect("connection open");
        let n = shardis::protocol::reply::frame_len(&got).expect("a whole reply");
        self.buf = got[n..].to_vec();
        String::from_utf8_lossy(&got[..n]).into_owned()
    }

    fn cmd(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }

    /// The proxy closed the connection (within a second).
    fn closed(&mut self) -> bool {
        self.read_until(Duration::from_secs(1), |_| false).is_none()
    }

    /// This connection's `field=` in CLIENT INFO.
    fn info(&mut self, field: &str) -> String {
        let info = self.cmd(&["CLIENT", "INFO"]);
        value(&info, field)
    }
}

fn value(line: &str, field: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field}= in {line}"))
        .to_string()
}

async fn proxy_on_two() -> (Vec<RedisNode>, Proxy) {
    let nodes: Vec<RedisNode> = (0..2).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    (nodes, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_shows_every_client_in_redis_format() {
    let (nodes, proxy) = proxy_on_two().await;
    let mut a = Raw::connect(proxy.addr);
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alpha"]), "+OK\r\n");
    a.cmd(&["GET", "k"]);
    let a_id = a.cmd(&["CLIENT", "ID"]).trim_start_matches(':').trim().to_string();
    a.cmd(&["GET", "k"]);
    let mut b = Raw::connect(proxy.addr);
    let list = b.cmd(&["CLIENT", "LIST"]);
    let lines: Vec<&str> = list.lines().filter(|l| l.contains("id=")).collect();
    assert_eq!(lines.len(), 2, "{list}");
    let line_a = lines.iter().find(|l| l.contains("name=alpha")).expect("alpha listed");
    assert_eq!(value(line_a, "cmd"), "get");
    assert_eq!(value(line_a, "id"), a_id);
    assert_eq!(value(line_a, "flags"), "N");
    assert!(value(line_a, "fd").parse::<i32>().unwrap() > 0);
    // Redis's own fields, in Redis's order, then 7.2's lib-name / lib-ver.
    let mut direct = nodes[0].client();
    let plain: String = redis::cmd("CLIENT").arg("INFO").query(&mut direct).unwrap();
    let names = |l: &str| -> Vec<String> {
        l.split_whitespace()
            .map(|f| f.split('=').next().unwrap().to_string())
            .collect()
    };
    let ours = b.cmd(&["CLIENT", "INFO"]);
    let ours = ours.lines().find(|l| l.contains("id=")).unwrap();
    let mut want = names(&plain);
    want.extend(["lib-name".to_string(), "lib-ver".to_string()]);
    assert_eq!(names(ours), want);
    assert_eq!(value(ours, "cmd"), "client|info");
    // Filters.
    let only_a = b.cmd(&["CLIENT", "LIST", "ID", &a_id]);
    assert_eq!(only_a.matches("id=").count(), 1, "{only_a}");
    assert!(only_a.contains("name=alpha"));
    assert!(!b.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]).contains("id="));
    assert_eq!(
        b.cmd(&["CLIENT", "LIST", "TYPE", "x"]),
        "-ERR Unknown client type 'x'\r\n"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.cmd(&["CLIENT", "LIST"]).matches("id=").count(), 1, "a left the list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_counts_a_subscribers_channels_patterns_and_shard_channels() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut s = Raw::connect(proxy.addr);
    s.cmd(&["HELLO", "3"]);
    let id = s.cmd(&["CLIENT", "ID"]).trim().trim_start_matches(':').to_string();
    let mut other = Raw::connect(proxy.addr);
    let line = |other: &mut Raw| other.cmd(&["CLIENT", "LIST", "ID", &id]);
    let counts = |l: &str| ["sub", "psub", "ssub", "flags"].map(|f| value(l, f)).join(" ");
    assert_eq!(counts(&line(&mut other)), "0 0 0 N");
    s.send(&["SUBSCRIBE", "c1", "c2"]);
    s.send(&["PSUBSCRIBE", "p*"]);
    s.send(&["SSUBSCRIBE", "sc"]);
    let confirmations: Vec<String> = (0..4).map(|_| s.reply()).collect();
    assert!(confirmations[3].contains("ssubscribe"), "{confirmations:?}");
    assert_eq!(counts(&line(&mut other)), "2 1 1 P");
    assert_eq!(counts(&s.cmd(&["CLIENT", "INFO"])), "2 1 1 P", "its own CLIENT INFO");
    assert!(
        other
            .cmd(&["CLIENT", "LIST", "TYPE", "pubsub"])
            .contains(&format!("id={id} "))
    );
    s.send(&["UNSUBSCRIBE", "c1"]);
    s.reply();
    assert_eq!(counts(&line(&mut other)), "1 1 1 P");
    s.send(&["SUNSUBSCRIBE"]);
    s.reply();
    s.send(&["PUNSUBSCRIBE"]);
    s.reply();
    assert_eq!(counts(&line(&mut other)), "1 0 0 P");
    s.send(&["UNSUBSCRIBE"]);
    s.reply();
    assert_eq!(counts(&line(&mut other)), "0 0 0 N");
    // Shard channels alone make a subscriber too (`P`), as on Redis.
    s.send(&["SSUBSCRIBE", "a", "b"]);
    s.reply();
    s.reply();
    assert_eq!(counts(&line(&mut other)), "0 0 2 P");
    assert_eq!(s.cmd(&["RESET"]), "+RESET\r\n");
    assert_eq!(counts(&line(&mut other)), "0 0 0 N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_closes_the_target_and_no_other() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut killer = Raw::connect(proxy.addr);
    let mut a = Raw::connect(proxy.addr);
    let mut b = Raw::connect(proxy.addr);
    let mut c = Raw::connect(proxy.addr);
    let a_id = a.info("id");
    let b_addr = b.info("addr");
    let c_addr = c.info("addr");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "ID", &a_id]), ":1\r\n");
    assert!(a.closed(), "a killed by ID reads EOF");
    assert_eq!(b.cmd(&["PING"]), "+PONG\r\n");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "ADDR", &b_addr]), ":1\r\n");
    assert!(b.closed(), "b killed by ADDR reads EOF");
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", &c_addr]), "+OK\r\n");
    assert!(c.closed(), "c killed by the old form reads EOF");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", &c_addr]), "-ERR No such client\r\n");
    // TYPE: a subscriber goes, a normal client stays.
    let mut sub = Raw::connect(proxy.addr);
    sub.cmd(&["SUBSCRIBE", "ch"]);
    let mut normal = Raw::connect(proxy.addr);
    assert_eq!(normal.cmd(&["PING"]), "+PONG\r\n");
    let listed = killer.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    assert!(value(&listed, "flags").contains('P'), "{listed}");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1\r\n");
    assert!(sub.closed(), "the subscriber reads EOF");
    assert_eq!(normal.cmd(&["PING"]), "+PONG\r\n");
    // SKIPME yes (the default): the caller stays. (The killed have left.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Filters that pick nobody: none older than 1000 s, no replica, no other user.
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "MAXAGE", "1000"]), ":0\r\n");
    assert_eq!(
        killer.cmd(&["CLIENT", "KILL", "USER", "default", "TYPE", "replica"]),
        ":0\r\n"
    );
    assert_eq!(
        killer.cmd(&["CLIENT", "KILL", "USER", "bob"]),
        "-ERR No such user 'bob'\r\n"
    );
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "LADDR", "127.0.0.1:1"]), ":0\r\n");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "TYPE", "normal"]), ":1\r\n");
    assert!(normal.closed());
    assert_eq!(killer.cmd(&["PING"]), "+PONG\r\n");
    assert_eq!(
        killer.cmd(&["CLIENT", "KILL", "ID", "x"]),
        "-ERR client-id should be greater than 0\r\n"
    );
    // LADDR (the proxy's address): everyone else on it.
    let mut other = Raw::connect(proxy.addr);
    assert_eq!(other.cmd(&["PING"]), "+PONG\r\n");
    let laddr = killer.info("laddr");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "LADDR", &laddr]), ":1\r\n");
    assert!(other.closed());
    // SKIPME no: the caller gets its reply, then the connection closes.
    let me = killer.info("id");
    assert_eq!(killer.cmd(&["CLIENT", "KILL", "ID", &me, "SKIPME", "no"]), ":1\r\n");
    assert!(killer.closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_write_holds_writes_in_order_and_not_reads() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut admin = Raw::connect(proxy.addr);
    let mut writer = Raw::connect(proxy.addr);
    let mut reader = Raw::connect(proxy.addr);
    let w_id = writer.info("id");
    assert_eq!(writer.cmd(&["SET", "p", "0"]), "+OK\r\n");
    assert_eq!(admin.cmd(&["CLIENT", "PAUSE", "20000", "WRITE"]), "+OK\r\n");
    writer.send(&["SET", "p", "1"]);
    writer.send(&["INCR", "p"]);
    writer.send(&["GET", "p"]);
    // Another client's read is served at once.
    assert_eq!(reader.cmd(&["GET", "p"]), "$1\r\n0\r\n");
    let early = writer
        .read_until(Duration::from_millis(300), |b| !b.is_empty())
        .unwrap();
    assert!(early.is_empty(), "held: {}", String::from_utf8_lossy(&early));
    assert_eq!(value(&admin.cmd(&["CLIENT", "LIST", "ID", &w_id]), "flags"), "b");
    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]), "+OK\r\n");
    let all = writer
        .read_until(Duration::from_secs(5), |b| b.ends_with(b"$1\r\n2\r\n"))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&all), "+OK\r\n:2\r\n$1\r\n2\r\n");
    // The pause ends by itself too.
    assert_eq!(admin.cmd(&["CLIENT", "PAUSE", "300"]), "+OK\r\n");
    let t = Instant::now();
    assert_eq!(writer.cmd(&["GET", "p"]), "$1\r\n2\r\n");
    assert!(t.elapsed() >= Duration::from_millis(200), "ALL holds reads too");
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "x"]),
        "-ERR timeout is not an integer or out of range\r\n"
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "10", "NONE"]),
        "-ERR CLIENT PAUSE mode must be WRITE or ALL\r\n"
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "9223372036854775807"]),
        "-ERR timeout is out of range\r\n"
    );
    assert_eq!(admin.cmd(&["PING"]), "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_and_skip_suppress_replies() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut c = Raw::connect(proxy.addr);
    c.send(&["CLIENT", "REPLY", "OFF"]);
    c.send(&["SET", "r", "1"]);
    c.send(&["GET", "nokey-but-muted"]);
    c.send(&["CLIENT", "REPLY", "ON"]);
    c.send(&["GET", "r"]);
    let got = c
        .read_until(Duration::from_secs(5), |b| b.ends_with(b"$1\r\n1\r\n"))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "+OK\r\n$1\r\n1\r\n");
    c.send(&["CLIENT", "REPLY", "SKIP"]);
    c.send(&["SET", "r", "2"]);
    c.send(&["GET", "r"]);
    let got = c
        .read_until(Duration::from_secs(5), |b| b.ends_with(b"$1\r\n2\r\n"))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "$1\r\n2\r\n");
    assert_eq!(c.cmd(&["CLIENT", "NO-EVICT", "on"]), "+OK\r\n");
    assert_eq!(value(&c.cmd(&["CLIENT", "INFO"]), "flags"), "e");
    assert_eq!(
        c.cmd(&["CLIENT", "TRACKINGINFO"]),
        "*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_sees_other_clients_commands_in_redis_format() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut m = Raw::connect(proxy.addr);
    let m_id = m.info("id");
    assert_eq!(m.cmd(&["MONITOR"]), "+OK\r\n");
    let mut c = Raw::connect(proxy.addr);
    let addr = c.info("addr");
    c.cmd(&["CONFIG", "GET", "maxclients"]);
    assert_eq!(c.cmd(&["SET", "mon key", "a\"b"]), "+OK\r\n");
    let lines = m
        .read_until(Duration::from_secs(5), |b| {
            String::from_utf8_lossy(b).contains("\"SET\"")
        })
        .unwrap();
    let text = String::from_utf8_lossy(&lines);
    let line = text.lines().find(|l| l.contains("\"SET\"")).unwrap();
    // +1339518083.107412 [0 127.0.0.1:60866] "set" "mon key" "a\"b"
    let (time, rest) = line.strip_prefix('+').unwrap().split_once(' ').unwrap();
    let (secs, micros) = time.split_once('.').unwrap();
    assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{line}");
    assert_eq!(rest, format!("[0 {addr}] \"SET\" \"mon key\" \"a\\\"b\""));
    assert!(text.contains(&format!("[0 {addr}] \"CLIENT\" \"INFO\"")), "{text}");
    // CONFIG is an admin command: not shown, as on Redis.
    assert!(!text.contains("\"CONFIG\""), "{text}");
    assert_eq!(value(&c.cmd(&["CLIENT", "LIST", "ID", &m_id]), "flags"), "O");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowlog_logs_requests_over_the_threshold() {
    let (nodes, proxy) = proxy_on_two().await;
    let mut c = Raw::connect(proxy.addr);
    assert_eq!(c.cmd(&["SLOWLOG", "RESET"]), "+OK\r\n");
    assert_eq!(c.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]), "+OK\r\n");
    // The shards got it too, and CONFIG GET answers the proxy's.
    let mut direct = nodes[1].client();
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("slowlog-log-slower-than")
        .query(&mut direct)
        .unwrap();
    assert_eq!(v[1], "0");
    // Set behind the proxy's back on every shard: the proxy still answers its own.
    for n in &nodes {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-max-len")
            .arg("7")
            .query(&mut n.client())
            .unwrap();
    }
    let mut r = proxy.conn().await;
    let got: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("slowlog-*")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(got["slowlog-log-slower-than"], "0");
    assert_eq!(got["slowlog-max-len"], "128");
    c.cmd(&["CLIENT", "SETNAME", "slowpoke"]);
    let long = "x".repeat(200);
    assert_eq!(c.cmd(&["SET", "slow", &long]), "+OK\r\n");
    // Refused, so not run: not logged.
    assert!(c.cmd(&["DEBUG", "SLEEP", "0"]).starts_with("-ERR"));
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    let set = entries
        .iter()
        .find_map(|e| match e {
            redis::Value::Array(f) if matches!(&f[3], redis::Value::Array(a) if a.first() == Some(&redis::Value::BulkString(b"SET".to_vec()))) => Some(f.clone()),
            _ => None,
        })
        .expect("the SET is logged");
    assert_eq!(set.len(), 6, "Redis's six fields");
    let first_arg = |e: &redis::Value| match e {
        redis::Value::Array(f) => match f.get(3) {
            Some(redis::Value::Array(a)) => a.first().cloned(),
            _ => None,
        },
        _ => None,
    };
    assert!(
        entries
            .iter()
            .all(|e| first_arg(e) != Some(redis::Value::BulkString(b"DEBUG".to_vec()))),
        "a refused command is not logged"
    );
    let redis::Value::Array(args) = &set[3] else { panic!() };
    assert_eq!(
        args[2],
        redis::Value::BulkString(format!("{}... (72 more bytes)", "x".repeat(128)).into_bytes())
    );
    assert_eq!(set[4], redis::Value::BulkString(c.info("addr").into_bytes()));
    assert_eq!(set[5], redis::Value::BulkString(b"slowpoke".to_vec()));
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query_async(&mut r).await.unwrap();
    assert!(len >= 2, "{len}");
    let newest: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1)
        .arg("WITHSHARD")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].len(), 7);
    // Off again: nothing more is logged.
    assert_eq!(
        c.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "1000000"]),
        "+OK\r\n"
    );
    assert_eq!(c.cmd(&["SLOWLOG", "RESET"]), "+OK\r\n");
    c.cmd(&["GET", "slow"]);
    assert_eq!(c.cmd(&["SLOWLOG", "LEN"]), ":0\r\n");
    assert_eq!(
        c.cmd(&["SLOWLOG", "GET", "-2"]),
        "-ERR count should be greater than or equal to -1\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_usage_and_object_answer_as_the_keys_shard() {
    let (nodes, proxy) = proxy_on_two().await;
    let mut c = proxy.conn().await;
    for (key, val) in [("m:int", "12345"), ("m:str", "hello world, a longer string value")] {
        let _: () = redis::cmd("SET").arg(key).arg(val).query_async(&mut c).await.unwrap();
        let mut direct = nodes[proxy.shard_of(key)].client();
        for args in [
            vec!["MEMORY", "USAGE", key],
            vec!["OBJECT", "ENCODING", key],
            vec!["OBJECT", "REFCOUNT", key],
        ] {
            let ours: redis::Value = redis::cmd(args[0]).arg(&args[1..]).query_async(&mut c).await.unwrap();
            let theirs: redis::Value = redis::cmd(args[0]).arg(&args[1..]).query(&mut direct).unwrap();
            assert_eq!(ours, theirs, "{args:?}");
        }
        let idle: i64 = redis::cmd("OBJECT")
            .arg("IDLETIME")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(idle >= 0);
        // FREQ needs an LFU policy: Redis's own error, from the shard.
        let freq: redis::RedisResult<i64> = redis::cmd("OBJECT").arg("FREQ").arg(key).query_async(&mut c).await;
        assert!(freq.unwrap_err().to_string().contains("LFU"));
    }
    let purge: String = redis::cmd("MEMORY").arg("PURGE").query_async(&mut c).await.unwrap();
    assert_eq!(purge, "OK");
    // HELP of the shards' commands (MEMORY, OBJECT) and of the proxy's own (the rest).
    for cmd in ["MEMORY", "OBJECT", "CLIENT", "COMMAND", "LATENCY", "SLOWLOG"] {
        let help: Vec<String> = redis::cmd(cmd).arg("HELP").query_async(&mut c).await.unwrap();
        assert!(help[0].starts_with(cmd), "{help:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_proxy_cannot_honour_are_refused_with_a_reason() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut c = Raw::connect(proxy.addr);
    let cases: &[(&[&str], &str)] = &[
        (&["DEBUG", "SLEEP", "0"], "DEBUG acts on one server's internals"),
        (&["WAIT", "0", "0"], "no count would be true"),
        (&["MOVE", "k", "1"], "database 0 only"),
        (&["SWAPDB", "0", "1"], "database 0 only"),
        (&["SELECT", "1"], "database 0 only"),
        (&["COPY", "a", "b", "DB", "1"], "database 0 only"),
        (&["REPLICAOF", "NO", "ONE"], "replication is set up on each shard"),
        (&["SLAVEOF", "NO", "ONE"], "replication is set up on each shard"),
        (&["SYNC"], "replication is set up on each shard"),
        (&["PSYNC", "?", "-1"], "replication is set up on each shard"),
        (&["FAILOVER"], "replication is set up on each shard"),
        (&["SAVE"], "persistence is each shard's own"),
        (&["BGSAVE"], "persistence is each shard's own"),
        (&["BGREWRITEAOF"], "persistence is each shard's own"),
        (&["SHUTDOWN"], "stop the proxy with SIGTERM"),
        (&["MIGRATE", "h", "1", "k", "0", "10"], "proxy's own migration"),
        (&["MEMORY", "STATS"], "one server's allocator"),
        (&["MEMORY", "DOCTOR"], "one server's allocator"),
    ];
    for (args, why) in cases {
        let r = c.cmd(args);
        assert!(r.starts_with("-ERR") && r.contains(why), "{args:?}: {r}");
    }
    assert_eq!(c.cmd(&["LATENCY", "LATEST"]), "*0\r\n");
    assert_eq!(c.cmd(&["LATENCY", "RESET"]), ":0\r\n");
    assert!(c.cmd(&["LATENCY", "DOCTOR"]).contains("records no latency events"));
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n", "the connection stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_that_does_not_read_is_disconnected_not_buffered() {
    let (_nodes, proxy) = proxy_on_two().await;
    let mut m = Raw::connect(proxy.addr);
    assert_eq!(m.cmd(&["MONITOR"]), "+OK\r\n");
    // About 24 MB of monitor lines, more than the socket buffers and the
    // monitor's 4096 queued lines hold, while the monitor reads nothing.
    let value = "v".repeat(1000);
    let mut c = Raw::connect(proxy.addr);
    for batch in 0..24 {
        for i in 0..1000 {
            c.send(&["SET", &format!("flood:{batch}:{i}"), &value]);
        }
        let got = c
            .read_until(Duration::from_secs(20), |b| b.len() >= 1000 * 5)
            .expect("the writer stays connected");
        assert_eq!(got.len(), 1000 * 5, "every SET answered +OK");
    }
    // The monitor gets what was already on its way, then the end of the stream.
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    m.s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    loop {
        match m.s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("the monitor was not disconnected ({total} bytes read): {e}"),
        }
    }
    assert!(
        total < 24_000 * 1000,
        "lines were dropped with the monitor: {total} bytes"
    );
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}

/// `limits.client_idle_timeout_s` (Redis's `timeout`): a client silent past
/// it is closed; one that keeps talking, a subscriber and a monitor are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_after_the_timeout_and_no_others() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "[limits]\nclient_idle_timeout_s = 1\n").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut idle = Raw::connect(addr);
        assert_eq!(idle.cmd(&["PING"]), "+PONG\r\n");
        let mut busy = Raw::connect(addr);
        let mut sub = Raw::connect(addr);
        sub.send(&["SUBSCRIBE", "idle-test"]);
        assert!(
            sub.read_until(Duration::from_secs(5), |b| b.ends_with(b":1\r\n"))
                .is_some()
        );
        let mut mon = Raw::connect(addr);
        assert_eq!(mon.cmd(&["MONITOR"]), "+OK\r\n");
        // Past the limit and the once-a-second check, with `busy` talking.
        let until = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < until {
            assert_eq!(busy.cmd(&["PING"]), "+PONG\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(idle.closed(), "the idle client reads EOF");
        assert_eq!(busy.cmd(&["PING"]), "+PONG\r\n");
        let info = busy.cmd(&["INFO", "stats"]);
        let closed: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("shardis_idle_clients_closed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats has shardis_idle_clients_closed");
        assert!(closed >= 1, "{info}");
        // Still open: a read that waits finds no EOF.
        assert!(
            sub.read_until(Duration::from_millis(300), |_| false).is_some(),
            "the subscriber stays"
        );
        assert!(
            mon.read_until(Duration::from_millis(300), |_| false).is_some(),
            "the monitor stays"
        );
    })
    .await
    .unwrap();
}

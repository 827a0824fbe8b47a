//! Sharded pub/sub: SPUBLISH goes to the channel's shard on the ring, so
//! publish load spreads over the shards; SSUBSCRIBE listens on channels of
//! every shard from one client connection (a backend connection per shard),
//! with Redis's replies byte for byte, in RESP2 and RESP3.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{NodeClient, Proxy, RedisNode, read_until, three_nodes, wait_until};

fn send(s: &mut TcpStream, input: &str, want: &str) -> String {
    s.write_all(input.as_bytes()).unwrap();
    read_until(s, want)
}

fn command(addr: SocketAddr, input: &str, want: &str) -> String {
    send(&mut TcpStream::connect(addr).unwrap(), input, want)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

/// One channel name on each shard, as the proxy routes them.
fn one_channel_per_shard(proxy: &Proxy) -> Vec<String> {
    (0..3)
        .map(|shard| {
            (0..1000)
                .map(|i| format!("news:{i}"))
                .find(|c| proxy.shard_of(c) == shard)
                .expect("a channel on every shard")
        })
        .collect()
}

fn shard_channels(node: &RedisNode) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query(&mut node.client())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_channels_spread_over_the_shards_resp2() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    let ch = one_channel_per_shard(&proxy);
    tokio::task::spawn_blocking(move || {
        let mut sub = TcpStream::connect(addr).unwrap();
        // Counts are the client's, over every shard, as on one Redis.
        let want: String = (0..3)
            .map(|i| format!("*3\r\n$10\r\nssubscribe\r\n{}:{}\r\n", bulk(&ch[i]), i + 1))
            .collect();
        assert_eq!(send(&mut sub, &format!("SSUBSCRIBE {} {} {}\r\n", ch[0], ch[1], ch[2]), &want), want);
        // Each channel is subscribed on its own shard, and only there.
        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(shard_channels(node), [ch[i].clone()], "shard {i}");
        }
        // SPUBLISH reaches the channel's shard: each shard takes one.
        for (i, c) in ch.iter().enumerate() {
            assert_eq!(command(addr, &format!("SPUBLISH {c} m{i}\r\n"), "\r\n"), ":1\r\n");
            let m = format!("*3\r\n$8\r\nsmessage\r\n{}{}", bulk(c), bulk(&format!("m{i}")));
            assert_eq!(read_until(&mut sub, &m), m);
        }
        for (i, node) in nodes.iter().enumerate() {
            let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut node.client()).unwrap();
            assert!(stats.contains("cmdstat_spublish:calls=1,"), "shard {i}: {stats}");
        }
        // PUBSUB SHARDCHANNELS merges every shard; SHARDNUMSUB asks each channel's shard.
        let mut c = redis::Client::open(format!("redis://{addr}/")).unwrap().get_connection().unwrap();
        let all: BTreeSet<String> = redis::cmd("PUBSUB").arg("SHARDCHANNELS").query(&mut c).unwrap();
        assert_eq!(all, ch.iter().cloned().collect());
        let some: Vec<String> = redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg(&ch[1]).query(&mut c).unwrap();
        assert_eq!(some, [ch[1].clone()]);
        let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(&ch[2])
            .arg("nosuch")
            .arg(&ch[0])
            .query(&mut c)
            .unwrap();
        assert_eq!(n, [(ch[2].clone(), 1), ("nosuch".to_string(), 0), (ch[0].clone(), 1)]);
        // A later SSUBSCRIBE adds to the same subscription; RESP2 subscribed mode.
        let got = send(&mut sub, &format!("SSUBSCRIBE {}:x\r\nPING\r\nGET k\r\n", ch[1]), "context\r\n");
        assert_eq!(
            got,
            format!(
                "*3\r\n$10\r\nssubscribe\r\n{}:4\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
                bulk(&format!("{}:x", ch[1]))
            )
        );
        let got = send(&mut sub, &format!("SUNSUBSCRIBE {}\r\n", ch[1]), ":3\r\n");
        assert_eq!(got, format!("*3\r\n$12\r\nsunsubscribe\r\n{}:3\r\n", bulk(&ch[1])));
        // Without channels: every one left, then the connection is an ordinary one again.
        let got = send(&mut sub, "SUNSUBSCRIBE\r\nGET k\r\n", "$-1\r\n");
        assert_eq!(got.matches("sunsubscribe").count(), 3, "{got}");
        assert!(got.ends_with(":0\r\n$-1\r\n"), "{got}");
        for node in &nodes {
            assert!(shard_channels(node).is_empty());
        }
        assert_eq!(command(addr, &format!("SPUBLISH {} gone\r\n", ch[0]), "\r\n"), ":0\r\n");
        // RESET right behind SSUBSCRIBE: the confirmations still come, in
        // order, then the shard connections close.
        let input = format!("SSUBSCRIBE {} {}\r\nRESET\r\nPING\r\n", ch[0], ch[2]);
        let want = format!(
            "*3\r\n$10\r\nssubscribe\r\n{}:1\r\n*3\r\n$10\r\nssubscribe\r\n{}:2\r\n+RESET\r\n+PONG\r\n",
            bulk(&ch[0]),
            bulk(&ch[2])
        );
        assert_eq!(command(addr, &input, "+PONG\r\n"), want);
        wait_until(Duration::from_secs(5), "the shard connections closed", || {
            nodes.iter().all(|n| shard_channels(n).is_empty())
        });
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_channels_in_resp3_and_replies_like_one_redis() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let plain = RedisNode::start();
    let (addr, plain_addr) = (proxy.addr, SocketAddr::from(([127, 0, 0, 1], plain.port)));
    let ch = one_channel_per_shard(&proxy);
    tokio::task::spawn_blocking(move || {
        let mut sub = TcpStream::connect(addr).unwrap();
        send(&mut sub, "HELLO 3\r\n", "modules\r\n*0\r\n");
        let want = format!(
            ">3\r\n$10\r\nssubscribe\r\n{}:1\r\n>3\r\n$10\r\nssubscribe\r\n{}:2\r\n",
            bulk(&ch[0]),
            bulk(&ch[2])
        );
        assert_eq!(
            send(&mut sub, &format!("SSUBSCRIBE {} {}\r\n", ch[0], ch[2]), &want),
            want
        );
        assert_eq!(command(addr, &format!("SPUBLISH {} hi\r\n", ch[2]), "\r\n"), ":1\r\n");
        let m = format!(">3\r\n$8\r\nsmessage\r\n{}$2\r\nhi\r\n", bulk(&ch[2]));
        assert_eq!(read_until(&mut sub, &m), m);
        // RESP3: other commands are served while subscribed.
        assert_eq!(send(&mut sub, "GET nothing\r\nPING\r\n", "PONG\r\n"), "_\r\n+PONG\r\n");
        // SPUBLISH inside MULTI: sent to the channel's shard after EXEC.
        let got = command(
            addr,
            &format!("MULTI\r\nSPUBLISH {} queued\r\nSET {{t}}k 1\r\nEXEC\r\n", ch[0]),
            "*2\r\n:1\r\n+OK\r\n",
        );
        assert_eq!(got, "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n+OK\r\n");
        let m = format!(">3\r\n$8\r\nsmessage\r\n{}$6\r\nqueued\r\n", bulk(&ch[0]));
        assert_eq!(read_until(&mut sub, &m), m);
        // HELLO 2 while subscribed: the messages follow the client's protocol.
        send(&mut sub, "HELLO 2\r\n", "modules\r\n*0\r\n");
        assert_eq!(command(addr, &format!("SPUBLISH {} two\r\n", ch[0]), "\r\n"), ":1\r\n");
        let m = format!("*3\r\n$8\r\nsmessage\r\n{}$3\r\ntwo\r\n", bulk(&ch[0]));
        assert_eq!(read_until(&mut sub, &m), m);

        // Byte for byte as one Redis (channels all on one shard there).
        let input = "SUNSUBSCRIBE a b\r\nSSUBSCRIBE a b\r\nSSUBSCRIBE a\r\nPING hi\r\nSET x 1\r\n\
                     SUNSUBSCRIBE b nosuch\r\nSUNSUBSCRIBE a\r\nSUNSUBSCRIBE\r\nGET x\r\n";
        let want_end = ":0\r\n$-1\r\n";
        let plain_got = command(plain_addr, input, want_end);
        assert!(plain_got.ends_with(want_end), "{plain_got}");
        assert_eq!(command(addr, input, want_end), plain_got);
        let input3 = format!("HELLO 3\r\n{input}");
        // RESP3: SET is served while subscribed, so GET finds the value.
        let plain_got = command(plain_addr, &input3, "$1\r\n1\r\n");
        let through = command(addr, &input3, "$1\r\n1\r\n");
        let after_hello = |s: &str| s[s.find("sunsub").unwrap_or(0)..].to_string();
        assert_eq!(after_hello(&through), after_hello(&plain_got));
    })
    .await
    .unwrap();
}

/// A reload that gives a channel another shard moves its subscription
/// there: SPUBLISH (which follows the ring at once) still reaches the
/// subscriber, which notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_subscriptions_with_their_channels() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let config = |n: usize| {
        let mut s = "listen = \"127.0.0.1:0\"\n[timeouts]\ncommand_ms = 1000\nconnect_ms = 300\n".to_string();
        for (name, node) in ["a", "b", "c", "d"].iter().zip(&nodes).take(n) {
            s.push_str(&format!(
                "[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n",
                node.addr()
            ));
        }
        s
    };
    let proxy = Proxy::start_text(&config(3), 0).await;
    let channels: Vec<String> = (0..40).map(|i| format!("moving:{i}")).collect();
    let addr = proxy.addr;
    let all = channels.join(" ");
    let last = format!("{}:40\r\n", bulk(&channels[39]));
    let mut sub = tokio::task::spawn_blocking(move || {
        let mut sub = TcpStream::connect(addr).unwrap();
        let got = send(&mut sub, &format!("SSUBSCRIBE {all}\r\n"), &last);
        assert!(got.ends_with(&last), "{got}");
        sub
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("shardis-ssub-{}", proxy.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config(4)).unwrap();
    shardis::control::reload_forced(&proxy.shared, &path, false)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let moved: Vec<String> = channels.iter().filter(|c| proxy.shard_of(c) == 3).cloned().collect();
    assert!(!moved.is_empty(), "some channels should move to the new shard");
    tokio::task::spawn_blocking(move || {
        let mut on_d: Vec<String> = Vec::new();
        wait_until(Duration::from_secs(5), "subscriptions moved to the new shard", || {
            on_d = shard_channels(&nodes[3]);
            on_d.len() == moved.len()
        });
        on_d.sort();
        let mut want = moved.clone();
        want.sort();
        assert_eq!(on_d, want);
        let left: usize = nodes[..3].iter().map(|n| shard_channels(n).len()).sum();
        assert_eq!(left, channels.len() - moved.len(), "unsubscribed where they were");
        for c in &moved {
            assert_eq!(command(addr, &format!("SPUBLISH {c} after\r\n"), "\r\n"), ":1\r\n");
            let m = format!("*3\r\n$8\r\nsmessage\r\n{}$5\r\nafter\r\n", bulk(c));
            assert_eq!(read_until(&mut sub, &m), m);
        }
    })
    .await
    .unwrap();
}

/// A shard that drops the client's connection (here CLIENT KILL on the
/// shard) unsubscribes its channels: the client hears `sunsubscribe` for
/// each, keeps its other channels, and can subscribe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_connection_unsubscribes_its_channels() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    let ch = one_channel_per_shard(&proxy);
    tokio::task::spawn_blocking(move || {
        let mut sub = TcpStream::connect(addr).unwrap();
        let got = send(&mut sub, &format!("SSUBSCRIBE {} {}\r\n", ch[0], ch[1]), ":2\r\n");
        assert!(got.ends_with(":2\r\n"), "{got}");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut nodes[1].client())
            .unwrap();
        assert_eq!(killed, 1);
        let want = format!("*3\r\n$12\r\nsunsubscribe\r\n{}:1\r\n", bulk(&ch[1]));
        assert_eq!(read_until(&mut sub, &want), want);
        // The other shard's channel still hears; the lost one can come back.
        assert_eq!(command(addr, &format!("SPUBLISH {} a\r\n", ch[0]), "\r\n"), ":1\r\n");
        let m = format!("*3\r\n$8\r\nsmessage\r\n{}$1\r\na\r\n", bulk(&ch[0]));
        assert_eq!(read_until(&mut sub, &m), m);
        let want = format!("*3\r\n$10\r\nssubscribe\r\n{}:2\r\n", bulk(&ch[1]));
        assert_eq!(send(&mut sub, &format!("SSUBSCRIBE {}\r\n", ch[1]), &want), want);
        assert_eq!(command(addr, &format!("SPUBLISH {} b\r\n", ch[1]), "\r\n"), ":1\r\n");
        let m = format!("*3\r\n$8\r\nsmessage\r\n{}$1\r\nb\r\n", bulk(&ch[1]));
        assert_eq!(read_until(&mut sub, &m), m);
    })
    .await
    .unwrap();
}

/// redis-py's `PubSub.ssubscribe` / `get_sharded_message` and
/// `spublish` against the proxy (tests/py/sharded_pubsub.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_sharded_pubsub() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    crate::support::run_py("sharded_pubsub.py", proxy.addr).await;
}

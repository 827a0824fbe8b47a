//! Blocking commands (BLPOP, BLMOVE, XREAD BLOCK ...): each runs on a
//! backend connection of its own, the client is blocked as Redis blocks it,
//! and nobody else waits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

fn blocked_clients(node: &RedisNode) -> i64 {
    let info: String = redis::cmd("INFO").arg("clients").query(&mut node.client()).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pops_wait_for_data_without_holding_up_others() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    // command_ms = 500: a blocking command must outlive it.
    let proxy = Proxy::start(&refs).await;
    let owner = &nodes[proxy.shard_of("jobs")];

    // A consumer blocks; other clients of the same shard are served meanwhile.
    let mut consumer = proxy.conn().await;
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let got: Option<(String, String)> = consumer.blpop("jobs", 0.0).await.unwrap();
        (got, started.elapsed())
    });
    let mut other = proxy.conn().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_clients(owner) != 1 {
        assert!(Instant::now() < deadline, "the BLPOP never reached the shard");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    for i in 0..200 {
        let () = other.set(format!("jobs-side:{i}"), i).await.unwrap();
        let () = other.set("jobs:x", i).await.unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(2), "others waited behind the BLPOP");
    tokio::time::sleep(Duration::from_millis(700)).await; // past command_ms
    let n: i64 = other.lpush("jobs", "job-1").await.unwrap();
    assert_eq!(n, 1);
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got, Some(("jobs".to_string(), "job-1".to_string())));
    assert!(waited >= Duration::from_millis(700), "{waited:?}");

    // A timeout answers nil, after the command's own timeout.
    let t = Instant::now();
    let got: Option<(String, String)> = other.brpop("empty", 1.0).await.unwrap();
    assert_eq!(got, None);
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());

    // BLMOVE within one shard (hash tag), and across shards.
    let () = other.rpush("{q}src", &["a", "b"]).await.unwrap();
    let v: String = redis::cmd("BLMOVE")
        .arg("{q}src")
        .arg("{q}dst")
        .arg("LEFT")
        .arg("RIGHT")
        .arg(1)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(v, "a");
    let far = (0..100)
        .map(|i| format!("d{i}"))
        .find(|k| proxy.shard_of(k) != proxy.shard_of("{q}src"))
        .unwrap();
    let v: Option<String> = redis::cmd("BLMOVE")
        .arg("{q}src")
        .arg(&far)
        .arg("LEFT")
        .arg("RIGHT")
        .arg(1)
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("b"), "across shards it runs (src/xshard)");

    // XREAD BLOCK wakes on XADD.
    let mut reader = proxy.conn().await;
    let xread = tokio::spawn(async move {
        let v: redis::Value = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(0)
            .arg("STREAMS")
            .arg("events")
            .arg("$")
            .query_async(&mut reader)
            .await
            .unwrap();
        v
    });
    let ev_owner = &nodes[proxy.shard_of("events")];
    while blocked_clients(ev_owner) != 1 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(5),
            "XREAD never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: String = redis::cmd("XADD")
        .arg("events")
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut other)
        .await
        .unwrap();
    let v = tokio::time::timeout(Duration::from_secs(5), xread)
        .await
        .unwrap()
        .unwrap();
    assert!(format!("{v:?}").contains("events"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_is_served_in_order_and_a_gone_one_releases_its_connection() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut other = proxy.conn().await;
    let () = other.set("after", "seen").await.unwrap();
    let addr = proxy.addr;
    // One raw client pipelines BLPOP then GET: the GET answers only after the
    // BLPOP, as on one Redis.
    let raw = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"BLPOP q 0\r\nGET after\r\n").unwrap();
        let want = b"*2\r\n$1\r\nq\r\n$2\r\nv1\r\n$4\r\nseen\r\n";
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        let started = Instant::now();
        while out.len() < want.len() {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            if out.is_empty() {
                assert!(
                    started.elapsed() >= Duration::from_millis(400),
                    "GET overtook the BLPOP"
                );
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: i64 = other.rpush("q", "v1").await.unwrap();
    raw.await.unwrap();

    // A client that leaves while blocked: its backend connection closes.
    let owner = &nodes[proxy.shard_of("never")];
    let s = TcpStream::connect(proxy.addr).unwrap();
    (&s).write_all(b"BLPOP never 0\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_clients(owner) != 1 {
        assert!(Instant::now() < deadline, "never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    while blocked_clients(owner) != 0 {
        assert!(
            Instant::now() < deadline,
            "the blocked backend connection outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

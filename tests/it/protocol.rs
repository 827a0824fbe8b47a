//! The wire protocol as clients see it: raw bytes in, raw bytes out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{Proxy, raw_roundtrip, three_nodes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_and_pipelining_in_order() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let out = raw_roundtrip(
            addr,
            b"PING\r\nset k1 \"hello world\"\r\nget k1\r\n\r\nECHO 'a b'\r\n",
            40,
            Duration::from_secs(5),
        );
        assert_eq!(out, b"+PONG\r\n+OK\r\n$11\r\nhello world\r\n$3\r\na b\r\n");
        // 2000 pipelined requests over all shards, mixed with local commands:
        // replies come back in request order.
        let mut input = Vec::new();
        let mut want = Vec::new();
        for i in 0..1000 {
            let v = format!("value-{i}");
            input.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n$5\r\nkey{:02}\r\n${}\r\n{v}\r\n", i % 100, v.len()).as_bytes(),
            );
            want.extend_from_slice(b"+OK\r\n");
            input.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$5\r\nkey{:02}\r\n", i % 100).as_bytes());
            want.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
            if i % 7 == 0 {
                input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
                want.extend_from_slice(b"+PONG\r\n");
            }
        }
        let out = raw_roundtrip(addr, &input, want.len(), Duration::from_secs(10));
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_reply_then_close_and_spare_other_clients() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "[limits]\nmax_bulk = 1024\n").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut healthy = TcpStream::connect(addr).unwrap();
        healthy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for (input, want) in [
            (
                &b"*1\r\n+PING\r\n"[..],
                &b"-ERR Protocol error: expected '$', got '+'\r\n"[..],
            ),
            (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
            (b"*1\r\n$2000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
            (
                b"set a \"b\r\n",
                b"-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
        ] {
            // Valid requests before the bad one are answered first.
            let mut full = b"PING\r\n".to_vec();
            full.extend_from_slice(input);
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&full).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).expect("the proxy closes the connection");
            let mut expect = b"+PONG\r\n".to_vec();
            expect.extend_from_slice(want);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expect));
        }
        // Meanwhile another client is unaffected.
        healthy.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 7];
        healthy.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+PONG\r\n");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_clients_get_resp3_replies() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let read_some = |s: &mut TcpStream, min: usize| {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while out.len() < min && std::time::Instant::now() < deadline {
                if let Ok(n) = s.read(&mut buf) {
                    out.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        s.write_all(b"HELLO 3 SETNAME r3\r\n").unwrap();
        let hello = read_some(&mut s, 100);
        assert!(hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), "{hello}");
        assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
        s.write_all(b"HSET h f v\r\nHGETALL h\r\nGET missing\r\nMGET missing h2\r\nSMEMBERS h3\r\nZADD z 1.5 m\r\nZSCORE z m\r\nCLIENT GETNAME\r\n").unwrap();
        let want = ":1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n_\r\n*2\r\n_\r\n_\r\n~0\r\n:1\r\n,1.5\r\n$2\r\nr3\r\n";
        assert_eq!(read_some(&mut s, want.len()), want);
        // Back to RESP2 on the same connection.
        s.write_all(b"HELLO 2\r\n").unwrap();
        let hello = read_some(&mut s, 100);
        assert!(hello.starts_with("*14\r\n"), "{hello}");
        s.write_all(b"HGETALL h\r\nGET missing\r\n").unwrap();
        let want = "*2\r\n$1\r\nf\r\n$1\r\nv\r\n$-1\r\n";
        assert_eq!(read_some(&mut s, want.len()), want);
        s.write_all(b"HELLO 4\r\n").unwrap();
        assert_eq!(read_some(&mut s, 10), "-NOPROTO unsupported protocol version\r\n");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_pass_through() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query_async(&mut c)
        .await
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("big").query_async(&mut c).await.unwrap();
    assert_eq!(back, big);
    let items: Vec<String> = (0..20_000).map(|i| format!("item-{i}")).collect();
    let _: () = redis::cmd("RPUSH")
        .arg("list")
        .arg(&items)
        .query_async(&mut c)
        .await
        .unwrap();
    let got: Vec<String> = redis::cmd("LRANGE")
        .arg("list")
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, items);
}

/// CLIENT TRACKING (client-side caching) is refused with the reason: the
/// proxy cannot deliver invalidations, and a cache without them goes stale.
/// The connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_is_refused_with_a_reason() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let want = "-ERR CLIENT TRACKING is not supported by shardis: invalidation messages would come from every shard on connections the client does not own, and the proxy does not forward them; without them a client-side cache would serve stale values\r\n";
        for input in [
            "CLIENT TRACKING on\r\nPING\r\n",
            "HELLO 3\r\nCLIENT TRACKING on BCAST\r\nPING\r\n",
        ] {
            let out = raw_roundtrip(addr, input.as_bytes(), 1 << 20, Duration::from_millis(500));
            let out = String::from_utf8_lossy(&out);
            assert!(out.ends_with(&format!("{want}+PONG\r\n")), "{out}");
        }
    })
    .await
    .unwrap();
}

/// A pipeline longer than `limits.max_pipeline` whose head is slow: the
/// session stops parsing at the limit, and the head's reply frees every slot
/// at once, with nothing else in flight. The rest of the pipeline, already
/// read and waiting in the session's buffer, must still be parsed (a hang
/// the suite once hit with 5,000 pipelined SETs and the default 4,096).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_longer_than_the_limit_is_answered_when_its_slow_head_completes() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "[limits]\nmax_pipeline = 4\n").await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        // A script that spins for about 200 ms on `slow`'s shard, then
        // GETs on the same key (same shard, same backend connection): they
        // complete together with the script, in one batch.
        let spin = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] \
                    repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 200000 return 1";
        let mut input = format!(
            "*4\r\n$4\r\nEVAL\r\n${}\r\n{spin}\r\n$1\r\n1\r\n$4\r\nslow\r\n",
            spin.len()
        )
        .into_bytes();
        let mut want = b":1\r\n".to_vec();
        for _ in 0..20 {
            input.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$4\r\nslow\r\n");
            want.extend_from_slice(b"$-1\r\n");
        }
        let out = raw_roundtrip(addr, &input, want.len(), Duration::from_secs(5));
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
    })
    .await
    .unwrap();
}

//! Pub/sub: SUBSCRIBE / PSUBSCRIBE turn the client's connection into a
//! subscriber on the pub/sub shard; PUBLISH from any client reaches it, and
//! PUBLISH inside MULTI reaches it once EXEC has committed (never when the
//! transaction does not run).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::Proxy;
use crate::support::read_until;
use crate::support::three_nodes;

fn command(addr: SocketAddr, input: &str, want: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(input.as_bytes()).unwrap();
    read_until(&mut s, want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hear_every_publisher() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        // Replies to what the client sent before SUBSCRIBE come first, in order.
        let mut sub = TcpStream::connect(addr).unwrap();
        sub.write_all(b"SET before 1\r\nGET before\r\nSUBSCRIBE news\r\n")
            .unwrap();
        let got = read_until(&mut sub, "$4\r\nnews\r\n:1\r\n");
        assert_eq!(got, "+OK\r\n$1\r\n1\r\n*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
        let mut psub = TcpStream::connect(addr).unwrap();
        psub.write_all(b"PSUBSCRIBE n*\r\n").unwrap();
        let got = read_until(&mut psub, ":1\r\n");
        assert!(
            got.starts_with("*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n"),
            "{got}"
        );

        // PUBLISH from other clients (on any worker, any lane) reaches both.
        let n = command(addr, "PUBLISH news hello\r\n", ":");
        assert_eq!(n, ":2\r\n", "one subscriber and one pattern subscriber");
        assert_eq!(
            read_until(&mut sub, "hello\r\n"),
            "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
        );
        assert_eq!(
            read_until(&mut psub, "hello\r\n"),
            "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
        );
        let numsub = command(addr, "PUBSUB NUMSUB news\r\n", ":1\r\n");
        assert_eq!(numsub, "*2\r\n$4\r\nnews\r\n:1\r\n");
        // The subscriber can add channels and ping, as on Redis.
        sub.write_all(b"SUBSCRIBE sport\r\nPING\r\n").unwrap();
        let got = read_until(&mut sub, "pong");
        assert!(
            got.contains("$5\r\nsport\r\n:2\r\n") && got.contains("$4\r\npong\r\n"),
            "{got}"
        );
        // A subscriber that leaves is gone from the shard.
        drop(sub);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if command(addr, "PUBSUB NUMSUB news\r\n", "\r\n:") == "*2\r\n$4\r\nnews\r\n:0\r\n" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the subscriber's backend connection outlived it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}

/// UNSUBSCRIBE / PUNSUBSCRIBE on a connection that is not subscribed: one
/// confirmation per channel, byte for byte as one Redis answers, and the
/// replies of what follows stay in step (a backend connection shared with
/// other clients would have answered several frames to one request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_a_subscription_answers_like_redis() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let (addr, direct) = (proxy.addr, SocketAddr::from(([127, 0, 0, 1], nodes[0].port)));
    tokio::task::spawn_blocking(move || {
        let input =
            "UNSUBSCRIBE a b c\r\nPUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE p*\r\nSET unsub:k v\r\nGET unsub:k\r\n";
        let want = "$1\r\nv\r\n";
        let plain = command(direct, input, want);
        let through = command(addr, input, want);
        assert!(plain.ends_with(want), "plain Redis: {plain:?}");
        assert_eq!(through, plain);
        // Another client on the same backend lanes is not thrown off.
        for _ in 0..20 {
            assert_eq!(command(addr, "GET unsub:k\r\n", "\r\nv\r\n"), "$1\r\nv\r\n");
        }
    })
    .await
    .unwrap();
}

/// Nothing more arrives on `s` within 300 ms.
fn quiet(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

/// PUBLISH inside MULTI: QUEUED, sent after the shard's EXEC committed, its
/// receivers count in its place in EXEC's array; not sent on DISCARD,
/// EXECABORT or a failed WATCH. The reply is byte for byte one Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_inside_multi_is_sent_after_exec_commits() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let plain = crate::support::RedisNode::start();
    let (addr, plain_addr) = (proxy.addr, SocketAddr::from(([127, 0, 0, 1], plain.port)));
    tokio::task::spawn_blocking(move || {
        let mut sub = TcpStream::connect(addr).unwrap();
        sub.write_all(b"SUBSCRIBE jobs\r\n").unwrap();
        read_until(&mut sub, ":1\r\n");
        // Keys on any one shard, the PUBLISH between them and at both ends.
        let input = "MULTI\r\nPUBLISH jobs first\r\nSET {t}job 1\r\nPUBLISH jobs second\r\nINCR {t}n\r\nPUBLISH nobody x\r\nEXEC\r\n";
        let got = command(addr, input, "*5\r\n:1\r\n+OK\r\n:1\r\n:1\r\n:0\r\n");
        assert_eq!(
            got,
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*5\r\n:1\r\n+OK\r\n:1\r\n:1\r\n:0\r\n"
        );
        let heard = read_until(&mut sub, "second\r\n");
        assert!(heard.contains("$5\r\nfirst\r\n") && heard.ends_with("$6\r\nsecond\r\n"), "{heard}");
        // The same reply as one Redis gives (its subscriber count aside: none there).
        let plain_got = command(plain_addr, input, "*5\r\n:0\r\n+OK\r\n:0\r\n:1\r\n:0\r\n");
        assert_eq!(plain_got, got.replace("*5\r\n:1\r\n+OK\r\n:1\r\n", "*5\r\n:0\r\n+OK\r\n:0\r\n"));
        // Only a PUBLISH in the transaction.
        let got = command(addr, "MULTI\r\nPUBLISH jobs alone\r\nEXEC\r\n", "*1\r\n:1\r\n");
        assert_eq!(got, "+OK\r\n+QUEUED\r\n*1\r\n:1\r\n");
        assert!(read_until(&mut sub, "alone\r\n").ends_with("$5\r\nalone\r\n"));
        // DISCARD, EXECABORT: nothing published.
        let got = command(addr, "MULTI\r\nPUBLISH jobs discarded\r\nDISCARD\r\nPING\r\n", "PONG");
        assert_eq!(got, "+OK\r\n+QUEUED\r\n+OK\r\n+PONG\r\n");
        let got = command(addr, "MULTI\r\nPUBLISH jobs aborted\r\nNOSUCH\r\nEXEC\r\n", "EXECABORT");
        assert!(got.contains("-EXECABORT"), "{got}");
        // A WATCH that failed: EXEC answers nil and nothing is published.
        let mut w = TcpStream::connect(addr).unwrap();
        w.write_all(b"WATCH {t}job\r\n").unwrap();
        assert_eq!(read_until(&mut w, "OK\r\n"), "+OK\r\n");
        assert_eq!(command(addr, "SET {t}job 2\r\n", "OK\r\n"), "+OK\r\n");
        w.write_all(b"MULTI\r\nPUBLISH jobs watched\r\nSET {t}job 3\r\nEXEC\r\n").unwrap();
        assert_eq!(read_until(&mut w, "*-1\r\n"), "+OK\r\n+QUEUED\r\n+QUEUED\r\n*-1\r\n");
        assert_eq!(quiet(&mut sub), "", "nothing published by a transaction that did not run");
        // A WATCH that held: published.
        w.write_all(b"WATCH {t}job\r\nMULTI\r\nPUBLISH jobs watched\r\nSET {t}job 3\r\nEXEC\r\n").unwrap();
        assert_eq!(
            read_until(&mut w, "*2\r\n:1\r\n+OK\r\n"),
            "+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n+OK\r\n"
        );
        assert!(read_until(&mut sub, "watched\r\n").ends_with("$7\r\nwatched\r\n"));
    })
    .await
    .unwrap();
}

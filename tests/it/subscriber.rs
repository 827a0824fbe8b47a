//! A SUBSCRIBE / PSUBSCRIBE client is served by the session, not piped to
//! the pub/sub shard: a RESP3 subscriber's commands go to their keys'
//! shards, a RESP2 subscriber gets Redis's own errors (transcripts compared
//! with one redis-server), RESET and QUIT, the ACL on every command, and
//! messages whole and in order (1 MiB ones, pipelined bursts) between the
//! replies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardis::protocol::reply::{self, ReplyScanner};

use crate::support::{Proxy, RedisNode, three_nodes};

/// A blocking RESP client that reads whole frames.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Client { s, buf: Vec::new() }
    }

    /// Sends `args` as one multibulk request.
    fn send(&mut self, args: &[&[u8]]) {
        self.s.write_all(&encode(args)).unwrap();
    }

    /// Sends `line` (inline commands, `\r\n` separated) as it is.
    fn raw(&mut self, line: &str) {
        self.s.write_all(line.as_bytes()).unwrap();
    }

    /// The next whole frame, within 10 s.
    fn frame(&mut self) -> Bytes {
        match self.try_frame(Duration::from_secs(10)) {
            Some(f) => f,
            None => panic!(
                "no frame within 10 s; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    fn try_frame(&mut self, within: Duration) -> Option<Bytes> {
        let deadline = Instant::now() + within;
        let mut sc = ReplyScanner::default();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            if let Some(n) = sc.next_frame(&self.buf).expect("valid RESP") {
                return Some(Bytes::from(self.buf.drain(..n).collect::<Vec<u8>>()));
            }
            if Instant::now() > deadline {
                return None;
            }
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }

    /// `n` frames, as text.
    fn frames(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| String::from_utf8_lossy(&self.frame()).into_owned())
            .collect()
    }

    /// The connection is closed by the other side (within 5 s).
    fn closed(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut b = [0u8; 64];
        while Instant::now() < deadline {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(_) => {}
            }
        }
        false
    }
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn addr_of(node: &RedisNode) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.port))
}

/// The payload of a message frame (`message` or `pmessage`, either protocol).
fn payload(frame: &Bytes) -> Option<Bytes> {
    let el = reply::elements(frame)?;
    let kind = reply::as_bytes(el.first()?)?;
    match &kind[..] {
        b"message" if el.len() == 3 => reply::as_bytes(&el[2]),
        b"pmessage" if el.len() == 4 => reply::as_bytes(&el[3]),
        _ => None,
    }
}

/// A key the proxy puts on shard `shard`.
fn key_on(proxy: &Proxy, shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| proxy.shard_of(k) == shard)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscribers_commands_go_to_their_keys_shards() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let keys: Vec<String> = (0..3).map(|s| key_on(&proxy, s, "r3:")).collect();
    let owners: Vec<usize> = keys.iter().map(|k| proxy.shard_of(k)).collect();
    let direct: Vec<SocketAddr> = nodes.iter().map(addr_of).collect();
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(addr);
        c.raw("HELLO 3\r\n");
        c.frame();
        c.raw("SUBSCRIBE r3news\r\n");
        assert_eq!(c.frames(1), ">3\r\n$9\r\nsubscribe\r\n$6\r\nr3news\r\n:1\r\n");
        for k in &keys {
            c.send(&[b"SET", k.as_bytes(), format!("v-{k}").as_bytes()]);
        }
        for k in &keys {
            c.send(&[b"GET", k.as_bytes()]);
        }
        c.raw("PING\r\n");
        let mut want = "+OK\r\n".repeat(3);
        for k in &keys {
            want.push_str(&format!("${}\r\nv-{k}\r\n", k.len() + 2));
        }
        want.push_str("+PONG\r\n");
        assert_eq!(c.frames(7), want);
        // Each key is on its ring shard, and only there.
        for (k, &owner) in keys.iter().zip(&owners) {
            for (i, d) in direct.iter().enumerate() {
                let mut n = Client::connect(*d);
                n.send(&[b"EXISTS", k.as_bytes()]);
                let want = if i == owner { ":1\r\n" } else { ":0\r\n" };
                assert_eq!(n.frames(1), want, "{k} on shard {i} (owner {owner})");
            }
        }
        // Messages still arrive, between replies, whole.
        let mut p = Client::connect(addr);
        p.raw("PUBLISH r3news hello\r\n");
        assert_eq!(p.frames(1), ":1\r\n");
        assert_eq!(c.frames(1), ">3\r\n$7\r\nmessage\r\n$6\r\nr3news\r\n$5\r\nhello\r\n");
        // A keyless command that Redis would run on the subscriber's own
        // connection is served as from any connection.
        c.raw("DBSIZE\r\n");
        assert_eq!(c.frames(1), ":3\r\n");
        // Shard channels on the same connection, either way round.
        c.raw("SSUBSCRIBE r3shard\r\n");
        assert_eq!(c.frames(1), ">3\r\n$10\r\nssubscribe\r\n$7\r\nr3shard\r\n:1\r\n");
        c.raw("PSUBSCRIBE r3*\r\n");
        assert_eq!(c.frames(1), ">3\r\n$10\r\npsubscribe\r\n$3\r\nr3*\r\n:2\r\n");
        p.raw("SPUBLISH r3shard s\r\n");
        assert_eq!(p.frames(1), ":1\r\n");
        assert_eq!(c.frames(1), ">3\r\n$8\r\nsmessage\r\n$7\r\nr3shard\r\n$1\r\ns\r\n");
        p.raw("PUBLISH r3news m\r\n");
        assert_eq!(p.frames(1), ":2\r\n");
        assert_eq!(
            c.frames(2),
            ">3\r\n$7\r\nmessage\r\n$6\r\nr3news\r\n$1\r\nm\r\n>4\r\n$8\r\npmessage\r\n$3\r\nr3*\r\n$6\r\nr3news\r\n$1\r\nm\r\n"
        );
    })
    .await
    .unwrap();
}

/// The same requests to one redis-server and through the proxy: the same
/// bytes back (Redis's subscribed-mode errors, PING's array, the counts,
/// normal service once every channel and pattern is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp2_subscriber_gets_what_redis_answers() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let plain = RedisNode::start();
    let (addr, plain_addr) = (proxy.addr, addr_of(&plain));
    // Once unsubscribed, a key goes to its shard (not the pub/sub shard).
    let (k, owner) = (key_on(&proxy, 2, "r2:"), addr_of(&nodes[2]));
    tokio::task::spawn_blocking(move || {
        let input = format!(
            "SUBSCRIBE a\r\nGET {k}\r\nSET {k} v\r\nPING\r\nPING x\r\nHELLO 3\r\nPSUBSCRIBE p*\r\nSUBSCRIBE a b\r\n\
             UNSUBSCRIBE b\r\nUNSUBSCRIBE\r\nGET {k}\r\nPUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nSET {k} v\r\nGET {k}\r\n"
        );
        let input = &input;
        let n = 16;
        let mut want = Client::connect(plain_addr);
        want.raw(input);
        let want = want.frames(n);
        let mut got = Client::connect(addr);
        got.raw(input);
        let got = got.frames(n);
        assert!(want.contains("-ERR Can't execute 'get'"), "{want}");
        assert!(want.ends_with("+OK\r\n$1\r\nv\r\n"), "{want}");
        assert_eq!(got, want);
        let mut o = Client::connect(owner);
        o.send(&[b"GET", k.as_bytes()]);
        assert_eq!(o.frames(1), "$1\r\nv\r\n", "{k} on its shard");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_quit_end_the_subscription() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    // Keys not on the pub/sub shard: served by the ring after RESET.
    let keys = [key_on(&proxy, 1, "reset:"), key_on(&proxy, 2, "reset:")];
    let owners = [addr_of(&nodes[1]), addr_of(&nodes[2])];
    tokio::task::spawn_blocking(move || {
        for (hello, (key, owner)) in ["", "HELLO 3\r\n"].into_iter().zip(keys.iter().zip(owners)) {
            let mut c = Client::connect(addr);
            if !hello.is_empty() {
                c.raw(hello);
                c.frame();
            }
            c.raw("CLIENT SETNAME subber\r\nSUBSCRIBE rs\r\nPSUBSCRIBE r*\r\n");
            c.frames(3);
            // RESET after a confirmation still on its way: in order.
            c.raw("SUBSCRIBE rs2\r\nRESET\r\nGET nothing\r\nCLIENT GETNAME\r\n");
            let got = c.frames(4);
            assert!(got.ends_with("+RESET\r\n$-1\r\n$-1\r\n"), "{hello:?}: {got}");
            assert!(got.contains("$3\r\nrs2\r\n:3\r\n"), "{got}");
            // No subscriber left on the pub/sub shard: nothing arrives.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut p = Client::connect(addr);
            loop {
                p.raw("PUBLISH rs m\r\n");
                if p.frames(1) == ":0\r\n" {
                    break;
                }
                assert!(Instant::now() < deadline, "still subscribed after RESET");
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(f) = c.try_frame(Duration::from_millis(300)) {
                panic!("after RESET: {f:?}");
            }
            c.send(&[b"SET", key.as_bytes(), b"1"]);
            c.send(&[b"GET", key.as_bytes()]);
            assert_eq!(c.frames(2), "+OK\r\n$1\r\n1\r\n");
            let mut o = Client::connect(owner);
            o.send(&[b"GET", key.as_bytes()]);
            assert_eq!(o.frames(1), "$1\r\n1\r\n", "{key} on its shard");
        }
        // QUIT: +OK (after the confirmations before it), then the end.
        let mut c = Client::connect(addr);
        c.raw("SUBSCRIBE q\r\nQUIT\r\n");
        assert_eq!(c.frames(2), "*3\r\n$9\r\nsubscribe\r\n$1\r\nq\r\n:1\r\n+OK\r\n");
        assert!(c.closed());
    })
    .await
    .unwrap();
}

const USERS: &str = r#"
[[users]]
name = "news"
password = "npass"
commands = "+@all -@admin -flushall"
keys = ["~app:*"]
channels = ["&news:*"]
"#;

/// A restricted user may subscribe, and every command it sends while
/// subscribed is checked as Redis checks it: channels, commands, keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_subscriber_is_checked_on_every_command() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, USERS).await;
    let plain = RedisNode::start();
    let (addr, plain_addr) = (proxy.addr, addr_of(&plain));
    tokio::task::spawn_blocking(move || {
        let mut admin = Client::connect(plain_addr);
        admin.raw("ACL SETUSER news on >npass +@all -@admin -flushall ~app:* resetchannels &news:*\r\n");
        assert_eq!(admin.frames(1), "+OK\r\n");
        let input = "HELLO 3 AUTH news npass\r\nSUBSCRIBE news:1\r\nSUBSCRIBE sport\r\nPSUBSCRIBE *\r\n\
                     PSUBSCRIBE news:*\r\nSET other v\r\nGET other\r\nFLUSHALL\r\nSET app:1 v\r\nGET app:1\r\n";
        let n = 10;
        let transcript = |a| {
            let mut c = Client::connect(a);
            c.raw(input);
            let mut fs: Vec<String> = (0..n)
                .map(|_| String::from_utf8_lossy(&c.frame()).into_owned())
                .collect();
            fs.remove(0); // HELLO's map (server, version differ)
            fs
        };
        let want = transcript(plain_addr);
        let got = transcript(addr);
        assert!(want[1].starts_with("-NOPERM"), "{want:?}");
        assert!(want[4].starts_with("-NOPERM"), "{want:?}");
        assert!(want[6].starts_with("-NOPERM"), "{want:?}");
        assert_eq!(got, want);
        // The key it was allowed to write is where the ring puts it.
        let mut c = Client::connect(addr);
        c.raw("AUTH news npass\r\nGET app:1\r\n");
        assert_eq!(c.frames(2), "+OK\r\n$1\r\nv\r\n");
    })
    .await
    .unwrap();
}

/// Messages keep their order and come whole: a 1 MiB message between small
/// ones, a pipelined burst of 10 000 (each once), with a RESP3 subscriber's
/// replies in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_whole_and_in_order() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let addr = proxy.addr;
    tokio::task::spawn_blocking(move || {
        let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        for resp3 in [false, true] {
            let mut c = Client::connect(addr);
            if resp3 {
                c.raw("HELLO 3\r\n");
                c.frame();
            }
            c.raw("SUBSCRIBE burst\r\n");
            c.frame();
            let mut p = Client::connect(addr);
            let n = 10_000;
            let mut input = Vec::new();
            for i in 0..n {
                if i == n / 2 {
                    input.extend_from_slice(&encode(&[b"PUBLISH", b"burst", &big]));
                }
                input.extend_from_slice(&encode(&[b"PUBLISH", b"burst", format!("m{i}").as_bytes()]));
            }
            let writer = std::thread::spawn({
                let mut s = p.s.try_clone().unwrap();
                move || s.write_all(&input).unwrap()
            });
            // A RESP3 subscriber asks meanwhile: its replies come in order.
            if resp3 {
                for i in 0..50 {
                    c.raw(&format!("SET burst:{i} {i}\r\nGET burst:{i}\r\n"));
                }
            }
            let mut replies = Vec::new();
            let mut next = 0;
            let mut got_big = false;
            while next < n || replies.len() < if resp3 { 100 } else { 0 } {
                let f = c.frame();
                match payload(&f) {
                    Some(m) if m.len() == big.len() => {
                        assert_eq!(&m[..], &big[..]);
                        assert_eq!(next, n / 2, "the big message in its place");
                        got_big = true;
                    }
                    Some(m) => {
                        assert_eq!(m, format!("m{next}").as_bytes(), "message {next}");
                        next += 1;
                    }
                    None => replies.push(String::from_utf8_lossy(&f).into_owned()),
                }
            }
            assert!(got_big);
            let want: Vec<String> = (0..50)
                .flat_map(|i| ["+OK\r\n".to_string(), format!("${}\r\n{i}\r\n", i.to_string().len())])
                .collect();
            assert_eq!(replies, if resp3 { want } else { Vec::new() });
            writer.join().unwrap();
            assert_eq!(p.frames(n + 1), ":1\r\n".repeat(n + 1));
            if let Some(f) = c.try_frame(Duration::from_millis(200)) {
                panic!("a message twice? {f:?}");
            }
        }
    })
    .await
    .unwrap();
}

/// The pub/sub shard goes away: a subscriber's connection is closed (it
/// must subscribe again, as after any disconnection); a SUBSCRIBE while the
/// shard is down gets the error and the client stays in normal service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pubsub_shard_closes_subscribers() {
    let mut nodes = three_nodes();
    let proxy = {
        let refs: Vec<_> = nodes.iter().collect();
        Proxy::start(&refs).await
    };
    let addr = proxy.addr;
    let key = key_on(&proxy, 1, "lost:");
    let mut c = tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(addr);
        c.raw("HELLO 3\r\nSUBSCRIBE lost\r\n");
        c.frames(2);
        c
    })
    .await
    .unwrap();
    nodes[0].kill();
    tokio::task::spawn_blocking(move || {
        assert!(c.closed(), "the subscriber's connection outlived its shard connection");
        let mut c = Client::connect(addr);
        c.raw("SUBSCRIBE lost\r\n");
        let got = c.frames(1);
        assert!(got.starts_with('-'), "{got}");
        // Still served, and not in subscribed mode.
        c.send(&[b"SET", key.as_bytes(), b"1"]);
        c.raw("PING\r\n");
        assert_eq!(c.frames(2), "+OK\r\n+PONG\r\n");
    })
    .await
    .unwrap();
}

/// A subscriber that does not read is not buffered for: the proxy stops
/// reading its shard connection, the shard's `client-output-buffer-limit
/// pubsub` (32 MiB hard) closes that connection, and the client's with it.
/// (A proxy that kept reading would hold every message and the shard would
/// never reach its limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_not_buffered_for() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let (addr, shard) = (proxy.addr, addr_of(&nodes[0]));
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(addr);
        c.raw("SUBSCRIBE slow\r\n");
        c.frame();
        // Publish straight to the shard: 256 MiB, never read by the client.
        let mut p = Client::connect(shard);
        let big = vec![b'x'; 1 << 20];
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        loop {
            p.send(&[b"PUBLISH", b"slow", &big]);
            let n = p.frames(1);
            sent += 1;
            if n == ":0\r\n" {
                break; // the shard dropped the subscriber's connection
            }
            assert!(
                sent < 256 && Instant::now() < deadline,
                "still subscribed after {sent} MiB"
            );
        }
        // Whatever was on its way is delivered, then the connection ends.
        let mut b = vec![0u8; 1 << 20];
        let mut read = 0usize;
        c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            match c.s.read(&mut b) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => panic!("the subscriber's connection was not closed: {e} after {read} bytes"),
            }
        }
        // In flight: the socket buffers of two loopback hops (a few MiB
        // each) and the proxy's 1 MiB of messages; 64 batches of 1 MiB
        // each (the first version) let 71 MB through.
        assert!(read < 40 << 20, "read {read} of {sent} MiB");
        eprintln!("published {sent} MiB before the shard closed the connection; the client read {read} bytes");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_subscribes_in_resp2_and_resp3() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    crate::support::run_py("subscriber.py", proxy.addr).await;
}

/// The shard refuses a SUBSCRIBE (its own ACL): one error answers the whole
/// command, and the confirmations of the next one are not taken for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_the_shard_refuses_answers_with_its_error() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let (addr, shard) = (proxy.addr, addr_of(&nodes[0]));
    tokio::task::spawn_blocking(move || {
        let mut admin = Client::connect(shard);
        admin.raw("ACL SETUSER default resetchannels &ok*\r\n");
        assert_eq!(admin.frames(1), "+OK\r\n");
        let mut c = Client::connect(addr);
        c.raw("SUBSCRIBE no1 no2\r\nSUBSCRIBE ok1 ok2\r\nPING\r\n");
        let got = c.frames(4);
        assert!(got.starts_with("-NOPERM"), "{got}");
        assert!(
            got.ends_with(
                "*3\r\n$9\r\nsubscribe\r\n$3\r\nok1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nok2\r\n:2\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
            ),
            "{got}"
        );
    })
    .await
    .unwrap();
}

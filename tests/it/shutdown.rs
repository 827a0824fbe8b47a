//! Graceful shutdown of the `shardis` binary (SIGTERM): pipelining clients
//! get whole replies and then the end of the stream, and nothing is executed
//! that was not answered; a rolling restart on one port (`SO_REUSEPORT`)
//! costs clients no error; the process exits within `shutdown_ms` whatever
//! its clients do (idle, subscribed, blocked).

use std::io::{Read, Write};
use std::net::{Shutdown as Both, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardis::protocol::Request;
use shardis::protocol::reply::frame_len;

use crate::support::{NodeClient, Proxy, RedisNode, config_text, free_port, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_shardis");

/// A `shardis` process, killed on drop; its log is collected as it comes.
struct Shardis {
    child: Child,
    log: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Shardis {
    /// Starts the binary on `port` in front of `nodes` and waits until it
    /// listens (from its log: with SO_REUSEPORT another process may answer
    /// on the same port).
    fn start(name: &str, port: u16, nodes: &[&RedisNode], extra: &str) -> Shardis {
        let dir = std::env::temp_dir().join(format!("shardis-shutdown-{}-{name}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");
        let text = config_text(nodes, extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let p = Shardis { child, log, dir };
        p.wait_log("shardis listening", Duration::from_secs(10));
        p
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_log(&self, needle: &str, within: Duration) {
        wait_until(within, &format!("'{needle}' in the log"), || {
            self.log().contains(needle)
        });
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit; panics after `within`.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {within:?} later:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Shardis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The value of counter `key`, on whichever node holds it.
fn counter(nodes: &[RedisNode], key: &str) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let v: Option<u64> = redis::cmd("GET").arg(key).query(&mut n.client()).unwrap();
            v.unwrap_or(0)
        })
        .sum()
}

/// How a run of pipelined batches on one connection ended.
#[derive(Debug, PartialEq)]
enum End {
    /// `stop` was set.
    Stopped,
    /// The proxy closed the connection after answering `answered` requests
    /// of the last batch (whole replies only).
    Closed { answered: usize },
    /// Anything else: an error reply, a wrong value, a reset, a cut reply.
    Failed(String),
}

/// Sends batches of `batch` pipelined `INCR key` on `s` (one write each) and
/// reads their replies, until `stop` or the connection ends. Each reply must
/// be the counter's next value: `next` is what the next INCR must answer
/// (counted on across connections); `acked` counts the replies.
fn incr_batches(
    s: &mut TcpStream,
    key: &str,
    batch: usize,
    next: &mut i64,
    acked: &AtomicU64,
    stop: &AtomicBool,
) -> End {
    let one = Request::from_args(&["INCR", key]).raw;
    let req: Vec<u8> = one.iter().copied().cycle().take(one.len() * batch).collect();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&req).is_err() {
            // Closed before this batch was written: nothing of it was read.
            return End::Closed { answered: 0 };
        }
        let mut answered = 0;
        while answered < batch {
            while let Some(n) = frame_len(&buf) {
                let frame: Vec<u8> = buf.drain(..n).collect();
                let text = String::from_utf8_lossy(&frame).trim_end().to_string();
                if text != format!(":{next}") {
                    return End::Failed(format!("reply {answered} of a batch: {text:?}, expected :{next}"));
                }
                *next += 1;
                answered += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            if answered == batch {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) if buf.is_empty() => return End::Closed { answered },
                Ok(0) => return End::Failed(format!("closed within a reply: {:?}", String::from_utf8_lossy(&buf))),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return End::Failed(format!("after {answered} replies of a batch: {e}")),
            }
        }
    }
    End::Stopped
}

/// SIGTERM while clients pipeline: every reply a client gets is whole and
/// right, each connection ends at a request boundary (here: a batch
/// boundary, as each batch arrives in one read), and the counters in Redis
/// equal the replies the clients got: nothing read was left unanswered and
/// nothing unanswered was executed. A client that streams requests in chunks
/// that cut them in two gets the same guarantee.
#[test]
fn sigterm_answers_what_was_read_and_closes_at_request_boundaries() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let port = free_port();
    let mut proxy = Shardis::start("sigterm", port, &refs, "threads = 2\nshutdown_ms = 5000\n");
    let stop = Arc::new(AtomicBool::new(false));

    // Four clients pipelining batches of 100 INCR, each on its own key.
    let keys: Vec<String> = (0..4).map(|i| format!("batch:{i}")).collect();
    let acked: Vec<Arc<AtomicU64>> = keys.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let batchers: Vec<_> = keys
        .iter()
        .zip(&acked)
        .map(|(key, acked)| {
            let (key, acked, stop) = (key.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr(port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut next = 1;
                incr_batches(&mut s, &key, 100, &mut next, &acked, &stop)
            })
        })
        .collect();

    // One client streams INCRs in 1000-byte writes, cutting requests in two,
    // while another thread reads the replies.
    let streamed = Arc::new(AtomicU64::new(0));
    let stream = TcpStream::connect(addr(port)).unwrap();
    let writer = {
        let mut s = stream.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let one = Request::from_args(&["INCR", "stream"]).raw;
            let bytes: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
            'out: while !stop.load(Ordering::Relaxed) {
                for c in bytes.chunks(1000) {
                    if s.write_all(c).is_err() {
                        break 'out;
                    }
                }
            }
        })
    };
    let reader = {
        let (mut s, streamed) = (stream, streamed.clone());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::thread::spawn(move || {
            let (mut buf, mut chunk, mut next) = (Vec::new(), vec![0u8; 64 * 1024], 1i64);
            loop {
                while let Some(n) = frame_len(&buf) {
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    let text = String::from_utf8_lossy(&frame).trim_end().to_string();
                    assert_eq!(text, format!(":{next}"), "streamed reply");
                    next += 1;
                    streamed.fetch_add(1, Ordering::Relaxed);
                }
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("streaming client: {e} after {} replies", next - 1),
                }
            }
            assert!(buf.is_empty(), "closed within a reply: {buf:?}");
            // Seen the end: close, as a client does (ends the writer too).
            let _ = s.shutdown(Both::Both);
        })
    };

    wait_until(Duration::from_secs(20), "load on every client", || {
        acked.iter().all(|a| a.load(Ordering::Relaxed) >= 1000) && streamed.load(Ordering::Relaxed) >= 1000
    });
    let t = Instant::now();
    proxy.signal(libc::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(8));
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status:?}");

    for ((key, acked), b) in keys.iter().zip(&acked).zip(batchers) {
        let end = b.join().unwrap();
        let acked = acked.load(Ordering::Relaxed);
        assert!(
            matches!(end, End::Closed { answered: 0 | 100 }),
            "{key}: {end:?} after {acked} replies; proxy exited in {took:?}; log:\n{}",
            proxy.log()
        );
        assert_eq!(counter(&nodes, key), acked, "{key}: executed vs answered");
        println!("{key}: {acked} INCR answered, then {end:?}");
    }
    reader
        .join()
        .expect("the streaming client saw only whole, right replies");
    writer.join().unwrap();
    let streamed = streamed.load(Ordering::Relaxed);
    assert_eq!(counter(&nodes, "stream"), streamed);
    println!("stream: {streamed} INCR answered; proxy exited in {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let log = proxy.log();
    assert!(log.contains("every client drained"), "{log}");
}

/// Figures of a client loop across restarts.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Connections the proxy closed at a batch boundary (the client then
    /// opens another one and sends the batch again).
    closed: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap();
        if first.len() < 5 {
            first.push(e);
        }
    }
}

/// One request per connection: connect, `INCR key`, read the reply, close.
/// Every reply must be the next value; any failure counts as an error.
fn short_connections(port: u16, key: &str, stop: &AtomicBool, tally: &Tally) {
    let req = Request::from_args(&["INCR", key]).raw;
    let mut next = 1i64;
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect_timeout(&addr(port), Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                tally.error(format!("connect: {e}"));
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        let result = s.write_all(&req).map_err(|e| format!("write: {e}")).and_then(|()| {
            loop {
                if let Some(n) = frame_len(&buf) {
                    break Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
                }
                match s.read(&mut chunk) {
                    Ok(0) => break Err(format!("closed with {} bytes of reply", buf.len())),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => break Err(format!("read: {e}")),
                }
            }
        });
        match result {
            Ok(r) if r == format!(":{next}") => {
                next += 1;
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                tally.error(format!("reply {r:?}, expected :{next}"));
                // Go on from what the server says.
                next = r.trim_start_matches(':').parse::<i64>().map_or(next, |v| v + 1);
            }
            Err(e) => tally.error(e),
        }
    }
}

/// Batches of 100 pipelined `INCR key`, on one connection after another:
/// when the proxy closes one at a batch boundary, the next batch goes on a
/// new connection. Returns the replies acknowledged.
fn reconnecting_batches(port: u16, key: &str, stop: &AtomicBool, tally: &Tally) -> u64 {
    let mut next = 1i64;
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect_timeout(&addr(port), Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                tally.error(format!("connect: {e}"));
                continue;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        match incr_batches(&mut s, key, 100, &mut next, &tally.ok, stop) {
            End::Stopped => {}
            End::Closed { answered: 0 | 100 } => {
                tally.closed.fetch_add(1, Ordering::Relaxed);
            }
            other => tally.error(format!("{other:?}")),
        }
    }
    next as u64 - 1
}

/// A rolling restart on one host: proxy B binds the port proxy A listens on
/// (SO_REUSEPORT), then A gets SIGTERM; twice (A -> B -> C). Meanwhile
/// clients open a connection per request, and a pipelining client sends
/// batches: no connection is refused, no request fails, and the counters
/// equal the replies.
#[test]
fn rolling_restart_on_one_port_costs_clients_nothing() {
    let nodes: Vec<RedisNode> = (0..2).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let port = free_port();
    let extra = "threads = 1\nshutdown_ms = 5000\n";
    let mut old = Shardis::start("gen0", port, &refs, extra);
    let stop = Arc::new(AtomicBool::new(false));
    let short = Arc::new(Tally::default());
    let piped = Arc::new(Tally::default());
    let shorts: Vec<_> = (0..4)
        .map(|i| {
            let (stop, tally) = (stop.clone(), short.clone());
            std::thread::spawn(move || short_connections(port, &format!("short:{i}"), &stop, &tally))
        })
        .collect();
    let batcher = {
        let (stop, tally) = (stop.clone(), piped.clone());
        std::thread::spawn(move || reconnecting_batches(port, "piped", &stop, &tally))
    };
    let t = Instant::now();
    while !(short.ok.load(Ordering::Relaxed) > 200 && piped.ok.load(Ordering::Relaxed) > 2000) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "load through the first proxy: {short:?} {piped:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut restarts = Vec::new();
    for generation in 1..=2 {
        // Opened while only the old proxy listens: reaches the old one.
        let mut old_conn = TcpStream::connect(addr(port)).unwrap();
        let new = Shardis::start(&format!("gen{generation}"), port, &refs, extra);
        // From now on the new proxy takes every new connection (the BPF
        // program of the port's SO_REUSEPORT group): the old one accepts
        // none, and its queue is empty when SIGTERM closes it.
        let accepted = |c: &mut TcpStream| -> u64 {
            let info = call(c, &["INFO", "stats"]);
            let line = info.lines().find_map(|l| l.strip_prefix("total_connections_received:"));
            line.and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{info}"))
        };
        let a0 = accepted(&mut old_conn);
        std::thread::sleep(Duration::from_millis(300));
        let a1 = accepted(&mut old_conn);
        assert_eq!(a1, a0, "the old proxy accepted connections after the new one listened");
        let (s0, p0) = (short.ok.load(Ordering::Relaxed), piped.ok.load(Ordering::Relaxed));
        let t = Instant::now();
        old.signal(libc::SIGTERM);
        let status = old.wait_exit(Duration::from_secs(8));
        assert!(status.success(), "{status:?}:\n{}", old.log());
        restarts.push(t.elapsed());
        assert!(old.log().contains("clients draining queued=0"), "{}", old.log());
        wait_eof(&mut old_conn, Duration::from_secs(1));
        old = new;
        let (s1, p1) = (short.ok.load(Ordering::Relaxed), piped.ok.load(Ordering::Relaxed));
        wait_until(Duration::from_secs(10), "load through the new proxy", || {
            short.ok.load(Ordering::Relaxed) > s1 + 200 && piped.ok.load(Ordering::Relaxed) > p1 + 2000
        });
        println!(
            "restart {generation}: old proxy exited in {:?}; during it {} short requests, {} pipelined INCR answered",
            restarts[generation - 1],
            s1 - s0,
            p1 - p0
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in shorts {
        s.join().unwrap();
    }
    let acked = batcher.join().unwrap();
    let figures = format!(
        "short connections: {} requests, {} errors {:?}; pipelined: {} INCR in batches of 100, {} connections closed by a restart at a batch boundary, {} errors {:?}",
        short.ok.load(Ordering::Relaxed),
        short.errors.load(Ordering::Relaxed),
        short.first_errors.lock().unwrap(),
        acked,
        piped.closed.load(Ordering::Relaxed),
        piped.errors.load(Ordering::Relaxed),
        piped.first_errors.lock().unwrap(),
    );
    println!("{figures}");
    assert_eq!(short.errors.load(Ordering::Relaxed), 0, "{figures}");
    assert_eq!(piped.errors.load(Ordering::Relaxed), 0, "{figures}");
    assert_eq!(counter(&nodes, "piped"), acked);
    let shorts_ok = short.ok.load(Ordering::Relaxed);
    let executed: u64 = (0..4).map(|i| counter(&nodes, &format!("short:{i}"))).sum();
    assert_eq!(executed, shorts_ok);
}

fn call(s: &mut TcpStream, args: &[&str]) -> String {
    s.write_all(&Request::from_args(args).raw).unwrap();
    read_frame(s).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Reads one reply frame; `Err("eof")` when the connection ends first.
fn read_frame(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if let Some(n) = frame_len(&buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        match s.read(&mut byte) {
            Ok(0) if buf.is_empty() => return Err("eof".into()),
            Ok(0) => return Err(format!("eof within {buf:?}")),
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits for the end of the stream on `s`; how long it took.
fn wait_eof(s: &mut TcpStream, within: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    match read_frame(s) {
        Err(e) if e == "eof" => t.elapsed(),
        other => panic!("expected the end of the stream, got {other:?} after {:?}", t.elapsed()),
    }
}

/// Idle clients, one that never sent a byte, and a subscriber are closed at
/// once, and one that sends its first request as the shutdown starts gets
/// its reply first: the proxy exits long before `shutdown_ms`.
#[test]
fn idle_clients_and_subscribers_are_closed_at_once() {
    let node = RedisNode::start();
    let port = free_port();
    let mut proxy = Shardis::start("idle", port, &[&node], "threads = 2\nshutdown_ms = 5000\n");
    let mut idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr(port)).unwrap()).collect();
    for s in &mut idle {
        assert_eq!(call(s, &["PING"]), "+PONG\r\n");
    }
    let mut silent = TcpStream::connect(addr(port)).unwrap();
    let mut sub = TcpStream::connect(addr(port)).unwrap();
    assert!(call(&mut sub, &["SUBSCRIBE", "news"]).contains("subscribe"));
    let mut publisher = node.client();
    wait_until(Duration::from_secs(5), "the subscription on the shard", || {
        let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("news")
            .query(&mut publisher)
            .unwrap();
        n.first().is_some_and(|(_, n)| *n == 1)
    });
    // Connected, and sends its first request only as the shutdown starts:
    // it is answered (the first-request grace), then closed.
    let mut late = TcpStream::connect(addr(port)).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t = Instant::now();
    proxy.signal(libc::SIGTERM);
    assert_eq!(call(&mut late, &["PING"]), "+PONG\r\n");
    wait_eof(&mut late, Duration::from_secs(2));
    for s in &mut idle {
        wait_eof(s, Duration::from_secs(2));
    }
    wait_eof(&mut sub, Duration::from_secs(2));
    // The silent one had the first-request grace (100 ms) to send something.
    wait_eof(&mut silent, Duration::from_secs(2));
    let status = proxy.wait_exit(Duration::from_secs(3));
    let took = t.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} of shutdown_ms 5000:\n{}",
        proxy.log()
    );
    println!("idle clients and a subscriber: exited in {took:?}");
    // No new client is accepted by a proxy shutting down: here, none is left.
    assert!(TcpStream::connect(addr(port)).is_err());
}

/// Blocked clients keep their blocking command until `shutdown_ms`: one
/// whose list gets an element meanwhile gets it and then the end of the
/// stream; one that waits for ever is closed when the proxy exits, at the
/// deadline.
#[test]
fn blocked_clients_are_answered_until_the_deadline_then_the_proxy_exits() {
    let node = RedisNode::start();
    let port = free_port();
    let mut proxy = Shardis::start("blocked", port, &[&node], "threads = 1\nshutdown_ms = 1500\n");
    let mut b1 = TcpStream::connect(addr(port)).unwrap();
    let mut b2 = TcpStream::connect(addr(port)).unwrap();
    b1.write_all(&Request::from_args(&["BLPOP", "q1", "0"]).raw).unwrap();
    b2.write_all(&Request::from_args(&["BLPOP", "q2", "0"]).raw).unwrap();
    let mut direct = node.client();
    wait_until(Duration::from_secs(5), "two clients blocked on the shard", || {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut direct).unwrap();
        info.contains("blocked_clients:2")
    });
    let t = Instant::now();
    proxy.signal(libc::SIGTERM);
    proxy.wait_log("listener closed", Duration::from_secs(2));
    let _: i64 = redis::cmd("LPUSH").arg("q1").arg("job").query(&mut direct).unwrap();
    b1.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(read_frame(&mut b1).unwrap(), "*2\r\n$2\r\nq1\r\n$3\r\njob\r\n");
    let after_reply = wait_eof(&mut b1, Duration::from_secs(1));
    assert!(after_reply < Duration::from_millis(500), "{after_reply:?}");
    wait_eof(&mut b2, Duration::from_secs(4));
    let status = proxy.wait_exit(Duration::from_secs(3));
    let took = t.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "exited {took:?} after SIGTERM, shutdown_ms 1500:\n{}",
        proxy.log()
    );
    assert!(proxy.log().contains("shutdown deadline reached"), "{}", proxy.log());
    let left: i64 = redis::cmd("LLEN").arg("q1").query(&mut direct).unwrap();
    assert_eq!(left, 0);
    println!("a client blocked for ever: exited {took:?} after SIGTERM (shutdown_ms 1500)");
}

/// The embedding API: hooks registered on `shared.shutdown` run when it is
/// triggered, `Server::run` returns, and `server::drain` waits for the
/// sessions (a redis-rs client closes when it sees the end of the stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_and_drain_waits_for_the_sessions() {
    let nodes = crate::support::three_nodes();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    proxy
        .shared
        .shutdown
        .on_shutdown("test deregistration", move || async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            r.store(true, Ordering::SeqCst);
        });
    let mut c = proxy.conn().await;
    let () = redis::AsyncCommands::set(&mut c, "k", 1).await.unwrap();
    assert_eq!(proxy.shared.stats.clients.load(Ordering::SeqCst), 1);
    let t = Instant::now();
    assert!(proxy.shared.shutdown.trigger());
    let deadline = shardis::server::shutdown_deadline(&proxy.shared);
    let left = tokio::time::timeout(Duration::from_secs(10), shardis::server::drain(&proxy.shared, deadline))
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(ran.load(Ordering::SeqCst), "the hook ran before drain returned");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "the listener is closed"
    );
    drop(c);
}

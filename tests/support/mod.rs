//! Test harness: real `redis-server` processes and a shardis proxy in front of
//! them, either in-process (most tests) or as the `shardis` binary.
//!
//! The processes, ports and waits are `shardis::testkit` (re-exported here);
//! this file adds what needs redis-rs, a dev-dependency only: a client per
//! node ([`NodeClient`]) and the in-process [`Proxy`].
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardis::config::Config;
use shardis::server::Server;
use shardis::state::Shared;
use shardis::workers::Workers;

pub use shardis::testkit::*;

pub mod mutex;

/// What needs redis-rs, which the library's test kit cannot depend on.
pub trait NodeClient {
    /// A plain synchronous client straight to this shard.
    fn client(&self) -> redis::Connection;
}

impl NodeClient for RedisNode {
    fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.addr()))
            .and_then(|c| c.get_connection())
            .expect("connect to shard")
    }
}

/// An in-process proxy on an ephemeral port: the listener on the test's
/// runtime, sessions and backend connections there too or on worker threads.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// The admin HTTP endpoint, when the configuration has `[admin] listen`
    /// (`127.0.0.1:0` for a free port).
    pub admin: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    /// Stopped (and joined) when the proxy is dropped.
    workers: Option<Workers>,
}

impl Proxy {
    pub async fn start(nodes: &[&RedisNode]) -> Proxy {
        Proxy::start_with(
            nodes,
            "[timeouts]\ncommand_ms = 500\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n",
        )
        .await
    }

    pub async fn start_with(nodes: &[&RedisNode], extra: &str) -> Proxy {
        Proxy::start_on(nodes, extra, 0).await
    }

    /// As [`Proxy::start_with`], with `workers` thread-per-core worker
    /// runtimes as the binary runs with `threads = workers` (0: none, all on
    /// the test's runtime).
    pub async fn start_on(nodes: &[&RedisNode], extra: &str, workers: usize) -> Proxy {
        Proxy::start_text(&config_text(nodes, extra), workers).await
    }

    /// A proxy from a whole configuration text (`listen` should be port 0).
    pub async fn start_text(text: &str, workers: usize) -> Proxy {
        let cfg = Config::parse(text).expect("valid test config");
        let workers = (workers > 0).then(|| Workers::start(workers, |_| {}).expect("worker threads"));
        let executors = workers.as_ref().map(|w| w.executors()).unwrap_or_default();
        let server = Server::bind_on(cfg, None, executors).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let admin = server.admin_addr();
        let shared = server.shared.clone();
        let task = tokio::spawn(server.run());
        Proxy {
            addr,
            shared,
            admin,
            task,
            workers,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// A redis-rs connection with no client-side response timeout (redis-rs
    /// defaults to 500 ms), so the proxy's own timeouts are what is tested.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .expect("connect to proxy")
    }

    /// Which test node (by index) the proxy routes `key` to.
    pub fn shard_of(&self, key: &str) -> usize {
        self.shared.topology.load().shard_of(key.as_bytes())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET path` on an HTTP endpoint (the admin endpoint): status and body.
/// A minimal HTTP/1.1 client for tests (one request, `Connection: close`).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the admin endpoint");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("admin endpoint answers within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { unchunk(body) } else { body.to_string() })
}

/// The body of a chunked HTTP/1.1 response.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Three fresh shards.
/// Reads until `want` has arrived (or 5 s): what arrived.
pub fn read_until(s: &mut TcpStream, want: &str) -> String {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&out).contains(want) && Instant::now() < deadline {
        if let Ok(n) = std::io::Read::read(s, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn three_nodes() -> Vec<RedisNode> {
    (0..3).map(|_| RedisNode::start()).collect()
}

/// Sends raw bytes and reads until `expect` bytes arrived or the timeout.
pub fn raw_roundtrip(addr: SocketAddr, input: &[u8], expect_len: usize, timeout: Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    s.write_all(input).expect("write");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while out.len() < expect_len && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    out
}

/// Runs `tests/py/<script>` with the proxy's port as its argument (redis-py
/// against shardis) and fails the test with its output if it fails.
pub async fn run_py(script: &str, addr: SocketAddr) {
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let port = addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("python3").arg(path).arg(port).output())
        .await
        .expect("python runner")
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "redis-py ({script}) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

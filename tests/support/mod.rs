//! Test harness: real `redis-server` processes and a shardis proxy in front of
//! them, either in-process (most tests) or as the `shardis` binary.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardis::config::Config;
use shardis::server::Server;
use shardis::state::Shared;
use shardis::workers::Workers;

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One `redis-server` child process, killed on drop.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Extra `redis-server` arguments (`--requirepass`, `--user`, ...).
    extra: Vec<String>,
}

impl RedisNode {
    pub fn start() -> RedisNode {
        RedisNode::start_with(&[])
    }

    /// A server started with extra arguments, say `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> RedisNode {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("shardis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let extra = extra.iter().map(|a| a.to_string()).collect();
        let mut node = RedisNode {
            port,
            child: None,
            dir,
            extra,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-deps.sh)");
        self.child = Some(child);
        wait_for_ping(self.port);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Hangs the server (it keeps its sockets but answers nothing).
    pub fn pause(&self) {
        unsafe_kill(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        unsafe_kill(self.pid(), libc::SIGCONT);
    }

    /// Kills the server; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh (empty) server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain synchronous client straight to this shard.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.addr()))
            .and_then(|c| c.get_connection())
            .expect("connect to shard")
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            unsafe_kill(c.id() as i32, libc::SIGCONT);
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a child we started; no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Waits until something answers PING on the port (`+PONG`, or `-NOAUTH`
/// from a server that wants a password).
pub fn wait_for_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut buf)
                    .map(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
                    .unwrap_or(false)
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing answered PING on port {port}");
}

/// Configuration text for a proxy in front of `nodes`, named shard-0.. .
pub fn config_text(nodes: &[&RedisNode], extra: &str) -> String {
    let mut s = format!("listen = \"127.0.0.1:0\"\n{extra}\n");
    for (i, n) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "[[backends]]\nname = \"shard-{i}\"\naddr = \"{}\"\n",
            n.addr()
        ));
    }
    s
}

/// An in-process proxy on an ephemeral port: the listener on the test's
/// runtime, sessions and backend connections there too or on worker threads.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
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
        let shared = server.shared.clone();
        let task = tokio::spawn(server.run());
        Proxy {
            addr,
            shared,
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

/// Three fresh shards.
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

//! Test kit (cargo feature `testing`): the one home of the helpers that our
//! tests, examples and benches share for running real `redis-server`
//! processes on loopback and for waiting on them.
//!
//! It owns:
//! - [`free_port`]: a loopback port nobody listens on right now;
//! - [`RedisNode`]: a `redis-server` child process on such a port, checked to
//!   be ours (`INFO server` `process_id`, another port if not), paused,
//!   resumed, killed and restarted on demand, killed when dropped;
//! - [`wait_for_ping`] / [`ping_within`]: until something speaks Redis on a
//!   port (`+PONG`, or `-NOAUTH` from a server that wants a password);
//! - [`config_text`]: a shardis configuration in front of some nodes;
//! - [`wait_until`] / [`wait_until_async`]: polling a condition with a
//!   deadline, instead of sleeping a fixed time and hoping;
//! - [`members`]: ring members `shard-0`.. for the ring benches;
//! - [`SentinelNode`], [`RedisNode::start_replica_of`]: Redis Sentinels and
//!   replicas for the Sentinel tests, [`ask`] one command of a test;
//! - [`EtcdNode`]: a one-member `etcd` on free loopback ports, killed and
//!   restarted on its data directory on demand, for the fleet tests;
//! - [`ShardisProcess`]: the `shardis` binary (its path given by the test,
//!   which knows `CARGO_BIN_EXE_shardis`) on a free port, with its log in a
//!   file and signals on demand (TERM, KILL, STOP, CONT).
//!
//! Whatever needs the `redis` client crate (only a dev-dependency of
//! shardis), such as a client connection to a node or the in-process proxy
//! harness, lives with the tests in `tests/support/mod.rs`, which builds on
//! this module. Shards in Docker containers are [`crate::testing`].

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ring::Member;

/// How long a `redis-server` gets to answer after it was started.
const START_WITHIN: Duration = Duration::from_secs(10);
/// How often the waits here poll.
const POLL: Duration = Duration::from_millis(10);

/// A free loopback port (bound, then released: another process may take it
/// before the caller does, which [`RedisNode`] checks for).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something answers PING on the loopback `port` (`+PONG`, or
/// `-NOAUTH` from a server that wants a password); panics after 10 s.
pub fn wait_for_ping(port: u16) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if let Err(e) = ping_within(addr, START_WITHIN) {
        panic!("nothing answered PING on port {port}: {e}");
    }
}

/// Waits up to `within` until something at `addr` answers PING (`+PONG`, or
/// `-NOAUTH`); the error says what was seen last.
pub fn ping_within(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(mut s) => match call(&mut s, &[b"PING"]) {
                Ok(r) if r.starts_with(b"+PONG") || r.starts_with(b"-NOAUTH") => return Ok(()),
                Ok(r) => format!("answered {:?}", String::from_utf8_lossy(&r)),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one command and reads its one reply (the crate's own request
/// encoder and reply framing).
fn call(s: &mut TcpStream, args: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(&crate::protocol::Request::from_args(args).raw)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while crate::protocol::reply::frame_len(&out).is_none() {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// Polls `condition` every 10 ms until it holds and returns how long that
/// took; panics naming `what` if it still does not hold after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// As [`wait_until`] for async tests: the condition may await, and the
/// polling sleeps on the tokio timer instead of blocking a runtime thread.
pub async fn wait_until_async(timeout: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One `redis-server` child process on loopback, killed on drop. It runs
/// without persistence, in a temporary directory of its own.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Extra `redis-server` arguments (`--requirepass`, `--user`, ...).
    extra: Vec<String>,
    /// Serving TLS only, on `port` ([`RedisNode::start_tls`]).
    tls: Option<NodeTls>,
}

impl RedisNode {
    pub fn start() -> RedisNode {
        RedisNode::start_with(&[])
    }

    /// A server started with extra arguments, say `["--requirepass", "pw"]`.
    /// A port that turns out to be taken (the server cannot bind it, or
    /// another server answers on it) is given up for another one.
    pub fn start_with(extra: &[&str]) -> RedisNode {
        RedisNode::start_as(extra, None)
    }

    fn start_as(extra: &[&str], tls: Option<NodeTls>) -> RedisNode {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut node = RedisNode {
                port,
                child: None,
                dir: std::env::temp_dir().join(format!("shardis-test-{}-{port}", std::process::id())),
                extra: extra.clone(),
                tls: tls.clone(),
            };
            match node.spawn() {
                Ok(()) => return node,
                // Dropping `node` removes its directory; try another port.
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// Starts `redis-server` on `self.port` and waits until it answers,
    /// making sure the answer comes from our child and not from a server
    /// someone else started on the same port a moment before.
    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--dir"])
            .arg(&self.dir)
            .args(self.tls.as_ref().map(|t| t.server_args(self.port)).unwrap_or_default())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server must be installed (scripts/install-deps.sh): {e}"));
        self.child = Some(child);
        let result = self.wait_ours();
        if result.is_err() {
            self.kill();
        }
        result
    }

    /// Waits until our child answers on the port (see [`RedisNode::spawn`]).
    fn wait_ours(&mut self) -> Result<(), String> {
        if self.tls.is_some() {
            return self.wait_ours_tls();
        }
        let port = self.port;
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1))
            .cloned();
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited with {status} on port {port}"));
            }
            let pid = child.id();
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                if let Some(pw) = &password {
                    match call(&mut s, &[b"AUTH", pw.as_bytes()]) {
                        Ok(r) if r.starts_with(b"+OK") => {}
                        Ok(r) if r.starts_with(b"-LOADING") => {}
                        Ok(r) => {
                            return Err(format!(
                                "port {port} is served by another redis-server (AUTH: {})",
                                String::from_utf8_lossy(&r).trim_end()
                            ));
                        }
                        Err(_) => {}
                    }
                }
                match call(&mut s, &[b"INFO", b"server"]) {
                    Ok(r) if r.starts_with(b"$") => {
                        if String::from_utf8_lossy(&r).contains(&format!("process_id:{pid}\r\n")) {
                            return Ok(());
                        }
                        return Err(format!("port {port} is served by another redis-server"));
                    }
                    // A password we do not know: whoever answers is not
                    // checked, but our child is alive and was given the port.
                    Ok(r) if r.starts_with(b"-NOAUTH") && password.is_none() => return Ok(()),
                    // Not ready (-LOADING), or a reset: ask again.
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("redis-server did not answer on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The child's process id (0 while it is not running).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Hangs the server (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Kills the server; its data is gone.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts a fresh (empty) server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("could not restart redis-server: {e}");
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        // A stopped process would not die of SIGKILL until continued.
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a child we started; no memory is involved.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Kills a child we started (SIGCONT first, so a paused one dies too) and
/// reaps it; nothing if it is gone already.
fn kill_child(child: &mut Option<std::process::Child>) {
    if let Some(mut c) = child.take() {
        signal(c.id() as i32, libc::SIGCONT);
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Configuration text for a proxy on an ephemeral loopback port in front of
/// `nodes`, named `shard-0`, `shard-1`, ...; `extra` goes before the backends.
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

/// `n` ring members `shard-0` .. `shard-{n-1}`, all of weight 1.
pub fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            name: format!("shard-{i}"),
            weight: 1,
        })
        .collect()
}

mod processes;
mod tls;
pub use processes::{EtcdNode, ShardisProcess};
pub use tls::NodeTls;
mod sentinel;
pub use sentinel::{SentinelNode, SentinelTiming, ask, wait_replica_synced};

//! Processes of the fleet tests: a one-member `etcd` ([`EtcdNode`]) and the
//! `shardis` binary itself ([`ShardisProcess`]), each with its log, signals
//! and a restart, killed on drop.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// How long `etcd` and a `shardis` process get to answer after start.
const PROCESS_START_WITHIN: Duration = Duration::from_secs(20);
/// How many log lines a process prints when a test panics while it runs.
const LOG_TAIL_ON_PANIC: usize = 80;

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A log file opened for appending, for a child's stdout and stderr.
fn log_file(path: &Path) -> Result<(File, File), String> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f.try_clone().map_err(|e| e.to_string())?;
    Ok((f, g))
}

/// What a log file holds from byte `from` on (empty if it cannot be read).
fn read_from(path: &Path, from: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// One plain HTTP/1.0 GET on loopback `port`; the whole response, headers
/// included.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A one-member `etcd` (v3 API, as Debian's `etcd-server` installs it) on two
/// free loopback ports (clients, peers), with its data directory and log
/// (`etcd.log`) in a temporary directory of its own. [`EtcdNode::kill`] and
/// [`EtcdNode::restart`] stop it and start it again on the same ports and
/// data, so what it stored survives, as for a real outage. Killed, and its
/// directory removed, on drop; if the test is panicking then, the tail of
/// its log goes to stderr first.
pub struct EtcdNode {
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl EtcdNode {
    /// Starts etcd and waits until it reports itself healthy; a port that
    /// turns out to be taken is given up for another pair.
    pub fn start() -> EtcdNode {
        let mut last_err = String::new();
        for _ in 0..5 {
            let (client_port, peer_port) = (free_port(), free_port());
            if client_port == peer_port {
                continue;
            }
            let dir = std::env::temp_dir().join(format!("shardis-etcd-{}-{client_port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let mut node = EtcdNode {
                client_port,
                peer_port,
                child: None,
                dir,
            };
            match node.spawn() {
                Ok(()) => return node,
                // Dropping `node` removes its directory; try other ports.
                Err(e) => last_err = e,
            }
        }
        panic!("could not start etcd: {last_err}");
    }

    /// The client endpoint as shardis takes it: `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// Everything etcd logged so far, over all its restarts.
    pub fn log(&self) -> String {
        read_from(&self.log_path(), 0)
    }

    /// The child's process id (0 while it is not running).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let log = self.log_path();
        let from = file_len(&log);
        let (out, err) = log_file(&log)?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("etcd must be installed (scripts/install-deps.sh: etcd-server): {e}"));
        self.child = Some(child);
        let result = self.wait_ours(from);
        if result.is_err() {
            self.kill();
        }
        result
    }

    /// Waits until `/health` says `"health":"true"` on the client port and
    /// our child's log (from byte `from`, this start's part) says it serves
    /// clients on that port: an etcd someone else runs there would answer
    /// the health check too, but our child would have exited, unable to
    /// bind.
    fn wait_ours(&mut self, from: u64) -> Result<(), String> {
        let port = self.client_port;
        let serving = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + PROCESS_START_WITHIN;
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "etcd exited with {status} (ports {port}, {}):\n{}",
                    self.peer_port,
                    tail(&read_from(&self.log_path(), from), 20)
                ));
            }
            let last = match http_get(port, "/health") {
                Ok(r) if r.contains("\"health\":\"true\"") => {
                    let log = read_from(&self.log_path(), from);
                    if log.lines().any(|l| l.contains("serving") && l.contains(&serving)) {
                        return Ok(());
                    }
                    "healthy, but our etcd's log does not say it serves the port yet".to_string()
                }
                Ok(r) => format!("answered {:?}", tail(&r, 1)),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!("etcd did not become healthy on port {port}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd (SIGKILL); its data directory stays for [`EtcdNode::restart`].
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Hangs etcd (SIGSTOP): its sockets stay open but nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// Lets a paused etcd run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Starts etcd again on the same ports and data directory (killing it
    /// first if it runs) and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        let mut last_err = String::new();
        // The ports were ours a moment ago; a few tries ride out a socket
        // the kernel has not quite released.
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last_err = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not restart etcd: {last_err}");
    }
}

impl Drop for EtcdNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- etcd {} log (last lines) ----\n{}",
                self.endpoint(),
                tail(&self.log(), LOG_TAIL_ON_PANIC / 4)
            );
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `shardis` binary as a child process: `<bin> -c <dir>/proxy.toml`,
/// where the file is `listen = "127.0.0.1:<free port>"` followed by the
/// caller's configuration text (which must not set `listen`, and must put
/// any top-level key before its first table). Its stdout and stderr go to
/// `<dir>/shardis.log` (`RUST_LOG=info` unless the environment sets it).
/// Killed on drop; if the test is panicking then, the tail of its log goes
/// to stderr first, so a failure shows what each proxy said.
///
/// The binary's path is an argument because only the test knows it
/// (`env!("CARGO_BIN_EXE_shardis")`).
pub struct ShardisProcess {
    pub port: u16,
    /// A label for failure messages (say the fleet id, `proxy-1`).
    pub label: String,
    bin: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
    /// How the last exit, seen by [`ShardisProcess::wait_exit`], ended.
    exited: Option<ExitStatus>,
}

impl ShardisProcess {
    /// Starts the proxy and waits until it answers PING (`+PONG`). A proxy in
    /// a fleet (`[cluster]`) answers only once it has the topology, so this
    /// also waits for that. A port that turns out to be taken is given up
    /// for another one; any other early exit panics with the log.
    pub fn start(bin: impl AsRef<Path>, label: &str, config: &str) -> ShardisProcess {
        for _ in 0..3 {
            let mut p = ShardisProcess::spawn(bin.as_ref(), label, config);
            match p.wait_ready(PROCESS_START_WITHIN) {
                Ok(()) => return p,
                Err(e) if p.log().contains("in use") => {
                    eprintln!("{label}: port {} taken, another one: {e}", p.port);
                }
                // Dropped while panicking, `p` prints the tail of its log.
                Err(e) => panic!("{label} did not start: {e}"),
            }
        }
        panic!("{label}: no free port after 3 tries");
    }

    /// Starts the proxy without waiting for it (see [`ShardisProcess::wait_ready`]).
    pub fn spawn(bin: impl AsRef<Path>, label: &str, config: &str) -> ShardisProcess {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("shardis-proc-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(
            dir.join("proxy.toml"),
            format!("listen = \"127.0.0.1:{port}\"\n{config}"),
        )
        .expect("write the proxy's configuration");
        let mut p = ShardisProcess {
            port,
            label: label.to_string(),
            bin: bin.as_ref().to_path_buf(),
            child: None,
            dir,
            exited: None,
        };
        p.launch();
        p
    }

    fn launch(&mut self) {
        let (out, err) = log_file(&self.log_path()).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("proxy.toml"))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        self.child = Some(child);
        self.exited = None;
    }

    /// Waits up to `within` until the proxy answers `+PONG`; the error says
    /// what was seen last, or how the process exited.
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let addr = self.addr();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.exited = Some(status);
                self.child = None;
                return Err(format!("{} exited with {status}", self.label));
            }
            if self.child.is_none() {
                return Err(format!("{} is not running", self.label));
            }
            let last = match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(mut s) => match call(&mut s, &[b"PING"]) {
                    Ok(r) if r.starts_with(b"+PONG") => return Ok(()),
                    Ok(r) => format!("answered {:?}", String::from_utf8_lossy(&r).trim_end()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!("{} did not answer PING within {within:?}: {last}", self.label));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The configuration file the proxy was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("proxy.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("shardis.log")
    }

    /// Everything the proxy logged so far (over restarts), for failure messages.
    pub fn log(&self) -> String {
        read_from(&self.log_path(), 0)
    }

    /// The child's process id (0 once it was reaped or never ran).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Whether the process still runs (a stopped one does).
    pub fn is_running(&mut self) -> bool {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            self.exited = Some(status);
            self.child = None;
        }
        self.child.is_some()
    }

    /// SIGTERM: the proxy shuts down gracefully (see [`ShardisProcess::wait_exit`]).
    pub fn sigterm(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// SIGKILL, and reaps the process: gone at once, nothing cleaned up.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.exited = c.wait().ok();
        }
    }

    /// SIGSTOP: the proxy hangs, its sockets open, answering nothing.
    pub fn sigstop(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// SIGCONT: a stopped proxy runs again.
    pub fn sigcont(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Waits up to `within` for the process to exit; its status, or `None`
    /// if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if !self.is_running() {
                return self.exited;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts the same binary on the same port and configuration again
    /// (after an exit or a kill; a running process is killed first) and
    /// waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.sigcont();
        self.sigkill();
        self.launch();
        self.wait_ready(PROCESS_START_WITHIN)
    }
}

impl Drop for ShardisProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (port {}) log (last lines) ----\n{}",
                self.label,
                self.port,
                tail(&self.log(), LOG_TAIL_ON_PANIC)
            );
        }
        // A stopped process would not die of SIGKILL until continued.
        self.sigcont();
        self.sigkill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

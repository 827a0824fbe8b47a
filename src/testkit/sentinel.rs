//! Sentinel tests' processes: a replica of a [`RedisNode`]
//! ([`RedisNode::start_replica_of`]) and a Redis Sentinel
//! ([`SentinelNode`], `redis-server <conf> --sentinel`, as Debian's
//! `redis-sentinel` symlink runs it) on free loopback ports, with short
//! `down-after-milliseconds` and `failover-timeout` so a failover takes a
//! few seconds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

impl RedisNode {
    /// A server replicating `master` (`--replicaof`); see
    /// [`wait_replica_synced`] for when it has the master's data.
    pub fn start_replica_of(master: &RedisNode) -> RedisNode {
        let port = master.port.to_string();
        RedisNode::start_with(&["--replicaof", "127.0.0.1", &port])
    }
}

/// One command to a loopback port, its reply as text (empty on failure).
pub fn ask(port: u16, args: &[&str]) -> String {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(mut s) => call(&mut s, &args)
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits (up to 20 s) until the server on `port` is a replica with its
/// link to the master up; panics otherwise.
pub fn wait_replica_synced(port: u16) {
    wait_until(Duration::from_secs(20), "replica link up", || {
        ask(port, &["INFO", "replication"]).contains("master_link_status:up")
    });
}

/// Timing of the Sentinels' failovers.
#[derive(Debug, Clone, Copy)]
pub struct SentinelTiming {
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
}

impl Default for SentinelTiming {
    fn default() -> Self {
        SentinelTiming {
            down_after_ms: 1000,
            failover_timeout_ms: 3000,
        }
    }
}

/// One Redis Sentinel on a free loopback port, monitoring some masters
/// (quorum 2), its configuration and log in a temporary directory of its
/// own. Killed, and the directory removed, on drop.
pub struct SentinelNode {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl SentinelNode {
    /// Starts a Sentinel monitoring each `(name, master port)`.
    pub fn start(masters: &[(&str, u16)], timing: SentinelTiming) -> SentinelNode {
        SentinelNode::start_with(masters, timing, "")
    }

    /// As [`SentinelNode::start`], with more lines for `sentinel.conf`
    /// (say `tls-replication yes` and certificate files, for TLS masters).
    pub fn start_with(masters: &[(&str, u16)], timing: SentinelTiming, extra_conf: &str) -> SentinelNode {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("shardis-sentinel-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                last = e.to_string();
                continue;
            }
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile {}\n",
                dir.display(),
                dir.join("sentinel.log").display()
            );
            conf.push_str(extra_conf);
            for (name, mport) in masters {
                let d = timing.down_after_ms;
                let f = timing.failover_timeout_ms;
                conf.push_str(&format!(
                    "sentinel monitor {name} 127.0.0.1 {mport} 2\nsentinel down-after-milliseconds {name} {d}\nsentinel failover-timeout {name} {f}\nsentinel parallel-syncs {name} 1\n"
                ));
            }
            if let Err(e) = std::fs::write(dir.join("sentinel.conf"), conf) {
                last = e.to_string();
                continue;
            }
            let mut node = SentinelNode { port, child: None, dir };
            match node.spawn() {
                Ok(()) => return node,
                Err(e) => last = e,
            }
        }
        panic!("could not start a Sentinel: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .arg(self.dir.join("sentinel.conf"))
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server --sentinel: {e}"))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("sentinel exited with {status} on port {}", self.port));
            }
            let info = ask(self.port, &["INFO", "server"]);
            if info.contains(&format!("process_id:{pid}\r\n")) {
                return Ok(());
            }
            if !info.is_empty() && info.contains("process_id:") {
                self.kill();
                return Err(format!("port {} is served by another process", self.port));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("sentinel did not answer on port {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The port of the master of `name`, as this Sentinel says.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let r = ask(self.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name]);
        // *2 $9 127.0.0.1 $N port
        r.lines().nth(4).and_then(|p| p.trim().parse().ok())
    }

    /// Waits (up to 30 s) until this Sentinel knows `replicas` replicas of
    /// `name` and `others` other Sentinels.
    pub fn wait_knows(&self, name: &str, replicas: usize, others: usize) {
        wait_until(
            Duration::from_secs(30),
            "Sentinel to know replicas and Sentinels",
            || {
                let r = ask(self.port, &["SENTINEL", "MASTER", name]);
                let field = |f: &str| {
                    let lines: Vec<&str> = r.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == f)
                        .and_then(|i| lines.get(i + 2))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                };
                field("num-slaves").is_some_and(|n| n >= replicas)
                    && field("num-other-sentinels").is_some_and(|n| n >= others)
            },
        );
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }

    /// Kills the Sentinel (SIGKILL); [`SentinelNode::restart`] brings it back
    /// with the configuration it has rewritten.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGSTOP: it keeps its sockets and answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("could not restart the Sentinel: {e}");
        }
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- sentinel {} log (last lines) ----\n{}",
                self.port,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! TLS in the test kit: a `redis-server` serving TLS only (`--port 0
//! --tls-port`), with the certificate files a test made, and its readiness
//! checked with `redis-cli --tls` (Debian's redis-tools is built with TLS).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisNode, START_WITHIN};

/// The files a TLS `redis-server` serves with, and whether it asks
/// clients for a certificate (`--tls-auth-clients`).
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates (and, for `redis-cli`, the server's) are
    /// checked against.
    pub ca: PathBuf,
    /// `--tls-auth-clients yes`: a client must show a certificate; the
    /// readiness check shows `cert` and `key`.
    pub auth_clients: bool,
}

impl NodeTls {
    /// The `redis-server` arguments: TLS on `port`, no plain port.
    pub(super) fn server_args(&self, port: u16) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p(&self.cert),
            "--tls-key-file".into(),
            p(&self.key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            if self.auth_clients { "yes" } else { "no" }.into(),
        ]
    }

    /// `redis-cli` arguments that reach such a server.
    pub fn cli_args(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        let mut a = vec!["--tls".into(), "--cacert".into(), p(&self.ca)];
        if self.auth_clients {
            a.extend(["--cert".into(), p(&self.cert), "--key".into(), p(&self.key)]);
        }
        a
    }
}

impl RedisNode {
    /// A server serving TLS only with `tls`'s files, and `extra` arguments.
    pub fn start_tls(tls: &NodeTls, extra: &[&str]) -> RedisNode {
        RedisNode::start_as(extra, Some(tls.clone()))
    }

    /// Runs `redis-cli` (with the TLS options) against this TLS node;
    /// its output.
    pub fn cli_tls(&self, args: &[&str]) -> String {
        let tls = self.tls.as_ref().expect("a TLS node");
        let out = Command::new("redis-cli")
            .args(tls.cli_args())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("redis-cli must be installed: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As `wait_ours` for a TLS node: `INFO server` over TLS names our
    /// child's pid.
    pub(super) fn wait_ours_tls(&mut self) -> Result<(), String> {
        let port = self.port;
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited with {status} on TLS port {port}"));
            }
            let pid = child.id();
            let info = self.cli_tls(&["INFO", "server"]);
            if info.contains(&format!("process_id:{pid}")) {
                return Ok(());
            }
            if info.contains("process_id:") {
                return Err(format!("port {port} is served by another redis-server"));
            }
            if Instant::now() >= deadline {
                return Err(format!("redis-server did not answer over TLS on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

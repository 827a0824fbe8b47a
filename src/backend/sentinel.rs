//! Talking to Redis Sentinels: who is the master of a monitored name (with
//! Sentinel's config epoch, so a Sentinel that has not heard of a failover
//! yet cannot send the proxy back to the old master), which replicas it has,
//! and the `+switch-master` subscription. Every call opens a connection of
//! its own, with AUTH when `[sentinel]` has credentials, within a timeout;
//! nothing a Sentinel sends can panic the proxy.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::config::SentinelConfig;
use crate::protocol::Request;
use crate::protocol::reply::{self, ReplyScanner};

/// A master as one Sentinel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    pub addr: String,
    /// Sentinel's `config-epoch`: raised by every failover.
    pub epoch: u64,
}

/// A replica as the Sentinels list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAddr {
    pub addr: String,
    /// Not subjectively/objectively down, not disconnected, link to its master up.
    pub healthy: bool,
}

/// A connection to a Sentinel, authenticated if `[sentinel]` says so, with
/// a reader for its replies.
pub struct SentinelConn {
    pub addr: String,
    stream: TcpStream,
    buf: BytesMut,
    scanner: ReplyScanner,
}

impl SentinelConn {
    /// Connects to the Sentinel at `addr` within `within`.
    pub async fn open(addr: &str, cfg: &SentinelConfig, within: Duration) -> Result<SentinelConn, String> {
        let attempt = async {
            let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let mut c = SentinelConn {
                addr: addr.to_string(),
                stream,
                buf: BytesMut::with_capacity(4096),
                scanner: ReplyScanner::default(),
            };
            if let Some(pw) = &cfg.password {
                let auth = match &cfg.username {
                    Some(u) => Request::from_args(&["AUTH", u, pw]),
                    None => Request::from_args(&["AUTH", pw]),
                };
                c.send(&auth.raw).await?;
                let r = c.next_frame().await?;
                if !reply::is_ok(&r) {
                    return Err(format!("AUTH refused: {}", text(&r)));
                }
            }
            Ok(c)
        };
        match tokio::time::timeout(within, attempt).await {
            Ok(r) => r.map_err(|e| format!("sentinel {addr}: {e}")),
            Err(_) => Err(format!("sentinel {addr}: no answer within {} ms", within.as_millis())),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) -> Result<(), String> {
        self.stream.write_all(raw).await.map_err(|e| e.to_string())
    }

    /// The next reply frame (push messages included), waiting as long as it takes.
    pub async fn next_frame(&mut self) -> Result<Bytes, String> {
        loop {
            if let Some(n) = self.scanner.next_frame(&self.buf).map_err(|e| e.to_string())? {
                return Ok(self.buf.split_to(n).freeze());
            }
            if self.buf.len() > 16 * 1024 * 1024 {
                return Err("reply too large".to_string());
            }
            if self.stream.read_buf(&mut self.buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed".to_string());
            }
        }
    }

    /// One request and its reply, within `within`.
    pub async fn call(&mut self, args: &[&str], within: Duration) -> Result<Bytes, String> {
        let raw = Request::from_args(args).raw;
        let fut = async {
            self.send(&raw).await?;
            self.next_frame().await
        };
        match tokio::time::timeout(within, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", within.as_millis())),
        }
    }
}

/// A reply's text, for messages.
fn text(frame: &Bytes) -> String {
    String::from_utf8_lossy(frame.get(1..).unwrap_or_default())
        .trim_end()
        .to_string()
}

/// A flat `field value field value ...` array (Sentinel's replies) as pairs.
fn fields(frame: &Bytes) -> Vec<(String, String)> {
    let elems = reply::elements(frame).unwrap_or_default();
    elems
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((
                String::from_utf8_lossy(&reply::as_bytes(k)?).into_owned(),
                String::from_utf8_lossy(&reply::as_bytes(v)?).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `host:port`, bracketing an IPv6 host.
fn join_addr(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `SENTINEL MASTER <name>` on one Sentinel.
async fn master_on(
    addr: String,
    cfg: Arc<SentinelConfig>,
    name: Arc<str>,
    within: Duration,
) -> Result<MasterAddr, String> {
    let mut c = SentinelConn::open(&addr, &cfg, within).await?;
    let r = c
        .call(&["SENTINEL", "MASTER", &name], within)
        .await
        .map_err(|e| format!("sentinel {addr}: {e}"))?;
    if reply::is_error(&r) {
        return Err(format!("sentinel {addr}: {}", text(&r)));
    }
    let f = fields(&r);
    match (field(&f, "ip"), field(&f, "port")) {
        (Some(ip), Some(port)) if !ip.is_empty() && port.parse::<u16>().is_ok() => Ok(MasterAddr {
            addr: join_addr(ip, port),
            epoch: field(&f, "config-epoch").and_then(|e| e.parse().ok()).unwrap_or(0),
        }),
        _ => Err(format!("sentinel {addr}: no address for master '{name}'")),
    }
}

/// Asks every Sentinel at once for the master of `name` and takes the
/// answer with the highest config epoch among the first majority to answer
/// (a Sentinel that missed a failover still has the old epoch), or among
/// all that answered when fewer did. Errs, naming each Sentinel's failure,
/// when none answers within `within`.
pub async fn ask_master(cfg: &Arc<SentinelConfig>, name: &str, within: Duration) -> Result<MasterAddr, String> {
    let name: Arc<str> = Arc::from(name);
    let mut set = JoinSet::new();
    for addr in &cfg.addrs {
        set.spawn(master_on(addr.clone(), cfg.clone(), name.clone(), within));
    }
    let mut best: Option<MasterAddr> = None;
    let mut errors = Vec::new();
    let (mut answered, majority) = (0, cfg.addrs.len() / 2 + 1);
    // A majority is enough (a failover needs one): a hung Sentinel does
    // not hold up the answer.
    while answered < majority
        && let Some(joined) = set.join_next().await
    {
        match joined {
            Ok(Ok(m)) => {
                answered += 1;
                if best.as_ref().is_none_or(|b| m.epoch > b.epoch) {
                    best = Some(m);
                }
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    best.ok_or_else(|| format!("no Sentinel named the master of '{name}': {}", errors.join("; ")))
}

/// `SENTINEL REPLICAS <name>`, from the first Sentinel that answers.
pub async fn ask_replicas(cfg: &SentinelConfig, name: &str, within: Duration) -> Result<Vec<ReplicaAddr>, String> {
    let mut errors = Vec::new();
    for addr in &cfg.addrs {
        let r = match SentinelConn::open(addr, cfg, within).await {
            Ok(mut c) => c.call(&["SENTINEL", "REPLICAS", name], within).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(f) if !reply::is_error(&f) => {
                let list = reply::elements(&f).unwrap_or_default();
                return Ok(list.iter().filter_map(replica_of).collect());
            }
            Ok(f) => errors.push(format!("sentinel {addr}: {}", text(&f))),
            Err(e) => errors.push(e),
        }
    }
    Err(format!(
        "no Sentinel listed the replicas of '{name}': {}",
        errors.join("; ")
    ))
}

/// One entry of `SENTINEL REPLICAS`; none without a usable address: a
/// Sentinel that monitors by hostname (`resolve-hostnames yes`) lists a
/// demoted master whose name no longer resolves (its container stopped)
/// with an empty `ip`.
fn replica_of(entry: &Bytes) -> Option<ReplicaAddr> {
    let f = fields(entry);
    let (ip, port) = (field(&f, "ip")?, field(&f, "port")?);
    if ip.is_empty() {
        return None;
    }
    port.parse::<u16>().ok()?;
    let flags = field(&f, "flags").unwrap_or("");
    let down = flags
        .split(',')
        .any(|x| matches!(x, "s_down" | "o_down" | "disconnected"));
    let link_ok = field(&f, "master-link-status").is_none_or(|s| s == "ok");
    Some(ReplicaAddr {
        addr: join_addr(ip, port),
        healthy: !down && link_ok,
    })
}

/// The master name in a `+switch-master` message
/// (`<name> <old ip> <old port> <new ip> <new port>`) pushed on a
/// subscribed connection, if `frame` is one.
pub fn switch_master_name(frame: &Bytes) -> Option<String> {
    let parts = reply::elements(frame)?;
    let kind = reply::as_bytes(parts.first()?)?;
    let channel = reply::as_bytes(parts.get(1)?)?;
    if !kind.eq_ignore_ascii_case(b"message") || &channel[..] != b"+switch-master" {
        return None;
    }
    let payload = reply::as_bytes(parts.get(2)?)?;
    String::from_utf8_lossy(&payload)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// What the failover task is doing, for INFO: the Sentinel it is
/// subscribed to, the `+switch-master` events it got, its polls.
#[derive(Debug, Default)]
pub struct SentinelStatus {
    pub subscribed: std::sync::Mutex<String>,
    pub events: std::sync::atomic::AtomicU64,
    pub polls: std::sync::atomic::AtomicU64,
    pub poll_errors: std::sync::atomic::AtomicU64,
}

impl SentinelStatus {
    pub fn set_subscribed(&self, addr: &str) {
        let mut s = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        s.clear();
        s.push_str(addr);
    }

    pub fn subscribed(&self) -> String {
        self.subscribed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_replies_parse_without_trusting_them() {
        let master = Bytes::from_static(
            b"*6\r\n$4\r\nname\r\n$1\r\na\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n7001\r\n",
        );
        let f = fields(&master);
        assert_eq!(field(&f, "ip"), Some("127.0.0.1"));
        let replica = Bytes::from_static(
            b"*8\r\n$2\r\nip\r\n$3\r\n::1\r\n$4\r\nport\r\n$4\r\n7002\r\n$5\r\nflags\r\n$12\r\nslave,s_down\r\n$18\r\nmaster-link-status\r\n$2\r\nok\r\n",
        );
        let r = replica_of(&replica).unwrap();
        assert_eq!(r.addr, "[::1]:7002");
        assert!(!r.healthy, "a replica Sentinel thinks down is not read from");
        let up =
            Bytes::from_static(b"*6\r\n$2\r\nip\r\n$1\r\nh\r\n$4\r\nport\r\n$1\r\n1\r\n$5\r\nflags\r\n$5\r\nslave\r\n");
        assert!(replica_of(&up).unwrap().healthy);
        // A demoted master whose hostname no longer resolves: no address.
        let unresolved = Bytes::from_static(
            b"*6\r\n$2\r\nip\r\n$0\r\n\r\n$4\r\nport\r\n$4\r\n6379\r\n$5\r\nflags\r\n$12\r\nslave,s_down\r\n",
        );
        assert!(replica_of(&unresolved).is_none());
        // Garbage and truncated replies give nothing, never a panic.
        for junk in [&b"+OK\r\n"[..], b"*3\r\n$2\r\nip\r\n", b"*2\r\n$2\r\nip\r\n:1\r\n", b""] {
            let b = Bytes::copy_from_slice(junk);
            assert!(replica_of(&b).is_none());
            assert!(switch_master_name(&b).is_none());
        }
        let msg = Bytes::from_static(
            b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$37\r\nshard-a 127.0.0.1 7001 127.0.0.1 7002\r\n",
        );
        assert_eq!(switch_master_name(&msg).as_deref(), Some("shard-a"));
    }
}

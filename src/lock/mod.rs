//! Redlock across shards: keys in the lock namespace live on every member of
//! the lock group, and every command on them answers by majority.
//!
//! - [`glob`]: which keys are lock keys (`[redlock] keys`).
//! - [`quorum`]: the arithmetic (quorum, validity, majority replies).
//! - this file: the lock group carried by each topology, the service state
//!   shared by all sessions (counters, fencing high-water mark, script cache),
//!   how a command on a lock key is classified ([`classify`]), and the
//!   per-session worker that runs lock operations against the members.
//!
//! A session hands its lock requests to one worker task of its own, which
//! runs them one after another. That keeps a client's lock commands in order
//! (a release never overtakes the acquisition before it) and lets an
//! acquisition's follow-up work (fencing write-back, release after a failed
//! attempt) be queued on the member connections before the client sees the
//! reply. The worker talks to members through the ordinary shard pools, on
//! the session's lane, so a cleanup is always queued behind the request it
//! cleans up after on the same connection.
//!
//! Fencing: every member keeps a counter under [`FENCE_KEY`]. The acquisition
//! script returns it with the grant; the proxy takes the maximum over the
//! granting members (and its own high-water mark), adds one, and writes the
//! new value back to every member, needing a majority of acknowledgements
//! within the validity window before it replies. The next successful
//! acquisition of any lock needs a majority that overlaps that one, so it
//! reads a larger counter: tokens strictly increase as long as no majority
//! of members loses its data between two acquisitions.

pub mod glob;
pub mod quorum;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::backend::{BackendError, BackendResult, Completion, Job, ReplyTo};
use crate::config::{Config, NoQuorum};
use crate::protocol::reply;
use crate::protocol::{Encoder, Protocol, Request};
use crate::server::Shared;
use crate::topology::Topology;
pub use glob::Namespace;
use quorum::{AcquireState, AcquireVote};

/// The per-member fencing counter.
pub const FENCE_KEY: &str = "shardis:fence";

/// `SET key token NX [PX ms]` that also returns the member's fencing counter
/// (`-1` when the key exists). ARGV[2] = "0" means no expiry.
const ACQUIRE_SCRIPT: &str = "\
local ok
if ARGV[2] == '0' then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if ok then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return -1";

/// Raises the fencing counter to ARGV[1] if it is below.
const FENCE_SCRIPT: &str = "\
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1";

/// Compare-and-delete: the release after a failed acquisition.
const RELEASE_SCRIPT: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The lock group as one topology sees it.
#[derive(Debug, Clone)]
pub struct LockGroup {
    pub namespace: Namespace,
    /// Member backend names; empty when Redlock is off.
    pub current: Vec<Arc<str>>,
    /// Earlier groups that must still agree, each until its deadline: the
    /// longest TTL granted before the change.
    pub previous: Vec<(Vec<Arc<str>>, Instant)>,
    pub member_timeout: Duration,
    pub drift_factor: f64,
    pub on_no_quorum: NoQuorum,
}

impl LockGroup {
    /// The group for `config`, following `old` (the running topology's group).
    /// A config without an explicit group keeps the running group; a changed
    /// group keeps the old one in the quorum until `max_ttl` has passed.
    pub fn build(config: &Config, old: Option<&LockGroup>, max_ttl: Option<Duration>) -> LockGroup {
        let r = &config.redlock;
        let namespace = Namespace::new(&r.keys);
        let configured: Option<Vec<Arc<str>>> = config
            .lock_group()
            .map(|g| g.iter().map(|n| Arc::from(n.as_str())).collect());
        let (current, previous) = match old {
            None => (configured.unwrap_or_default(), Vec::new()),
            Some(old) => {
                let now = Instant::now();
                let mut previous: Vec<_> = old.previous.iter().filter(|(_, until)| *until > now).cloned().collect();
                let current = match (&r.group, r.keys.is_empty()) {
                    (_, true) => Vec::new(),
                    (Some(_), false) => configured.unwrap_or_default(),
                    (None, false) if !old.current.is_empty() => old.current.clone(),
                    (None, false) => configured.unwrap_or_default(),
                };
                if current != old.current && !old.current.is_empty() && !current.is_empty() {
                    match max_ttl {
                        Some(ttl) if ttl.is_zero() => {}
                        Some(ttl) => previous.push((old.current.clone(), now + ttl)),
                        // A lock without expiry was granted: the old group stays in the
                        // quorum for as long as this process runs.
                        None => previous.push((old.current.clone(), now + Duration::from_secs(100 * 365 * 86_400))),
                    }
                }
                (current, previous)
            }
        };
        LockGroup {
            namespace,
            current,
            previous,
            member_timeout: Duration::from_millis(r.member_timeout_ms),
            drift_factor: r.drift_factor,
            on_no_quorum: r.on_no_quorum,
        }
    }

    /// Whether lock keys get Redlock treatment at all.
    #[inline]
    pub fn enabled(&self) -> bool {
        !self.current.is_empty() && !self.namespace.is_empty()
    }

    /// Keys every member holds, which KEYS and SCAN list once: lock keys
    /// and the fencing counter.
    pub fn listed_once(&self) -> Namespace {
        self.namespace.clone().with(FENCE_KEY)
    }

    #[inline]
    pub fn is_lock_key(&self, key: &[u8]) -> bool {
        self.enabled() && self.namespace.matches(key)
    }

    /// Every member that must be asked (the union of the current group and
    /// the previous groups still in force) and each group as positions in it.
    pub fn plan(&self) -> (Vec<Arc<str>>, Vec<Vec<usize>>) {
        let now = Instant::now();
        let mut members: Vec<Arc<str>> = Vec::new();
        let mut groups = Vec::new();
        let live = std::iter::once(&self.current).chain(self.previous.iter().filter(|(_, u)| *u > now).map(|(g, _)| g));
        for g in live {
            let mut pos = Vec::with_capacity(g.len());
            for name in g {
                let i = match members.iter().position(|m| m == name) {
                    Some(i) => i,
                    None => {
                        members.push(name.clone());
                        members.len() - 1
                    }
                };
                pos.push(i);
            }
            groups.push(pos);
        }
        (members, groups)
    }
}

/// A granted lock, remembered for `SHARDIS.FENCE`.
#[derive(Debug)]
struct Grant {
    token: Bytes,
    fence: u64,
    expires: Option<std::time::Instant>,
}

/// Most grants remembered for `SHARDIS.FENCE`.
const MAX_GRANTS: usize = 100_000;
/// Most script bodies cached for NOSCRIPT recovery.
const MAX_SCRIPTS: usize = 10_000;

/// Lock state shared by all sessions.
#[derive(Debug, Default)]
pub struct LockService {
    pub granted: AtomicU64,
    pub denied: AtomicU64,
    pub no_quorum: AtomicU64,
    /// Longest TTL granted so far, in ms; `u64::MAX` once a lock without
    /// expiry was granted. Decides how long a lock-group change keeps the
    /// old group in the quorum.
    max_ttl_ms: AtomicU64,
    /// The largest fencing token this proxy issued.
    fence_hwm: AtomicU64,
    grants: Mutex<HashMap<Bytes, Grant>>,
    /// SHA-1 (lowercase hex) → body, from SCRIPT LOAD and EVAL seen by the proxy.
    scripts: Mutex<HashMap<String, Bytes>>,
    /// Votes each member failed (errors, timeouts), by member name.
    member_failures: Mutex<HashMap<Arc<str>, u64>>,
}

impl LockService {
    /// The longest TTL granted so far (`None`: a lock without expiry).
    pub fn max_ttl(&self) -> Option<Duration> {
        match self.max_ttl_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Remembers a script body under its SHA-1, for NOSCRIPT recovery.
    pub fn remember_script(&self, body: &[u8]) -> String {
        let sha = sha1_smol::Sha1::from(body).digest().to_string();
        let mut scripts = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        if scripts.len() >= MAX_SCRIPTS && !scripts.contains_key(&sha) {
            scripts.clear();
        }
        scripts
            .entry(sha.clone())
            .or_insert_with(|| Bytes::copy_from_slice(body));
        sha
    }

    fn script(&self, sha: &str) -> Option<Bytes> {
        self.scripts.lock().unwrap_or_else(|p| p.into_inner()).get(sha).cloned()
    }

    fn record_grant(&self, key: Bytes, token: Bytes, fence: u64, ttl_ms: Option<u64>) {
        self.granted.fetch_add(1, Ordering::Relaxed);
        self.max_ttl_ms.fetch_max(ttl_ms.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.fence_hwm.fetch_max(fence, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let expires = ttl_ms.map(|t| now + Duration::from_millis(t));
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        if grants.len() >= MAX_GRANTS {
            grants.retain(|_, g| g.expires.is_none_or(|e| e > now));
            if grants.len() >= MAX_GRANTS {
                grants.clear();
            }
        }
        grants.insert(key, Grant { token, fence, expires });
    }

    /// The fencing token of the live grant of `key` to `token`, if this proxy made it.
    pub fn fence_of(&self, key: &[u8], token: &[u8]) -> Option<u64> {
        let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let g = grants.get(key)?;
        let live = g.expires.is_none_or(|e| e > std::time::Instant::now());
        (live && g.token == token).then_some(g.fence)
    }

    fn note_failures(&self, members: &[Arc<str>], results: &[Option<BackendResult>]) {
        let mut failed = self.member_failures.lock().unwrap_or_else(|p| p.into_inner());
        for (m, r) in members.iter().zip(results) {
            if !matches!(r, Some(Ok(_))) {
                debug!(member = %m, result = ?r, "lock vote failed");
                *failed.entry(m.clone()).or_default() += 1;
            }
        }
    }

    /// `member=count,...` of failed votes, for INFO.
    pub fn member_failures(&self) -> String {
        let failed = self.member_failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = failed.iter().map(|(m, n)| format!("{m}={n}")).collect();
        v.sort();
        v.join(",")
    }
}

/// What to answer when the members do not agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A null reply (GET, GETDEL, SET XX).
    Nil,
    /// `:0` (EXISTS, DEL, PEXPIRE ...).
    Zero,
    /// `+none` (TYPE).
    NoneType,
    /// Scripts: `:0` if any member answered an integer, else null; a release
    /// or extend script then reports "not owned".
    Script,
}

/// How a command on lock keys is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET k token NX [PX|EX]` or `SHARDIS.LOCK k token ms` (`fence_reply`).
    Acquire {
        key: Bytes,
        token: Bytes,
        ttl_ms: Option<u64>,
        fence_reply: bool,
    },
    /// Sent as is to every member; the majority's reply.
    Majority(Fallback),
    /// PTTL / TTL: the time until fewer than a majority hold the key.
    Ttl,
    /// EVALSHA: as `Majority(Script)`, with NOSCRIPT handled per member.
    EvalSha { sha: String },
    /// `SHARDIS.FENCE key token`.
    FenceOf { key: Bytes, token: Bytes },
}

fn syntax_error() -> String {
    "ERR syntax error".to_string()
}

/// Decides how a command whose keys are all lock keys is served. `name` is
/// the command table's name (lowercase). `Err` is the error reply.
pub fn classify(name: &str, args: &[&[u8]]) -> Result<Op, String> {
    Ok(match name {
        "set" => return classify_set(args),
        "get" | "getdel" => Op::Majority(Fallback::Nil),
        "exists" | "del" | "unlink" | "touch" | "strlen" | "pexpire" | "expire" | "pexpireat" | "expireat"
        | "persist" => Op::Majority(Fallback::Zero),
        "type" => Op::Majority(Fallback::NoneType),
        "pttl" | "ttl" => Op::Ttl,
        "eval" | "eval_ro" => Op::Majority(Fallback::Script),
        "evalsha" | "evalsha_ro" => Op::EvalSha {
            sha: String::from_utf8_lossy(args.get(1).copied().unwrap_or_default()).to_ascii_lowercase(),
        },
        _ => {
            return Err(format!(
                "ERR shardis: '{}' is not supported on lock keys (redlock.keys); use SET NX PX, GET, PTTL, PEXPIRE, DEL or EVAL/EVALSHA",
                name.replace('|', " ")
            ));
        }
    })
}

/// SET on a lock key: with NX it is an acquisition, otherwise a majority write.
fn classify_set(args: &[&[u8]]) -> Result<Op, String> {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expiry: Option<(&'static str, i64)> = None;
    let mut i = 3;
    while i < args.len() {
        let a = args[i].to_ascii_uppercase();
        match a.as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" if expiry.is_none() => keepttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expiry.is_none() && !keepttl => {
                let v = args.get(i + 1).ok_or_else(syntax_error)?;
                let n = crate::protocol::request::parse_i64(v)
                    .ok_or_else(|| "ERR value is not an integer or out of range".to_string())?;
                if n <= 0 {
                    return Err("ERR invalid expire time in 'set' command".to_string());
                }
                let kind = match a.as_slice() {
                    b"EX" => "ex",
                    b"PX" => "px",
                    b"EXAT" => "exat",
                    _ => "pxat",
                };
                expiry = Some((kind, n));
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    if !nx {
        return Ok(Op::Majority(Fallback::Nil));
    }
    if get {
        return Err("ERR shardis: SET NX GET is not supported on lock keys".to_string());
    }
    let ttl_ms = match expiry {
        None if keepttl => return Err("ERR shardis: a lock acquisition takes PX or EX, not KEEPTTL".to_string()),
        None => None,
        Some(("px", ms)) => Some(ms as u64),
        Some(("ex", s)) => Some(
            (s as u64)
                .checked_mul(1000)
                .ok_or_else(|| "ERR invalid expire time in 'set' command".to_string())?,
        ),
        Some(_) => return Err("ERR shardis: a lock acquisition takes PX or EX, not EXAT/PXAT".to_string()),
    };
    Ok(Op::Acquire {
        key: Bytes::copy_from_slice(args[1]),
        token: Bytes::copy_from_slice(args[2]),
        ttl_ms,
        fence_reply: false,
    })
}

/// Proxy commands of the lock family: `SHARDIS.LOCK key token ms` acquires
/// and answers `[fencing token, validity ms]` (nil when not granted);
/// `SHARDIS.FENCE key token` answers the fencing token of the live grant of
/// `key` to `token` made by this proxy (nil if none).
pub fn classify_proxy_command(name: &[u8], args: &[&[u8]], group: &LockGroup) -> Result<Op, String> {
    let lower = name.to_ascii_lowercase();
    let (op, arity) = match lower.as_slice() {
        b"shardis.lock" => ("shardis.lock", 4),
        b"shardis.fence" => ("shardis.fence", 3),
        _ => {
            return Err(format!(
                "ERR unknown command '{}', with args beginning with: ",
                crate::command::printable(name, 128)
            ));
        }
    };
    if args.len() != arity {
        return Err(format!("ERR wrong number of arguments for '{op}' command"));
    }
    if !group.enabled() {
        return Err(
            "ERR shardis: Redlock is off (redlock.keys is empty or the lock group has fewer than 3 members)".into(),
        );
    }
    if !group.is_lock_key(args[1]) {
        return Err(format!(
            "ERR shardis: '{}' is not in the lock namespace (redlock.keys)",
            crate::command::printable(args[1], 128)
        ));
    }
    let key = Bytes::copy_from_slice(args[1]);
    let token = Bytes::copy_from_slice(args[2]);
    if arity == 3 {
        return Ok(Op::FenceOf { key, token });
    }
    let ttl = crate::protocol::request::parse_i64(args[3])
        .filter(|&n| n > 0)
        .ok_or_else(|| "ERR invalid expire time in 'shardis.lock' command".to_string())?;
    Ok(Op::Acquire {
        key,
        token,
        ttl_ms: Some(ttl as u64),
        fence_reply: true,
    })
}

/// One lock request handed to a session's worker.
#[derive(Debug)]
pub struct LockRequest {
    /// The session's sequence number for the reply.
    pub seq: u64,
    /// The client's request, forwarded to members for majority commands.
    pub req: Request,
    pub proto: Protocol,
    pub op: Op,
}

/// Starts a session's lock worker; its replies go to `sink` as completions.
pub fn spawn_worker(
    shared: Arc<Shared>,
    lane: usize,
    sink: mpsc::UnboundedSender<Completion>,
) -> mpsc::UnboundedSender<LockRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<LockRequest>();
    tokio::spawn(async move {
        let (mtx, mrx) = mpsc::unbounded_channel();
        let mut fan = Fan {
            lane,
            tx: mtx,
            rx: mrx,
            round: 0,
        };
        // Runs until the session drops its sender, finishing every queued
        // request (a disconnecting client's release still happens).
        while let Some(r) = rx.recv().await {
            let topo = shared.topology.load_full();
            let mut out = BytesMut::new();
            let mut enc = Encoder::new(&mut out, r.proto);
            run(&shared, &topo, &mut fan, &r, &mut enc).await;
            let _ = sink.send(Completion {
                seq: r.seq,
                part: 0,
                result: Ok(out.freeze()),
            });
        }
    });
    tx
}

/// Sends requests to members and gathers their replies, round by round.
/// Replies to an earlier round (a member that answered after the worker
/// stopped waiting) are dropped.
struct Fan {
    lane: usize,
    tx: mpsc::UnboundedSender<Completion>,
    rx: mpsc::UnboundedReceiver<Completion>,
    round: u64,
}

impl Fan {
    fn start_round(&mut self) -> u64 {
        self.round += 1;
        self.round
    }

    /// Queues `req` on member `pos` (a backend index, or `None` for a member
    /// that is not among the backends, which fails at once).
    fn send(&self, topo: &Topology, proto: Protocol, round: u64, pos: usize, target: Option<usize>, req: Bytes) {
        let reply = ReplyTo {
            sink: self.tx.clone(),
            seq: round,
            part: pos as u32,
        };
        match target.and_then(|t| topo.shards.get(t)) {
            Some(shard) => shard.send(proto, self.lane, Job::new(req, reply)),
            None => {
                let _ = self.tx.send(Completion {
                    seq: round,
                    part: pos as u32,
                    result: Err(BackendError("ERR lock group member is not among the backends".into())),
                });
            }
        }
    }

    /// The next reply of `round`, or `None` at the deadline.
    async fn next(&mut self, round: u64, deadline: Instant) -> Option<(usize, BackendResult)> {
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(c)) if c.seq == round => return Some((c.part as usize, c.result)),
                Ok(Some(_)) => continue, // a late reply to an earlier round
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Members of the lock group that are out of lock quorums because their
/// server restarted less than the longest granted TTL ago, with the reason.
pub fn resting_members(topo: &Topology, svc: &LockService) -> Vec<String> {
    let m = Members::of(topo);
    (0..m.names.len())
        .filter_map(|pos| {
            m.resting(topo, svc, pos)
                .map(|why| format!("{} ({})", m.names[pos], why.message()))
        })
        .collect()
}

/// The members of a request: names, backend indices, groups.
struct Members {
    names: Vec<Arc<str>>,
    targets: Vec<Option<usize>>,
    groups: Vec<Vec<usize>>,
}

impl Members {
    fn of(topo: &Topology) -> Members {
        let (names, groups) = topo.locks.plan();
        let targets = names.iter().map(|n| topo.shard_index_by_name(n)).collect();
        Members { names, targets, groups }
    }

    /// Why member `pos` must not vote: its server restarted (lost its data)
    /// less than the longest granted TTL ago, so it may have lost a lock it
    /// had granted (Redlock's delayed restart, automated).
    fn resting(&self, topo: &Topology, svc: &LockService, pos: usize) -> Option<BackendError> {
        let target = (*self.targets.get(pos)?)?;
        let at = topo.shards.get(target)?.identity.restarted_at()?;
        let rest = svc
            .max_ttl()
            .map_or(Duration::MAX, |ttl| ttl.saturating_sub(at.elapsed()));
        (!rest.is_zero()).then(|| {
            BackendError(
                format!(
                    "restarted {} ms ago, out of lock quorums until the longest lock TTL has passed",
                    at.elapsed().as_millis()
                )
                .into(),
            )
        })
    }

    fn failed(&self, results: &[Option<BackendResult>]) -> String {
        let mut v = Vec::new();
        for (n, r) in self.names.iter().zip(results) {
            match r {
                Some(Ok(_)) => {}
                Some(Err(e)) => v.push(format!("{n} ({})", e.message().trim_start_matches("ERR "))),
                None => v.push(format!("{n} (no reply in time)")),
            }
        }
        v.join(", ")
    }
}

async fn run(shared: &Shared, topo: &Topology, fan: &mut Fan, r: &LockRequest, enc: &mut Encoder<'_>) {
    let group = &topo.locks;
    if !group.enabled() {
        return enc.error("ERR shardis: Redlock is off");
    }
    let m = Members::of(topo);
    match &r.op {
        Op::Acquire {
            key,
            token,
            ttl_ms,
            fence_reply,
        } => match acquire(shared, topo, fan, &m, r.proto, key, token, *ttl_ms).await {
            Acquired::Granted { fence, validity_ms } => {
                if *fence_reply {
                    enc.array(2);
                    enc.integer(fence as i64);
                    enc.integer(validity_ms);
                } else {
                    enc.ok();
                }
            }
            Acquired::Denied => enc.null(),
            Acquired::NoQuorum(why) => match group.on_no_quorum {
                NoQuorum::Error => enc.error(&format!("ERR shardis: lock quorum unavailable: {why}")),
                NoQuorum::Nil => enc.null(),
            },
        },
        Op::FenceOf { key, token } => match shared.locks.fence_of(key, token) {
            Some(f) => enc.integer(f as i64),
            None => enc.null(),
        },
        Op::Majority(_) | Op::Ttl | Op::EvalSha { .. } => vote(shared, topo, fan, &m, r, enc).await,
    }
}

enum Acquired {
    Granted { fence: u64, validity_ms: i64 },
    Denied,
    NoQuorum(String),
}

#[allow(clippy::too_many_arguments)]
async fn acquire(
    shared: &Shared,
    topo: &Topology,
    fan: &mut Fan,
    m: &Members,
    proto: Protocol,
    key: &Bytes,
    token: &Bytes,
    ttl_ms: Option<u64>,
) -> Acquired {
    let group = &topo.locks;
    let svc = &shared.locks;
    let start = Instant::now();
    let wait = quorum::acquire_wait(group.member_timeout, ttl_ms);
    let ttl_arg = itoa::Buffer::new().format(ttl_ms.unwrap_or(0)).to_string();
    let req = Request::from_args(&[
        b"EVAL" as &[u8],
        ACQUIRE_SCRIPT.as_bytes(),
        b"2",
        key,
        FENCE_KEY.as_bytes(),
        token,
        ttl_arg.as_bytes(),
    ])
    .raw;
    let n = m.names.len();
    let round = fan.start_round();
    for (pos, t) in m.targets.iter().enumerate() {
        fan.send(topo, proto, round, pos, *t, req.clone());
    }
    let mut results: Vec<Option<BackendResult>> = vec![None; n];
    let mut votes = vec![AcquireVote::Pending; n];
    let deadline = start + wait;
    let mut state = AcquireState::Open;
    while state == AcquireState::Open {
        let Some((pos, res)) = fan.next(round, deadline).await else {
            break;
        };
        if pos < n {
            // Checked when the vote arrives: the handshake that sees a
            // restart runs before any request is served on that connection.
            let res = match m.resting(topo, svc, pos) {
                Some(why) => Err(why),
                None => res,
            };
            votes[pos] = quorum::acquire_vote(Some(&res));
            results[pos] = Some(res);
        }
        state = quorum::acquire_state(&votes, &m.groups);
    }
    if state == AcquireState::Open {
        // Out of time: members that did not answer count as failed.
        for v in votes.iter_mut().filter(|v| **v == AcquireVote::Pending) {
            *v = AcquireVote::Failed;
        }
        state = quorum::acquire_state(&votes, &m.groups);
    }
    svc.note_failures(&m.names, &results);

    if state == AcquireState::Granted {
        let counters = votes.iter().filter_map(|v| match v {
            AcquireVote::Granted(c) => Some(*c),
            _ => None,
        });
        let fence = counters
            .chain([svc.fence_hwm.load(Ordering::Relaxed)])
            .max()
            .unwrap_or(0)
            + 1;
        if write_back_fence(topo, svc, fan, m, proto, fence, start + 2 * wait).await {
            let validity = ttl_ms.map(|ttl| quorum::validity_us(ttl, start.elapsed(), group.drift_factor));
            match validity {
                Some(v) if v <= 0 => {
                    debug!(key = ?key, elapsed_ms = start.elapsed().as_millis() as u64, "lock granted too late: no validity left");
                }
                _ => {
                    svc.record_grant(key.clone(), token.clone(), fence, ttl_ms);
                    return Acquired::Granted {
                        fence,
                        validity_ms: validity.map_or(-1, |v| v / 1000),
                    };
                }
            }
        }
        state = AcquireState::Denied;
    }

    // Not granted: release on every member, including those that did not
    // answer (a late grant is then undone: the release is queued behind the
    // acquisition on the same connection).
    let release = Request::from_args(&[b"EVAL" as &[u8], RELEASE_SCRIPT.as_bytes(), b"1", key, token]).raw;
    let cleanup = fan.start_round();
    for (pos, t) in m.targets.iter().enumerate() {
        fan.send(topo, proto, cleanup, pos, *t, release.clone());
    }
    if state == AcquireState::NoQuorum {
        svc.no_quorum.fetch_add(1, Ordering::Relaxed);
        Acquired::NoQuorum(m.failed(&results))
    } else {
        svc.denied.fetch_add(1, Ordering::Relaxed);
        Acquired::Denied
    }
}

/// Raises the fencing counter on every member; true once a majority of
/// every group acknowledged before `deadline`.
async fn write_back_fence(
    topo: &Topology,
    svc: &LockService,
    fan: &mut Fan,
    m: &Members,
    proto: Protocol,
    fence: u64,
    deadline: Instant,
) -> bool {
    let fence_arg = itoa::Buffer::new().format(fence).to_string();
    let req = Request::from_args(&["EVAL", FENCE_SCRIPT, "1", FENCE_KEY, &fence_arg]).raw;
    let round = fan.start_round();
    for (pos, t) in m.targets.iter().enumerate() {
        fan.send(topo, proto, round, pos, *t, req.clone());
    }
    let mut acked = vec![AcquireVote::Pending; m.names.len()];
    loop {
        if quorum::acquire_state(&acked, &m.groups) == AcquireState::Granted {
            return true;
        }
        let Some((pos, res)) = fan.next(round, deadline).await else {
            return false;
        };
        let resting = m.resting(topo, svc, pos).is_some();
        if let Some(a) = acked.get_mut(pos) {
            *a = match res {
                Ok(f) if reply::as_integer(&f) == Some(1) && !resting => AcquireVote::Granted(0),
                _ => AcquireVote::Failed,
            };
        }
    }
}

/// Sends the client's command to every member and answers by majority.
async fn vote(shared: &Shared, topo: &Topology, fan: &mut Fan, m: &Members, r: &LockRequest, enc: &mut Encoder<'_>) {
    let n = m.names.len();
    let round = fan.start_round();
    for (pos, t) in m.targets.iter().enumerate() {
        fan.send(topo, r.proto, round, pos, *t, r.req.raw.clone());
    }
    let body = match &r.op {
        Op::EvalSha { sha } => shared.locks.script(sha),
        _ => None,
    };
    let mut results: Vec<Option<BackendResult>> = vec![None; n];
    let mut noscript = vec![false; n];
    let mut retried = vec![false; n];
    let deadline = Instant::now() + topo.locks.member_timeout;
    let early = matches!(r.op, Op::Majority(_) | Op::EvalSha { .. });
    let mut answered = 0;
    while answered < n {
        let Some((pos, res)) = fan.next(round, deadline).await else {
            break;
        };
        if pos >= n {
            continue;
        }
        // NOSCRIPT from one member: run the script there from the proxy's
        // cache, so the client never sees NOSCRIPT after others ran it.
        if let Ok(f) = &res
            && f.starts_with(b"-NOSCRIPT")
            && !retried[pos]
            && let Some(body) = &body
        {
            retried[pos] = true;
            let mut args: Vec<&[u8]> = r.req.args().collect();
            args[0] = b"EVAL";
            args[1] = body;
            fan.send(topo, r.proto, round, pos, m.targets[pos], Request::from_args(&args).raw);
            continue;
        }
        noscript[pos] = matches!(&res, Ok(f) if f.starts_with(b"-NOSCRIPT"));
        results[pos] = Some(res);
        answered += 1;
        // Stop at a majority's answer, unless that answer is NOSCRIPT: then
        // wait for every member, since one that ran the script must count.
        if early && quorum::agreed(&results, &m.groups).is_some_and(|f| !f.starts_with(b"-NOSCRIPT")) {
            break;
        }
    }
    shared.locks.note_failures(&m.names, &results);
    if noscript.iter().all(|&x| x) {
        // Nothing ran anywhere: the client may load the script and retry.
        if let Some(Some(Ok(f))) = results.first() {
            return enc.raw(f);
        }
    }
    // A member that still lacks the script counts as one that failed.
    for (r, _) in results.iter_mut().zip(&noscript).filter(|(_, ns)| **ns) {
        *r = Some(Err(BackendError("NOSCRIPT".into())));
    }
    if let Op::Ttl = r.op {
        return match quorum::majority_ttl(&results, &m.groups) {
            Some(t) => enc.integer(t),
            None => enc.error(&format!("ERR shardis: lock quorum unavailable: {}", m.failed(&results))),
        };
    }
    if let Some(f) = quorum::agreed(&results, &m.groups) {
        return enc.raw(&f);
    }
    if !quorum::reachable(&results, &m.groups) {
        return enc.error(&format!("ERR shardis: lock quorum unavailable: {}", m.failed(&results)));
    }
    let fallback = match r.op {
        Op::Majority(f) => f,
        _ => Fallback::Script,
    };
    match fallback {
        Fallback::Nil => enc.null(),
        Fallback::Zero => enc.integer(0),
        Fallback::NoneType => enc.simple("none"),
        Fallback::Script => {
            let any_int = results
                .iter()
                .any(|r| matches!(r, Some(Ok(f)) if f.first() == Some(&b':')));
            if any_int { enc.integer(0) } else { enc.null() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<&[u8]> {
        s.split(' ').map(str::as_bytes).collect()
    }

    #[test]
    fn set_forms() {
        let acq = |s: &str| classify("set", &args(s));
        assert_eq!(
            acq("SET lock:a t NX PX 3000"),
            Ok(Op::Acquire {
                key: "lock:a".into(),
                token: "t".into(),
                ttl_ms: Some(3000),
                fence_reply: false
            })
        );
        assert_eq!(
            acq("set lock:a t px 3000 nx"),
            Ok(Op::Acquire {
                key: "lock:a".into(),
                token: "t".into(),
                ttl_ms: Some(3000),
                fence_reply: false
            })
        );
        assert_eq!(
            acq("SET lock:a t EX 3 NX"),
            Ok(Op::Acquire {
                key: "lock:a".into(),
                token: "t".into(),
                ttl_ms: Some(3000),
                fence_reply: false
            })
        );
        assert!(matches!(acq("SET lock:a t NX"), Ok(Op::Acquire { ttl_ms: None, .. })));
        assert_eq!(acq("SET lock:a t PX 10"), Ok(Op::Majority(Fallback::Nil)));
        assert_eq!(acq("SET lock:a t XX"), Ok(Op::Majority(Fallback::Nil)));
        assert_eq!(acq("SET lock:a t NX XX").unwrap_err(), "ERR syntax error");
        assert_eq!(acq("SET lock:a t NX PX").unwrap_err(), "ERR syntax error");
        assert_eq!(
            acq("SET lock:a t NX PX 0").unwrap_err(),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            acq("SET lock:a t NX PX x").unwrap_err(),
            "ERR value is not an integer or out of range"
        );
        assert!(acq("SET lock:a t NX PXAT 5").unwrap_err().contains("PX or EX"));
        assert!(acq("SET lock:a t NX GET").unwrap_err().contains("NX GET"));
    }

    #[test]
    fn other_commands() {
        assert_eq!(classify("get", &args("GET lock:a")), Ok(Op::Majority(Fallback::Nil)));
        assert_eq!(classify("pttl", &args("PTTL lock:a")), Ok(Op::Ttl));
        assert_eq!(
            classify("evalsha", &args("EVALSHA ABC 1 lock:a t")),
            Ok(Op::EvalSha { sha: "abc".into() })
        );
        assert!(
            classify("incr", &args("INCR lock:a"))
                .unwrap_err()
                .contains("not supported on lock keys")
        );
    }

    fn group(keys: &[&str], members: &[&str]) -> LockGroup {
        LockGroup {
            namespace: Namespace::new(keys),
            current: members.iter().map(|m| Arc::from(*m)).collect(),
            previous: Vec::new(),
            member_timeout: Duration::from_millis(100),
            drift_factor: 0.01,
            on_no_quorum: NoQuorum::Nil,
        }
    }

    #[test]
    fn proxy_commands() {
        let g = group(&["lock:*"], &["a", "b", "c"]);
        assert!(matches!(
            classify_proxy_command(b"SHARDIS.LOCK", &args("SHARDIS.LOCK lock:x t 1000"), &g),
            Ok(Op::Acquire {
                ttl_ms: Some(1000),
                fence_reply: true,
                ..
            })
        ));
        assert!(matches!(
            classify_proxy_command(b"shardis.fence", &args("shardis.fence lock:x t"), &g),
            Ok(Op::FenceOf { .. })
        ));
        assert!(
            classify_proxy_command(b"shardis.lock", &args("shardis.lock data t 10"), &g)
                .unwrap_err()
                .contains("lock namespace")
        );
        assert!(
            classify_proxy_command(b"shardis.lock", &args("shardis.lock lock:x t"), &g)
                .unwrap_err()
                .contains("wrong number")
        );
        assert!(
            classify_proxy_command(b"shardis.nope", &args("shardis.nope"), &g)
                .unwrap_err()
                .starts_with("ERR unknown command")
        );
        let off = group(&["lock:*"], &[]);
        assert!(
            classify_proxy_command(b"shardis.lock", &args("shardis.lock lock:x t 5"), &off)
                .unwrap_err()
                .contains("off")
        );
    }

    #[test]
    fn group_changes_keep_the_old_group_until_the_longest_ttl() {
        let g = group(&["lock:*"], &["a", "b", "c"]);
        let mut cfg = Config::parse(
            "[[backends]]\nname=\"a\"\naddr=\"h:1\"\n[[backends]]\nname=\"b\"\naddr=\"h:2\"\n[[backends]]\nname=\"c\"\naddr=\"h:3\"\n[[backends]]\nname=\"d\"\naddr=\"h:4\"\n",
        )
        .unwrap();
        // No explicit group: the running group stays.
        let same = LockGroup::build(&cfg, Some(&g), Some(Duration::from_secs(10)));
        assert_eq!(same.current, g.current);
        assert!(same.previous.is_empty());
        cfg.redlock.group = Some(vec!["b".into(), "c".into(), "d".into()]);
        let next = LockGroup::build(&cfg, Some(&g), Some(Duration::from_secs(10)));
        let (members, groups) = next.plan();
        assert_eq!(members.len(), 4);
        assert_eq!(groups.len(), 2, "the old group must still agree");
        // Nothing was ever granted: no joint period.
        let fresh = LockGroup::build(&cfg, Some(&g), Some(Duration::ZERO));
        assert_eq!(fresh.plan().1.len(), 1);
    }
}

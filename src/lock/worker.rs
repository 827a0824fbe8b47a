//! The per-session lock worker: runs a session's lock operations one after
//! another against the members of the lock group (acquisition with fencing,
//! majority votes, NOSCRIPT recovery) and answers in the session's inbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::classify::{Fallback, Op};
use super::group::FENCE_KEY;
use super::members::Members;
use super::quorum::{self, AcquireState, AcquireVote};
use super::service::LockService;
use crate::backend::{BackendError, BackendErrorKind, BackendResult, Completion, Job, ReplyTo, inbox};
use crate::config::NoQuorum;
use crate::protocol::reply;
use crate::protocol::{Encoder, Protocol, Request};
use crate::state::Shared;
use crate::topology::Topology;

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
pub fn spawn_worker(shared: Arc<Shared>, lane: usize, sink: inbox::Sink) -> mpsc::UnboundedSender<LockRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<LockRequest>();
    tokio::spawn(async move {
        let (mtx, mrx) = inbox::channel();
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
    tx: inbox::Sink,
    rx: inbox::Inbox,
    round: u64,
}

impl Fan {
    fn start_round(&mut self) -> u64 {
        self.round += 1;
        self.round
    }

    /// Queues `req` on member `pos` (a backend index, or `None` for a member
    /// that is not among the backends, which fails at once).
    fn send(&self, topo: &Topology, m: &Members, proto: Protocol, round: u64, pos: usize, req: Bytes) {
        let reply = ReplyTo::inbox(&self.tx, round, pos as u32);
        match m.targets.get(pos).copied().flatten().and_then(|t| topo.shards.get(t)) {
            Some(shard) => shard.send(proto, self.lane, Job::new(req, reply)),
            None => {
                let _ = self.tx.send(Completion {
                    seq: round,
                    part: pos as u32,
                    result: Err(BackendError::new(
                        BackendErrorKind::Excluded,
                        &m.names[pos],
                        "ERR lock group member is not among the backends",
                    )),
                });
            }
        }
    }

    /// The next reply of `round`, or `None` at the deadline.
    async fn next(&mut self, round: u64, deadline: Instant) -> Option<(usize, BackendResult)> {
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(c) if c.seq == round => return Some((c.part as usize, c.result)),
                Ok(_) => continue, // a late reply to an earlier round
                Err(_) => return None,
            }
        }
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
    for pos in 0..m.names.len() {
        fan.send(topo, m, proto, round, pos, req.clone());
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
    for pos in 0..m.names.len() {
        fan.send(topo, m, proto, cleanup, pos, release.clone());
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
    for pos in 0..m.names.len() {
        fan.send(topo, m, proto, round, pos, req.clone());
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
    for pos in 0..m.names.len() {
        fan.send(topo, m, r.proto, round, pos, r.req.raw.clone());
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
            fan.send(topo, m, r.proto, round, pos, Request::from_args(&args).raw);
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
    for ((r, _), name) in results
        .iter_mut()
        .zip(&noscript)
        .zip(&m.names)
        .filter(|((_, ns), _)| **ns)
    {
        *r = Some(Err(BackendError::new(BackendErrorKind::Excluded, name, "NOSCRIPT")));
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

//! Writes that change keys on two shards: RENAME / RENAMENX, SMOVE, LMOVE /
//! RPOPLPUSH / BLMOVE / BRPOPLPUSH, MSETNX.
//!
//! Each is a short saga of atomic steps, each on a connection of its own
//! that waits for a definite answer ([`Conv`], up to [`patience`]):
//! 1. checks Redis makes first (the destination's type, RENAMENX's
//!    destination existing), read-only;
//! 2. **take** on the source's shard, one atomic command: `SREM`, `LPOP` /
//!    `RPOP` (`BLPOP` / `BRPOP` when blocking), or for RENAME a script that
//!    DUMPs, reads the PTTL and DELetes the key at once. Whatever was taken
//!    is held by the proxy alone: a concurrent writer of the source sees it
//!    gone (as after the command on one Redis), so nothing taken can be
//!    changed behind the proxy's back and no WATCH/retry is needed;
//! 3. **put** on the destination's shard: `SADD`, `LPUSH` / `RPUSH`,
//!    `RESTORE ... [REPLACE]`;
//! 4. if the put surely did not happen (the shard refused it, could not be
//!    reached, or its connection broke: a killed shard lost its data
//!    anyway), **give back**: the same atomic inverse on the source (`SADD`,
//!    `LPUSH`/`RPUSH` at the end it was popped from, `RESTORE`), and the
//!    client gets the error.
//!
//! A step unanswered within [`patience`] (a stalled shard) gets the client
//! an error saying so, and is settled when its answer comes
//! ([`Conv::ask_undo`]): a take that took something gives it back, a put
//! that failed gives back what was taken, a put that succeeded completes
//! the move. So nothing taken is lost because the client was answered, as
//! long as the proxy process lives.
//!
//! MSETNX: shards in ascending order (so two MSETNX over the same keys never
//! both fail on each other's partial writes), each shard's keys set by a
//! script only if none exists; if a shard has one, the earlier shards' keys
//! are deleted again where they still hold the value set (compare and
//! delete), and the reply is 0.

use bytes::Bytes;

use super::call::{self, Conv, Undo, not_sent, patience};
use super::plan::{CrossPlan, encode};
use crate::backend::{BackendErrorKind, BackendResult};
use crate::protocol::Protocol;
use crate::protocol::reply::{as_bytes, as_integer, elements, is_error, is_null};
use crate::topology::Topology;

const TAKE: &str = "\
local v = redis.call('DUMP', KEYS[1])
if not v then return false end
if string.len(v) > tonumber(ARGV[1]) then
  return redis.error_reply('ERR shardis: the value to move between shards exceeds crossshard.max_bytes (' .. ARGV[1] .. ' bytes)')
end
local t = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {v, t}";

const SET_ALL_NX: &str = "\
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end
return 1";

const DEL_IF_SAME: &str = "\
local n = 0
for i = 1, #KEYS do
  if redis.pcall('GET', KEYS[i]) == ARGV[i] then n = n + redis.call('DEL', KEYS[i]) end
end
return n";

/// The two ends of a move: conversations with the source's and the
/// destination's shards.
struct Ends<'a> {
    proto: Protocol,
    src: Conv,
    dst: Conv,
    name: &'a str,
}

impl Ends<'_> {
    fn open<'a>(topo: &Topology, proto: Protocol, plan: &'a CrossPlan) -> Ends<'a> {
        let (s, d) = (plan.keys[0].1, plan.keys[1].1);
        Ends {
            proto,
            src: Conv::open(&topo.shards[s], proto),
            dst: Conv::open(&topo.shards[d], proto),
            name: std::str::from_utf8(&plan.args[0]).unwrap_or("command"),
        }
    }

    /// The put (`req` on the destination), then its outcome: `Ok(frame)`
    /// when it ran (its reply), or the client's error after giving back
    /// what was taken (`give_back` on the source) when it surely did not.
    /// Unanswered within [`patience`]: the client's error says so, and the
    /// give-back happens if the answer, when it comes, is a failure.
    async fn put(&self, req: Bytes, give_back: Bytes) -> Result<Bytes, Bytes> {
        let put = self.dst.ask_undo(req, &self.src, failed_then(give_back.clone())).await;
        let why = match put {
            Ok(frame) if !is_error(&frame) => return Ok(frame),
            Ok(frame) => frame,
            Err(e) if e.kind() == BackendErrorKind::Timeout => {
                return Err(call::err(
                    self.proto,
                    &format!(
                        "ERR shardis: {} across shards: shard {} did not answer within {:?}; when it does, the move completes or what was taken goes back to the source",
                        self.name.to_uppercase(),
                        self.dst.name(),
                        patience(self.dst.shard())
                    ),
                ));
            }
            Err(e) => {
                debug_assert!(not_sent(&e) || e.kind() == BackendErrorKind::ConnectionLost);
                call::failed(self.proto, &e)
            }
        };
        match self.src.ask(give_back).await {
            Ok(f) if !is_error(&f) => Err(why),
            other => {
                tracing::error!(command = self.name, source = self.src.name(), answer = ?other, "cross-shard move: could not give back what was taken from the source");
                Err(call::err(
                    self.proto,
                    &format!(
                        "ERR shardis: {} across shards failed on shard {} and what was taken from shard {} could not be put back",
                        self.name.to_uppercase(),
                        self.dst.name(),
                        self.src.name()
                    ),
                ))
            }
        }
    }
}

/// Undo of a put that fails late: give back what was taken.
fn failed_then(give_back: Bytes) -> Undo {
    Box::new(move |r| match r {
        Ok(f) if !is_error(f) => None,
        _ => Some(give_back),
    })
}

/// Undo of a take whose taker gave up: `back` of what it took, if it took
/// something (`took` reads it from the answer).
fn took_then(took: impl FnOnce(&Bytes) -> Option<Bytes> + Send + 'static) -> Undo {
    Box::new(move |r| r.as_ref().ok().and_then(took))
}

fn int(proto: Protocol, n: i64) -> Bytes {
    let _ = proto;
    Bytes::from(format!(":{n}\r\n"))
}

fn ok() -> Bytes {
    Bytes::from_static(b"+OK\r\n")
}

fn type_is(frame: &Bytes, want: &[&str]) -> bool {
    as_bytes(frame).is_some_and(|t| want.iter().any(|w| t.as_ref() == w.as_bytes()))
}

/// The reply frame, or the error frame of a shard that did not answer.
fn frame(r: BackendResult, proto: Protocol) -> Result<Bytes, Bytes> {
    r.map_err(|e| call::failed(proto, &e))
}

pub async fn rename(topo: &Topology, proto: Protocol, plan: &CrossPlan, nx: bool, max_bytes: u64) -> Bytes {
    let e = Ends::open(topo, proto, plan);
    let (src, dst) = (&plan.args[plan.keys[0].0], &plan.args[plan.keys[1].0]);
    let no_such_key = || call::err(proto, "ERR no such key");
    let r: Result<Bytes, Bytes> = async {
        if nx && as_integer(&frame(e.dst.ask(encode(&[&b"EXISTS"[..], dst])).await, proto)?) == Some(1) {
            let exists = frame(e.src.ask(encode(&[&b"EXISTS"[..], src])).await, proto)?;
            return Ok(if as_integer(&exists) == Some(1) {
                int(proto, 0)
            } else {
                no_such_key()
            });
        }
        let max = max_bytes.to_string();
        let take = encode(&[&b"EVAL"[..], TAKE.as_bytes(), b"1", src, max.as_bytes()]);
        let back = src.clone();
        let undo = took_then(move |f| {
            let parts = elements(f).filter(|p| p.len() == 2)?;
            let ttl = as_integer(&parts[1]).unwrap_or(-1).max(0).to_string();
            Some(encode(&[&b"RESTORE"[..], &back, ttl.as_bytes(), &as_bytes(&parts[0])?]))
        });
        let taken = frame(e.src.ask_undo(take, &e.src, undo).await, proto)?;
        if is_error(&taken) {
            return Ok(taken);
        }
        let Some(parts) = elements(&taken).filter(|p| p.len() == 2) else {
            return Ok(no_such_key());
        };
        let Some(payload) = as_bytes(&parts[0]) else {
            return Ok(no_such_key());
        };
        let ttl = as_integer(&parts[1]).unwrap_or(-1).max(0).to_string();
        let mut put: Vec<&[u8]> = vec![b"RESTORE", dst, ttl.as_bytes(), &payload];
        if !nx {
            put.push(b"REPLACE");
        }
        let give_back = encode(&[&b"RESTORE"[..], src, ttl.as_bytes(), &payload]);
        match e.put(encode(&put), give_back).await {
            Ok(_) => Ok(if nx { int(proto, 1) } else { ok() }),
            // RENAMENX lost a race to a writer of the destination.
            Err(why) if nx && why.starts_with(b"-BUSYKEY") => Ok(int(proto, 0)),
            Err(why) => Err(why),
        }
    }
    .await;
    r.unwrap_or_else(|e| e)
}

pub async fn smove(topo: &Topology, proto: Protocol, plan: &CrossPlan) -> Bytes {
    let e = Ends::open(topo, proto, plan);
    let (src, dst) = (&plan.args[plan.keys[0].0], &plan.args[plan.keys[1].0]);
    let member = &plan.args[3];
    let r: Result<Bytes, Bytes> = async {
        // Redis: a missing source answers 0 before any type check.
        let dtype = frame(e.dst.ask(encode(&[&b"TYPE"[..], dst])).await, proto)?;
        if !type_is(&dtype, &["none", "set"]) {
            let stype = frame(e.src.ask(encode(&[&b"TYPE"[..], src])).await, proto)?;
            return Ok(if type_is(&stype, &["none"]) {
                int(proto, 0)
            } else {
                wrongtype(proto)
            });
        }
        let give_back = encode(&[&b"SADD"[..], src, member]);
        let back = give_back.clone();
        let undo = took_then(move |f| (as_integer(f) == Some(1)).then_some(back));
        let removed = frame(
            e.src.ask_undo(encode(&[&b"SREM"[..], src, member]), &e.src, undo).await,
            proto,
        )?;
        if as_integer(&removed) != Some(1) {
            return Ok(removed); // 0, or WRONGTYPE
        }
        e.put(encode(&[&b"SADD"[..], dst, member]), give_back).await?;
        Ok(int(proto, 1))
    }
    .await;
    r.unwrap_or_else(|e| e)
}

fn wrongtype(proto: Protocol) -> Bytes {
    call::err(
        proto,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
}

/// LMOVE and its relatives. `block`: the blocking forms' timeout argument.
/// Blocking, the pop is a BLPOP / BRPOP on the source's shard in slices of
/// at most a second until the timeout, so a client that leaves
/// (`gone`) stops the wait within a second, and an element popped is always
/// pushed.
pub async fn lmove(
    topo: &Topology,
    proto: Protocol,
    plan: &CrossPlan,
    (from_left, to_left): (bool, bool),
    block: Option<&Bytes>,
    gone: impl Fn() -> bool,
) -> Bytes {
    let e = Ends::open(topo, proto, plan);
    let (src, dst) = (&plan.args[plan.keys[0].0], &plan.args[plan.keys[1].0]);
    let (pop, push, give_back): (&[u8], &[u8], &[u8]) = (
        if from_left { b"LPOP" } else { b"RPOP" },
        if to_left { b"LPUSH" } else { b"RPUSH" },
        if from_left { b"LPUSH" } else { b"RPUSH" },
    );
    let r: Result<Bytes, Bytes> = async {
        let dtype = frame(e.dst.ask(encode(&[&b"TYPE"[..], dst])).await, proto)?;
        let stype = frame(e.src.ask(encode(&[&b"TYPE"[..], src])).await, proto)?;
        if !type_is(&stype, &["none", "list"]) {
            return Ok(wrongtype(proto));
        }
        if type_is(&stype, &["none"]) && block.is_none() {
            return Ok(null(proto));
        }
        if !type_is(&dtype, &["none", "list"]) && type_is(&stype, &["list"]) {
            return Ok(wrongtype(proto));
        }
        let elem = match block {
            None => {
                let undo = push_back(give_back, src.clone(), false);
                let f = frame(e.src.ask_undo(encode(&[pop, &src[..]]), &e.src, undo).await, proto)?;
                if is_error(&f) || is_null(&f) {
                    return Ok(f);
                }
                f
            }
            Some(timeout) => match blocking_pop(&e, proto, src, from_left, timeout, &gone).await? {
                Some(elem) => elem,
                None => return Ok(null_array(proto)),
            },
        };
        let Some(value) = as_bytes(&elem) else {
            return Ok(call::err(proto, "ERR shardis: unexpected reply to a pop"));
        };
        e.put(
            encode(&[push, &dst[..], &value]),
            encode(&[give_back, &src[..], &value]),
        )
        .await?;
        Ok(elem)
    }
    .await;
    r.unwrap_or_else(|e| e)
}

/// BLPOP / BRPOP `src` until an element comes (its bulk frame), the timeout
/// passes (`None`) or the client leaves (`None`; nothing was popped).
async fn blocking_pop(
    e: &Ends<'_>,
    proto: Protocol,
    src: &Bytes,
    from_left: bool,
    timeout: &Bytes,
    gone: &impl Fn() -> bool,
) -> Result<Option<Bytes>, Bytes> {
    let cmd: &[u8] = if from_left { b"BLPOP" } else { b"BRPOP" };
    let give_back: &'static [u8] = if from_left { b"LPUSH" } else { b"RPUSH" };
    let secs = std::str::from_utf8(timeout)
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok());
    // Redis's answers to a bad timeout.
    let Some(secs) = secs.filter(|s| s.is_finite()) else {
        return Err(call::err(proto, "ERR timeout is not a float or out of range"));
    };
    if secs < 0.0 {
        return Err(call::err(proto, "ERR timeout is negative"));
    }
    let deadline = (secs > 0.0).then(|| std::time::Instant::now() + std::time::Duration::from_secs_f64(secs));
    loop {
        let slice = match deadline {
            None => 1.0,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now()).as_secs_f64();
                if left <= 0.0 {
                    return Ok(None);
                }
                left.min(1.0)
            }
        };
        let req = encode(&[cmd, &src[..], format!("{slice:.3}").as_bytes()]);
        let undo = push_back(give_back, src.clone(), true);
        let f = frame(e.src.ask_undo(req, &e.src, undo).await, proto)?;
        if is_error(&f) {
            return Err(f);
        }
        if let Some(kv) = elements(&f).filter(|kv| kv.len() == 2) {
            return Ok(Some(kv[1].clone()));
        }
        if gone() {
            return Ok(None);
        }
    }
}

/// Undo of a pop whose taker gave up: `push` the element back on `src`
/// (`pair`: the answer is BLPOP's key and element, else LPOP's element).
fn push_back(push: &'static [u8], src: Bytes, pair: bool) -> Undo {
    took_then(move |f| {
        let elem = if pair {
            elements(f).filter(|kv| kv.len() == 2)?.pop()?
        } else {
            f.clone()
        };
        Some(encode(&[push, &src[..], &as_bytes(&elem)?]))
    })
}

fn null(proto: Protocol) -> Bytes {
    Bytes::from_static(if proto == Protocol::Resp3 { b"_\r\n" } else { b"$-1\r\n" })
}

fn null_array(proto: Protocol) -> Bytes {
    Bytes::from_static(if proto == Protocol::Resp3 { b"_\r\n" } else { b"*-1\r\n" })
}

pub async fn msetnx(topo: &Topology, proto: Protocol, plan: &CrossPlan) -> Bytes {
    let mut shards: Vec<usize> = plan.keys.iter().map(|k| k.1).collect();
    shards.sort_unstable();
    shards.dedup();
    let pairs_on = |s: usize| {
        plan.keys
            .iter()
            .filter(move |k| k.1 == s)
            .map(|k| (&plan.args[k.0], &plan.args[k.0 + 1]))
    };
    let script = |body: &str, s: usize| {
        let pairs: Vec<_> = pairs_on(s).collect();
        let n = pairs.len().to_string();
        let mut a: Vec<&[u8]> = vec![b"EVAL", body.as_bytes(), n.as_bytes()];
        a.extend(pairs.iter().map(|p| &p.0[..]));
        a.extend(pairs.iter().map(|p| &p.1[..]));
        encode(&a)
    };
    let mut done: Vec<usize> = Vec::new();
    let mut outcome = int(proto, 1);
    for &s in &shards {
        let conv = Conv::open(&topo.shards[s], proto);
        // Unanswered in time: the keys it sets when it runs are removed.
        let undo_req = script(DEL_IF_SAME, s);
        let undo = took_then(move |f| (as_integer(f) == Some(1)).then_some(undo_req));
        match conv.ask_undo(script(SET_ALL_NX, s), &conv, undo).await {
            Ok(f) if as_integer(&f) == Some(1) => done.push(s),
            Ok(f) if as_integer(&f) == Some(0) => {
                outcome = int(proto, 0);
                break;
            }
            Ok(f) => {
                outcome = f;
                break;
            }
            Err(e) => {
                outcome = call::failed(proto, &e);
                break;
            }
        }
    }
    if as_integer(&outcome) != Some(1) {
        for s in done {
            let conv = Conv::open(&topo.shards[s], proto);
            if let Err(e) = conv.ask(script(DEL_IF_SAME, s)).await {
                tracing::error!(error = %e, "MSETNX across shards: could not undo the keys set on a shard");
                outcome = call::err(
                    proto,
                    &format!(
                        "ERR shardis: MSETNX across shards failed and its keys on shard {} could not be removed",
                        conv.name()
                    ),
                );
            }
        }
    }
    outcome
}

//! Read-only commands and the STORE forms across shards ([`Op::Copy`]):
//! `DUMP` the operands that are not on the executing shard (in a script that
//! sends no payload over `crossshard.max_bytes`), then on that
//! shard, in one MULTI/EXEC: `RESTORE` them under temporary names, run the
//! client's command with the names rewritten, `DEL` the temporaries. Redis
//! computes the answer itself, options and errors included (a missing
//! operand is not restored, so it reads as a missing key; a wrong type is
//! restored as that type and answers WRONGTYPE).
//!
//! The temporaries never outlive the EXEC that creates them, so no client
//! can see them; they are restored with a 60 s TTL anyway (COPY's carry
//! their source's TTL instead, which COPY copies), and their names hash to
//! another shard than the one they are on ([`plan::temp_tag`]), so they
//! cannot collide with a client's key.

use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;

use super::call::{self, answer, send};
use super::plan::{self, CrossPlan};
use crate::protocol::reply;
use crate::protocol::{Protocol, reply::elements};
use crate::topology::Topology;

/// The TTL of a temporary (ms): a safety net, never reached (they are
/// deleted in the EXEC that creates them).
const TEMP_TTL_MS: i64 = 60_000;

/// DUMP and PTTL of a key, or nil when it is missing, or an error when its
/// payload is over ARGV[1] bytes.
const DUMP_WITHIN: &str = "\
local v = redis.call('DUMP', KEYS[1])
if not v then return false end
if string.len(v) > tonumber(ARGV[1]) then
  return redis.error_reply('ERR shardis: the operands to copy between shards exceed crossshard.max_bytes (' .. ARGV[1] .. ' bytes)')
end
return {v, redis.call('PTTL', KEYS[1])}";

fn too_big(max_bytes: u64) -> String {
    format!("ERR shardis: the operands to copy between shards exceed crossshard.max_bytes ({max_bytes} bytes)")
}

/// Runs `plan` on shard `exec` and returns the client's reply frame.
pub async fn run(
    topo: &Topology,
    lane: usize,
    proto: Protocol,
    plan: &CrossPlan,
    exec: usize,
    keep_ttl: bool,
    max_bytes: u64,
) -> Bytes {
    let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let Some(tag) = plan::temp_tag(exec, seed, |k| topo.ring.shard_of(k)) else {
        return call::err(proto, "ERR shardis: no name for a temporary key (one shard?)");
    };
    let rw = plan::rewrite(plan, exec, &tag);
    // Every operand's DUMP at once, then their answers. The script sends
    // no payload over `max_bytes`, so no more than that is read per operand.
    let max = max_bytes.to_string();
    let pending: Vec<_> = rw
        .remote
        .iter()
        .map(|(i, s, _)| {
            let req = plan::encode(&[
                &b"EVAL"[..],
                DUMP_WITHIN.as_bytes(),
                b"1",
                &plan.args[*i],
                max.as_bytes(),
            ]);
            send(&topo.shards[*s], Protocol::Resp2, lane, req, 1)
        })
        .collect();
    let mut restores = Vec::with_capacity(rw.remote.len());
    let mut total = 0u64;
    for (rx, (_, s, tmp)) in pending.into_iter().zip(&rw.remote) {
        let frame = match answer(rx, &topo.shards[*s]).await {
            Ok(f) => f,
            Err(e) => return call::failed(proto, &e),
        };
        if reply::is_error(&frame) {
            return frame;
        }
        // A missing key: not restored, so its temporary name reads as missing.
        let Some(parts) = elements(&frame).filter(|p| p.len() == 2) else {
            continue;
        };
        let (Some(payload), Some(pttl)) = (reply::as_bytes(&parts[0]), reply::as_integer(&parts[1])) else {
            continue;
        };
        total += payload.len() as u64;
        if total > max_bytes {
            return call::err(proto, &too_big(max_bytes));
        }
        // COPY copies the TTL: the temporary gets its source's (or none);
        // the others get the safety net. Deleted in the same EXEC anyway.
        let ttl = if keep_ttl { pttl.max(0) } else { TEMP_TTL_MS };
        restores.push((tmp.clone(), ttl, payload));
    }
    let (req, frames) = plan::transaction(&restores, &rw.command);
    let shard = &topo.shards[exec];
    let exec_reply = match answer(send(shard, proto, lane, req, frames), shard).await {
        Ok(f) => f,
        Err(e) => return call::failed(proto, &e),
    };
    if reply::is_error(&exec_reply) {
        return exec_reply;
    }
    let Some(results) = elements(&exec_reply) else {
        return call::err(proto, "ERR shardis: the cross-shard transaction was not executed");
    };
    // A RESTORE that failed (a shard of another Redis version ...): its error.
    if let Some(bad) = results[..restores.len().min(results.len())]
        .iter()
        .find(|r| reply::is_error(r))
    {
        return bad.clone();
    }
    match results.get(restores.len()) {
        Some(r) => r.clone(),
        None => call::err(proto, "ERR shardis: the cross-shard transaction answered too little"),
    }
}

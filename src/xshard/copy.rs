//! Read-only commands and the STORE forms across shards ([`Op::Copy`]):
//! `DUMP` the operands that are not on the executing shard, then on that
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
    // Every DUMP (and PTTL) at once, then their answers.
    let mut pending = Vec::with_capacity(rw.remote.len());
    for (i, s, _) in &rw.remote {
        let key = &plan.args[*i];
        let shard = &topo.shards[*s];
        let dump = send(shard, Protocol::Resp2, lane, plan::encode(&[&b"DUMP"[..], key]), 1);
        let pttl = keep_ttl.then(|| send(shard, Protocol::Resp2, lane, plan::encode(&[&b"PTTL"[..], key]), 1));
        pending.push((dump, pttl));
    }
    let mut restores = Vec::with_capacity(rw.remote.len());
    let mut total = 0u64;
    for ((dump, pttl), (_, s, tmp)) in pending.into_iter().zip(&rw.remote) {
        let shard = &topo.shards[*s];
        let frame = match answer(dump, shard).await {
            Ok(f) => f,
            Err(e) => return call::failed(proto, &e),
        };
        let ttl = match pttl {
            Some(rx) => match answer(rx, shard).await {
                Ok(f) => reply::as_integer(&f).unwrap_or(-1),
                Err(e) => return call::failed(proto, &e),
            },
            None => TEMP_TTL_MS,
        };
        if reply::is_error(&frame) {
            return frame;
        }
        // A missing key: not restored, so its temporary name reads as missing.
        let Some(payload) = reply::as_bytes(&frame) else {
            continue;
        };
        total += payload.len() as u64;
        if total > max_bytes {
            return call::err(
                proto,
                &format!(
                    "ERR shardis: the operands to copy between shards exceed crossshard.max_bytes ({max_bytes} bytes)"
                ),
            );
        }
        // COPY of a key without a TTL: none on the temporary either (COPY
        // would copy it); it is deleted in the same EXEC anyway.
        if ttl == -2 {
            continue; // expired between DUMP and PTTL
        }
        restores.push((tmp.clone(), ttl.max(0), payload));
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

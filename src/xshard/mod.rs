//! Multi-key commands whose keys are on several shards, executed instead of
//! refused with CROSSSHARD (`[crossshard] commands = true`, the default).
//!
//! The router ([`crate::router`]) gives such a request [`Plan::CrossShard`]
//! (built by [`plan::decide`]) where it would otherwise answer CROSSSHARD:
//! only requests already on that error path pay anything. The session
//! hands the plan to [`spawn`], a task of its own, whose answer comes back
//! as a [`Completion`] into the request's reply slot, so replies stay in
//! order and the session never waits on it.
//!
//! - [`plan`]: which commands, where they run, temporary names, the
//!   rewritten command (pure, unit-tested).
//! - [`copy`]: reads and STORE forms: the remote operands DUMPed and
//!   RESTOREd under temporary names on one shard, the native command run
//!   there, all in one MULTI/EXEC (atomic on that shard; the copies are
//!   taken just before, so not atomic across shards).
//! - [`moves`]: RENAME, SMOVE, LMOVE & co, MSETNX: a take / put / give-back
//!   saga (not atomic across shards; see there what a reader can observe).
//! - [`call`]: calling the shards.
//!
//! EVAL / FCALL over several shards stay CROSSSHARD: a script cannot be
//! split honestly.
//!
//! [`Plan::CrossShard`]: crate::router::Plan::CrossShard
//! [`Completion`]: crate::backend::Completion

mod call;
mod copy;
mod moves;
pub mod plan;

use std::sync::Arc;

use crate::backend::ReplyTo;
use crate::protocol::Protocol;
use crate::topology::Topology;
pub use plan::{CrossPlan, Op};

impl CrossPlan {
    /// BLMOVE / BRPOPLPUSH: the client is served nothing more until it answers.
    pub fn blocks(&self) -> bool {
        matches!(self.op, Op::Lmove { block: Some(_), .. })
    }
}

/// Runs `plan` on a task of its own; its reply frame (in `proto`) goes to
/// `reply`. `lane`: the client's pooled connections. `behind`: the client
/// has earlier requests not answered yet: the task first waits until those
/// on the shards it touches have run (a PING on the client's connection to
/// each, answered after them), since its own steps may go over other
/// connections. The session sends nothing more meanwhile.
pub fn spawn(
    topo: Arc<Topology>,
    plan: Box<CrossPlan>,
    proto: Protocol,
    lane: usize,
    behind: bool,
    mut reply: ReplyTo,
) {
    let Some(plan) = plan.refreshed(topo.shards.len(), |k| topo.ring.shard_of(k)) else {
        let e = call::err(proto, "ERR shardis: the shards changed under the command, retry it");
        return reply.complete(Ok(e));
    };
    let barrier: Vec<_> = if behind {
        let mut shards: Vec<usize> = plan.keys.iter().map(|k| k.1).collect();
        shards.sort_unstable();
        shards.dedup();
        let ping = plan::encode(&["PING"]);
        shards
            .into_iter()
            .map(|s| call::send(&topo.shards[s], proto, lane, ping.clone(), 1))
            .collect()
    } else {
        Vec::new()
    };
    tokio::spawn(async move {
        for rx in barrier {
            let _ = rx.await;
        }
        let max_bytes = topo.config.crossshard.max_bytes;
        let frame = match &plan.op {
            Op::Copy { exec, keep_ttl } => copy::run(&topo, lane, proto, &plan, *exec, *keep_ttl, max_bytes).await,
            Op::Rename { nx } => moves::rename(&topo, proto, &plan, *nx, max_bytes).await,
            Op::Smove => moves::smove(&topo, proto, &plan).await,
            Op::Lmove {
                from_left,
                to_left,
                block,
            } => {
                let closed = match &mut reply {
                    ReplyTo::Inbox { sink, .. } => Some(sink.clone()),
                    ReplyTo::Call(_) => None,
                };
                let gone = || closed.as_ref().is_some_and(|s| s.is_closed());
                moves::lmove(&topo, proto, &plan, (*from_left, *to_left), block.as_ref(), gone).await
            }
            Op::Msetnx => moves::msetnx(&topo, proto, &plan).await,
        };
        reply.complete(Ok(frame));
    });
}

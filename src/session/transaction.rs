//! A session's transaction steps (the router decides which step a request
//! is; [`crate::transaction`] holds the queue and builds the batch).

use super::Session;
use super::parked::Then;
use super::replies::{At, Slot};
use crate::backend::Job;
use crate::protocol::Request;
use crate::router::{self, TxStep, View};
use crate::topology::Topology;
use crate::transaction::Exec;

impl Session {
    pub(super) fn transaction(&mut self, topo: &Topology, step: TxStep, req: &Request) {
        let proto = self.state.proto;
        match step {
            TxStep::Multi => {
                self.tx = Some(Box::default());
                self.replies.reply_with(At::Next, proto, |e| e.ok());
            }
            TxStep::Discard => {
                self.tx = None;
                self.replies.reply_with(At::Next, proto, |e| e.ok());
            }
            TxStep::Queue(keys) => {
                let limits = &topo.config.limits;
                let queued = match &mut self.tx {
                    Some(tx) => tx.queue(
                        req.clone(),
                        keys,
                        |k| topo.shard_of(k),
                        limits.max_pipeline,
                        limits.max_request,
                    ),
                    None => return,
                };
                match queued {
                    Ok(()) => self.replies.reply_with(At::Next, proto, |e| e.simple("QUEUED")),
                    Err(e) => self.replies.error(At::Next, proto, &e),
                }
            }
            TxStep::Refuse(e) => {
                if let Some(tx) = &mut self.tx {
                    tx.abort();
                }
                self.replies.error(At::Next, proto, &e);
            }
            TxStep::Exec => self.exec(topo),
        }
    }

    /// EXEC: the queued commands go to their shard as one batch; the
    /// client gets EXEC's reply from it.
    fn exec(&mut self, topo: &Topology) {
        let proto = self.state.proto;
        let Some(tx) = self.tx.take() else { return };
        let ex = match tx.exec() {
            Ok(Some(ex)) => ex,
            Ok(None) => return self.replies.reply_with(At::Next, proto, |e| e.array(0)),
            Err(e) => return self.replies.error(At::Next, proto, &e),
        };
        self.exec_at(topo, ex, At::Next);
    }

    /// Sends a transaction's batch, unless its keys are held by a prepared
    /// change or have to move first: while keys move, the transaction's keys
    /// are moved first (and it waits behind this client's earlier parked
    /// requests), as for any keyed command.
    pub(super) fn exec_at(&mut self, topo: &Topology, ex: Exec, at: At) {
        let view = View::of(topo);
        if router::held(&view, ex.keys.iter().cloned()) {
            return self.hold(topo, Then::Exec(ex), at);
        }
        let m = topo.active_migration();
        if m.is_some() || self.parked > 0 {
            let moves = router::moves(&view, ex.keys.iter().cloned());
            if !moves.is_empty() || self.parked > 0 {
                return self.park(topo, m, moves, Then::Exec(ex), at);
            }
        }
        self.send_exec(topo, ex, at);
    }

    /// Sends a transaction's batch to the shard of its keys in `topo` (which
    /// may be newer than the one it was queued under).
    pub(super) fn send_exec(&mut self, topo: &Topology, ex: Exec, at: At) {
        let shard = match ex.shard(|k| topo.shard_of(k)) {
            Ok(s) => s,
            Err(e) => return self.replies.error(at, self.state.proto, &e),
        };
        let seq = self.replies.put(at, Slot::One(None));
        let reply = self.reply_to(seq, 0);
        topo.shards[shard].send(
            self.state.proto,
            self.lane,
            Job {
                req: ex.batch,
                reply,
                frames: ex.frames,
            },
        );
    }
}

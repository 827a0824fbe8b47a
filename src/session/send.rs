//! Requests a session sends: to a shard's pooled connection, to every
//! shard, and to the session's lock worker (started by its first lock
//! command); each answers into a reply slot through the session's inbox.

use bytes::Bytes;

use super::Session;
use super::replies::{At, Slot};
use crate::backend::{Job, ReplyTo, inbox};
use crate::error::ReplyError;
use crate::lock::classify::Op;
use crate::lock::worker::{self, LockRequest};
use crate::merge::Merge;
use crate::protocol::Request;
use crate::topology::Topology;

impl Session {
    pub(super) fn reply_to(&mut self, seq: u64, part: u32) -> ReplyTo {
        let (tx, _) = self.inbox.get_or_insert_with(inbox::channel);
        ReplyTo::inbox(tx, seq, part)
    }

    pub(super) fn send(&mut self, topo: &Topology, shard: usize, req: Bytes, seq: u64, part: u32) {
        topo.shards[shard].send(self.state.proto, self.lane, Job::new(req, self.reply_to(seq, part)));
    }

    /// Sends the same request to every shard and merges the answers.
    pub(super) fn send_to_all(&mut self, topo: &Topology, merge: Merge, req: Bytes, at: At) {
        let n = topo.shards.len();
        let seq = self.replies.put(at, Slot::many(merge, n));
        for shard in 0..n {
            self.send(topo, shard, req.clone(), seq, shard as u32);
        }
    }

    /// Queues a request on this session's lock worker, which answers in its slot.
    pub(super) fn lock_request(&mut self, req: Request, op: Op, at: At) {
        let seq = self.replies.put(at, Slot::One(None));
        let (shared, lane, inbox) = (&self.shared, self.lane, &mut self.inbox);
        let lock_tx = self.lock_tx.get_or_insert_with(|| {
            let (sink, _) = inbox.get_or_insert_with(inbox::channel);
            worker::spawn_worker(shared.clone(), lane, sink.clone())
        });
        let r = LockRequest {
            seq,
            req,
            proto: self.state.proto,
            op,
        };
        if lock_tx.send(r).is_err() {
            self.lock_tx = None;
            self.replies.error(
                At::Slot(seq),
                self.state.proto,
                &ReplyError::err("shardis: lock worker stopped"),
            );
        }
    }
}

//! A session's transactions and blocking pops over several shards (see
//! [`crate::spanning`]): both hold the client like a blocking command (it is
//! served nothing more until the answer), so a command it pipelined after
//! EXEC cannot overtake a later part of the transaction on another shard.

use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::Session;
use super::replies::{At, Slot};
use super::transaction::Watching;
use crate::protocol::{Protocol, Request};
use crate::registry::flag;
use crate::spanning::pops::{Cmd, Pop};
use crate::spanning::run::{self, SpanTx};
use crate::spanning::tx;
use crate::topology::Topology;
use crate::transaction::Exec;

impl Session {
    /// EXEC of a transaction queued with `crossshard.transactions =
    /// "per-shard"`: when its commands are on several shards, runs one
    /// MULTI/EXEC per shard, in order; gives `ex` back when they are on one.
    pub(super) fn exec_spanning(&mut self, topo: &Topology, mut ex: Exec, at: At) -> Option<Exec> {
        let proto = self.state.proto;
        let shards = match ex.command_shards(|k| topo.shard_of(k)) {
            Ok(s) => s,
            Err(e) => {
                self.replies.error(at, proto, &e);
                return None;
            }
        };
        let parts = match tx::split(&shards) {
            Some(parts) if parts.len() > 1 => parts,
            _ => return Some(ex),
        };
        let place = ex.places();
        let seq = self.replies.put(at, Slot::One(None));
        self.publish_after(seq, std::mem::take(&mut ex.publishes));
        self.hold_client(seq);
        let reply = self.reply_to(seq, 0);
        let t = SpanTx {
            parts: parts.into_iter().map(|p| (topo.shards[p.shard].clone(), p)).collect(),
            raws: ex.commands,
            place,
            watched: None,
        };
        run::transaction(t, proto, self.lane, reply);
        None
    }

    /// EXEC while watching (keys on `w.shard`), with commands on other shards
    /// too: the watched shard's part goes first, over the WATCH connection
    /// (EXEC answers nil, nothing applied, when a watched key changed), then
    /// the other parts in order. False (nothing done) when every command is
    /// on the watched shard; true when sent (`ex` taken) or answered.
    pub(super) fn exec_watched_spanning(&mut self, topo: &Topology, ex: &mut Exec, w: &Watching) -> bool {
        let proto = self.state.proto;
        if !ex.spanning {
            return false;
        }
        let shards = match ex.command_shards(|k| topo.shard_of(k)) {
            Ok(s) => s,
            Err(e) => {
                self.replies.error(At::Next, proto, &e);
                return true;
            }
        };
        if shards.iter().flatten().all(|&s| s == w.shard) {
            return false;
        }
        let Some(parts) = tx::split(&shards) else { return false };
        let parts = tx::watched_first(parts, w.shard);
        let (batch, frames) = parts[0].batch(&ex.commands);
        let (batch, frames) = if w.proto == proto {
            (batch, frames)
        } else {
            let hello = Request::from_args(&["HELLO", if proto == Protocol::Resp3 { "3" } else { "2" }]);
            let mut b = BytesMut::with_capacity(hello.raw.len() + batch.len());
            b.extend_from_slice(&hello.raw);
            b.extend_from_slice(&batch);
            (b.freeze(), frames + 1)
        };
        let place = ex.places();
        let seq = self.replies.put(At::Next, Slot::One(None));
        self.publish_after(seq, std::mem::take(&mut ex.publishes));
        self.hold_client(seq);
        let reply = self.reply_to(seq, 0);
        let t = SpanTx {
            parts: parts.into_iter().map(|p| (topo.shards[p.shard].clone(), p)).collect(),
            raws: std::mem::take(&mut ex.commands),
            place,
            // The task holds the last sender: the WATCH connection closes
            // once the batch is answered.
            watched: Some((w.conv.clone(), batch, frames)),
        };
        run::transaction(t, proto, self.lane, reply);
        true
    }

    /// A blocking pop whose keys are on several shards
    /// (`crossshard.blocking = "all-shards"`).
    pub(super) fn span_pop(&mut self, topo: &Topology, cmd: Cmd, args: &[&[u8]], at: At) {
        let proto = self.state.proto;
        let pop = match Pop::parse(cmd, args) {
            Ok(p) => p,
            Err(e) => return self.replies.error(at, proto, &e),
        };
        let shards = pop.keys.iter().map(|k| topo.shard_of(k)).collect();
        let seq = self.replies.put(at, Slot::One(None));
        self.hold_client(seq);
        let reply = self.reply_to(seq, 0);
        run::blocking_pop(pop, shards, topo.shards.clone(), proto, self.lane, reply);
    }

    /// Serves the client nothing more until slot `seq` answers, as a
    /// blocking command does (see `Session::complete`).
    fn hold_client(&mut self, seq: u64) {
        self.blocked = Some(seq);
        self.state.entry.set_flag(flag::BLOCKED, true);
        self.shared.stats.blocked.fetch_add(1, Ordering::Relaxed);
    }
}

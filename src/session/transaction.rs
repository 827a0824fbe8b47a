//! A session's transaction steps (the router decides which step a request
//! is; [`crate::transaction`] holds the queue and builds the batch).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::Session;
use super::parked::Then;
use super::replies::{At, Slot};
use crate::backend::{Completion, Job};
use crate::error::{ErrorKind, ReplyError};
use crate::merge::Merge;
use crate::protocol::reply;
use crate::protocol::{Protocol, Request};
use crate::router::{self, PUBSUB_SHARD, TxStep, View};
use crate::topology::Topology;
use crate::transaction::{Exec, Publish, Transaction};

/// An EXEC's slot and the publishes to send once it commits.
pub(super) type ExecPublishes = (u64, Vec<Publish>);

/// Keys this client WATCHes, and the connection of its own that watches
/// them on their shard (see [`crate::backend::Shard::converse`]): WATCH, the
/// client's commands on that shard and EXEC's batch go over it, in order.
/// Dropping it closes the connection, which ends the watch on the backend.
pub(super) struct Watching {
    pub shard: usize,
    /// The shard's name when WATCH was sent: a reload that puts another
    /// backend at this index must not let EXEC run there unguarded.
    name: Arc<str>,
    keys: Vec<Bytes>,
    pub(super) conv: mpsc::UnboundedSender<Job>,
    /// The protocol the connection speaks: a client that switches (HELLO)
    /// while watching switches it too, before its next command.
    pub(super) proto: Protocol,
}

impl Watching {
    /// Whether a topology change took the watch's shard or one of its keys
    /// away: the watch no longer guards them, so EXEC must answer nil.
    fn lost(&self, topo: &Topology) -> bool {
        topo.names.get(self.shard) != Some(&self.name) || self.keys.iter().any(|k| topo.shard_of(k) != self.shard)
    }
}

/// EXEC's reply when the transaction did not run (a watched key changed).
fn null_array(proto: Protocol) -> Bytes {
    Bytes::from_static(match proto {
        Protocol::Resp3 => b"_\r\n",
        _ => b"*-1\r\n",
    })
}

impl Session {
    pub(super) fn transaction(&mut self, topo: &Topology, step: TxStep, req: &Request) {
        let proto = self.state.proto;
        match step {
            TxStep::Multi => {
                self.tx = Some(Box::new(match &self.watching {
                    Some(w) if crate::spanning::transactions_on(&topo.config) => {
                        Transaction::on_shard_spanning(w.shard)
                    }
                    Some(w) => Transaction::on_shard(w.shard),
                    None if crate::spanning::transactions_on(&topo.config) => Transaction::spanning(),
                    None => Transaction::default(),
                }));
                self.replies.reply_with(At::Next, proto, |e| e.ok());
            }
            TxStep::Discard => {
                self.tx = None;
                self.watching = None;
                self.replies.reply_with(At::Next, proto, |e| e.ok());
            }
            TxStep::Watch { shard, keys } => self.watch(topo, shard, keys, req),
            TxStep::Unwatch => {
                self.watching = None;
                self.replies.reply_with(At::Next, proto, |e| e.ok());
            }
            TxStep::Queue(keys) => {
                let limits = &topo.config.limits;
                // A reload took the watched keys to another shard: EXEC will
                // answer nil (see `exec_watched`), so queue as Redis would,
                // rather than refuse keys that now live elsewhere.
                let lost = self.watching.as_ref().filter(|w| w.lost(topo)).map(|w| w.shard);
                let queued = match &mut self.tx {
                    Some(tx) => tx.queue(
                        req.clone(),
                        keys,
                        |k| lost.unwrap_or_else(|| topo.shard_of(k)),
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
            TxStep::Publish { sharded } => {
                let limits = &topo.config.limits;
                let queued = match &mut self.tx {
                    Some(tx) => tx.queue_publish(req.clone(), sharded, limits.max_pipeline, limits.max_request),
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

    /// WATCH: opens the connection of its own on `shard` (the first WATCH)
    /// and sends the WATCH over it. Keys on another shard than those already
    /// watched: CROSSSHARD, nothing more watched.
    fn watch(&mut self, topo: &Topology, shard: usize, keys: Vec<Bytes>, req: &Request) {
        let proto = self.state.proto;
        let name = topo.names[shard].clone();
        if let Some(w) = &self.watching
            && (w.shard != shard || w.name != name)
        {
            let e = ReplyError::new(
                ErrorKind::CrossShard,
                "watched keys don't hash to the same shard as the keys already watched",
            );
            return self.replies.error(At::Next, proto, &e);
        }
        let w = self.watching.get_or_insert_with(|| {
            Box::new(Watching {
                shard,
                name,
                keys: Vec::new(),
                conv: topo.shards[shard].converse(proto),
                proto,
            })
        });
        w.keys.extend(keys);
        self.send_watched(req.raw.clone(), 1, At::Next);
    }

    /// Sends `req` (`frames` replies, the last one answers) over the watch
    /// connection, into slot `at` (whose sequence number is returned).
    pub(super) fn send_watched(&mut self, req: Bytes, frames: u32, at: At) -> u64 {
        let seq = self.replies.put(at, Slot::One(None));
        let reply = self.reply_to(seq, 0);
        let proto = self.state.proto;
        let Some(w) = &mut self.watching else {
            self.replies
                .error(At::Slot(seq), proto, &ReplyError::err("shardis: not watching"));
            return seq;
        };
        let (req, frames) = if w.proto == proto {
            (req, frames)
        } else {
            w.proto = proto;
            let hello = Request::from_args(&["HELLO", if proto == Protocol::Resp3 { "3" } else { "2" }]);
            let mut b = BytesMut::with_capacity(hello.raw.len() + req.len());
            b.extend_from_slice(&hello.raw);
            b.extend_from_slice(&req);
            (b.freeze(), frames + 1)
        };
        if w.conv.send(Job { req, reply, frames }).is_err() {
            self.watching = None;
            self.replies.error(
                At::Slot(seq),
                self.state.proto,
                &ReplyError::err("shardis: the WATCH connection is gone"),
            );
        }
        seq
    }

    /// EXEC: the queued commands go to their shard as one batch; the
    /// client gets EXEC's reply from it.
    fn exec(&mut self, topo: &Topology) {
        let proto = self.state.proto;
        let Some(tx) = self.tx.take() else { return };
        if let Some(w) = self.watching.take() {
            return self.exec_watched(topo, *tx, w);
        }
        let ex = match tx.exec() {
            Ok(Some(ex)) => ex,
            Ok(None) => return self.replies.reply_with(At::Next, proto, |e| e.array(0)),
            Err(e) => return self.replies.error(At::Next, proto, &e),
        };
        self.exec_at(topo, ex, At::Next);
    }

    /// EXEC while watching: the batch goes over the watch connection, so the
    /// backend's WATCH guards it; the connection is dropped after it (EXEC
    /// ends the watch). When the topology changed since WATCH (the keys'
    /// shard is another, or they are moving or held), the watch no longer
    /// guards them: EXEC answers nil, as when a watched key changed, and an
    /// optimistic client retries.
    fn exec_watched(&mut self, topo: &Topology, tx: Transaction, mut w: Box<Watching>) {
        let proto = self.state.proto;
        if w.lost(topo) {
            return self.replies.ready(At::Next, null_array(proto));
        }
        let mut ex = match tx.batch() {
            Ok(ex) => ex,
            Err(e) => return self.replies.error(At::Next, proto, &e),
        };
        let view = View::of(topo);
        let keys = || w.keys.iter().chain(ex.keys.iter()).cloned();
        // With crossshard.transactions = "per-shard", only the watched keys
        // must stay on the watched shard; the rest may be anywhere.
        let here = |k: &Bytes| topo.shard_of(k) == w.shard;
        let moved = topo.names.get(w.shard) != Some(&w.name)
            || w.keys.iter().any(|k| !here(k))
            || (!ex.spanning && ex.keys.iter().any(|k| !here(k)))
            || router::held(&view, keys())
            || (view.migration.is_some() && !router::moves(&view, keys()).is_empty());
        if moved {
            return self.replies.ready(At::Next, null_array(proto));
        }
        // Sent (and the WATCH connection dropped) if it spans shards.
        if self.exec_watched_spanning(topo, &mut ex, &w) {
            return;
        }
        // Sent, then the sender dropped: the task answers it, then closes.
        w.keys.clear();
        // Back in its place (the box reused) for send_watched to find.
        self.watching = Some(w);
        let publishes = std::mem::take(&mut ex.publishes);
        let seq = self.send_watched(ex.batch, ex.frames, At::Next);
        self.watching = None;
        self.publish_after(seq, publishes);
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
    pub(super) fn send_exec(&mut self, topo: &Topology, mut ex: Exec, at: At) {
        if ex.spanning {
            // Several shards: one MULTI/EXEC each (session/spanning.rs).
            let Some(one) = self.exec_spanning(topo, ex, at) else {
                return;
            };
            ex = one;
        }
        let shard = match ex.shard(|k| topo.shard_of(k)) {
            Ok(s) => s,
            Err(e) => return self.replies.error(at, self.state.proto, &e),
        };
        let seq = self.replies.put(at, Slot::One(None));
        self.publish_after(seq, std::mem::take(&mut ex.publishes));
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

    /// The EXEC answering into slot `seq` has PUBLISH / SPUBLISH to send
    /// once it has committed.
    pub(super) fn publish_after(&mut self, seq: u64, publishes: Vec<Publish>) {
        if !publishes.is_empty() {
            self.exec_publishes.get_or_insert_default().push((seq, publishes));
        }
    }

    /// A shard answered an EXEC with publishes waiting: when it committed
    /// (an array), they are sent now, each to its shard, and EXEC's reply
    /// waits for theirs; otherwise (nil: a watched key changed; an error)
    /// they are dropped and EXEC's reply goes as it is. True when the
    /// completion was used up (the slot now waits for the publishes).
    pub(super) fn publish_step(&mut self, c: &Completion) -> bool {
        let Some(waiting) = self.exec_publishes.as_mut() else {
            return false;
        };
        let Some(i) = waiting.iter().position(|(seq, _)| *seq == c.seq) else {
            return false;
        };
        let (seq, publishes) = waiting.swap_remove(i);
        let results = match &c.result {
            Ok(f) if !reply::is_error(f) && !reply::is_null(f) => reply::elements(f),
            _ => None,
        };
        let Some(results) = results else { return false };
        let topo = self.shared.topology.load();
        let merge = Merge::ExecPublish {
            results,
            publish_at: publishes.iter().map(|p| p.at).collect(),
        };
        self.replies.put(At::Slot(seq), Slot::many(merge, publishes.len()));
        for (part, p) in publishes.into_iter().enumerate() {
            let shard = match p.req.arg(1) {
                Some(channel) if p.sharded => topo.shard_of(channel),
                _ => PUBSUB_SHARD,
            };
            self.send(&topo, shard, p.req.raw, seq, part as u32);
        }
        true
    }
}

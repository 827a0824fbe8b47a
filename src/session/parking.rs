//! Requests waiting for their keys to move, during a migration.
//!
//! The router answers [`Plan::Park`](crate::router::Plan::Park) for a keyed
//! request whose keys may still be on their old owner: the session sends a
//! `MIGRATE` of each such key from its old owner and holds the request's
//! reply slot ([`Slot::Migrating`]). When every key has moved (or failed to),
//! the request is routed again, released, into the slot it holds, or answered
//! with TRYAGAIN. Requests are released in request order: one still waiting
//! holds back every later one of the same client.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::Session;
use super::parked::{Parked, Then};
use super::replies::{At, Slot};
use crate::backend::{Completion, Job};
use crate::error::{ErrorKind, ReplyError};
use crate::migration::{self, Migration, Outcome};
use crate::protocol::{Encoder, Protocol};
use crate::router::Moves;
use crate::topology::Topology;

/// Marks the completion of a `DEL` of a superseded source copy (the low bits
/// are the key's part), as opposed to its `MIGRATE`.
const DEL_PART: u32 = 1 << 31;

impl Session {
    /// Parks `then` in a [`Slot::Migrating`] and sends a MIGRATE for each of
    /// `moves` from its old owner (in `m`) to its new owner.
    pub(super) fn park(&mut self, topo: &Topology, m: Option<&Migration>, moves: Moves, then: Then, at: At) {
        let jobs: SmallVec<[(Option<Arc<crate::backend::Shard>>, Bytes); 4]> = moves
            .iter()
            .map(|mv| {
                let spec = &topo.shards[mv.to].spec;
                let shard = m.and_then(|m| m.old_shard(mv.from));
                (shard, migration::migrate_request(spec, std::iter::once(&mv.key[..])))
            })
            .collect();
        let moves: SmallVec<[(usize, Bytes); 4]> = moves.into_iter().map(|mv| (mv.from, mv.key)).collect();
        self.parked += 1;
        let seq = self.replies.put(
            at,
            Slot::Migrating(Box::new(Parked {
                then,
                left: moves.len(),
                moves,
                failed: None,
                held: false,
            })),
        );
        for (part, (shard, job)) in jobs.into_iter().enumerate() {
            let part = part as u32;
            match shard {
                Some(shard) => {
                    let reply = self.reply_to(seq, part);
                    shard.send(Protocol::Resp2, self.lane, Job::new(job, reply));
                }
                // The migration ended meanwhile: nothing left to move.
                None => self.migration_step(Completion {
                    seq,
                    part,
                    result: Ok(Bytes::from_static(b"+NOKEY\r\n")),
                }),
            }
        }
    }

    /// Holds `then` in a [`Slot::Migrating`] until the prepared change of
    /// `topo` is committed or aborted (see [`crate::hold`]).
    pub(super) fn hold(&mut self, topo: &Topology, then: Then, at: At) {
        let Some(hold) = topo.hold.clone() else {
            // Not reachable: the router plans a hold only with one in place.
            return self
                .replies
                .error(at, self.state.proto, &ReplyError::err("shardis: no change is prepared"));
        };
        self.parked += 1;
        let seq = self.replies.put(
            at,
            Slot::Migrating(Box::new(Parked {
                then,
                left: 1,
                moves: SmallVec::new(),
                failed: None,
                held: true,
            })),
        );
        let reply = self.reply_to(seq, 0);
        hold.wait(reply);
    }

    /// A MIGRATE (or DEL of a superseded copy) for a [`Slot::Migrating`]
    /// answered, or a hold ended; once all have, the request runs, or fails
    /// with TRYAGAIN.
    pub(super) fn migration_step(&mut self, c: Completion) {
        if c.part == super::readthrough::READ_PART {
            return self.read_step(c);
        }
        let topo = self.shared.topology.load_full();
        let m = topo.migration.clone();
        let Some(Slot::Migrating(parked)) = self.replies.get_mut(c.seq) else {
            return;
        };
        if parked.held {
            match &c.result {
                Ok(f) if !crate::protocol::reply::is_error(f) => {}
                Ok(f) => {
                    let text = String::from_utf8_lossy(f.get(1..).unwrap_or_default())
                        .trim_end()
                        .to_string();
                    let text = text.strip_prefix("TRYAGAIN ").unwrap_or(&text).to_string();
                    parked.failed = Some(ReplyError::new(ErrorKind::TryAgain, text));
                }
                Err(e) => parked.failed = Some(ReplyError::err(e.to_string())),
            }
            parked.left = 0;
            return self.release_parked();
        }
        let part = (c.part & !DEL_PART) as usize;
        let Some((src, key)) = parked.moves.get(part).cloned() else {
            return;
        };
        let mut del_from = None;
        if c.part & DEL_PART != 0 {
            match &c.result {
                Ok(f) if !crate::protocol::reply::is_error(f) => {
                    if let Some(m) = &m {
                        m.stats.superseded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                r => {
                    let why = match r {
                        Ok(f) => String::from_utf8_lossy(f).trim_end().to_string(),
                        Err(e) => e.to_string(),
                    };
                    parked.failed = Some(still_moving(
                        &key,
                        format_args!("and its superseded copy could not be deleted yet: {why}"),
                    ));
                }
            }
            parked.left -= 1;
        } else {
            match migration::outcome(&c.result) {
                Outcome::Moved => {
                    if let (Some(m), Ok(f)) = (&m, &c.result)
                        && crate::protocol::reply::is_ok(f)
                    {
                        m.stats.moved_on_demand.fetch_add(1, Ordering::Relaxed);
                    }
                    parked.left -= 1;
                }
                // The new owner already has it (newer): drop the old copy
                // before the request runs, so it can never come back.
                Outcome::Busy => match m.as_ref().and_then(|m| m.old_shard(src)) {
                    Some(shard) => del_from = Some(shard),
                    None => parked.left -= 1,
                },
                Outcome::Failed(why) => {
                    let from = m.as_ref().map(|m| m.old_name(src).to_string()).unwrap_or_default();
                    parked.failed = Some(still_moving(
                        &key,
                        format_args!("from shard {from} and could not be moved yet: {why}"),
                    ));
                    parked.left -= 1;
                }
            }
        }
        if let Some(shard) = del_from {
            let reply = self.reply_to(c.seq, c.part | DEL_PART);
            shard.send(
                Protocol::Resp2,
                self.lane,
                Job::new(migration::del_request(&key), reply),
            );
        }
        self.release_parked();
    }

    /// Routes again, in request order, every parked request whose keys have
    /// all moved, up to the first that still waits.
    pub(super) fn release_parked(&mut self) {
        while self.parked > 0 {
            let first = self.replies.iter_mut().find_map(|(seq, s)| match s {
                Slot::Migrating(p) => Some((seq, p.left == 0)),
                _ => None,
            });
            let Some((seq, true)) = first else { return };
            let Some(slot) = self.replies.get_mut(seq) else { return };
            let Slot::Migrating(parked) = std::mem::replace(slot, Slot::One(None)) else {
                return;
            };
            self.parked -= 1;
            let Parked { then, failed, held, .. } = *parked;
            if let Some(why) = failed {
                let mut b = BytesMut::new();
                why.encode(&mut Encoder::new(&mut b, self.state.proto));
                self.replies.put(At::Slot(seq), Slot::Ready(b.freeze()));
                continue;
            }
            // Its keys are on their new owners: run it there, in its slot.
            let topo = self.shared.topology.load_full();
            // A held request is routed from scratch: on the new ring it may
            // have keys to move first, on the old one (aborted) it just runs.
            match then {
                Then::Dispatch(req) => self.dispatch(&topo, req, At::Slot(seq), !held),
                Then::Exec(ex) if held => self.exec_at(&topo, ex, At::Slot(seq)),
                Then::Exec(ex) => self.send_exec(&topo, ex, At::Slot(seq)),
            }
        }
    }
}

/// TRYAGAIN for a request whose key could not be moved yet.
fn still_moving(key: &[u8], what: std::fmt::Arguments<'_>) -> ReplyError {
    ReplyError::new(
        ErrorKind::TryAgain,
        format!("shardis: key '{}' is moving {what}", String::from_utf8_lossy(key)),
    )
}

//! Executing a [`Plan::ReadThrough`](crate::router::Plan::ReadThrough):
//! a read-only command on a moving key, read on its old owner if the key is
//! still there, else on its new owner (why that is sound:
//! [`crate::migration::read`]).
//!
//! The request holds its reply slot as a parked request ([`Slot::Migrating`],
//! counted in `parked`), so the client's later keyed requests wait behind it
//! exactly as behind a request waiting for its key to move: none of them
//! runs (on either owner) before this read has.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use smallvec::smallvec;

use super::Session;
use super::parked::{Parked, Then};
use super::replies::{At, Slot};
use crate::backend::{Completion, Job};
use crate::error::{ErrorKind, ReplyError};
use crate::migration::read::{self, Read};
use crate::protocol::Request;
use crate::topology::Topology;

/// Marks the completion of a read-through's transaction on the old owner
/// (as opposed to a MIGRATE or DEL of [`super::parking`]).
pub(super) const READ_PART: u32 = 1 << 30;

impl Session {
    /// Parks `req` (whose key is argument `key`) in a [`Slot::Migrating`]
    /// and sends `MULTI; EXISTS key; req; EXEC` to old shard `from`.
    pub(super) fn read_through(&mut self, topo: &Topology, from: usize, key: usize, req: &Request, at: At) {
        let Some(key) = req.arg_bytes(key) else {
            // Not reachable: the router found the key at that index.
            return self
                .replies
                .error(at, self.state.proto, &ReplyError::err("shardis: no key to read"));
        };
        let shard = topo.migration.as_ref().and_then(|m| m.old_shard(from));
        let job = shard.as_ref().map(|_| read::request(&key, &req.raw));
        self.parked += 1;
        let seq = self.replies.put(
            at,
            Slot::Migrating(Box::new(Parked {
                then: Then::Dispatch(req.clone()),
                moves: smallvec![(from, key)],
                left: 1,
                failed: None,
                held: false,
            })),
        );
        match (shard, job) {
            (Some(shard), Some(job)) => {
                let reply = self.reply_to(seq, READ_PART);
                let job = Job {
                    req: job,
                    reply,
                    frames: read::FRAMES,
                };
                shard.send(self.state.proto, self.lane, job);
            }
            // The migration ended meanwhile: the key is on its new owner.
            _ => self.read_step(Completion {
                seq,
                part: READ_PART,
                result: Ok(Bytes::from_static(b"*2\r\n:0\r\n$-1\r\n")),
            }),
        }
    }

    /// The old owner answered a read-through: the reply is the answer (the
    /// key was there), or the request goes on to the new owner, or it fails
    /// with TRYAGAIN. Then parked requests behind it are released in order.
    pub(super) fn read_step(&mut self, c: Completion) {
        let topo = self.shared.topology.load_full();
        let m = topo.migration.as_deref();
        let Some(slot) = self.replies.get_mut(c.seq) else {
            return;
        };
        let Slot::Migrating(parked) = slot else { return };
        match read::outcome(&c.result) {
            Read::Current(reply) => {
                *slot = Slot::Ready(reply);
                self.parked -= 1;
                if let Some(m) = m {
                    m.stats.read_old.fetch_add(1, Ordering::Relaxed);
                }
            }
            Read::Gone => {
                parked.left = 0;
                if let Some(m) = m {
                    m.stats.read_new.fetch_add(1, Ordering::Relaxed);
                }
            }
            Read::Failed(why) => {
                let (from, key) = parked.moves.first().cloned().unwrap_or_default();
                let from = m.map(|m| m.old_name(from).to_string()).unwrap_or_default();
                parked.failed = Some(ReplyError::new(
                    ErrorKind::TryAgain,
                    format!(
                        "shardis: key '{}' is moving from shard {from} and could not be read there yet: {why}",
                        String::from_utf8_lossy(&key)
                    ),
                ));
                parked.left = 0;
            }
        }
        self.release_parked();
    }
}

//! A prepared topology change: the slots that will change owner, and the
//! requests held until the change is committed or aborted.
//!
//! In a fleet ([`crate::cluster`]) a change that moves slots is two-phase.
//! When a proxy sees epoch N+1 *prepared*, it installs a [`Hold`] in its
//! current topology: from then on a request on a key whose owner differs
//! between N and N+1 is not sent anywhere; the session parks it and
//! registers here ([`Hold::wait`]). Keys whose owner does not change are
//! never held. The proxy acknowledges the epoch only once the hold is in
//! place and the requests sent before it have reached their shards, so once
//! every proxy has acknowledged, no proxy writes a moving key to its old
//! owner again. When the change is committed the held requests are routed
//! again (migrate-first, on the new ring); when it is aborted they run on
//! the old ring as if nothing happened; when neither comes within the hold
//! timeout they are answered `-TRYAGAIN`.
//!
//! This module is data plus a waiter list; it does no I/O and starts no task.

use std::sync::{Arc, Mutex};

use crate::backend::ReplyTo;
use crate::error::{ErrorKind, ReplyError};
use crate::ring::Ring;

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    /// The change was committed or aborted: route the held requests again.
    Released,
    /// The change neither committed nor aborted within the hold timeout.
    TimedOut,
    /// This proxy was evicted from its fleet: it holds every key for good.
    Evicted,
}

#[derive(Debug, Default)]
struct Waiters {
    ended: Option<HoldEnd>,
    waiting: Vec<ReplyTo>,
}

/// The slots a prepared epoch moves, and the requests waiting on them.
#[derive(Debug)]
pub struct Hold {
    /// The prepared epoch.
    pub epoch: u64,
    next_ring: Ring,
    next_names: Vec<Arc<str>>,
    /// The rings have different slot counts: every key may move.
    all: bool,
    waiters: Mutex<Waiters>,
}

impl Hold {
    /// The hold for a change from `ring` to `next_ring` (shard names in ring
    /// order on each side).
    pub fn new(epoch: u64, ring: &Ring, next_ring: Ring, next_names: Vec<Arc<str>>) -> Hold {
        Hold {
            epoch,
            all: ring.slots() != next_ring.slots(),
            next_ring,
            next_names,
            waiters: Mutex::new(Waiters::default()),
        }
    }

    /// A hold on every key (an evicted proxy).
    pub fn everything(epoch: u64, ring: &Ring, names: Vec<Arc<str>>) -> Hold {
        Hold {
            epoch,
            all: true,
            next_ring: ring.clone(),
            next_names: names,
            waiters: Mutex::new(Waiters::default()),
        }
    }

    /// True when `key`, owned now by the shard named `owner`, has another
    /// owner in the prepared epoch.
    #[inline]
    pub fn holds(&self, key: &[u8], owner: &str) -> bool {
        self.all || *self.next_names[self.next_ring.shard_of(key)] != *owner
    }

    /// How many shards' worth of slots the prepared epoch moves (for logs):
    /// the count of slots whose owner changes.
    pub fn moving_slots(&self, ring: &Ring, names: &[Arc<str>]) -> usize {
        if self.all {
            return self.next_ring.slots();
        }
        (0..ring.slots())
            .filter(|&s| *names[ring.owner_of_slot(s)] != *self.next_names[self.next_ring.owner_of_slot(s)])
            .count()
    }

    /// Registers a held request: `reply` is completed (`+RELEASED`, or the
    /// TRYAGAIN error) when the hold ends, at once if it already has.
    pub fn wait(&self, reply: ReplyTo) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        match &w.ended {
            None => w.waiting.push(reply),
            Some(end) => {
                let end = end.clone();
                drop(w);
                complete(reply, &end, self.epoch);
            }
        }
    }

    /// Ends the hold (once; later calls do nothing) and answers every waiter.
    pub fn end(&self, end: HoldEnd) {
        let waiting = {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if w.ended.is_some() {
                return;
            }
            w.ended = Some(end.clone());
            std::mem::take(&mut w.waiting)
        };
        for r in waiting {
            complete(r, &end, self.epoch);
        }
    }

    /// How the hold ended, if it has.
    pub fn ended(&self) -> Option<HoldEnd> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).ended.clone()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).waiting.len()
    }
}

/// The reply a waiter gets when the hold ends.
fn complete(reply: ReplyTo, end: &HoldEnd, epoch: u64) {
    match end {
        HoldEnd::Released => reply.complete(Ok(bytes::Bytes::from_static(b"+RELEASED\r\n"))),
        HoldEnd::TimedOut | HoldEnd::Evicted => {
            let e = if *end == HoldEnd::Evicted {
                evicted()
            } else {
                timed_out(epoch)
            };
            let mut b = bytes::BytesMut::new();
            e.encode(&mut crate::protocol::Encoder::new(
                &mut b,
                crate::protocol::Protocol::Resp2,
            ));
            reply.complete(Ok(b.freeze()))
        }
    }
}

/// The error of every keyed request on an evicted proxy.
pub fn evicted() -> ReplyError {
    ReplyError::new(
        ErrorKind::TryAgain,
        "shardis: this proxy was evicted from its fleet and serves no keys until it is restarted; use another proxy",
    )
}

/// The error of a request held longer than the hold timeout.
pub fn timed_out(epoch: u64) -> ReplyError {
    ReplyError::new(
        ErrorKind::TryAgain,
        format!(
            "shardis: the key's shard is changing (epoch {epoch} prepared) and the fleet has not committed it yet; retry"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Member;

    fn ring(names: &[&str]) -> (Ring, Vec<Arc<str>>) {
        let members: Vec<Member> = names
            .iter()
            .map(|n| Member {
                name: n.to_string(),
                weight: 1,
            })
            .collect();
        (Ring::build(&members, 16), names.iter().map(|n| Arc::from(*n)).collect())
    }

    #[test]
    fn only_keys_whose_owner_changes_are_held() {
        let (old, old_names) = ring(&["a", "b", "c"]);
        let (new, new_names) = ring(&["a", "b", "c", "d"]);
        let hold = Hold::new(2, &old, new.clone(), new_names.clone());
        let (mut held, mut free) = (0, 0);
        for i in 0..10_000 {
            let key = format!("k{i}");
            let owner = &old_names[old.shard_of(key.as_bytes())];
            let moves = *new_names[new.shard_of(key.as_bytes())] != **owner;
            assert_eq!(hold.holds(key.as_bytes(), owner), moves, "{key}");
            if moves { held += 1 } else { free += 1 }
        }
        // About a quarter of the keys move to the new shard, the rest stay.
        assert!((1500..3500).contains(&held), "held {held}");
        assert!(free > 6000);
        let slots = hold.moving_slots(&old, &old_names);
        assert!(slots > 0 && slots < old.slots() / 2, "{slots}");
    }

    #[test]
    fn waiters_are_answered_once_when_the_hold_ends() {
        let (r, names) = ring(&["a", "b", "c"]);
        let hold = Hold::new(7, &r, r.clone(), names);
        let (tx1, mut rx1) = tokio::sync::oneshot::channel();
        hold.wait(ReplyTo::Call(tx1));
        assert_eq!(hold.waiting(), 1);
        hold.end(HoldEnd::TimedOut);
        let got = rx1.try_recv().expect("answered").expect("ok frame");
        assert!(got.starts_with(b"-TRYAGAIN"), "{got:?}");
        // Ending again changes nothing; a late waiter is answered at once.
        hold.end(HoldEnd::Released);
        assert_eq!(hold.ended(), Some(HoldEnd::TimedOut));
        let (tx2, mut rx2) = tokio::sync::oneshot::channel();
        hold.wait(ReplyTo::Call(tx2));
        assert!(
            rx2.try_recv()
                .expect("answered")
                .expect("frame")
                .starts_with(b"-TRYAGAIN")
        );
    }
}

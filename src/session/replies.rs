//! Reply slots in request order. Every request takes the next slot; backend
//! replies fill slots in any order; the longest run of finished slots at the
//! head is written to the client in one write. Replies CLIENT REPLY OFF /
//! SKIP silences are dropped here, in order like the others. The bytes of
//! finished replies still waiting here or in the output are counted
//! ([`Replies::held`]) for the output buffer limit (`crate::limits::output`).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::parked::Parked;
use crate::backend::{BackendResult, Completion};
use crate::error::ReplyError;
use crate::merge::Merge;
use crate::protocol::{Encoder, Protocol};

/// A request's place in the reply order.
pub(super) enum Slot {
    /// A reply the proxy made.
    Ready(Bytes),
    /// Waiting for one backend reply.
    One(Option<BackendResult>),
    /// Waiting for `left` of several parts.
    Many {
        merge: Merge,
        parts: Vec<Option<BackendResult>>,
        left: usize,
    },
    /// During a migration: waiting for the request's keys to move to their
    /// new owners; then the request is routed again into this slot. Boxed:
    /// rare, and large next to the others.
    Migrating(Box<Parked>),
}

fn result_len(r: &Option<BackendResult>) -> usize {
    match r {
        Some(Ok(frame)) => frame.len(),
        _ => 0,
    }
}

impl Slot {
    /// The reply bytes the slot holds now.
    fn bytes(&self) -> usize {
        match self {
            Slot::Ready(b) => b.len(),
            Slot::One(r) => result_len(r),
            Slot::Many { parts, .. } => parts.iter().map(result_len).sum(),
            Slot::Migrating(_) => 0,
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Slot::Ready(_) => true,
            Slot::One(r) => r.is_some(),
            Slot::Many { left, .. } => *left == 0,
            Slot::Migrating(_) => false,
        }
    }

    /// Waiting for `n` parts, merged by `merge`.
    pub(super) fn many(merge: Merge, n: usize) -> Slot {
        Slot::Many {
            merge,
            parts: (0..n).map(|_| None).collect(),
            left: n,
        }
    }
}

/// Which slot a plan's reply goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    /// A new slot after every other (a request just read).
    Next,
    /// The slot with this sequence number, which the request already holds
    /// (a request that waited for a migration).
    Slot(u64),
}

/// The reply slots of one client and the bytes ready to write.
#[derive(Default)]
pub(super) struct Replies {
    pending: VecDeque<Slot>,
    /// Sequence number of `pending[0]`.
    head_seq: u64,
    /// Ready to write to the client. Grows on first use: an idle client
    /// costs no output buffer.
    pub(super) out: BytesMut,
    /// While set, the replies of requests put are not sent (CLIENT REPLY).
    pub(super) muted: bool,
    /// Sequence numbers of pending slots whose reply is not sent, in order.
    silent: VecDeque<u64>,
    /// Reply bytes held in `pending` (finished slots and parts).
    pending_bytes: usize,
}

impl Replies {
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Reply bytes the client has not been sent yet: those in the output
    /// and those of finished replies waiting for an earlier one.
    pub(super) fn held(&self) -> usize {
        self.out.len() + self.pending_bytes
    }

    /// The sequence number of the oldest slot not written yet (every lower
    /// one is written).
    pub(super) fn head_seq(&self) -> u64 {
        self.head_seq
    }

    /// The sequence number the next slot put at [`At::Next`] gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.head_seq + self.pending.len() as u64
    }

    /// Puts `slot` at `at` and returns its sequence number.
    pub(super) fn put(&mut self, at: At, slot: Slot) -> u64 {
        match at {
            At::Slot(seq) => {
                let add = slot.bytes();
                if let Some(s) = self.get_mut(seq) {
                    let old = std::mem::replace(s, slot).bytes();
                    self.pending_bytes = (self.pending_bytes + add).saturating_sub(old);
                }
                seq
            }
            At::Next => {
                self.pending_bytes += slot.bytes();
                self.pending.push_back(slot);
                let seq = self.head_seq + self.pending.len() as u64 - 1;
                if self.muted {
                    self.silent.push_back(seq);
                }
                seq
            }
        }
    }

    /// A finished reply at `at`: written at once when nothing is before it.
    pub(super) fn ready(&mut self, at: At, reply: Bytes) {
        if at == At::Next && self.pending.is_empty() {
            if !self.muted {
                self.out.extend_from_slice(&reply);
            }
        } else {
            self.put(at, Slot::Ready(reply));
        }
    }

    /// Encodes a reply the proxy makes, in order.
    pub(super) fn reply_with(&mut self, at: At, proto: Protocol, f: impl FnOnce(&mut Encoder<'_>)) {
        if at == At::Next && self.pending.is_empty() {
            if !self.muted {
                f(&mut Encoder::new(&mut self.out, proto));
            }
        } else {
            let mut b = BytesMut::new();
            f(&mut Encoder::new(&mut b, proto));
            self.put(at, Slot::Ready(b.freeze()));
        }
    }

    pub(super) fn error(&mut self, at: At, proto: Protocol, e: &ReplyError) {
        self.reply_with(at, proto, |enc| e.encode(enc));
    }

    /// The slot with sequence number `seq`, if it is still pending.
    pub(super) fn get_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let idx = seq.checked_sub(self.head_seq)?;
        self.pending.get_mut(idx as usize)
    }

    /// The slots from the head, with their sequence numbers.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Slot)> {
        let head = self.head_seq;
        self.pending
            .iter_mut()
            .enumerate()
            .map(move |(i, s)| (head + i as u64, s))
    }

    /// Fills the slot a backend reply answers. A completion for a
    /// [`Slot::Migrating`] is handed back: the parking logic owns those.
    pub(super) fn complete(&mut self, c: Completion) -> Option<Completion> {
        let len = c.result.as_ref().map_or(0, |f| f.len());
        let slot = c
            .seq
            .checked_sub(self.head_seq)
            .and_then(|i| self.pending.get_mut(i as usize));
        match slot {
            Some(Slot::Migrating(_)) => return Some(c),
            Some(Slot::One(r)) => {
                *r = Some(c.result);
                self.pending_bytes += len;
            }
            Some(Slot::Many { parts, left, .. }) => {
                if let Some(p) = parts.get_mut(c.part as usize) {
                    if p.is_none() {
                        *left -= 1;
                    }
                    *p = Some(c.result);
                    self.pending_bytes += len;
                }
            }
            _ => {}
        }
        None
    }

    /// Moves every finished reply at the head of the queue to the output.
    pub(super) fn flush(&mut self, proto: Protocol) {
        while self.pending.front().is_some_and(Slot::is_done) {
            let Some(slot) = self.pending.pop_front() else { break };
            self.pending_bytes = self.pending_bytes.saturating_sub(slot.bytes());
            self.head_seq += 1;
            if self.silent.front() == Some(&(self.head_seq - 1)) {
                self.silent.pop_front();
                continue;
            }
            match slot {
                Slot::Ready(b) => self.out.extend_from_slice(&b),
                Slot::One(Some(Ok(frame))) => self.out.extend_from_slice(&frame),
                Slot::One(Some(Err(e))) => Encoder::new(&mut self.out, proto).error(&e.to_string()),
                Slot::One(None) | Slot::Migrating(_) => {}
                Slot::Many { merge, parts, .. } => merge.finish(parts, &mut Encoder::new(&mut self.out, proto)),
            }
        }
        if self.pending.is_empty() {
            self.pending_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(seq: u64, frame: &'static [u8]) -> Completion {
        Completion {
            seq,
            part: 0,
            result: Ok(Bytes::from_static(frame)),
        }
    }

    #[test]
    fn replies_leave_in_request_order_whatever_order_they_arrive_in() {
        let mut r = Replies::default();
        let a = r.put(At::Next, Slot::One(None));
        let b = r.put(At::Next, Slot::One(None));
        r.ready(At::Next, Bytes::from_static(b"+c\r\n"));
        assert!(r.complete(done(b, b"+b\r\n")).is_none());
        r.flush(Protocol::Resp2);
        assert!(r.out.is_empty(), "the first reply is still due");
        assert!(r.complete(done(a, b"+a\r\n")).is_none());
        r.flush(Protocol::Resp2);
        assert_eq!(&r.out[..], b"+a\r\n+b\r\n+c\r\n");
        assert!(r.is_empty());
        // Nothing pending: a local reply goes straight out.
        r.ready(At::Next, Bytes::from_static(b"+d\r\n"));
        assert_eq!(&r.out[..], b"+a\r\n+b\r\n+c\r\n+d\r\n");
    }

    #[test]
    fn muted_replies_are_dropped_in_order() {
        let mut r = Replies::default();
        let a = r.put(At::Next, Slot::One(None));
        r.muted = true;
        let b = r.put(At::Next, Slot::One(None));
        r.ready(At::Next, Bytes::from_static(b"+muted\r\n"));
        r.muted = false;
        r.ready(At::Next, Bytes::from_static(b"+c\r\n"));
        assert!(r.complete(done(b, b"+b\r\n")).is_none());
        assert!(r.complete(done(a, b"+a\r\n")).is_none());
        r.flush(Protocol::Resp2);
        assert_eq!(&r.out[..], b"+a\r\n+c\r\n");
        r.muted = true;
        r.ready(At::Next, Bytes::from_static(b"+muted\r\n"));
        assert_eq!(&r.out[..], b"+a\r\n+c\r\n");
    }

    #[test]
    fn held_counts_the_bytes_not_sent_yet() {
        let mut r = Replies::default();
        let a = r.put(At::Next, Slot::One(None));
        let b = r.put(At::Next, Slot::many(Merge::AnyOk, 2));
        r.ready(At::Next, Bytes::from_static(b"+ccc\r\n"));
        assert_eq!(r.held(), 6);
        r.complete(Completion {
            seq: b,
            part: 1,
            result: Ok(Bytes::from_static(b"+bb\r\n")),
        });
        r.flush(Protocol::Resp2);
        assert_eq!(r.held(), 11, "nothing written: the first reply is due");
        r.complete(done(a, b"+a\r\n"));
        r.complete(Completion {
            seq: b,
            part: 0,
            result: Ok(Bytes::from_static(b"+OK\r\n")),
        });
        r.flush(Protocol::Resp2);
        assert!(r.is_empty());
        assert_eq!(r.held(), r.out.len());
        r.out.clear();
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_held_slot_is_filled_in_place() {
        let mut r = Replies::default();
        let a = r.put(At::Next, Slot::One(None));
        r.put(At::Next, Slot::Ready(Bytes::from_static(b"+later\r\n")));
        r.ready(At::Slot(a), Bytes::from_static(b"+first\r\n"));
        r.flush(Protocol::Resp2);
        assert_eq!(&r.out[..], b"+first\r\n+later\r\n");
    }
}

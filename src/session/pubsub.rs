//! Classic pub/sub for one client (SUBSCRIBE / PSUBSCRIBE / UNSUBSCRIBE /
//! PUNSUBSCRIBE).
//!
//! The client's channels and patterns live on a connection of its own to the
//! pub/sub shard (the first backend, where every PUBLISH goes, so every
//! subscriber hears every publisher), opened by its first SUBSCRIBE /
//! PSUBSCRIBE ([`super::subconn`]). The session keeps serving the client:
//! every request is parsed and routed as usual (the ACL, channel patterns
//! included, applies to each), only the (un)subscribe commands go down that
//! connection, and each gets a reply slot, so confirmations, replies and the
//! messages in between reach the client whole and in order.
//!
//! - A RESP2 client with channels or patterns is in Redis's subscribed mode:
//!   only (P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PING, QUIT and RESET, with
//!   Redis's error for the rest (see `Session::subscribed_mode`).
//! - A RESP3 client's other commands are routed normally: a key goes to its
//!   shard on the ring, not to the pub/sub shard.
//! - RESET closes the connection (unsubscribing everything) and the client
//!   is back in normal service; QUIT closes.
//! - The session counts the confirmations each command gets (one per
//!   channel named; for an UNSUBSCRIBE of all, one per channel it holds,
//!   at least one), from the channels and patterns it sent, in order.
//! - The connection stays open while the client holds no channel, until
//!   RESET or the client leaves. If it fails, the client's connection is
//!   closed (it must subscribe again, as after any disconnection); if it
//!   could not be opened, the SUBSCRIBE gets the error and nothing changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Session;
use super::replies::{At, Slot};
use super::subconn::{self, Cmd, Event};
use crate::backend::{BackendError, BackendErrorKind};
use crate::error::ReplyError;
use crate::protocol::Protocol;
use crate::registry::flag;
use crate::router::PUBSUB_SHARD;
use crate::topology::Topology;

/// A client's channels and patterns, and its connection to the pub/sub shard.
pub(super) struct Subs {
    conn: mpsc::UnboundedSender<Cmd>,
    events: mpsc::Receiver<Event>,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    /// The protocol the connection speaks (the client's when it opened).
    proto: Protocol,
    /// The connection could not be opened: set before its commands are
    /// answered (with the error), so the client's next command already
    /// finds it gone.
    unreachable: Arc<AtomicBool>,
}

impl Subs {
    /// The client holds at least one channel or pattern.
    pub(super) fn active(&self) -> bool {
        (!self.channels.is_empty() || !self.patterns.is_empty()) && !self.unreachable()
    }

    fn unreachable(&self) -> bool {
        self.unreachable.load(Ordering::Acquire)
    }
}

/// The next event of a subscriber's connection; never resolves without one,
/// or while `room` is false (the session has too many replies waiting: the
/// connection's events then fill up and it stops reading).
pub(super) async fn next_event(subs: &mut Option<Box<Subs>>, room: bool) -> Option<Event> {
    match subs {
        Some(s) if room => s.events.recv().await,
        _ => std::future::pending().await,
    }
}

impl Session {
    /// SUBSCRIBE / PSUBSCRIBE (`Plan::Subscribe`), and UNSUBSCRIBE /
    /// PUNSUBSCRIBE once the client has a subscriber connection: sent there,
    /// answered in slot `at` by the confirmations.
    pub(super) fn classic_sub(&mut self, topo: &Topology, args: &[&[u8]], raw: Bytes, at: At) {
        let proto = self.state.proto;
        let name = args[0].to_ascii_lowercase();
        let subscribe = matches!(&name[..], b"subscribe" | b"psubscribe");
        if self.csub.as_deref().is_some_and(Subs::unreachable) {
            self.drop_subscriber(); // try again
        }
        let subs = self.csub.get_or_insert_with(|| {
            let unreachable = Arc::new(AtomicBool::new(false));
            let (conn, events) = subconn::spawn(topo.shards[PUBSUB_SHARD].clone(), proto, unreachable.clone());
            Box::new(Subs {
                conn,
                events,
                channels: HashSet::new(),
                patterns: HashSet::new(),
                proto,
                unreachable,
            })
        });
        let set = if name.starts_with(b"p") {
            &mut subs.patterns
        } else {
            &mut subs.channels
        };
        let names = &args[1..];
        let frames = if subscribe {
            set.extend(names.iter().map(|c| Bytes::copy_from_slice(c)));
            names.len()
        } else if names.is_empty() {
            std::mem::take(set).len().max(1)
        } else {
            names.iter().for_each(|c| {
                set.remove(*c);
            });
            names.len()
        };
        let seq = self.replies.put(at, Slot::One(None));
        let reply = self.reply_to(seq, 0);
        let cmd = Cmd {
            req: raw,
            frames,
            reply,
        };
        if let Some(subs) = &self.csub
            && let Err(mpsc::error::SendError(cmd)) = subs.conn.send(cmd)
        {
            cmd.reply.complete(Err(BackendError::new(
                BackendErrorKind::ConnectionLost,
                &topo.shards[PUBSUB_SHARD].spec.name,
                "the subscriber connection is gone",
            )));
        }
        self.show_subs();
    }

    /// After an (un)subscribe command, RESET, or a subscriber connection
    /// lost: the client's counts in its registry entry (CLIENT LIST's
    /// `sub=`, `psub=`, `ssub=`) and its `P` flag, set while it holds any,
    /// shard channels too, as Redis sets it. Never per request.
    pub(super) fn show_subs(&self) {
        let (sub, psub) = match self.csub.as_deref() {
            Some(s) if !s.unreachable() => (s.channels.len(), s.patterns.len()),
            _ => (0, 0),
        };
        let ssub = self.ssub.as_deref().map_or(0, super::sharded::ShardSubs::count);
        self.state.entry.set_subs([sub, psub, ssub]);
        self.state.entry.set_flag(flag::PUBSUB, sub + psub + ssub > 0);
    }

    /// The client holds a subscriber connection (UNSUBSCRIBE goes there).
    pub(super) fn has_subscriber(&self) -> bool {
        self.csub.as_deref().is_some_and(|s| !s.unreachable())
    }

    /// RESET: the subscriber connection closes (after answering what
    /// waits), which unsubscribes everything.
    pub(super) fn drop_subscriber(&mut self) {
        if self.csub.take().is_some() {
            self.show_subs();
        }
    }

    /// A subscriber connection's event; `false`: close the client's
    /// connection (its subscriber connection failed).
    pub(super) fn classic_event(&mut self, ev: Event) -> bool {
        match ev {
            // The permit goes once the bytes are copied out.
            Event::Messages(frames, _permit) => {
                self.replies.ready(At::Next, frames);
                true
            }
            Event::Lost { connected } => {
                self.drop_subscriber();
                !connected
            }
        }
    }

    /// HELLO that would change the protocol while the client holds
    /// channels: refused (its connection to the shard speaks the protocol
    /// it subscribed in). `None`: HELLO may run; a connection without
    /// channels is closed when the protocol changes.
    pub(super) fn hello_while_subscribed(&mut self, args: &[&[u8]]) -> Option<ReplyError> {
        let subs = self.csub.as_deref()?;
        let want = match args.get(1).map(|v| &v[..]) {
            Some(b"2") => Protocol::Resp2,
            Some(b"3") => Protocol::Resp3,
            _ => return None, // no change, or HELLO's own error
        };
        if want == subs.proto {
            return None;
        }
        if subs.active() {
            return Some(ReplyError::err(
                "shardis: HELLO cannot change the protocol of a connection subscribed with SUBSCRIBE / PSUBSCRIBE; UNSUBSCRIBE / PUNSUBSCRIBE or RESET first",
            ));
        }
        self.drop_subscriber();
        None
    }
}

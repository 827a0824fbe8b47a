//! Sharded pub/sub for one client (SSUBSCRIBE / SUNSUBSCRIBE).
//!
//! A channel lives on the shard its name maps to on the ring (hash tags
//! honoured), where SPUBLISH sends its messages. SSUBSCRIBE opens a backend
//! connection of the client's own on each shard it needs (one per shard,
//! reused by later SSUBSCRIBEs, so a client can listen on channels of every
//! shard), sends each channel's SSUBSCRIBE there and confirms the channel
//! once that shard has. The `smessage`s of every shard are written to the
//! client between its replies. Unlike the SUBSCRIBE pipe
//! ([`super::pubsub`]) the session keeps serving the client: the proxy holds
//! the client's set of shard channels, so each confirmation's count is over
//! every shard, as one Redis counts it.
//!
//! A reload that moves a channel to another shard (SPUBLISH follows the
//! ring at once) moves its subscription too: the session checks the
//! topology's epoch every [`RECHECK`] while subscribed, subscribes the
//! channel on its new shard and unsubscribes it on the old one, without a
//! word to the client. Messages published in between may be missed.
//!
//! A RESP2 client with shard channels is in Redis's subscribed mode: only
//! (S)SUBSCRIBE, (S)UNSUBSCRIBE, PING, QUIT and RESET are served. A shard
//! connection that fails unsubscribes its channels: the client gets a
//! `sunsubscribe` push for each (as Redis Cluster sends when a slot moves)
//! and may subscribe again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use super::Session;
use super::replies::{At, Slot};
use crate::backend::{BackendError, BackendErrorKind, Job, ReplyTo, Shard};
use crate::merge::Merge;
use crate::protocol::reply::{self, ReplyScanner};
use crate::protocol::{Encoder, Protocol, Request};
use crate::topology::Topology;

/// How often a subscribed client's channels are checked against the
/// topology (see the module doc).
const RECHECK: Duration = Duration::from_secs(1);

/// Messages waiting for the session. Past this the shard connections stop
/// reading, so a client that does not read its messages makes its shards'
/// `client-output-buffer-limit pubsub` apply (the shard closes the
/// connection, the client gets `sunsubscribe`), not the proxy's memory grow.
const EVENTS: usize = 1024;

/// What a shard connection tells the session.
pub(super) enum Event {
    /// An `smessage` push, as the shard encoded it.
    Message(Bytes),
    /// The connection to this shard failed: its channels are gone.
    Lost(Arc<str>),
    /// Time to check the channels against the topology.
    Recheck,
}

/// A client's shard channels and its connections to their shards.
pub(super) struct ShardSubs {
    /// By shard name: the sender of the task that owns the connection.
    conns: Vec<(Arc<str>, mpsc::UnboundedSender<Job>)>,
    /// Each subscribed channel and the shard it was subscribed on.
    channels: HashMap<Bytes, Arc<str>>,
    events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
    /// The topology epoch the channels' shards were checked under.
    epoch: u64,
    /// When to check them again.
    next_check: Instant,
}

impl ShardSubs {
    fn new(epoch: u64) -> ShardSubs {
        ShardSubs {
            conns: Vec::new(),
            channels: HashMap::new(),
            events: mpsc::channel(EVENTS),
            epoch,
            next_check: Instant::now() + RECHECK,
        }
    }

    /// The client is subscribed to at least one shard channel.
    pub(super) fn active(&self) -> bool {
        !self.channels.is_empty()
    }

    /// How many shard channels the client holds (CLIENT LIST's `ssub=`).
    pub(super) fn count(&self) -> usize {
        self.channels.len()
    }

    /// The connection to shard `name`, opened on first use.
    fn conn(&mut self, shard: &Arc<Shard>, proto: Protocol) -> mpsc::UnboundedSender<Job> {
        let name = &shard.spec.name;
        if let Some((_, c)) = self.conns.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = spawn_conn(shard.clone(), proto, self.events.0.clone());
        self.conns.push((name.clone(), c.clone()));
        c
    }
}

/// The next event of a client's shard connections, or [`Event::Recheck`]
/// when a subscribed client's channels are due for a check against the
/// topology; never resolves without shard connections.
pub(super) async fn next_event(subs: &mut Option<Box<ShardSubs>>) -> Option<Event> {
    let Some(s) = subs else {
        return std::future::pending().await;
    };
    let due = s.next_check;
    let active = s.active();
    tokio::select! {
        ev = s.events.1.recv() => ev,
        _ = tokio::time::sleep_until(due.into()), if active => Some(Event::Recheck),
    }
}

/// Sends `req` on a shard channel connection; nobody waits for the answer.
fn send_unanswered(conn: &mpsc::UnboundedSender<Job>, req: Bytes) {
    let _ = conn.send(Job::new(req, ReplyTo::Call(oneshot::channel().0)));
}

/// A (s)subscribe / (s)unsubscribe confirmation push.
fn confirmation(proto: Protocol, kind: &[u8], channel: Option<&[u8]>, count: usize) -> Bytes {
    let mut b = BytesMut::new();
    let mut enc = Encoder::new(&mut b, proto);
    enc.push(3);
    enc.bulk(kind);
    match channel {
        Some(c) => enc.bulk(c),
        None => enc.null(),
    }
    enc.integer(count as i64);
    b.freeze()
}

impl Session {
    /// SSUBSCRIBE (`subscribe`) or SUNSUBSCRIBE: the router's parts are one
    /// per channel named (its shard now, and the command for it).
    pub(super) fn shard_sub(&mut self, topo: &Topology, subscribe: bool, args: &[&[u8]], at: At) {
        let proto = self.state.proto;
        let kind: &[u8] = if subscribe { b"ssubscribe" } else { b"sunsubscribe" };
        let parts = std::mem::take(&mut self.router.parts);
        let mut channels: Vec<Bytes> = args[1..].iter().map(|c| Bytes::copy_from_slice(c)).collect();
        if channels.is_empty()
            && let Some(s) = &self.ssub
        {
            // SUNSUBSCRIBE without channels: every channel of the client.
            channels = s.channels.keys().cloned().collect();
            channels.sort();
        }
        if channels.is_empty() {
            self.router.parts = parts;
            return self.replies.ready(at, confirmation(proto, kind, None, 0));
        }
        let subs = if subscribe {
            Some(self.ssub.get_or_insert_with(|| Box::new(ShardSubs::new(topo.epoch))))
        } else {
            self.ssub.as_mut()
        };
        // For each channel: the proxy's confirmation, and where its command
        // goes (none: a channel not subscribed, confirmed by the proxy).
        let mut frames = Vec::with_capacity(channels.len());
        let mut sends = Vec::with_capacity(channels.len());
        match subs {
            Some(subs) => {
                for (i, ch) in channels.iter().enumerate() {
                    let send = if subscribe {
                        parts.get(i).and_then(|(shard, req)| {
                            let shard = topo.shards.get(*shard)?;
                            subs.channels.insert(ch.clone(), shard.spec.name.clone());
                            Some((subs.conn(shard, proto), shard.spec.name.clone(), req.clone()))
                        })
                    } else {
                        subs.channels.remove(ch).and_then(|name| {
                            let conn = subs.conns.iter().find(|(n, _)| *n == name)?.1.clone();
                            Some((conn, name, Request::from_args(&[&b"SUNSUBSCRIBE"[..], ch]).raw))
                        })
                    };
                    frames.push(confirmation(proto, kind, Some(ch), subs.channels.len()));
                    sends.push(send);
                }
            }
            None => {
                for ch in &channels {
                    frames.push(confirmation(proto, kind, Some(ch), 0));
                    sends.push(None);
                }
            }
        }
        self.router.parts = parts;
        let seq = self.replies.put(at, Slot::many(Merge::Confirm(frames), sends.len()));
        for (part, send) in sends.into_iter().enumerate() {
            let reply = self.reply_to(seq, part as u32);
            match send {
                Some((conn, name, req)) => {
                    if let Err(mpsc::error::SendError(job)) = conn.send(Job::new(req, reply)) {
                        job.reply.complete(Err(BackendError::new(
                            BackendErrorKind::ConnectionLost,
                            &name,
                            "the shard channel connection is gone",
                        )));
                    }
                }
                None => reply.complete(Ok(Bytes::new())),
            }
        }
        self.show_subs();
    }

    /// A shard connection's message (written between the client's replies,
    /// in order with them) or failure (its channels are unsubscribed).
    pub(super) fn shard_event(&mut self, ev: Event) {
        let proto = self.state.proto;
        match ev {
            Event::Recheck => self.shard_topology(),
            Event::Message(frame) => self.replies.ready(At::Next, in_protocol(frame, proto)),
            Event::Lost(name) => {
                let Some(subs) = &mut self.ssub else { return };
                subs.conns.retain(|(n, _)| *n != name);
                let mut lost: Vec<Bytes> = subs
                    .channels
                    .iter()
                    .filter(|(_, n)| **n == name)
                    .map(|(c, _)| c.clone())
                    .collect();
                lost.sort();
                let mut pushes = Vec::with_capacity(lost.len());
                for ch in lost {
                    subs.channels.remove(&ch);
                    pushes.push(confirmation(proto, b"sunsubscribe", Some(&ch), subs.channels.len()));
                }
                for p in pushes {
                    self.replies.ready(At::Next, p);
                }
                self.show_subs();
            }
        }
    }

    /// Every [`RECHECK`] while subscribed: after a reload, each channel the
    /// ring now puts on another shard is subscribed there and unsubscribed
    /// where it was; connections left without channels are closed.
    pub(super) fn shard_topology(&mut self) {
        let topo = self.shared.topology.load();
        let proto = self.state.proto;
        let Some(subs) = &mut self.ssub else { return };
        subs.next_check = Instant::now() + RECHECK;
        if subs.epoch == topo.epoch {
            return;
        }
        subs.epoch = topo.epoch;
        let moved: Vec<(Bytes, Arc<str>, usize)> = subs
            .channels
            .iter()
            .filter_map(|(ch, at)| {
                let now = topo.shard_of(ch);
                (topo.names.get(now) != Some(at)).then(|| (ch.clone(), at.clone(), now))
            })
            .collect();
        if moved.is_empty() {
            return;
        }
        for (ch, old, now) in moved {
            let Some(shard) = topo.shards.get(now) else { continue };
            send_unanswered(
                &subs.conn(shard, proto),
                Request::from_args(&[&b"SSUBSCRIBE"[..], &ch]).raw,
            );
            if let Some((_, conn)) = subs.conns.iter().find(|(n, _)| *n == old) {
                send_unanswered(conn, Request::from_args(&[&b"SUNSUBSCRIBE"[..], &ch]).raw);
            }
            subs.channels.insert(ch, shard.spec.name.clone());
        }
        let channels = &subs.channels;
        subs.conns.retain(|(n, _)| channels.values().any(|c| c == n));
    }

    /// A RESP2 client subscribed to shard channels is in subscribed mode:
    /// the reply to a command it may not send there, or PING's; `None` for
    /// the commands it may send.
    pub(super) fn subscribed_mode(&self, args: &[&[u8]]) -> Option<Bytes> {
        if self.state.proto != Protocol::Resp2
            || !(self.ssub.as_deref().is_some_and(ShardSubs::active)
                || self.csub.as_deref().is_some_and(super::pubsub::Subs::active))
        {
            return None;
        }
        let name = args.first()?;
        let mut b = BytesMut::new();
        let mut enc = Encoder::new(&mut b, Protocol::Resp2);
        if name.eq_ignore_ascii_case(b"ping") && args.len() <= 2 {
            enc.array(2);
            enc.bulk(b"pong");
            enc.bulk(args.get(1).copied().unwrap_or(b""));
        } else if [
            &b"ssubscribe"[..],
            b"sunsubscribe",
            b"subscribe",
            b"psubscribe",
            b"unsubscribe",
            b"punsubscribe",
            b"quit",
            b"reset",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        } else {
            enc.error(&format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                crate::command::printable(name, 64).to_ascii_lowercase()
            ));
        }
        Some(b.freeze())
    }
}

/// The task that owns a client's connection to one shard for its shard
/// channels: writes the commands sent to it, answers each with its
/// confirmation (in order), and passes `smessage`s on as events. When the
/// session drops its sender (RESET, the client gone, no channel left there
/// after a reload) the commands still waiting are answered (within the
/// command timeout), then the connection closes; when the connection
/// fails, every command waiting or still sent gets the error and the
/// session hears [`Event::Lost`].
fn spawn_conn(shard: Arc<Shard>, proto: Protocol, events: mpsc::Sender<Event>) -> mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        let name = shard.spec.name.clone();
        let mut pending: VecDeque<ReplyTo> = VecDeque::new();
        let err = match shard.connect_dedicated(proto).await {
            Err(e) => e,
            Ok(mut stream) => {
                let mut buf = BytesMut::with_capacity(4096);
                let mut scanner = ReplyScanner::default();
                let lost = |e: std::io::Error| BackendError::io(BackendErrorKind::ConnectionLost, &name, e);
                // Set once the session dropped its sender: answer what
                // waits by then, or give up.
                let mut closing: Option<tokio::time::Instant> = None;
                'conn: loop {
                    if closing.is_some() && pending.is_empty() {
                        return;
                    }
                    let deadline = closing.unwrap_or_else(|| tokio::time::Instant::now() + shard.spec.command_timeout);
                    tokio::select! {
                        job = rx.recv(), if closing.is_none() => {
                            let Some(job) = job else {
                                closing = Some(tokio::time::Instant::now() + shard.spec.command_timeout);
                                continue;
                            };
                            pending.push_back(job.reply);
                            if let Err(e) = crate::tls::stream::send(&mut stream, &job.req).await {
                                break 'conn lost(e);
                            }
                        }
                        r = stream.read_buf(&mut buf) => {
                            match r {
                                Ok(0) => break 'conn BackendError::new(BackendErrorKind::ConnectionLost, &name, "connection closed by backend"),
                                Err(e) => break 'conn lost(e),
                                Ok(_) => {}
                            }
                            loop {
                                match scanner.next_frame(&buf) {
                                    Ok(Some(n)) => {
                                        let frame = buf.split_to(n).freeze();
                                        if is_message(&frame) {
                                            // The session gone: dropped.
                                            let _ = events.send(Event::Message(frame)).await;
                                        } else if let Some(r) = pending.pop_front() {
                                            r.complete(Ok(frame));
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(e) => break 'conn BackendError::new(BackendErrorKind::Protocol, &name, e.to_string()),
                                }
                            }
                        }
                        _ = tokio::time::sleep_until(deadline), if closing.is_some() => {
                            let e = BackendError::new(BackendErrorKind::Timeout, &name, "no confirmation before the connection closed");
                            pending.drain(..).for_each(|r| r.complete(Err(e.clone())));
                            return;
                        }
                    }
                }
            }
        };
        for r in pending.drain(..) {
            r.complete(Err(err.clone()));
        }
        if closing_was_requested(&rx) {
            return;
        }
        let _ = events.send(Event::Lost(name)).await;
        // Until the session has heard: whatever it still sends fails.
        while let Some(job) = rx.recv().await {
            job.reply.complete(Err(err.clone()));
        }
    });
    tx
}

/// The session has dropped its sender: it no longer wants to hear of this
/// connection.
fn closing_was_requested(rx: &mpsc::UnboundedReceiver<Job>) -> bool {
    rx.is_closed() && rx.is_empty()
}

/// An `smessage` in `proto`: the connection may speak the other protocol
/// (the client switched with HELLO since it opened), and the two forms
/// differ only in the header's type byte (a push `>3` or an array `*3` of
/// bulk strings).
fn in_protocol(frame: Bytes, proto: Protocol) -> Bytes {
    let want = if proto == Protocol::Resp3 { b'>' } else { b'*' };
    match frame.first() {
        Some(&c) if c != want && (c == b'>' || c == b'*') => {
            let mut b = BytesMut::from(&frame[..]);
            b[0] = want;
            b.freeze()
        }
        _ => frame,
    }
}

/// An `smessage` push (RESP3) or array (RESP2).
fn is_message(frame: &Bytes) -> bool {
    reply::elements(frame)
        .and_then(|el| reply::as_bytes(el.first()?))
        .is_some_and(|k| &k[..] == b"smessage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_the_clients_protocol() {
        let push = Bytes::from_static(b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$1\r\nm\r\n");
        let array = Bytes::from_static(b"*3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$1\r\nm\r\n");
        assert!(is_message(&push) && is_message(&array));
        assert_eq!(in_protocol(push.clone(), Protocol::Resp2), array);
        assert_eq!(in_protocol(array.clone(), Protocol::Resp3), push);
        assert_eq!(in_protocol(push.clone(), Protocol::Resp3), push);
        assert!(!is_message(&Bytes::from_static(
            b"*3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n"
        )));
    }
}

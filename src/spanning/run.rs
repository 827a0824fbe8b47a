//! The tasks that carry out a cross-shard transaction ([`transaction`]) and
//! a cross-shard blocking pop ([`blocking_pop`]) against the shards, each
//! answering once on the session's [`ReplyTo`].
//!
//! A transaction's parts are sent one after the other on the session's lane
//! of the shared connections (each `MULTI … EXEC` is one contiguous batch
//! there, so it is atomic on its shard); the next part goes only once the
//! previous one's EXEC has answered.
//!
//! A blocking pop first tries its keys in argument order (each run of keys on
//! one shard as the command inside MULTI/EXEC, where it never blocks); when
//! all are empty it waits on every shard at once, each on a connection of
//! its own that first asks `CLIENT ID`. The first shard to pop answers the
//! client; every other one is stopped with `CLIENT UNBLOCK <id>` from the
//! shared connection, and whatever it popped in the meantime is given back.
//! A client that leaves while waiting stops them all the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::pops::{self, Pop, Tried};
use super::tx::{self, Failed, Part};
use crate::backend::{BackendError, BackendErrorKind, BackendResult, Job, ReplyTo, Shard};
use crate::protocol::reply::{self, ReplyScanner};
use crate::protocol::{Encoder, Protocol};
use crate::tls::stream::{BackendStream, send};

/// A transaction split in parts, ready to run.
pub struct SpanTx {
    /// Each part with its shard.
    pub parts: Vec<(Arc<Shard>, Part)>,
    /// The commands sent (PUBLISH aside), in queue order.
    pub raws: Vec<Bytes>,
    /// Sent command i's place among everything queued (for the error).
    pub place: Vec<usize>,
    /// While watching: the first part goes over the WATCH connection, as
    /// this batch (a HELLO first when the client switched protocol) with
    /// this many reply frames; EXEC answering nil there ends it all.
    pub watched: Option<(mpsc::UnboundedSender<Job>, Bytes, u32)>,
}

/// Sends a batch over a WATCH connection and awaits its last reply.
async fn converse(conv: &mpsc::UnboundedSender<Job>, shard: &Shard, req: Bytes, frames: u32) -> BackendResult {
    let (tx, rx) = oneshot::channel();
    let gone = || {
        BackendError::new(
            BackendErrorKind::Unavailable,
            &shard.spec.name,
            "the WATCH connection is gone",
        )
    };
    if conv
        .send(Job {
            req,
            reply: ReplyTo::Call(tx),
            frames,
        })
        .is_err()
    {
        return Err(gone());
    }
    rx.await.unwrap_or_else(|_| Err(gone()))
}

fn error_frame(proto: Protocol, msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    Encoder::new(&mut b, proto).error(msg);
    b.freeze()
}

/// Runs the parts in order; answers EXEC's whole reply, or the error that
/// says which parts were applied.
pub fn transaction(mut t: SpanTx, proto: Protocol, lane: usize, reply: ReplyTo) {
    tokio::spawn(async move {
        let mut replies = Vec::with_capacity(t.parts.len());
        let parts: Vec<Part> = t.parts.iter().map(|(_, p)| p.clone()).collect();
        let names: Vec<(usize, Arc<str>)> = t.parts.iter().map(|(s, p)| (p.shard, s.spec.name.clone())).collect();
        let name_of = {
            let max = names.iter().map(|(i, _)| *i).max().unwrap_or(0);
            let mut v = vec![""; max + 1];
            for (i, n) in &names {
                v[*i] = n;
            }
            v
        };
        for (i, (shard, part)) in t.parts.iter().enumerate() {
            let answer = match t.watched.take() {
                Some((conv, batch, frames)) if i == 0 => converse(&conv, shard, batch, frames).await,
                _ => {
                    let (batch, frames) = part.batch(&t.raws);
                    shard.call_frames(proto, lane, batch, frames).await
                }
            };
            let failed = match answer {
                // A watched key changed: nothing was applied.
                Ok(f) if i == 0 && reply::is_null(&f) => return reply.complete(Ok(f)),
                Ok(f) if reply::elements(&f).is_some_and(|e| e.len() == part.cmds.len()) => {
                    replies.push(f);
                    continue;
                }
                Ok(f) => (
                    Failed::NotApplied,
                    String::from_utf8_lossy(&f).trim_start_matches('-').to_string(),
                ),
                Err(e) => {
                    let how = match e.kind() {
                        BackendErrorKind::Unavailable | BackendErrorKind::ShuttingDown => Failed::NotApplied,
                        _ => Failed::Unknown,
                    };
                    (how, e.to_string())
                }
            };
            let msg = tx::failure(&parts, &name_of, &t.place, i, failed.0, &failed.1);
            warn!(%msg, "cross-shard transaction failed part-way");
            return reply.complete(Ok(error_frame(proto, &format!("ERR {msg}"))));
        }
        let answer = match tx::assemble(t.raws.len(), &parts, &replies) {
            Ok(a) => a,
            Err(_) => error_frame(
                proto,
                "ERR shardis: cross-shard transaction: a part's reply did not fit",
            ),
        };
        reply.complete(Ok(answer));
    });
}

/// A blocking pop over keys of several shards: `shards[i]` is key i's
/// shard, `all` the topology's shards.
pub fn blocking_pop(pop: Pop, shards: Vec<usize>, all: Vec<Arc<Shard>>, proto: Protocol, lane: usize, reply: ReplyTo) {
    tokio::spawn(async move {
        let started = Instant::now();
        // Try each run of keys in argument order, without blocking.
        for (s, keys) in pops::runs(&shards) {
            let mut b = BytesMut::new();
            b.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
            b.extend_from_slice(&pop.command(&keys, "0"));
            b.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
            match all[s].call_frames(proto, lane, b.freeze(), 3).await {
                Ok(f) => match pops::tried(&f) {
                    Tried::Empty => continue,
                    Tried::Answer(a) => return deliver(&pop, &all[s], lane, a, reply).await,
                },
                Err(e) => return reply.complete(Err(e)),
            }
        }
        wait_all(pop, shards, all, proto, lane, reply, started).await;
    });
}

/// Answers the client with `a`, popped on `shard`; gives it back if the
/// client has left meanwhile.
async fn deliver(pop: &Pop, shard: &Shard, lane: usize, a: Bytes, reply: ReplyTo) {
    if reply.is_closed() {
        give_back(pop, shard, lane, &a).await;
    } else {
        reply.complete(Ok(a));
    }
}

/// Puts back what `answer` popped on `shard` (nothing for nil or an error).
async fn give_back(pop: &Pop, shard: &Shard, lane: usize, answer: &Bytes) {
    let Some(cmd) = pop.give_back(answer) else { return };
    match shard.call_frames(Protocol::Resp2, lane, cmd, 1).await {
        Ok(f) if !reply::is_error(&f) => {}
        r => {
            warn!(shard = shard.name(), result = ?r, "could not give back an element popped by a cross-shard blocking pop")
        }
    }
}

/// One shard's wait, as the orchestrator sees it.
struct Wait {
    shard: usize,
    id: Option<oneshot::Receiver<i64>>,
    answer: Option<BackendResult>,
}

/// Waits on every shard of the keys at once and delivers the first element.
async fn wait_all(
    pop: Pop,
    shards: Vec<usize>,
    all: Vec<Arc<Shard>>,
    proto: Protocol,
    lane: usize,
    mut reply: ReplyTo,
    started: Instant,
) {
    let timeout = pops::remaining(pop.timeout, started.elapsed());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, BackendResult)>();
    let mut waits: Vec<Wait> = Vec::new();
    for (i, (s, keys)) in pops::by_shard(&shards).into_iter().enumerate() {
        let (id_tx, id_rx) = oneshot::channel();
        let cmd = pop.command(&keys, &timeout);
        let (shard, done) = (all[s].clone(), done_tx.clone());
        tokio::spawn(async move {
            let r = wait_on(&shard, proto, &cmd, id_tx).await;
            let _ = done.send((i, r));
        });
        waits.push(Wait {
            shard: s,
            id: Some(id_rx),
            answer: None,
        });
    }
    drop(done_tx);
    // The first element, or the end: every shard timed out (nil), one
    // failed, or the client left.
    let mut outcome: Option<(usize, BackendResult)> = None;
    let mut left = waits.len();
    let mut client_gone = false;
    // A shard that does not answer by the client's timeout plus the command
    // timeout (stopped, unreachable) fails the call rather than holding the
    // client for ever; 0 (for ever) has no such bound.
    let grace = shards
        .iter()
        .map(|&s| all[s].spec.command_timeout)
        .max()
        .unwrap_or_default();
    let bound = (pop.timeout > 0.0).then(|| started + Duration::from_secs_f64(pop.timeout) + grace);
    while left > 0 {
        tokio::select! {
            r = done_rx.recv() => {
                let Some((i, r)) = r else { break };
                left -= 1;
                let decisive = !matches!(&r, Ok(f) if reply::is_null(f));
                if decisive {
                    outcome = Some((i, r));
                    break;
                }
                waits[i].answer = Some(r);
            }
            _ = reply.closed() => { client_gone = true; break; }
            _ = sleep_until(bound) => {
                let silent: Vec<&str> = waits.iter().filter(|w| w.answer.is_none()).map(|w| all[w.shard].name()).collect();
                let e = BackendError::new(
                    BackendErrorKind::Timeout,
                    &all[waits.iter().find(|w| w.answer.is_none()).map_or(0, |w| w.shard)].spec.name,
                    format!("no answer to a blocking pop within its timeout from {}", silent.join(", ")),
                );
                outcome = Some((usize::MAX, Err(e)));
                break;
            }
        }
    }
    let winner = outcome.as_ref().map(|(i, _)| *i);
    // Every shard still waiting is stopped, and what it popped meanwhile
    // given back.
    let mut pending: Vec<usize> = (0..waits.len())
        .filter(|&i| waits[i].answer.is_none() && Some(i) != winner)
        .collect();
    // Deliver first: the client does not wait for the others to stop.
    match (outcome, client_gone) {
        (Some((i, Ok(a))), false) => deliver(&pop, &all[waits[i].shard], lane, a, reply).await,
        (Some((i, Ok(a))), true) => give_back(&pop, &all[waits[i].shard], lane, &a).await,
        (Some((_, Err(e))), _) => reply.complete(Err(e)),
        (None, _) => {
            let nil = waits
                .iter()
                .find_map(|w| w.answer.as_ref().and_then(|r| r.as_ref().ok()).cloned());
            reply.complete(Ok(nil.unwrap_or_else(|| null_array(proto))));
        }
    }
    for &i in &pending {
        let s = waits[i].shard;
        if let Some(rx) = waits[i].id.take()
            && let Ok(id) = rx.await
        {
            let unblock = crate::protocol::Request::from_args(&["CLIENT", "UNBLOCK", &id.to_string()]).raw;
            if let Ok(f) = all[s].call_frames(Protocol::Resp2, lane, unblock, 1).await
                && reply::is_error(&f)
            {
                warn!(shard = all[s].name(), reply = %String::from_utf8_lossy(&f), "CLIENT UNBLOCK refused: the wait ends at its own timeout");
            }
        }
    }
    while !pending.is_empty() {
        let Some((i, r)) = done_rx.recv().await else { break };
        pending.retain(|&p| p != i);
        if let Ok(a) = r {
            give_back(&pop, &all[waits[i].shard], lane, &a).await;
        }
    }
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn null_array(proto: Protocol) -> Bytes {
    Bytes::from_static(match proto {
        Protocol::Resp3 => b"_\r\n",
        _ => b"*-1\r\n",
    })
}

/// Opens a connection of its own to `shard`, asks its client id (sent on
/// `id`) and runs `cmd` there; the answer, nil when stopped by CLIENT
/// UNBLOCK. The connection closes when this returns.
async fn wait_on(shard: &Shard, proto: Protocol, cmd: &[u8], id: oneshot::Sender<i64>) -> BackendResult {
    let name = shard.spec.name.clone();
    let mut stream = shard.connect_dedicated(proto).await?;
    let lost = |e: std::io::Error| BackendError::io(BackendErrorKind::ConnectionLost, &name, e);
    let mut req = BytesMut::with_capacity(cmd.len() + 32);
    req.extend_from_slice(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n");
    req.extend_from_slice(cmd);
    send(&mut stream, &req).await.map_err(lost)?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = ReplyScanner::default();
    let first = read_frame(&name, &mut stream, &mut buf, &mut scanner).await?;
    match reply::as_integer(&first) {
        Some(n) => {
            let _ = id.send(n);
        }
        None => {
            return Err(BackendError::new(
                BackendErrorKind::Protocol,
                &name,
                "CLIENT ID did not answer an integer",
            ));
        }
    }
    read_frame(&name, &mut stream, &mut buf, &mut scanner).await
}

/// The next reply frame on `stream` (push messages skipped).
async fn read_frame(
    name: &Arc<str>,
    stream: &mut BackendStream,
    buf: &mut BytesMut,
    scanner: &mut ReplyScanner,
) -> BackendResult {
    loop {
        while let Some(n) = scanner
            .next_frame(buf)
            .map_err(|e| BackendError::new(BackendErrorKind::Protocol, name, e.to_string()))?
        {
            let frame = buf.split_to(n).freeze();
            if !scanner.was_push() {
                return Ok(frame);
            }
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| BackendError::io(BackendErrorKind::ConnectionLost, name, e))?;
        if n == 0 {
            return Err(BackendError::new(
                BackendErrorKind::ConnectionLost,
                name,
                "connection closed by backend",
            ));
        }
    }
}

//! A pooled connection's task: owns one socket, writes whatever jobs are
//! queued in one batch, and matches each reply frame to the oldest job still
//! waiting. On failure every waiting job is answered with the error and the
//! task reconnects with backoff, failing new jobs at once meanwhile.
//! On a shard whose master the Sentinels name, the task also watches the
//! endpoint: when the master moves, the connection to the old one is closed
//! (its waiting jobs fail naming the shard) and the task reconnects at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::conn::connect_to;
use super::jobs::JobRx;
use super::{BackendSpec, Identity, ReplyTo};
use crate::counters::{ShardCounters, ShardGroup, TIME_ONE_IN};
use crate::error::{BackendError, BackendErrorKind};
use crate::protocol::Protocol;
use crate::protocol::reply::ReplyScanner;
use crate::tls::stream::{BackendStream, Stream, send_buf};

/// Most jobs written to one connection and not yet answered.
const MAX_INFLIGHT: usize = 16 * 1024;
/// Most jobs taken from the queue for one write.
const BATCH: usize = 512;

/// Supervises one connection: connect, serve, and on failure fail fast until
/// the next reconnect attempt.
pub(super) async fn conn_task(
    spec: Arc<BackendSpec>,
    identity: Arc<Identity>,
    counters: Arc<ShardCounters>,
    group: usize,
    proto: Protocol,
    lane: usize,
    mut rx: JobRx,
) {
    let c = counters.group(group);
    let mut backoff = Backoff::new(spec.reconnect_min, spec.reconnect_max);
    let mut was_up = true; // log the first failure loudly
    // Only a followed master's address moves.
    let mut moves = spec.endpoint.follows().then(|| spec.endpoint.subscribe());
    loop {
        if let Some(m) = &mut moves {
            m.borrow_and_update();
        }
        let failure = match connect_to(&spec, &identity, proto).await {
            Ok((stream, addr)) => {
                if !was_up {
                    c.reconnects.fetch_add(1, Ordering::Relaxed);
                    info!(shard = %spec.name, addr = %spec.addr, ?proto, lane, "backend connection restored");
                } else {
                    debug!(shard = %spec.name, addr = %spec.addr, ?proto, lane, "backend connected");
                }
                was_up = true;
                backoff.reset();
                c.live.fetch_add(1, Ordering::Relaxed);
                let moves_at = moves.as_mut().map(|m| (m, addr.clone()));
                // Dispatched once per connection: the loop is compiled for
                // plain TCP and for TLS, so a plain one runs as before.
                let served = match stream {
                    BackendStream::Plain(s) => serve(s, &mut rx, &spec, c, moves_at).await,
                    BackendStream::Tls(s) => serve(*s, &mut rx, &spec, c, moves_at).await,
                };
                c.live.fetch_sub(1, Ordering::Relaxed);
                match served {
                    Ok(()) => return, // pool dropped and every job answered
                    // The master moved: to the new one at once, the jobs
                    // queued meanwhile go there.
                    Err(e) if moves.is_some() && spec.endpoint.addr().is_some_and(|a| a != addr) => {
                        info!(shard = %spec.name, error = %e.detail(), ?proto, lane, "reconnecting to the new master");
                        continue;
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if was_up {
            warn!(shard = %spec.name, addr = %spec.addr, ?proto, lane, error = %failure.detail(), "backend unavailable");
        } else {
            debug!(shard = %spec.name, error = %failure.detail(), "backend still unavailable");
        }
        was_up = false;
        c.connection_failures.fetch_add(1, Ordering::Relaxed);
        // Until the next attempt, jobs are not sent at all.
        let err = BackendError::new(BackendErrorKind::Unavailable, &spec.name, failure.detail());
        let retry_at = Instant::now() + backoff.next_delay();
        loop {
            tokio::select! {
                _ = sleep_until(retry_at) => break,
                // The master moved: try it now.
                _ = moved(moves.as_mut()), if moves.is_some() => break,
                job = rx.recv() => match job {
                    Some(job) => {
                        c.failures.fetch_add(1, Ordering::Relaxed);
                        job.reply.complete(Err(err.clone()));
                    }
                    None => return,
                },
            }
        }
    }
}

/// Serves one healthy connection until it fails (`Err`, which every job
/// still waiting has been answered with) or the pool is dropped and every
/// job has been answered (`Ok`).
async fn serve<S: Stream>(
    mut stream: S,
    rx: &mut JobRx,
    spec: &BackendSpec,
    c: &ShardGroup,
    moves: Option<(&mut watch::Receiver<u64>, Arc<String>)>,
) -> Result<(), BackendError> {
    let follows = moves.is_some();
    let (mut moves, connected) = match moves {
        Some((m, a)) => (Some(m), Some(a)),
        None => (None, None),
    };
    // Outstanding jobs in write order: where the answer goes, when it was
    // written, and how many reply frames are still due.
    let mut inflight: VecDeque<(ReplyTo, Instant, u32)> = VecDeque::new();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut batch = Vec::with_capacity(BATCH);
    let mut scanner = ReplyScanner::default();
    let mut closing = false;
    // Jobs in the previous write (see the yield below).
    let mut last_batch = 0;
    // Reads so far: the replies of one in TIME_ONE_IN are timed (/metrics).
    let mut reads: u32 = 0;
    let cmd_timeout = spec.command_timeout;
    let lost = |e: std::io::Error| BackendError::io(BackendErrorKind::ConnectionLost, &spec.name, e);
    let result = loop {
        if closing && inflight.is_empty() {
            break Ok(());
        }
        let deadline = inflight.front().map(|(_, t, _)| *t + cmd_timeout);
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            r = stream.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) => break Err(BackendError::new(BackendErrorKind::ConnectionLost, &spec.name, "connection closed by backend")),
                    Err(e) => break Err(lost(e)),
                    Ok(_) => {}
                }
                let mut failed = None;
                // One clock read per timed read, only if a reply completes.
                let timed = reads % TIME_ONE_IN == 0;
                reads = reads.wrapping_add(1);
                let mut now = None;
                loop {
                    match scanner.next_frame(&rbuf) {
                        Ok(Some(n)) => {
                            let frame = rbuf.split_to(n).freeze();
                            if scanner.was_push() {
                                continue; // out-of-band RESP3 push: no request waits for it
                            }
                            match inflight.front_mut() {
                                // An earlier frame of a batch (MULTI's +OK, a +QUEUED).
                                Some((_, _, left)) if *left > 1 => *left -= 1,
                                Some(_) => {
                                    if let Some((to, written, _)) = inflight.pop_front() {
                                        if matches!(frame.first(), Some(b'-' | b'!')) {
                                            c.error_replies.fetch_add(1, Ordering::Relaxed);
                                            // A followed master that answers READONLY was demoted.
                                            if follows && frame.starts_with(b"-READONLY") {
                                                to.complete(Err(demoted(spec, connected.as_deref())));
                                                continue;
                                            }
                                        }
                                        if timed {
                                            let t = *now.get_or_insert_with(Instant::now);
                                            let us = t.saturating_duration_since(written).as_micros() as u64;
                                            c.latency.observe(us, 1);
                                        }
                                        to.complete(Ok(frame));
                                    }
                                }
                                None => {
                                    failed = Some(BackendError::new(BackendErrorKind::Protocol, &spec.name, "reply without a request"));
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(BackendError::new(BackendErrorKind::Protocol, &spec.name, e.to_string()));
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
            }
            // Before taking jobs: none is written to a master that has moved
            // (they wait in the queue for the connection to the new one).
            _ = moved(moves.as_deref_mut()), if follows => {
                // The first address found, or the same again: nothing moved.
                if spec.endpoint.addr() == connected {
                    continue;
                }
                break Err(BackendError::new(
                    BackendErrorKind::ConnectionLost,
                    &spec.name,
                    format!(
                        "the master moved to {} (Sentinel failover); a request in flight may or may not have run on the old master",
                        spec.endpoint.describe()
                    ),
                ));
            }
            n = rx.recv_many(&mut batch, BATCH), if !closing && inflight.len() < MAX_INFLIGHT => {
                if n == 0 {
                    closing = true;
                    continue;
                }
                if n < BATCH && (last_batch > 1 || !inflight.is_empty()) {
                    // Let the sessions that are ready to run enqueue their
                    // requests before this one writes: without this the task
                    // runs right after the first session wakes it and writes
                    // one or two requests per syscall. Measured with
                    // redis-benchmark GET -P 1 -c 50: backend writes per
                    // request about 0.7 -> 0.2, proxy CPU per request down
                    // (bench/README.md). Only when there is concurrency (the
                    // last batch had several jobs, or replies are still due):
                    // a lone client would just wait one scheduler pass
                    // (-c 1: p50 87 -> 111 us when yielding every time).
                    tokio::task::yield_now().await;
                    rx.try_recv_many(&mut batch, BATCH);
                }
                // The master moved while this batch was gathered: not written
                // (the error path answers it as unsent).
                if follows
                    && moves.as_deref().is_some_and(|m| m.has_changed().unwrap_or(false))
                    && spec.endpoint.addr() != connected
                {
                    break Err(BackendError::new(
                        BackendErrorKind::Unavailable,
                        &spec.name,
                        format!("the master moved to {} (Sentinel failover)", spec.endpoint.describe()),
                    ));
                }
                last_batch = batch.len();
                c.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let now = Instant::now();
                for job in batch.drain(..) {
                    wbuf.extend_from_slice(&job.req);
                    inflight.push_back((job.reply, now, job.frames.max(1)));
                }
                match timeout(cmd_timeout, send_buf(&mut stream, &mut wbuf)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(lost(e)),
                    Err(_) => break Err(BackendError::new(
                        BackendErrorKind::Timeout,
                        &spec.name,
                        format!("write timed out after {} ms", cmd_timeout.as_millis()),
                    )),
                }
                if wbuf.capacity() > 1024 * 1024 {
                    wbuf = BytesMut::with_capacity(16 * 1024);
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    &spec.name,
                    format!("timed out after {} ms", cmd_timeout.as_millis()),
                ));
            }
        }
    };
    if let Err(err) = &result {
        c.failures
            .fetch_add((inflight.len() + batch.len()) as u64, Ordering::Relaxed);
        for (to, _, _) in inflight.drain(..) {
            to.complete(Err(err.clone()));
        }
        // Taken from the queue but never written.
        let unsent = BackendError::new(BackendErrorKind::Unavailable, &spec.name, err.detail());
        for job in batch.drain(..) {
            job.reply.complete(Err(unsent.clone()));
        }
    }
    result
}

/// Resolves when the endpoint's address has changed since last seen (never
/// without a receiver, or once the endpoint is gone).
async fn moved(moves: Option<&mut watch::Receiver<u64>>) {
    match moves {
        Some(m) => {
            if m.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// The error for a write refused with READONLY by a followed master: it was
/// demoted (a failover is under way); the write did not run. Asks the
/// Sentinels again at once.
fn demoted(spec: &BackendSpec, addr: Option<&String>) -> BackendError {
    spec.endpoint.mark_stale();
    BackendError::new(
        BackendErrorKind::Unavailable,
        &spec.name,
        format!(
            "{} is a replica now (Sentinel failover under way): the write was refused, not run",
            addr.map_or("the master", |a| a.as_str())
        ),
    )
}

//! Backend pools: per shard, a few long-lived pipelined connections shared by
//! every client session of a worker thread (each worker has its own; see
//! [`crate::workers`]).
//!
//! - this file: a [`Shard`] (its pool), the [`Job`] a caller hands it and
//!   where the answer goes ([`ReplyTo`]); [`Shard::send`] is the one way to
//!   call a backend, and [`Shard::call`] awaits one answer on top of it.
//! - [`conn`]: connecting and the handshake.
//! - [`pipeline`]: a pooled connection's task (batching, reply matching,
//!   timeouts, reconnects), fed through [`jobs`], its job queue.
//! - [`dedicated`]: connections of their own (blocking commands, subscribers).
//! - [`backoff`]: the retry delays every backend caller shares.
//! - [`endpoint`]: where a shard's connections go (a fixed address or the
//!   master the Sentinels name) and the ROLE the server there must have.
//! - [`sentinel`]: asking the Sentinels (master, replicas, `+switch-master`).
//! - [`replicas`]: a shard's replica pools and reads on them
//!   ([`Shard::send_keyed`]).
//!
//! Failure handling: a connect or handshake that fails, a reply that does not
//! arrive within the command timeout, or a broken socket fails every
//! outstanding job with an error naming the shard, and the task reconnects
//! with exponential backoff. While a shard is down its jobs fail at once, so
//! clients get an error immediately rather than a hang; its keys are never
//! sent to another shard.

pub mod backoff;
mod conn;
mod dedicated;
pub mod endpoint;
pub mod inbox;
mod jobs;
pub mod replicas;
pub mod sentinel;
pub use dedicated::one_shot;
mod pipeline;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::warn;

use crate::config::{self, ReadFrom};
use crate::counters::ShardCounters;
pub use crate::error::{BackendError, BackendErrorKind};
use crate::protocol::Protocol;
use crate::workers::Executors;
use endpoint::{Endpoint, Role};
use replicas::Replicas;

/// What a backend answered to one job: the raw reply frame, or why not.
pub type BackendResult = Result<Bytes, BackendError>;

/// The answer to one job, delivered to the inbox of whoever sent it.
#[derive(Debug)]
pub struct Completion {
    /// The sender's request sequence number.
    pub seq: u64,
    /// Which part of a fanned-out request this answers.
    pub part: u32,
    pub result: BackendResult,
}

/// Where a job's answer goes.
#[derive(Debug)]
pub enum ReplyTo {
    /// A completion channel shared by many jobs (a session's, a lock
    /// worker's): `seq` and `part` say which request this answers. One channel
    /// per session costs no allocation per request.
    Inbox { sink: inbox::Sink, seq: u64, part: u32 },
    /// One caller awaiting this answer alone ([`Shard::call`]).
    Call(oneshot::Sender<BackendResult>),
}

impl ReplyTo {
    pub fn inbox(sink: &inbox::Sink, seq: u64, part: u32) -> ReplyTo {
        ReplyTo::Inbox {
            sink: sink.clone(),
            seq,
            part,
        }
    }

    /// Delivers the answer. The asker may be gone; then nobody wants it.
    pub fn complete(self, result: BackendResult) {
        match self {
            ReplyTo::Inbox { sink, seq, part } => {
                let _ = sink.send(Completion { seq, part, result });
            }
            ReplyTo::Call(tx) => {
                let _ = tx.send(result);
            }
        }
    }

    /// Whether nobody waits for the answer any more.
    pub fn is_closed(&self) -> bool {
        match self {
            ReplyTo::Inbox { sink, .. } => sink.is_closed(),
            ReplyTo::Call(tx) => tx.is_closed(),
        }
    }

    /// Resolves once nobody waits for the answer any more.
    pub async fn closed(&mut self) {
        match self {
            ReplyTo::Inbox { sink, .. } => sink.closed().await,
            ReplyTo::Call(tx) => tx.closed().await,
        }
    }
}

/// One request for a backend.
#[derive(Debug)]
pub struct Job {
    /// RESP bytes to write: one command, or a batch that must reach the
    /// server back to back (a transaction: MULTI ... EXEC).
    pub req: Bytes,
    pub reply: ReplyTo,
    /// Reply frames `req` produces; only the last is delivered (for
    /// MULTI ... EXEC, EXEC's). 1 for a single command.
    pub frames: u32,
}

impl Job {
    /// A job of one command.
    pub fn new(req: Bytes, reply: ReplyTo) -> Job {
        Job { req, reply, frames: 1 }
    }
}

/// How to reach and talk to one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: Arc<str>,
    /// The configured address; `sentinel:<master name>` for a shard whose
    /// master the Sentinels name. Where connections go is `endpoint`.
    pub addr: String,
    /// The live address (followed through failovers) and the ROLE check.
    pub endpoint: Arc<Endpoint>,
    pub read_from: ReadFrom,
    /// Static replicas (a shard without Sentinel).
    pub replicas: Vec<String>,
    pub max_replica_lag: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connections: usize,
    /// `tls = true`: the connector and the name the server's certificate
    /// must carry (see [`crate::tls`]).
    pub tls: Option<crate::tls::TlsTarget>,
}

impl BackendSpec {
    /// A backend at a fixed address with no replicas, credentials or
    /// Sentinel, with default timeouts (administrative calls, tests).
    pub fn plain(name: &str, addr: &str) -> BackendSpec {
        BackendSpec {
            name: Arc::from(name),
            addr: addr.to_string(),
            endpoint: Arc::new(Endpoint::fixed(addr, None)),
            read_from: ReadFrom::Master,
            replicas: Vec::new(),
            max_replica_lag: Duration::from_secs(5),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            connections: 1,
            tls: None,
        }
    }

    pub fn from_config(b: &config::Backend, cfg: &config::Config) -> Self {
        let (addr, endpoint) = match (&b.master, &cfg.sentinel) {
            (Some(m), Some(s)) => (format!("sentinel:{m}"), Endpoint::sentinel(m, Arc::new(s.clone()))),
            // A replicated shard checks that its master is one.
            _ => {
                let expect = (!b.replicas.is_empty()).then_some(Role::Master);
                (b.addr.clone(), Endpoint::fixed(&b.addr, expect))
            }
        };
        BackendSpec {
            name: Arc::from(b.name.as_str()),
            addr,
            endpoint: Arc::new(endpoint),
            read_from: b.read_from,
            replicas: b.replicas.clone(),
            max_replica_lag: Duration::from_millis(b.max_replica_lag_ms),
            username: b.username.clone(),
            password: b.password.clone(),
            connect_timeout: cfg.timeouts.connect(),
            command_timeout: cfg.timeouts.command(),
            reconnect_min: Duration::from_millis(cfg.timeouts.reconnect_ms),
            reconnect_max: Duration::from_millis(cfg.timeouts.reconnect_max_ms),
            connections: cfg.pool.connections,
            tls: cfg.tls.target(b),
        }
    }
}

/// What the proxy knows of the server process behind a shard: its `run_id`
/// (read in every connection's handshake) and when it last changed. A changed
/// run_id is a restart, after which the server has lost every key it held in
/// memory, lock keys included; the lock module keeps such a member out of
/// lock quorums for a while (Redlock's "delayed restart").
#[derive(Debug, Default)]
pub struct Identity {
    state: Mutex<(Option<String>, Option<std::time::Instant>)>,
}

impl Identity {
    fn observe(&self, shard: &str, run_id: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &st.0 {
            Some(old) if old == run_id => {}
            Some(old) => {
                warn!(shard, old_run_id = %old, run_id, "backend restarted (its run_id changed): it lost its in-memory data");
                *st = (Some(run_id.to_string()), Some(std::time::Instant::now()));
            }
            None => st.0 = Some(run_id.to_string()),
        }
    }

    /// The server behind the shard is another one now (a Sentinel failover
    /// promoted a replica, which may lack the last writes the old master
    /// acknowledged): for the lock group, as good as a restart.
    pub fn mark_restarted(&self, shard: &str, why: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        warn!(shard, why, "backend treated as restarted");
        st.1 = Some(std::time::Instant::now());
    }

    /// When the server was last seen to restart, if this proxy saw it.
    pub fn restarted_at(&self) -> Option<std::time::Instant> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// A shard's connection pool: RESP2 connections, started eagerly, and RESP3
/// connections, started when the first RESP3 client needs one. Each protocol
/// gets its own connections so replies are forwarded in the client's
/// encoding without conversion.
#[derive(Debug)]
pub struct Shard {
    pub spec: Arc<BackendSpec>,
    pub identity: Arc<Identity>,
    /// Requests, errors, latency and connections, per worker group
    /// (`/metrics`, see [`crate::counters`]).
    pub counters: Arc<ShardCounters>,
    /// Where the connection tasks run: one group of connections per worker.
    executors: Executors,
    /// `[group][connection]`: each worker's own connections.
    resp2: Vec<Vec<jobs::JobTx>>,
    resp3: OnceLock<Vec<Vec<jobs::JobTx>>>,
    /// With `read_from` other than `master`: the replicas reads may go to.
    pub replicas: Option<Box<Replicas>>,
}

impl Shard {
    /// Starts the RESP2 connections: `spec.connections` on each of the
    /// executors' workers (or on the current runtime, which then must exist).
    pub fn start(spec: BackendSpec, executors: &Executors) -> Arc<Shard> {
        let spec = Arc::new(spec);
        let identity = Arc::new(Identity::default());
        let counters = Arc::new(ShardCounters::new(executors.groups()));
        let resp2 = spawn_conns(&spec, &identity, &counters, Protocol::Resp2, executors);
        let replicas = (spec.read_from != ReadFrom::Master).then(|| Box::new(Replicas::start(spec.clone(), executors)));
        Arc::new(Shard {
            spec,
            identity,
            counters,
            executors: executors.clone(),
            resp2,
            resp3: OnceLock::new(),
            replicas,
        })
    }

    /// As [`Shard::send`] for a request forwarded as the client sent it
    /// (`args`): on a shard that reads from replicas, a read-only command
    /// goes to one of them (see [`replicas`]) if `replica_ok()` (the caller's
    /// say: not while keys move, when a replica may not have a key just
    /// migrated to its master yet). One branch for other shards, which never
    /// call `replica_ok`.
    #[inline]
    pub fn send_keyed(
        &self,
        proto: Protocol,
        lane: usize,
        job: Job,
        args: &[&[u8]],
        replica_ok: impl FnOnce() -> bool,
    ) {
        match &self.replicas {
            None => self.send(proto, lane, job),
            Some(r) if replica_ok() => r.send(self, proto, lane, job, args),
            Some(_) => self.send(proto, lane, job),
        }
    }

    /// The master's address now (`?` while the Sentinels have not named it).
    pub fn addr(&self) -> String {
        self.spec.endpoint.describe()
    }

    /// A failover moved this shard to another master (`addr`, Sentinel
    /// config epoch `epoch`): its pooled connections to the old one close,
    /// and the lock group treats it as restarted.
    pub fn follow(&self, addr: &str, epoch: u64) -> bool {
        let moved = self.spec.endpoint.adopt(&self.spec.name, addr, epoch);
        if moved {
            self.identity
                .mark_restarted(&self.spec.name, "Sentinel failover to another master");
        }
        moved
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Queues a job on connection `lane` (taken modulo the pool size) of the
    /// given protocol, among the calling worker's connections, so the job
    /// never leaves the thread. The same lane on the same thread keeps one
    /// client's requests in order (a session never changes thread).
    pub fn send(&self, proto: Protocol, lane: usize, job: Job) {
        let groups = match proto {
            Protocol::Resp2 => &self.resp2,
            Protocol::Resp3 => self.resp3.get_or_init(|| {
                spawn_conns(
                    &self.spec,
                    &self.identity,
                    &self.counters,
                    Protocol::Resp3,
                    &self.executors,
                )
            }),
        };
        let conns = &groups[self.executors.group_here() % groups.len()];
        let tx = &conns[lane % conns.len()];
        if let Err(job) = tx.send(job) {
            // The task only stops when the pool is dropped; answer anyway.
            let err = BackendError::new(BackendErrorKind::ShuttingDown, &self.spec.name, "");
            job.reply.complete(Err(err));
        }
    }

    /// Sends one request (RESP2, on `lane`) and awaits its answer: what the
    /// migrator and other background callers use.
    /// Waits until every request sent so far on every pipelined connection
    /// of this shard has been answered (or its connection lost): a PING on
    /// each, in FIFO order behind them. Gives up after the command timeout.
    pub async fn barrier(&self) {
        let ping = Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
        let mut waits = Vec::new();
        let resp3 = self.resp3.get().map(|g| g.as_slice()).unwrap_or_default();
        for tx in self.resp2.iter().chain(resp3.iter()).flatten() {
            let (reply, rx) = oneshot::channel();
            if tx.send(Job::new(ping.clone(), ReplyTo::Call(reply))).is_ok() {
                waits.push(rx);
            }
        }
        let all = async {
            for rx in waits {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(self.spec.command_timeout, all).await;
    }

    /// One RESP2 request with one reply frame on `lane`, awaited.
    pub async fn call(&self, lane: usize, req: Bytes) -> BackendResult {
        self.call_frames(Protocol::Resp2, lane, req, 1).await
    }

    /// Sends `req` (`frames` reply frames, the last delivered) on `lane` and
    /// returns the receiver of its answer: several sent before any is
    /// awaited run concurrently.
    pub fn request(&self, proto: Protocol, lane: usize, req: Bytes, frames: u32) -> oneshot::Receiver<BackendResult> {
        let (tx, rx) = oneshot::channel();
        self.send(
            proto,
            lane,
            Job {
                req,
                reply: ReplyTo::Call(tx),
                frames,
            },
        );
        rx
    }

    /// [`Shard::request`], awaited; an answer dropped unsent (the proxy
    /// is shutting down) is an error naming the shard.
    pub async fn call_frames(&self, proto: Protocol, lane: usize, req: Bytes, frames: u32) -> BackendResult {
        self.request(proto, lane, req, frames)
            .await
            .unwrap_or_else(|_| Err(BackendError::new(BackendErrorKind::ShuttingDown, &self.spec.name, "")))
    }
}

fn spawn_conns(
    spec: &Arc<BackendSpec>,
    identity: &Arc<Identity>,
    counters: &Arc<ShardCounters>,
    proto: Protocol,
    executors: &Executors,
) -> Vec<Vec<jobs::JobTx>> {
    let per_group = spec.connections.max(1);
    (0..executors.groups())
        .map(|g| {
            (0..per_group)
                .map(|i| {
                    let (tx, rx) = jobs::channel();
                    let lane = g * per_group + i;
                    let task =
                        pipeline::conn_task(spec.clone(), identity.clone(), counters.clone(), g, proto, lane, rx);
                    executors.spawn_on(g, task);
                    tx
                })
                .collect()
        })
        .collect()
}

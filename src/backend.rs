//! Backend pools: per shard, a few long-lived pipelined connections shared by
//! every client session of a worker thread (each worker has its own; see
//! [`crate::workers`]).
//!
//! A connection is one task that owns the socket. Sessions hand it [`Job`]s
//! over a channel; the task writes whatever jobs are queued in one batch,
//! remembers them in a FIFO, and matches each reply frame it reads to the
//! oldest outstanding job. Reply bytes are forwarded untouched.
//!
//! Failure handling: a connect or handshake that fails, a reply that does not
//! arrive within the command timeout, or a broken socket fails every
//! outstanding job with an error naming the shard, and the task reconnects
//! with exponential backoff. While a shard is down its jobs fail at once, so
//! clients get an error immediately rather than a hang; its keys are never
//! sent to another shard.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::config;
use crate::protocol::Protocol;
use crate::protocol::reply::{self, ReplyScanner};
use crate::protocol::request::Request;
use crate::workers::Executors;

/// Why a backend could not answer. Cheap to clone: one error often fails
/// many requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError(pub Arc<str>);

impl BackendError {
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// What a backend answered to one job: the raw reply frame, or why not.
pub type BackendResult = Result<Bytes, BackendError>;

/// The answer to one job, delivered to the session that sent it.
#[derive(Debug)]
pub struct Completion {
    /// The session's request sequence number.
    pub seq: u64,
    /// Which part of a fanned-out request this answers.
    pub part: u32,
    pub result: BackendResult,
}

/// Where a job's answer goes.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub sink: mpsc::UnboundedSender<Completion>,
    pub seq: u64,
    pub part: u32,
}

impl ReplyTo {
    fn complete(self, result: BackendResult) {
        // The session may be gone; then nobody wants the answer.
        let _ = self.sink.send(Completion {
            seq: self.seq,
            part: self.part,
            result,
        });
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
    pub addr: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connections: usize,
}

impl BackendSpec {
    pub fn from_config(b: &config::Backend, cfg: &config::Config) -> Self {
        BackendSpec {
            name: Arc::from(b.name.as_str()),
            addr: b.addr.clone(),
            username: b.username.clone(),
            password: b.password.clone(),
            connect_timeout: cfg.timeouts.connect(),
            command_timeout: cfg.timeouts.command(),
            reconnect_min: Duration::from_millis(cfg.timeouts.reconnect_ms),
            reconnect_max: Duration::from_millis(cfg.timeouts.reconnect_max_ms),
            connections: cfg.pool.connections,
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
    /// Where the connection tasks run: one group of connections per worker.
    executors: Executors,
    /// `[group][connection]`: each worker's own connections.
    resp2: Vec<Vec<mpsc::UnboundedSender<Job>>>,
    resp3: OnceLock<Vec<Vec<mpsc::UnboundedSender<Job>>>>,
}

impl Shard {
    /// Starts the RESP2 connections: `spec.connections` on each of the
    /// executors' workers (or on the current runtime, which then must exist).
    pub fn start(spec: BackendSpec, executors: &Executors) -> Arc<Shard> {
        let spec = Arc::new(spec);
        let identity = Arc::new(Identity::default());
        let resp2 = spawn_conns(&spec, &identity, Protocol::Resp2, executors);
        Arc::new(Shard {
            spec,
            identity,
            executors: executors.clone(),
            resp2,
            resp3: OnceLock::new(),
        })
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
            Protocol::Resp3 => self
                .resp3
                .get_or_init(|| spawn_conns(&self.spec, &self.identity, Protocol::Resp3, &self.executors)),
        };
        let conns = &groups[self.executors.group_here() % groups.len()];
        let tx = &conns[lane % conns.len()];
        if let Err(mpsc::error::SendError(job)) = tx.send(job) {
            // The task only stops when the pool is dropped; answer anyway.
            let err = BackendError(format!("ERR backend {} is shutting down", self.spec.name).into());
            job.reply.complete(Err(err));
        }
    }

    /// Runs one blocking command (BLPOP, XREAD BLOCK ...) on a connection of
    /// its own, opened for it and closed after it: a command that may wait
    /// for minutes must not hold up the pipelined connections every other
    /// client shares. No command timeout applies (the command carries its
    /// own); a backend that goes away fails it. Gives up, closing the
    /// connection, when the client's session is gone.
    pub fn send_blocking(&self, proto: Protocol, req: Bytes, reply: ReplyTo) {
        let spec = self.spec.clone();
        let identity = self.identity.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                r = blocking_call(&spec, &identity, proto, &req) => r,
                _ = reply.sink.closed() => return,
            };
            reply.complete(
                result.map_err(|e| BackendError(format!("ERR backend {} unavailable: {e}", spec.name).into())),
            );
        });
    }

    /// A connection of its own to this shard, after the usual handshake (a
    /// subscriber's, see `Route::Subscribe`).
    pub async fn connect_dedicated(&self, proto: Protocol) -> Result<TcpStream, String> {
        connect(&self.spec, &self.identity, proto).await
    }
}

/// Connects (with the usual handshake), writes `req` and reads its one reply.
async fn blocking_call(spec: &BackendSpec, identity: &Identity, proto: Protocol, req: &[u8]) -> Result<Bytes, String> {
    let mut stream = connect(spec, identity, proto).await?;
    stream.write_all(req).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::default();
    loop {
        while let Some(n) = scanner.next_frame(&buf).map_err(|e| e.to_string())? {
            let frame = buf.split_to(n).freeze();
            if !scanner.was_push() {
                return Ok(frame);
            }
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed by backend".to_string());
        }
    }
}

fn spawn_conns(
    spec: &Arc<BackendSpec>,
    identity: &Arc<Identity>,
    proto: Protocol,
    executors: &Executors,
) -> Vec<Vec<mpsc::UnboundedSender<Job>>> {
    let per_group = spec.connections.max(1);
    (0..executors.groups())
        .map(|g| {
            (0..per_group)
                .map(|i| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let lane = g * per_group + i;
                    executors.spawn_on(g, conn_task(spec.clone(), identity.clone(), proto, lane, rx));
                    tx
                })
                .collect()
        })
        .collect()
}

/// Most jobs written to one connection and not yet answered.
const MAX_INFLIGHT: usize = 16 * 1024;
/// Most jobs taken from the queue for one write.
const BATCH: usize = 512;

/// Supervises one connection: connect, serve, and on failure fail fast until
/// the next reconnect attempt.
async fn conn_task(
    spec: Arc<BackendSpec>,
    identity: Arc<Identity>,
    proto: Protocol,
    lane: usize,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let mut backoff = spec.reconnect_min;
    let mut was_up = true; // log the first failure loudly
    loop {
        let reason = match connect(&spec, &identity, proto).await {
            Ok(stream) => {
                if !was_up {
                    info!(shard = %spec.name, addr = %spec.addr, ?proto, lane, "backend connection restored");
                } else {
                    debug!(shard = %spec.name, addr = %spec.addr, ?proto, lane, "backend connected");
                }
                was_up = true;
                backoff = spec.reconnect_min;
                match serve(stream, &mut rx, &spec).await {
                    Ok(()) => return, // pool dropped and every job answered
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if was_up {
            warn!(shard = %spec.name, addr = %spec.addr, ?proto, lane, error = %reason, "backend unavailable");
        } else {
            debug!(shard = %spec.name, error = %reason, "backend still unavailable");
        }
        was_up = false;
        let err = BackendError(format!("ERR backend {} unavailable: {reason}", spec.name).into());
        let retry_at = Instant::now() + backoff;
        backoff = (backoff * 2).min(spec.reconnect_max);
        loop {
            tokio::select! {
                _ = sleep_until(retry_at) => break,
                job = rx.recv() => match job {
                    Some(job) => job.reply.complete(Err(err.clone())),
                    None => return,
                },
            }
        }
    }
}

/// Resolves (again, every time: container IPs change), connects and runs the
/// handshake (AUTH/HELLO, PING, and INFO server for the run_id), all within
/// the connect timeout.
async fn connect(spec: &BackendSpec, identity: &Identity, proto: Protocol) -> Result<TcpStream, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(spec.addr.as_str())
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut hs: Vec<Request> = Vec::new();
        match (proto, &spec.password) {
            (Protocol::Resp3, Some(pw)) => {
                let user = spec.username.as_deref().unwrap_or("default");
                hs.push(Request::from_args(&["HELLO", "3", "AUTH", user, pw]));
            }
            (Protocol::Resp3, None) => hs.push(Request::from_args(&["HELLO", "3"])),
            (Protocol::Resp2, Some(pw)) => match &spec.username {
                Some(u) => hs.push(Request::from_args(&["AUTH", u, pw])),
                None => hs.push(Request::from_args(&["AUTH", pw])),
            },
            (Protocol::Resp2, None) => {}
        }
        hs.push(Request::from_args(&["PING"]));
        hs.push(Request::from_args(&["INFO", "server"]));
        let mut out = Vec::new();
        for r in &hs {
            out.extend_from_slice(&r.raw);
        }
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut sc = ReplyScanner::default();
        let mut answered = 0;
        while answered < hs.len() {
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed during handshake".to_string());
            }
            while let Some(n) = sc.next_frame(&buf).map_err(|e| e.to_string())? {
                let frame = buf.split_to(n).freeze();
                if reply::is_error(&frame) {
                    let text = String::from_utf8_lossy(&frame[1..]).trim_end().to_string();
                    return Err(format!("handshake refused: {text}"));
                }
                answered += 1;
                if answered == hs.len() {
                    let info = reply::as_bytes(&frame).unwrap_or_default();
                    let run_id = String::from_utf8_lossy(&info)
                        .lines()
                        .find_map(|l| l.strip_prefix("run_id:").map(|v| v.trim().to_string()));
                    if let Some(run_id) = run_id {
                        identity.observe(&spec.name, &run_id);
                    }
                }
            }
        }
        Ok(stream)
    };
    match timeout(spec.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection within {} ms", spec.connect_timeout.as_millis())),
    }
}

/// Serves one healthy connection until it fails (`Err(reason)`) or the pool
/// is dropped and every job has been answered (`Ok`).
async fn serve(stream: TcpStream, rx: &mut mpsc::UnboundedReceiver<Job>, spec: &BackendSpec) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
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
    let cmd_timeout = spec.command_timeout;
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
            r = rd.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) => break Err("connection closed by backend".to_string()),
                    Err(e) => break Err(e.to_string()),
                    Ok(_) => {}
                }
                let mut failed = None;
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
                                    if let Some((to, _, _)) = inflight.pop_front() {
                                        to.complete(Ok(frame));
                                    }
                                }
                                None => {
                                    failed = Some("reply without a request".to_string());
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
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
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                }
                last_batch = batch.len();
                let now = Instant::now();
                for job in batch.drain(..) {
                    wbuf.extend_from_slice(&job.req);
                    inflight.push_back((job.reply, now, job.frames.max(1)));
                }
                match timeout(cmd_timeout, wr.write_all_buf(&mut wbuf)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e.to_string()),
                    Err(_) => break Err(format!("write timed out after {} ms", cmd_timeout.as_millis())),
                }
                if wbuf.capacity() > 1024 * 1024 {
                    wbuf = BytesMut::with_capacity(16 * 1024);
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break Err(format!("timed out after {} ms", cmd_timeout.as_millis()));
            }
        }
    };
    if let Err(reason) = &result {
        let err = BackendError(format!("ERR backend {} unavailable: {reason}", spec.name).into());
        for (to, _, _) in inflight.drain(..) {
            to.complete(Err(err.clone()));
        }
        for job in batch.drain(..) {
            job.reply.complete(Err(err.clone()));
        }
    }
    result
}

//! Calling shards for a cross-shard command: one request on a shard's pooled
//! connections ([`pooled`]), or a conversation on a connection of its own
//! that waits for a definite answer ([`Conv`], the moves' steps), and the
//! error replies the executors give.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{BackendError, BackendErrorKind, BackendResult, Job, ReplyTo, Shard};
use crate::protocol::{Encoder, Protocol};

/// How long a move's step waits for a stalled shard before answering the
/// client (a connection that breaks ends the wait sooner), in command
/// timeouts (`[timeouts] command_ms`): 30 s by default.
pub const PATIENCE_FACTOR: u32 = 15;

/// [`PATIENCE_FACTOR`] command timeouts of `shard`.
pub fn patience(shard: &Shard) -> Duration {
    shard.spec.command_timeout * PATIENCE_FACTOR
}

/// Sends `req` (`frames` reply frames, the last delivered) on a pooled
/// connection of `shard` and returns the receiver of its answer: sending
/// several before awaiting any runs them concurrently.
pub fn send(shard: &Shard, proto: Protocol, lane: usize, req: Bytes, frames: u32) -> oneshot::Receiver<BackendResult> {
    shard.request(proto, lane, req, frames)
}

/// Awaits an answer from [`send`].
pub async fn answer(rx: oneshot::Receiver<BackendResult>, shard: &Shard) -> BackendResult {
    rx.await
        .unwrap_or_else(|_| Err(BackendError::new(BackendErrorKind::ShuttingDown, &shard.spec.name, "")))
}

/// A conversation with one shard on a connection of its own: requests run
/// in order, each answer awaited until it comes or the connection breaks.
/// The caller waits [`patience`] at most; a request unanswered by then is
/// still settled when its answer comes ([`Conv::ask_undo`]). Conversations
/// come from, and go back to, a small process-wide pool of idle ones
/// ([`IDLE`]) while their connection is sound, so a move does not pay a
/// connect and handshake (nor leave a socket in TIME_WAIT) each time.
pub struct Conv {
    shard: Arc<Shard>,
    proto: Protocol,
    /// Where the connection went (a failover changes the shard's address).
    addr: Option<Arc<String>>,
    state: Mutex<ConvState>,
}

struct ConvState {
    tx: Option<mpsc::UnboundedSender<Job>>,
    /// Taken from the pool and not used yet: a broken idle connection is
    /// replaced once, at the first request.
    reused: bool,
    healthy: bool,
}

/// An idle conversation, for [`Conv::open`].
struct Idle {
    shard: Weak<Shard>,
    proto: Protocol,
    addr: Option<Arc<String>>,
    since: Instant,
    tx: mpsc::UnboundedSender<Job>,
}

/// Idle conversations of the moves (all shards), at most [`IDLE_MAX`], each
/// kept at most [`IDLE_FOR`]. Locked only by cross-shard moves.
static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());
const IDLE_MAX: usize = 64;
const IDLE_FOR: Duration = Duration::from_secs(10);

/// What to run on the source's shard to undo a step whose answer came too
/// late (`None`: nothing to undo).
pub type Undo = Box<dyn FnOnce(&BackendResult) -> Option<Bytes> + Send>;

impl Conv {
    pub fn open(shard: &Arc<Shard>, proto: Protocol) -> Conv {
        let addr = shard.spec.endpoint.addr();
        let idle = take_idle(shard, proto, &addr);
        let reused = idle.is_some();
        let tx = idle.unwrap_or_else(|| shard.converse_within(proto, None));
        Conv {
            shard: shard.clone(),
            proto,
            addr,
            state: Mutex::new(ConvState {
                tx: Some(tx),
                reused,
                healthy: true,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConvState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request whose late answer needs nothing undone (a read, a check).
    pub async fn ask(&self, req: Bytes) -> BackendResult {
        self.ask_undo(req, self, Box::new(|_| None)).await
    }

    /// Sends `req`; its answer, or a timeout error after [`patience`]. Then,
    /// when the answer does come, `undo` says what to run on `back`'s shard
    /// to undo what it did (a take whose taker gave up, a put that failed
    /// late): nothing a step took is lost because the client was answered.
    pub async fn ask_undo(&self, req: Bytes, back: &Conv, undo: Undo) -> BackendResult {
        let reused = std::mem::take(&mut self.state().reused);
        let (r, undo) = self.ask_once(req.clone(), back, undo).await;
        if reused
            && let Err(e) = &r
            && matches!(
                e.kind(),
                BackendErrorKind::ConnectionLost | BackendErrorKind::Unavailable | BackendErrorKind::ShuttingDown
            )
            && let Some(undo) = undo
        {
            // An idle connection the server closed (a restart), or whose task
            // is gone: the request did not reach a server that could run it.
            // Once more, on a fresh connection.
            let fresh = self.shard.converse_within(self.proto, None);
            *self.state() = ConvState {
                tx: Some(fresh),
                reused: false,
                healthy: true,
            };
            return self.ask_once(req, back, undo).await.0;
        }
        r
    }

    /// One try; gives `undo` back unless it was handed to a late answer.
    async fn ask_once(&self, req: Bytes, back: &Conv, undo: Undo) -> (BackendResult, Option<Undo>) {
        let (tx, mut rx) = oneshot::channel();
        let gone = || BackendError::new(BackendErrorKind::ShuttingDown, &self.shard.spec.name, "");
        let sender = self.state().tx.clone();
        if sender.is_none_or(|t| t.send(Job::new(req, ReplyTo::Call(tx))).is_err()) {
            self.state().healthy = false;
            return (Err(gone()), Some(undo));
        }
        match tokio::time::timeout(patience(&self.shard), &mut rx).await {
            Ok(r) => {
                let r = r.unwrap_or_else(|_| Err(gone()));
                self.state().healthy &= r.is_ok();
                (r, Some(undo))
            }
            Err(_) => {
                self.state().healthy = false;
                let (shard, proto, name) = (back.shard.clone(), back.proto, self.shard.spec.name.clone());
                tokio::spawn(async move {
                    let Ok(late) = rx.await else { return };
                    let Some(req) = undo(&late) else { return };
                    // A connection of its own, waiting as long as it takes.
                    let (tx, rx) = oneshot::channel();
                    let _ = shard
                        .converse_within(proto, None)
                        .send(Job::new(req, ReplyTo::Call(tx)));
                    let r = rx.await;
                    tracing::warn!(shard = %name, undo_on = shard.name(), answer = ?r, "cross-shard move: a late answer undone");
                });
                let e = BackendError::new(
                    BackendErrorKind::Timeout,
                    &self.shard.spec.name,
                    format!(
                        "no answer within {:?} to a cross-shard step; settled when it comes",
                        patience(&self.shard)
                    ),
                );
                (Err(e), None)
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.shard.spec.name
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }
}

impl Drop for Conv {
    /// A sound conversation goes back to the pool (room permitting).
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = st.tx.take() else { return };
        if !st.healthy {
            return;
        }
        let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| i.since.elapsed() < IDLE_FOR && i.shard.strong_count() > 0);
        if idle.len() < IDLE_MAX {
            idle.push(Idle {
                shard: Arc::downgrade(&self.shard),
                proto: self.proto,
                addr: self.addr.clone(),
                since: Instant::now(),
                tx,
            });
        }
    }
}

/// An idle conversation with `shard` in `proto` to its address now, if any.
fn take_idle(shard: &Arc<Shard>, proto: Protocol, addr: &Option<Arc<String>>) -> Option<mpsc::UnboundedSender<Job>> {
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    idle.retain(|i| i.since.elapsed() < IDLE_FOR && i.shard.strong_count() > 0);
    let at = idle
        .iter()
        .rposition(|i| std::ptr::eq(i.shard.as_ptr(), Arc::as_ptr(shard)) && i.proto == proto && i.addr == *addr)?;
    Some(idle.swap_remove(at).tx)
}

/// An `-ERR ...` reply frame.
pub fn err(proto: Protocol, msg: &str) -> Bytes {
    let mut b = BytesMut::new();
    Encoder::new(&mut b, proto).error(msg);
    b.freeze()
}

/// The reply frame for a shard that did not answer.
pub fn failed(proto: Protocol, e: &BackendError) -> Bytes {
    err(proto, &e.to_string())
}

/// True when the request surely did not run (it was never sent).
pub fn not_sent(e: &BackendError) -> bool {
    matches!(e.kind(), BackendErrorKind::Unavailable | BackendErrorKind::ShuttingDown)
}

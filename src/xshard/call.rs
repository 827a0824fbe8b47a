//! Calling shards for a cross-shard command: one request on a shard's pooled
//! connections ([`pooled`]), or a conversation on a connection of its own
//! that waits for a definite answer ([`Conv`], the moves' steps), and the
//! error replies the executors give.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{BackendError, BackendErrorKind, BackendResult, Job, ReplyTo, Shard};
use crate::protocol::{Encoder, Protocol};

/// How long a move's step waits for a stalled shard before calling the
/// outcome unknown (a connection that breaks ends the wait sooner).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Sends `req` (`frames` reply frames, the last delivered) on a pooled
/// connection of `shard` and returns the receiver of its answer: sending
/// several before awaiting any runs them concurrently.
pub fn send(shard: &Shard, proto: Protocol, lane: usize, req: Bytes, frames: u32) -> oneshot::Receiver<BackendResult> {
    let (tx, rx) = oneshot::channel();
    shard.send(
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

/// Awaits an answer from [`send`].
pub async fn answer(rx: oneshot::Receiver<BackendResult>, shard: &Shard) -> BackendResult {
    rx.await
        .unwrap_or_else(|_| Err(BackendError::new(BackendErrorKind::ShuttingDown, &shard.spec.name, "")))
}

/// A conversation with one shard on a connection of its own: requests run
/// in order, each answer awaited until it comes, the connection breaks, or
/// `wait` passes.
pub struct Conv {
    tx: mpsc::UnboundedSender<Job>,
    shard: std::sync::Arc<str>,
}

impl Conv {
    pub fn open(shard: &Shard, proto: Protocol, wait: Option<Duration>) -> Conv {
        Conv {
            tx: shard.converse_within(proto, wait),
            shard: shard.spec.name.clone(),
        }
    }

    pub async fn ask(&self, req: Bytes) -> BackendResult {
        let (tx, rx) = oneshot::channel();
        let gone = || BackendError::new(BackendErrorKind::ShuttingDown, &self.shard, "");
        self.tx.send(Job::new(req, ReplyTo::Call(tx))).map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    pub fn name(&self) -> &str {
        &self.shard
    }
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

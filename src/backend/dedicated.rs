//! Connections of their own, outside the shared pipelines: one per blocking
//! command (BLPOP, XREAD BLOCK ...), and one per subscriber.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::conn::connect;
use super::{BackendSpec, Identity, Job, ReplyTo, Shard};
use crate::error::{BackendError, BackendErrorKind};
use crate::protocol::Protocol;
use crate::protocol::reply::ReplyScanner;
use crate::tls::stream::{BackendStream, send};

impl Shard {
    /// Runs one blocking command (BLPOP, XREAD BLOCK ...) on a connection of
    /// its own, opened for it and closed after it: a command that may wait
    /// for minutes must not hold up the pipelined connections every other
    /// client shares. No command timeout applies (the command carries its
    /// own); a backend that goes away fails it. Gives up, closing the
    /// connection, when the client's session is gone.
    pub fn send_blocking(&self, proto: Protocol, req: Bytes, mut reply: ReplyTo) {
        let spec = self.spec.clone();
        let identity = self.identity.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                r = blocking_call(&spec, &identity, proto, &req) => r,
                _ = reply.closed() => return,
            };
            reply.complete(result);
        });
    }

    /// A WATCH conversation: a task that owns a connection of its own to
    /// this shard and runs the jobs sent to it one after the other, in
    /// order, each answered with its last reply frame (EXEC's for a
    /// MULTI ... EXEC batch) on the job's `ReplyTo`. The session keeps the
    /// sender while the client watches keys; dropping it ends the task once
    /// the jobs already sent are answered, and closing the connection ends
    /// the watch on the backend.
    ///
    /// A task rather than I/O in the session: the session only ever awaits
    /// its inbox and its client socket, so a slow backend never holds up the
    /// session's other work, and the replies come back like every other
    /// backend reply (as the lock worker's do). Once the connection fails,
    /// every later job gets the error (the watch is lost, so EXEC must not
    /// succeed on another connection).
    pub fn converse(&self, proto: Protocol) -> mpsc::UnboundedSender<Job> {
        self.converse_within(proto, Some(self.spec.command_timeout))
    }

    /// As [`Shard::converse`], with each job's reply awaited up to `wait`
    /// (`None`: until the connection breaks) instead of the command timeout:
    /// the cross-shard moves ([`crate::xshard`]) wait for a definite outcome
    /// from a shard that stalls rather than guess whether a write ran.
    pub fn converse_within(&self, proto: Protocol, wait: Option<std::time::Duration>) -> mpsc::UnboundedSender<Job> {
        let spec = self.spec.clone();
        let identity = self.identity.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            let mut conn = match connect(&spec, &identity, proto).await {
                Ok(s) => Ok((s, BytesMut::with_capacity(4096), ReplyScanner::default())),
                Err(e) => Err(e),
            };
            while let Some(job) = rx.recv().await {
                let (stream, buf, scanner) = match &mut conn {
                    Ok(c) => (&mut c.0, &mut c.1, &mut c.2),
                    Err(e) => {
                        job.reply.complete(Err(e.clone()));
                        continue;
                    }
                };
                let call = converse_call(&spec, stream, buf, scanner, &job.req, job.frames);
                let result = match wait {
                    None => call.await,
                    Some(wait) => match tokio::time::timeout(wait, call).await {
                        Ok(r) => r,
                        Err(_) => Err(BackendError::new(
                            BackendErrorKind::Timeout,
                            &spec.name,
                            "command timed out on a connection of its own",
                        )),
                    },
                };
                if let Err(e) = &result {
                    conn = Err(e.clone());
                }
                job.reply.complete(result);
            }
        });
        tx
    }

    /// A connection of its own to this shard, after the usual handshake (a
    /// subscriber's, see `Route::Subscribe`).
    pub async fn connect_dedicated(&self, proto: Protocol) -> Result<BackendStream, BackendError> {
        connect(&self.spec, &self.identity, proto).await
    }
}

/// One request on a connection of its own to `spec`, opened for it and
/// closed after it, within the connect and command timeouts: for the control
/// plane's administrative calls (ACL users of a fenced fleet).
pub async fn one_shot(spec: &BackendSpec, req: &[u8]) -> Result<Bytes, BackendError> {
    let identity = Identity::default();
    let within = spec.connect_timeout + spec.command_timeout;
    match tokio::time::timeout(within, blocking_call(spec, &identity, Protocol::Resp2, req)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::new(
            BackendErrorKind::Timeout,
            &spec.name,
            "administrative call timed out",
        )),
    }
}

/// Writes `req` on a WATCH conversation's connection and reads its `frames`
/// replies (push messages skipped); the last one is the answer.
async fn converse_call(
    spec: &BackendSpec,
    stream: &mut BackendStream,
    buf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    req: &[u8],
    frames: u32,
) -> Result<Bytes, BackendError> {
    let lost = |e: std::io::Error| BackendError::io(BackendErrorKind::ConnectionLost, &spec.name, e);
    send(stream, req).await.map_err(lost)?;
    let mut left = frames.max(1);
    loop {
        while let Some(n) = scanner
            .next_frame(buf)
            .map_err(|e| BackendError::new(BackendErrorKind::Protocol, &spec.name, e.to_string()))?
        {
            let frame = buf.split_to(n).freeze();
            if scanner.was_push() {
                continue;
            }
            left -= 1;
            if left == 0 {
                return Ok(frame);
            }
        }
        if stream.read_buf(buf).await.map_err(lost)? == 0 {
            return Err(BackendError::new(
                BackendErrorKind::ConnectionLost,
                &spec.name,
                "connection closed by backend",
            ));
        }
    }
}

/// Connects (with the usual handshake), writes `req` and reads its one reply.
async fn blocking_call(
    spec: &BackendSpec,
    identity: &Identity,
    proto: Protocol,
    req: &[u8],
) -> Result<Bytes, BackendError> {
    let mut stream = connect(spec, identity, proto).await?;
    let lost = |e: std::io::Error| BackendError::io(BackendErrorKind::ConnectionLost, &spec.name, e);
    send(&mut stream, req).await.map_err(lost)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::default();
    loop {
        while let Some(n) = scanner
            .next_frame(&buf)
            .map_err(|e| BackendError::new(BackendErrorKind::Protocol, &spec.name, e.to_string()))?
        {
            let frame = buf.split_to(n).freeze();
            if !scanner.was_push() {
                return Ok(frame);
            }
        }
        if stream.read_buf(&mut buf).await.map_err(lost)? == 0 {
            return Err(BackendError::new(
                BackendErrorKind::ConnectionLost,
                &spec.name,
                "connection closed by backend",
            ));
        }
    }
}

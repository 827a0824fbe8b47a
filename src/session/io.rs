//! A session's socket I/O: read buffers lent by the thread to the session
//! that reads (none held by an idle client), writes that never wait (what
//! the socket does not take stays in the output, counted against the output
//! buffer limit, see `super::outbuf`), waiting to read and to write in one
//! future, and the lingering close of a drained connection. Generic over
//! the stream (plain TCP or TLS, [`crate::tls::stream`]): compiled once for
//! each, no dispatch per read.
//!
//! Waiting to write asks the TCP socket underneath for its readiness
//! (`poll_write_ready`, a shared borrow taken and dropped within one poll),
//! so one `&mut` of the stream serves both the read and the wait to write:
//! no split halves, which TLS streams do not have.

use std::time::Duration;

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::stream::Stream;

/// After a draining session has written its last reply and sent FIN, it
/// reads (and drops) what the client still sends until the client closes,
/// sends nothing for [`LINGER_QUIET`], or this long has passed. Closing a
/// socket with unread input makes the kernel answer with a reset, which can
/// destroy replies not yet delivered.
const LINGER: Duration = Duration::from_secs(1);

/// See [`LINGER`]: a client silent this long after our FIN (an idle pooled
/// connection that reads only when used) is closed without waiting more.
const LINGER_QUIET: Duration = Duration::from_millis(100);

/// Closes a drained connection: FIN after the last reply, then whatever the
/// client still sends is read and dropped until it closes its side (it has
/// seen the end of the stream), goes quiet, or [`LINGER`] has passed. Its
/// requests sent after the shutdown started are neither executed nor
/// answered.
pub(super) async fn linger_close<S: Stream>(mut sock: S, mut rbuf: BytesMut) {
    if sock.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            rbuf.clear();
            match tokio::time::timeout(LINGER_QUIET, read_some(&mut sock, &mut rbuf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// Size of a read buffer: reserved when less than [`READ_MIN`] is free.
const READ_BUF: usize = 16 * 1024;
/// Free space below which a read buffer grows by [`READ_BUF`] before a read.
const READ_MIN: usize = 4096;
/// A buffer with more capacity than this is not kept as a thread's spare
/// (it grew for one large request): freed instead.
const SPARE_MAX: usize = 64 * 1024;

thread_local! {
    /// Each thread's spare read buffer, lent to whichever of its sessions
    /// reads next (see [`read_some`]).
    static SPARE: std::cell::Cell<Option<BytesMut>> = const { std::cell::Cell::new(None) };
}

/// Reads what the client sent into `rbuf`.
///
/// A session holds no read buffer between requests. When its buffer is empty
/// (every request read so far was parsed, the usual case), the read goes into
/// its thread's spare buffer, which the session then holds while it parses
/// and gives back with [`give_back`] once everything in it is parsed; only a
/// session left with part of a request (or requests it may not parse yet)
/// keeps a buffer. So 10,000 clients that each sent a request and now idle
/// hold no read buffers, as 10,000 that never sent one (which is why the
/// first read waits for readability before taking a buffer). The parsed
/// requests are views into the buffer (no copy): a buffer with requests
/// still in flight is not written over, `reserve` moves on to a new one.
/// Over TLS the same, except that input the TLS layer already holds (a
/// request that came with the end of the handshake) is read at once.
pub(super) async fn read_some<S: Stream>(sock: &mut S, rbuf: &mut BytesMut) -> std::io::Result<usize> {
    if !rbuf.is_empty() {
        if rbuf.capacity() - rbuf.len() < READ_MIN {
            rbuf.reserve(READ_BUF);
        }
        return sock.read_buf(rbuf).await;
    }
    loop {
        let held = sock.holds_input();
        if !held {
            // `poll_read_ready` keeps the waker in the socket's one reader
            // slot; `readable()` would put a waiter in the socket's list on
            // every wait and take it out again when dropped (a lock each).
            let tcp = sock.tcp();
            poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
        }
        let mut buf = SPARE.take().unwrap_or_default();
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(READ_BUF);
        }
        // `read_buf`, not `try_read_buf`: a read that leaves the socket
        // drained (less than the room it was given) clears the readiness,
        // so the next pass of the session does not try the socket again
        // only to get EAGAIN (`try_read_buf` clears it only on EAGAIN: one
        // more recvfrom per request, measured with strace -c). Polled once,
        // with a waker nobody waits on: on a spurious wake-up the buffer
        // goes back to the thread and the session waits for readiness
        // again. Awaiting the read instead kept the buffer in every session
        // woken that way: 10,000 idle clients on the default single thread
        // held 7.2 KiB each instead of 2.75 (bench/compare.py, IDLE=10000).
        let polled = {
            let mut read = std::pin::pin!(sock.read_buf(&mut buf));
            read.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop()))
        };
        match polled {
            Poll::Ready(n) => {
                *rbuf = buf;
                return n;
            }
            // TLS with input held and no whole record yet: wait for more
            // with the buffer (never spin).
            Poll::Pending if held => {
                let n = sock.read_buf(&mut buf).await;
                *rbuf = buf;
                return n;
            }
            // Spurious (the read found nothing and cleared the readiness),
            // or the task's cooperative budget is spent (the read woke the
            // no-op waker, not the task): yield, so the budget is renewed
            // and the task is woken, before waiting for readiness again.
            // Looping at once would spin without ever yielding, as
            // `readable` does not spend the budget.
            Poll::Pending => {
                SPARE.set(Some(buf));
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Gives an emptied read buffer back to the thread (see [`read_some`]); a
/// buffer with bytes in it stays with the session.
#[inline]
pub(super) fn give_back(rbuf: &mut BytesMut) {
    if rbuf.is_empty() && rbuf.capacity() != 0 {
        let buf = std::mem::take(rbuf);
        if buf.capacity() <= SPARE_MAX {
            SPARE.set(Some(buf));
        }
    }
}

/// What [`ready`] saw.
pub(super) enum Io {
    /// A read: what [`read_some`] returned.
    Read(std::io::Result<usize>),
    /// The socket can take more of the output that waits.
    Writable,
}

/// Waits for the client: reads what it sent when `can_read` (see
/// [`read_some`]), or resolves [`Io::Writable`] when `want_write` (output is
/// waiting) and the socket can take more. Without output waiting this is
/// [`read_some`] and nothing more.
pub(super) async fn ready<S: Stream>(sock: &mut S, rbuf: &mut BytesMut, can_read: bool, want_write: bool) -> Io {
    if want_write {
        let input = sock.holds_input();
        let tcp = sock.tcp();
        let readable = poll_fn(|cx| {
            if tcp.poll_write_ready(cx).is_ready() {
                // An error shows at the next write.
                return Poll::Ready(false);
            }
            if can_read && (input || tcp.poll_read_ready(cx).is_ready()) {
                return Poll::Ready(true);
            }
            Poll::Pending
        })
        .await;
        if !readable {
            return Io::Writable;
        }
    } else if !can_read {
        return std::future::pending().await;
    }
    Io::Read(read_some(sock, rbuf).await)
}

/// Writes as much of `out` as the socket takes now, without waiting; what
/// it does not take stays in `out` (or, TLS, in the TLS layer's buffer:
/// [`Stream::holds_output`]) until [`ready`] says the socket is writable.
/// `Err`: the client is gone.
pub(super) fn write_now<S: Stream>(sock: &mut S, out: &mut BytesMut) -> std::io::Result<()> {
    // A write that cannot go on now is left for later: nothing waits on
    // this waker (the session waits with `ready`).
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while !out.is_empty() {
        match Pin::new(&mut *sock).poll_write(&mut cx, out) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => out.advance(n),
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    // TLS: records the layer still holds go out now, as far as the socket
    // takes them (plain TCP: compiled out).
    if S::BUFFERED
        && let Poll::Ready(Err(e)) = Pin::new(&mut *sock).poll_flush(&mut cx)
    {
        return Err(e);
    }
    Ok(())
}

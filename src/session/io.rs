//! A session's socket I/O: replies written out, read buffers lent by the thread to the session
//! that reads (none held by an idle client), and the lingering close of a
//! drained connection. Generic over the stream (plain TCP or TLS,
//! [`crate::tls::stream`]): compiled once for each, no dispatch per read.

use std::time::Duration;

use bytes::BytesMut;
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
    if !sock.holds_input() {
        sock.tcp().readable().await?;
    }
    let mut buf = SPARE.take().unwrap_or_default();
    if buf.capacity() - buf.len() < READ_MIN {
        buf.reserve(READ_BUF);
    }
    // `read_buf`, not `try_read_buf`: a read that leaves the socket drained
    // (less than the room it was given) clears the readiness, so the next
    // pass of the session does not try the socket again only to get EAGAIN
    // (`try_read_buf` clears it only on EAGAIN: one more recvfrom per
    // request, measured with strace -c). Readable now, so this completes at
    // once but for a spurious wake-up, during which the session holds the
    // buffer.
    let n = sock.read_buf(&mut buf).await;
    *rbuf = buf;
    n
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

impl super::Session {
    /// Writes what is ready; false when the client is gone.
    pub(super) async fn write_out<S: Stream>(&mut self, sock: &mut S) -> bool {
        let out = &mut self.replies.out;
        if out.is_empty() {
            return true;
        }
        self.shared.counters.bytes(self.metered.group, 0, out.len() as u64);
        if sock.write_all_buf(out).await.is_err() {
            return false;
        }
        // TLS: records still buffered go out now (plain TCP: compiled out).
        if S::BUFFERED && sock.flush().await.is_err() {
            return false;
        }
        if out.capacity() > 1024 * 1024 {
            *out = BytesMut::new();
        }
        self.meter_written();
        true
    }
}

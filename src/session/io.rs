//! A session's socket I/O: reads into a buffer allocated only once a client
//! sends, writes that never wait (what the socket does not take stays in
//! the output, counted against the output buffer limit, see
//! `super::outbuf`), and the lingering close of a drained connection.
//!
//! Reads take the socket's read half and waiting to write its write half,
//! so the session can wait to read and to write in one `select!`.

use std::time::Duration;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

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
pub(super) async fn linger_close(mut sock: TcpStream, mut rbuf: BytesMut) {
    if sock.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            rbuf.clear();
            let (mut rd, _) = sock.split();
            match tokio::time::timeout(LINGER_QUIET, read_some(&mut rd, &mut rbuf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// Size of a client's read buffer, allocated when the client first sends.
const READ_BUF: usize = 16 * 1024;

/// Reads what the client sent into `rbuf`. A connection that has never sent
/// anything has no buffer: the buffer is allocated only once the socket is
/// readable, so 10,000 idle clients cost no read buffers (RSS measured by
/// bench/compare.sh, 10,000 idle clients: 125 MB -> 85 MB).
///
/// Through the read half (`AsyncRead`), not `try_read_buf`: a read that
/// leaves the socket drained (less than the room it was given) clears the
/// readiness, so the next pass does not try the socket again only to get
/// EAGAIN (`try_read_buf` clears it only on EAGAIN: one more recvfrom per
/// request).
pub(super) async fn read_some(sock: &mut ReadHalf<'_>, rbuf: &mut BytesMut) -> std::io::Result<usize> {
    if rbuf.capacity() == 0 {
        sock.readable().await?;
    }
    if rbuf.capacity() - rbuf.len() < 4096 {
        rbuf.reserve(READ_BUF);
    }
    sock.read_buf(rbuf).await
}

/// Writes as much of `out` as the socket takes now, without waiting; what
/// it does not take stays in `out` (wait with [`writable`]). `Err`: the
/// client is gone.
pub(super) fn write_now(sock: &TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    while !out.is_empty() {
        match sock.try_write(out) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves when the socket can take more output; never while nothing is
/// `pending`.
pub(super) async fn writable(sock: &WriteHalf<'_>, pending: bool) {
    if !pending {
        return std::future::pending().await;
    }
    // An error shows at the next write.
    let _ = sock.writable().await;
}

//! A session's socket reads: the read buffer allocated only once a client
//! sends, and the lingering close of a drained connection. Generic over the
//! stream (plain TCP or TLS, [`crate::tls::stream`]).

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

/// Size of a client's read buffer, allocated when the client first sends.
const READ_BUF: usize = 16 * 1024;

/// Reads what the client sent into `rbuf`. A connection that has never sent
/// anything has no buffer: the buffer is allocated only once the socket is
/// readable, so 10,000 idle clients cost no read buffers (RSS measured by
/// bench/compare.sh, 10,000 idle clients: 125 MB -> 85 MB). Over TLS the
/// same, unless the TLS layer holds input already (a request sent with the
/// end of the handshake), which is read at once.
pub(super) async fn read_some<S: Stream>(sock: &mut S, rbuf: &mut BytesMut) -> std::io::Result<usize> {
    if rbuf.capacity() == 0 && !sock.holds_input() {
        sock.tcp().readable().await?;
    }
    if rbuf.capacity() - rbuf.len() < 4096 {
        rbuf.reserve(READ_BUF);
    }
    sock.read_buf(rbuf).await
}

//! The streams sessions and backend connections run on: plain TCP or TLS
//! over TCP, behind one trait ([`Stream`]) that code is generic over, so a
//! plain connection runs the same code it ran before TLS existed (no
//! dynamic dispatch, no branch per read); and [`BackendStream`], the one
//! type a backend connection is, for the connections of their own
//! (blocking commands, subscribers), where one branch per call costs
//! nothing that matters. The pipelined backend connections dispatch once
//! per connection to a generic loop (see `backend::pipeline`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// A connection shardis reads and writes: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes may leave bytes buffered (TLS records) until flushed: after
    /// a write, [`send`] and [`send_buf`] flush. A constant, so plain TCP's
    /// code has no flush at all.
    const BUFFERED: bool;

    /// The TCP connection underneath (its fd, its readiness).
    fn tcp(&self) -> &TcpStream;

    /// Input already read from the socket and not yet returned by a read
    /// (TLS: decrypted bytes, or a record not yet processed): waiting for
    /// the socket to be readable would then wait for nothing.
    #[inline]
    fn holds_input(&self) -> bool {
        false
    }
}

impl Stream for TcpStream {
    const BUFFERED: bool = false;
    #[inline]
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Stream for server::TlsStream<TcpStream> {
    const BUFFERED: bool = true;
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    /// rustls wants to read from the socket only when it holds no
    /// plaintext and no complete record.
    fn holds_input(&self) -> bool {
        !self.get_ref().1.wants_read()
    }
}

impl Stream for client::TlsStream<TcpStream> {
    const BUFFERED: bool = true;
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Writes all of `buf`, flushed.
pub async fn send<S: Stream>(s: &mut S, buf: &[u8]) -> io::Result<()> {
    s.write_all(buf).await?;
    if S::BUFFERED {
        s.flush().await?;
    }
    Ok(())
}

/// Writes all of `buf` (advancing it), flushed.
#[inline]
pub async fn send_buf<S: Stream, B: bytes::Buf>(s: &mut S, buf: &mut B) -> io::Result<()> {
    s.write_all_buf(buf).await?;
    if S::BUFFERED {
        s.flush().await?;
    }
    Ok(())
}

/// A connection to a backend: plain, or TLS (`tls = true` on the backend).
#[derive(Debug)]
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<client::TlsStream<TcpStream>>),
}

impl Stream for BackendStream {
    const BUFFERED: bool = true;
    fn tcp(&self) -> &TcpStream {
        match self {
            BackendStream::Plain(s) => s,
            BackendStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

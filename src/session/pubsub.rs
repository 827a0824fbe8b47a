//! The subscriber pipe: a client that SUBSCRIBEs is piped, byte for byte, to
//! a connection of its own on the pub/sub shard, until either side closes or
//! the proxy shuts down.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::Session;
use crate::backend::{BackendError, BackendErrorKind};
use crate::router::PUBSUB_SHARD;
use crate::tls::stream::{Stream, send, send_buf};

impl Session {
    /// The connection becomes a subscriber: a connection of its own to the
    /// pub/sub shard (the first backend) gets the SUBSCRIBE and whatever
    /// the client sent after it, and from then on bytes are copied both ways
    /// until either side closes. Every PUBLISH goes to that shard too, so
    /// subscribers hear every publisher. `Err` (the shard cannot be reached)
    /// leaves the client in normal service. At shutdown the pipe stops and
    /// the client's connection closes at once: a subscriber has no request
    /// boundary to wait for, and must subscribe again elsewhere as after any
    /// disconnection (a message being copied at that moment may be cut).
    pub(super) async fn subscriber<S: Stream>(
        &mut self,
        sock: &mut S,
        rbuf: &mut BytesMut,
        first: Bytes,
    ) -> Result<(), BackendError> {
        let shard = self.shared.topology.load().shards[PUBSUB_SHARD].clone();
        let mut backend = shard.connect_dedicated(self.state.proto).await?;
        let lost = |e| BackendError::io(BackendErrorKind::ConnectionLost, &shard.spec.name, e);
        send(&mut backend, &first).await.map_err(lost)?;
        if !rbuf.is_empty() {
            send_buf(&mut backend, rbuf).await.map_err(lost)?;
        }
        debug!(client = self.state.id, shard = shard.name(), "client subscribed");
        tokio::select! {
            _ = tokio::io::copy_bidirectional(sock, &mut backend) => {}
            _ = self.watch.fired() => {
                debug!(client = self.state.id, "shutting down: closing a subscriber");
                let _ = sock.shutdown().await;
            }
        }
        Ok(())
    }
}

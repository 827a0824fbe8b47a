//! A session's output: writing what is ready without waiting, the
//! backpressure on a client that does not read, and the output buffer
//! limit (`crate::limits::output`).
//!
//! Replies a client has not been sent yet are the output buffer and the
//! finished replies waiting behind an earlier one ([`super::replies`]).
//! Past [`READ_PAUSE`] bytes of output the session stops reading the
//! client (and taking MONITOR lines), so a client that does not read can
//! only make the proxy hold the replies of what it had already sent (at
//! most `max_pipeline` requests). If those reach the hard limit of its
//! class, or stay over the soft limit for the soft seconds, the client is
//! closed, logged and counted, as Redis closes a client past its
//! `client-output-buffer-limit`. The limits are read only while bytes are
//! waiting: three relaxed loads; the clock only while over the soft limit.

use std::time::Instant;

use bytes::BytesMut;
use tracing::warn;

use super::Session;
use super::io::write_now;
use super::sharded::ShardSubs;
use crate::limits::{Breach, Class};
use crate::tls::stream::Stream;

/// Output bytes past which the session stops reading its client.
pub(super) const READ_PAUSE: usize = 64 * 1024;

/// An output buffer this large is given back once written.
const SHRINK_OVER: usize = 1024 * 1024;

impl Session {
    /// Writes what is ready, as much as the socket takes now; false when
    /// the client is gone, or past its output buffer limit (it must be
    /// closed).
    pub(super) fn write_out<S: Stream>(&mut self, sock: &mut S) -> bool {
        let out = &mut self.replies.out;
        if !out.is_empty() || (S::BUFFERED && sock.holds_output()) {
            let before = out.len();
            if write_now(sock, out).is_err() {
                return false;
            }
            let written = before - out.len();
            if written > 0 {
                self.shared.counters.bytes(self.metered.group, 0, written as u64);
            }
            if out.is_empty() {
                if out.capacity() > SHRINK_OVER {
                    *out = BytesMut::new();
                }
                self.meter_written();
            }
        }
        self.within_output_limit()
    }

    /// The limits that apply to this client: a subscriber (SUBSCRIBE,
    /// PSUBSCRIBE, or shard channels) is in Redis's pubsub class.
    fn output_class(&self) -> Class {
        if self.csub.is_some() || self.ssub.as_deref().is_some_and(ShardSubs::active) {
            Class::Pubsub
        } else {
            Class::Normal
        }
    }

    /// False (logged and counted) when the bytes waiting for the client are
    /// past its class's limit.
    ///
    /// Also where CLIENT LIST's `omem=` / `obl=` come from, at no cost to
    /// a write that leaves nothing: the bytes are stored in the registry
    /// entry only on this slow path (bytes held), and `out_shown` says the
    /// entry shows some, so the first pass with none clears it. `out_shown`
    /// is false only with `over_soft` unset (`check` unsets it whenever
    /// fewer bytes than the soft limit, none included, are held), so the
    /// fast path tests one field, as it tested `over_soft` alone before.
    pub(super) fn within_output_limit(&mut self) -> bool {
        let held = self.replies.held();
        if held == 0 && !self.out_shown {
            return true;
        }
        self.state.entry.set_output(held, self.replies.out.len());
        self.out_shown = held > 0;
        let class = self.output_class();
        let limit = self.shared.limits.output.get(class);
        let Some(breach) = limit.check(held as u64, &mut self.over_soft, Instant::now) else {
            return true;
        };
        self.shared.limits.output_closed(class);
        warn!(
            client = self.state.id,
            addr = %self.state.addr,
            class = class.name(),
            held,
            limit = %limit,
            which = if breach == Breach::Hard { "hard" } else { "soft" },
            "client closed for overcoming its output buffer limit"
        );
        false
    }

    /// When a client over its soft limit is due to be closed, if it is.
    pub(super) fn soft_due(&self) -> Option<Instant> {
        let since = self.over_soft?;
        Some(self.shared.limits.output.get(self.output_class()).soft_deadline(since))
    }
}

/// Resolves at `due`; never without one.
pub(super) async fn soft_due(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

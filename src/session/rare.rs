//! The events a session waits for only in rare states: a shard channel's
//! message (SSUBSCRIBE), a subscriber's messages (SUBSCRIBE), a MONITOR
//! line, the end of a CLIENT PAUSE holding a request, the end of a
//! shutdown's first-request grace; and for a client whose replies wait to
//! be written, the end of its soft output limit's seconds (see
//! [`super::outbuf`]; the socket taking more is waited for with the read,
//! [`super::io::ready`]).
//!
//! They are one select arm of [`super::Session::run`], whose futures are
//! boxed and made only while one of those states holds: the select's futures
//! live in every client's task, so a plain client's task stays small (the
//! four inline cost 552 bytes of each connection's memory).

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::drain::{Drain, first_request_grace};
use super::ops;
use super::outbuf::{READ_PAUSE, soft_due};
use super::pubsub::{self, Subs};
use super::sharded::{self, Event, ShardSubs};
use crate::state::Shared;

/// What happened.
pub(super) enum Rare {
    /// A shard channel event.
    Shard(Event),
    /// An event of the subscriber connection (SUBSCRIBE).
    Classic(super::subconn::Event),
    /// A MONITOR line; `None`: the monitor fell too far behind.
    Monitor(Option<Bytes>),
    /// The CLIENT PAUSE holding a request is over.
    PauseOver,
    /// The shutdown's grace for a first request is over.
    Grace,
    /// The client has been over its soft output limit for its seconds.
    SoftDue,
}

/// The client's output: the bytes waiting to be written, when the soft
/// output limit's seconds end (if over it).
pub(super) struct Output {
    pub(super) unwritten: usize,
    pub(super) due: Option<Instant>,
}

/// Whether any rare state holds (the arm's guard).
pub(super) fn active(
    ssub: &Option<Box<ShardSubs>>,
    csub: &Option<Box<Subs>>,
    monitor: &Option<mpsc::Receiver<Bytes>>,
    held: bool,
    drain: Drain,
    due: Option<Instant>,
) -> bool {
    ssub.is_some()
        || csub.is_some()
        || monitor.is_some()
        || held
        || matches!(drain, Drain::FirstRequest(_))
        || due.is_some()
}

/// The next rare event (see [`active`]); allocates its futures when first
/// polled, so an arm whose guard is false costs nothing. `room`: the session
/// can take a subscriber's messages (see [`pubsub::next_event`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn next(
    ssub: &mut Option<Box<ShardSubs>>,
    csub: &mut Option<Box<Subs>>,
    room: bool,
    monitor: &mut Option<mpsc::Receiver<Bytes>>,
    shared: &Shared,
    held: bool,
    drain: Drain,
    out: Output,
) -> Rare {
    Box::pin(async move {
        tokio::select! {
            biased;
            _ = soft_due(out.due), if out.due.is_some() => Rare::SoftDue,
            Some(ev) = sharded::next_event(ssub) => Rare::Shard(ev),
            Some(ev) = pubsub::next_event(csub, room) => Rare::Classic(ev),
            // Not while the client's output is full: a MONITOR that does
            // not read falls behind and is closed (see `crate::monitor`).
            line = ops::monitor_line(monitor), if out.unwritten < READ_PAUSE => Rare::Monitor(line),
            _ = ops::pause_over(shared, held) => Rare::PauseOver,
            _ = first_request_grace(drain) => Rare::Grace,
            else => std::future::pending().await,
        }
    })
    .await
}

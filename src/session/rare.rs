//! The events a session waits for only in rare states: a shard channel's
//! message (SSUBSCRIBE), a subscriber's messages (SUBSCRIBE), a MONITOR line, the end of a CLIENT PAUSE holding a
//! request, the end of a shutdown's first-request grace.
//!
//! They are one select arm of [`super::Session::run`], whose futures are
//! boxed and made only while one of those states holds: the select's futures
//! live in every client's task, so a plain client's task stays small (the
//! four inline cost 552 bytes of each connection's memory).

use bytes::Bytes;
use tokio::sync::mpsc;

use super::drain::{Drain, first_request_grace};
use super::ops;
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
}

/// Whether any rare state holds (the arm's guard).
pub(super) fn active(
    ssub: &Option<Box<ShardSubs>>,
    csub: &Option<Box<Subs>>,
    monitor: &Option<mpsc::Receiver<Bytes>>,
    held: bool,
    drain: Drain,
) -> bool {
    ssub.is_some() || csub.is_some() || monitor.is_some() || held || matches!(drain, Drain::FirstRequest(_))
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
) -> Rare {
    Box::pin(async move {
        tokio::select! {
            biased;
            Some(ev) = sharded::next_event(ssub) => Rare::Shard(ev),
            Some(ev) = pubsub::next_event(csub, room) => Rare::Classic(ev),
            line = ops::monitor_line(monitor) => Rare::Monitor(line),
            _ = ops::pause_over(shared, held) => Rare::PauseOver,
            _ = first_request_grace(drain) => Rare::Grace,
            else => std::future::pending().await,
        }
    })
    .await
}

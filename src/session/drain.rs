//! A session's part in a shutdown: serving, waiting for a first request
//! that was on its way when the listener closed, or draining; and the wait
//! on the session's signal (CLIENT KILL, the shutdown's DRAIN).

use std::task::Poll;
use std::time::{Duration, Instant};

use crate::registry::{Signal, signal};

/// A session's part in a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// No shutdown: normal service.
    Serving,
    /// Shutting down, and the client had sent nothing yet: it most likely
    /// connected to send a request, just before the listener closed. It is
    /// read until that first request is in whole (or until this instant),
    /// then it drains.
    FirstRequest(Instant),
    /// Shutting down: nothing more is read; once the requests already read
    /// are answered (a blocking command's too, until the deadline), the
    /// connection closes.
    Draining,
}

/// How long, after the shutdown starts, a client that has not sent anything
/// yet may take to send its first request (see [`Drain::FirstRequest`]).
pub(super) const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(100);

/// Resolves when the grace of [`Drain::FirstRequest`] is over; never in
/// any other state.
pub(super) async fn first_request_grace(drain: Drain) {
    match drain {
        Drain::FirstRequest(until) => tokio::time::sleep_until(until.into()).await,
        _ => std::future::pending().await,
    }
}

impl super::Session {
    /// The proxy is shutting down: stop reading (a client that has sent
    /// nothing yet first gets [`FIRST_REQUEST_GRACE`] to send a request).
    pub(super) fn start_drain(&mut self) {
        self.drain = if self.heard {
            Drain::Draining
        } else {
            Drain::FirstRequest(Instant::now() + FIRST_REQUEST_GRACE)
        };
    }
}

/// Resolves with the signal's bits that concern a session in `drain`: KILL
/// always, DRAIN while it still serves. `looking` (the session looks at its
/// signal in this pass, see [`crate::registry::raised`]): set once the wait
/// is pending, its waker left in the signal. Not looking, the entry is not
/// touched: it resolves with 0 once any signal was raised after `epoch`
/// (the raise of this session's own wakes it through the waker it left),
/// so that the next pass looks.
pub(super) fn signalled<'a>(
    sig: &'a Signal,
    drain: Drain,
    looking: Option<&'a mut bool>,
    epoch: u64,
) -> impl Future<Output = u8> + 'a {
    let mask = signal::KILL | if drain == Drain::Serving { signal::DRAIN } else { 0 };
    let mut looking = looking;
    std::future::poll_fn(move |cx| match looking.as_deref_mut() {
        Some(registered) => {
            let p = sig.poll(cx, mask);
            *registered |= p.is_pending();
            p
        }
        None if crate::registry::raised() != epoch => Poll::Ready(0),
        None => Poll::Pending,
    })
}

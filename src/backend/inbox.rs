//! A session's inbox: where backend connection tasks (and a session's lock
//! worker) deliver [`Completion`]s, many senders and one receiver.
//!
//! It replaces a tokio unbounded mpsc channel on the hot path. With 1,000
//! clients the channel was the largest user-space cost left (perf,
//! cpu-clock: `Rx::pop`, `Tx::send` and `Tx::find_block` 7.5% of the
//! proxy's CPU): it walks a list of 32-slot blocks (about 2 KiB each for a
//! completion), so every reply lands on a cache line not touched for 32
//! requests, which with a thousand sessions has long left the cache. Here a
//! session's completions go through one small `VecDeque` behind an
//! uncontended lock, reused from request to request: the same few lines
//! every time, and the waker beside them.
//!
//! Senders are cheap clones of one `Arc`; the receiver never sees the
//! channel close (whoever owns an [`Inbox`] also keeps a [`Sink`] to it, the
//! session and the lock worker alike), so [`Inbox::recv`] just waits.
//! Senders ask whether the receiver is gone ([`Sink::is_closed`],
//! [`Sink::closed`]): a dedicated connection stops a blocking command whose
//! client left.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use super::Completion;

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Completion>,
    /// The receiver's waker while it waits on an empty queue.
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Chan {
    queue: Mutex<Queue>,
    /// The [`Inbox`] was dropped.
    closed: AtomicBool,
    /// Woken when it is (for [`Sink::closed`], a rare path).
    on_close: Notify,
}

impl Chan {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means a panic elsewhere; the queue is intact.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Leaves the task's waker in `slot` (the one waker a single-receiver
/// queue keeps), unless the same task's is already there: no clone per
/// wait. Shared with [`super::jobs`].
#[inline]
pub(super) fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// A new inbox and a sender to it.
pub fn channel() -> (Sink, Inbox) {
    let chan = Arc::new(Chan::default());
    (Sink(chan.clone()), Inbox(chan))
}

/// Sends completions to one [`Inbox`].
#[derive(Debug, Clone)]
pub struct Sink(Arc<Chan>);

impl Sink {
    /// Delivers `c`, waking the receiver if it waits; `Err(c)` when the
    /// receiver is gone.
    pub fn send(&self, c: Completion) -> Result<(), Completion> {
        if self.is_closed() {
            return Err(c);
        }
        let waker = {
            let mut q = self.0.lock();
            q.items.push_back(c);
            q.waker.take()
        };
        // Outside the lock: the receiver, woken, takes it at once.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// Resolves once the receiver is gone.
    pub async fn closed(&self) {
        crate::notify::until(&self.0.on_close, || self.is_closed()).await
    }
}

/// The receiving end: one owner.
#[derive(Debug)]
pub struct Inbox(Arc<Chan>);

impl Inbox {
    /// The next completion, waiting for one if none is there.
    pub async fn recv(&mut self) -> Completion {
        poll_fn(|cx| {
            let mut q = self.0.lock();
            match q.items.pop_front() {
                Some(c) => Poll::Ready(c),
                None => {
                    park(&mut q.waker, cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The next completion if one is there.
    pub fn try_recv(&mut self) -> Option<Completion> {
        self.0.lock().items.pop_front()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        // What was delivered and never taken goes now, not with the last sender.
        let items = std::mem::take(&mut self.0.lock().items);
        drop(items);
        self.0.on_close.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn c(seq: u64) -> Completion {
        Completion {
            seq,
            part: 0,
            result: Ok(Bytes::from_static(b"+OK\r\n")),
        }
    }

    #[tokio::test]
    async fn completions_arrive_in_order_and_wake_the_receiver() {
        let (sink, mut inbox) = channel();
        assert!(inbox.try_recv().is_none());
        let s2 = sink.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for i in 0..3 {
                s2.send(c(i)).expect("open");
            }
        });
        assert_eq!(inbox.recv().await.seq, 0);
        t.await.expect("sender");
        assert_eq!(inbox.try_recv().map(|c| c.seq), Some(1));
        assert_eq!(inbox.recv().await.seq, 2);
        assert!(inbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_dropped_inbox_refuses_completions_and_wakes_closed() {
        let (sink, inbox) = channel();
        assert!(!sink.is_closed());
        let s2 = sink.clone();
        let waiter = tokio::spawn(async move { s2.closed().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(inbox);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("closed() resolved")
            .expect("task");
        assert!(sink.is_closed());
        assert_eq!(sink.send(c(7)).map_err(|c| c.seq), Err(7));
        // Already closed: at once.
        sink.closed().await;
    }
}

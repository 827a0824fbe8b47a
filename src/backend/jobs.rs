//! A pooled connection's job queue: the [`Shard`](super::Shard) holds the
//! one sender, the connection's task ([`super::pipeline`]) the receiver.
//!
//! It replaces a tokio unbounded mpsc channel, as [`super::inbox`] did on
//! the way back. Not for instructions (callgrind counts about the same per
//! job either way) but for cache misses: the channel walks a list of
//! 32-slot blocks whose lines have gone cold by the time they are reused.
//! `perf record -e cpu-clock`, GET -P 1 through the proxy: the channel's
//! `send`, `Rx::pop`, `recv_many` and `try_recv` took 0.97% of the proxy's
//! CPU; this queue takes 0.50%. The jobs go through one `VecDeque` behind a
//! lock nobody contends (the sender and the task run on the same worker
//! thread, see [`super::Shard::send`]), reused from batch to batch; the
//! task takes a whole batch under one lock.
//!
//! Closing: dropping the [`JobTx`] (the pool is gone) lets the task answer
//! what is queued and stop ([`JobRx::recv_many`] gives 0 once the queue is
//! empty); dropping the [`JobRx`] makes [`JobTx::send`] hand the job back.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Job;
use super::inbox::park;

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The receiver's waker while it waits on an empty queue.
    waker: Option<Waker>,
    /// The sender was dropped: no job will come after those queued.
    sender_gone: bool,
    /// The receiver was dropped: nobody takes jobs any more.
    receiver_gone: bool,
}

#[derive(Debug, Default)]
struct Chan(Mutex<Queue>);

impl Chan {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means a panic elsewhere; the queue is intact.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new queue: its sender and its receiver.
pub fn channel() -> (JobTx, JobRx) {
    let chan = Arc::new(Chan::default());
    (JobTx(chan.clone()), JobRx(chan))
}

/// Queues jobs for one connection task. Not `Clone`: its drop is what tells
/// the task that the pool is gone.
#[derive(Debug)]
pub struct JobTx(Arc<Chan>);

impl JobTx {
    /// Queues `job`, waking the task if it waits; `Err(job)` when the task
    /// is gone.
    pub fn send(&self, job: Job) -> Result<(), Job> {
        let waker = {
            let mut q = self.0.lock();
            if q.receiver_gone {
                return Err(job);
            }
            q.jobs.push_back(job);
            q.waker.take()
        };
        // Outside the lock: the task, woken, takes the job at once.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for JobTx {
    fn drop(&mut self) {
        let waker = {
            let mut q = self.0.lock();
            q.sender_gone = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The connection task's end.
#[derive(Debug)]
pub struct JobRx(Arc<Chan>);

impl JobRx {
    /// Ready with `take(jobs)` when jobs are queued, with `None` once the
    /// sender is gone and every job was taken; else pending, the task's
    /// waker left for the next [`JobTx::send`]. Nothing is taken unless
    /// it is ready, so the futures below are cancel-safe.
    #[inline]
    fn poll_take<R>(&mut self, cx: &mut Context<'_>, take: impl FnOnce(&mut VecDeque<Job>) -> R) -> Poll<Option<R>> {
        let mut q = self.0.lock();
        if !q.jobs.is_empty() {
            return Poll::Ready(Some(take(&mut q.jobs)));
        }
        if q.sender_gone {
            return Poll::Ready(None);
        }
        park(&mut q.waker, cx);
        Poll::Pending
    }

    /// Waits for jobs and moves up to `limit` of them, oldest first, into
    /// `buf`; how many. 0: the sender is gone and every job was taken.
    pub async fn recv_many(&mut self, buf: &mut Vec<Job>, limit: usize) -> usize {
        poll_fn(|cx| {
            self.poll_take(cx, |jobs| {
                let n = jobs.len().min(limit);
                buf.extend(jobs.drain(..n));
                n
            })
            .map(|n| n.unwrap_or(0))
        })
        .await
    }

    /// Moves the jobs queued now, up to `limit` in all in `buf`, without
    /// waiting.
    pub fn try_recv_many(&mut self, buf: &mut Vec<Job>, limit: usize) {
        let room = limit.saturating_sub(buf.len());
        if room == 0 {
            return;
        }
        let mut q = self.0.lock();
        let n = q.jobs.len().min(room);
        buf.extend(q.jobs.drain(..n));
    }

    /// The next job, waiting for one; `None` once the sender is gone and
    /// every job was taken.
    pub async fn recv(&mut self) -> Option<Job> {
        poll_fn(|cx| self.poll_take(cx, VecDeque::pop_front).map(Option::flatten)).await
    }
}

impl Drop for JobRx {
    fn drop(&mut self) {
        // Jobs never taken are dropped here, not with the sender: their
        // askers see their answer dropped (a `Call` gets a closed channel).
        let jobs = {
            let mut q = self.0.lock();
            q.receiver_gone = true;
            q.waker = None;
            std::mem::take(&mut q.jobs)
        };
        drop(jobs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ReplyTo;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn job(n: u8) -> (Job, oneshot::Receiver<super::super::BackendResult>) {
        let (tx, rx) = oneshot::channel();
        (Job::new(Bytes::from(vec![n]), ReplyTo::Call(tx)), rx)
    }

    #[tokio::test]
    async fn jobs_arrive_in_order_in_batches_and_wake_the_task() {
        let (tx, mut rx) = channel();
        let t = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut seen = Vec::new();
            loop {
                let n = rx.recv_many(&mut buf, 2).await;
                if n == 0 {
                    return seen;
                }
                assert!(n <= 2);
                seen.extend(buf.drain(..).map(|j| j.req[0]));
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut answers = Vec::new();
        for i in 0..5 {
            let (j, a) = job(i);
            tx.send(j).expect("task alive");
            answers.push(a);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let seen = tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .expect("the task saw the sender go")
            .expect("task");
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn try_recv_many_fills_up_to_the_limit_and_recv_ends_with_the_sender() {
        let (tx, mut rx) = channel();
        let mut buf = Vec::new();
        rx.try_recv_many(&mut buf, 4);
        assert!(buf.is_empty());
        for i in 0..6 {
            tx.send(job(i).0).expect("alive");
        }
        buf.push(job(99).0);
        rx.try_recv_many(&mut buf, 4);
        assert_eq!(buf.iter().map(|j| j.req[0]).collect::<Vec<_>>(), vec![99, 0, 1, 2]);
        drop(tx);
        // What was queued before the sender went is still delivered.
        assert_eq!(rx.recv().await.map(|j| j.req[0]), Some(3));
        let mut rest = Vec::new();
        assert_eq!(rx.recv_many(&mut rest, 10).await, 2);
        assert_eq!(rx.recv_many(&mut rest, 10).await, 0);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_gone_task_hands_jobs_back_and_drops_the_queued_ones() {
        let (tx, rx) = channel();
        let (j, answer) = job(1);
        tx.send(j).expect("alive");
        drop(rx);
        // The queued job's asker sees its answer dropped.
        assert!(answer.await.is_err());
        let back = tx.send(job(2).0).expect_err("the task is gone");
        assert_eq!(back.req[0], 2);
    }
}

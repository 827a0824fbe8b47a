//! Thread-per-core workers: where client sessions and backend connections
//! run.
//!
//! With `threads = N > 1` the proxy starts N worker threads, each driving its
//! own single-threaded tokio runtime, as Envoy and nginx run workers. The
//! listener hands each accepted client to one worker (round robin), and every
//! worker has its own connections to every shard, so a request goes from the
//! client's session to a backend connection task and back without leaving
//! the thread: no work stealing, no cross-thread wake-up, no shared queue on
//! the hot path. The cost is N times the backend connections (`pool.connections`
//! is per worker).
//!
//! [`Executors`] is the handle the rest of the crate sees: the worker
//! runtimes, or none, in which case everything is spawned on the runtime the
//! caller runs on (`threads = 1`, tests, and embedders with their own runtime).

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread drives, if it is one.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Where per-connection tasks are spawned: one group of backend connections
/// per worker runtime, or one group on the caller's runtime.
#[derive(Clone, Debug, Default)]
pub struct Executors {
    handles: Arc<[Handle]>,
}

impl Executors {
    /// No workers: tasks go to the runtime of whoever spawns them.
    pub fn current() -> Executors {
        Executors::default()
    }

    /// How many groups of backend connections each shard keeps: one per
    /// worker, at least one.
    pub fn groups(&self) -> usize {
        self.handles.len().max(1)
    }

    /// The group of the calling thread: its worker's index, or 0 off the
    /// workers (the listener, a test's runtime).
    #[inline]
    pub fn group_here(&self) -> usize {
        INDEX.with(|i| i.get()).unwrap_or(0) % self.groups()
    }

    /// Spawns `fut` on worker `group`, or on the current runtime when there
    /// are no workers.
    pub fn spawn_on<F>(&self, group: usize, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(fut);
        } else {
            self.handles[group % self.handles.len()].spawn(fut);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// The worker threads. Dropping this stops them (their tasks are dropped).
pub struct Workers {
    executors: Executors,
    stop: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads, each with a current-thread runtime that
    /// `configure` may tune (it gets a fresh builder with I/O and timers on).
    pub fn start(n: usize, configure: impl Fn(&mut Builder)) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let mut b = Builder::new_current_thread();
            b.enable_all();
            configure(&mut b);
            let rt = b.build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            let t = std::thread::Builder::new()
                .name(format!("shardis-w{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(Some(i)));
                    // Runs every task spawned on this worker until told to stop.
                    let _ = rt.block_on(rx);
                })?;
            threads.push(t);
        }
        Ok(Workers {
            executors: Executors {
                handles: handles.into(),
            },
            stop,
            threads,
        })
    }

    pub fn executors(&self) -> Executors {
        self.executors.clone()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_worker_they_were_given_to() {
        let workers = Workers::start(3, |_| {}).expect("workers");
        let ex = workers.executors();
        assert_eq!(ex.groups(), 3);
        assert_eq!(ex.group_here(), 0, "the test thread is no worker");
        let (tx, rx) = std::sync::mpsc::channel();
        for g in 0..6 {
            let tx = tx.clone();
            let ex2 = ex.clone();
            ex.spawn_on(g, async move {
                let _ = tx.send((g, ex2.group_here()));
            });
        }
        let mut seen: Vec<(usize, usize)> = (0..6).map(|_| rx.recv().expect("task ran")).collect();
        seen.sort();
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]);
    }

    #[test]
    fn no_workers_is_one_group() {
        let ex = Executors::current();
        assert_eq!(ex.groups(), 1);
        assert_eq!(ex.group_here(), 0);
    }
}

/// The worker threads `threads = 0` means on a machine with `cpus` CPUs:
/// one fewer than the CPUs, at least one. The CPU left over is for the
/// kernel's network processing, which a proxy keeps busy (most of each
/// request's cost is in the kernel), and for whatever shares the machine.
/// Measured on 2 vCPUs shared with redis-benchmark and three redis-servers
/// (bench/compare.sh, 2026-12-03, medians of 3): one thread did GET -P 1 at
/// 104k ops/s and 7.8 s of CPU per million requests, two threads 81k and
/// 10.1 s; with pipelining the two were within 5% of each other.
pub fn default_threads(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

#[cfg(test)]
mod default_threads_tests {
    #[test]
    fn one_fewer_than_the_cpus_at_least_one() {
        assert_eq!(super::default_threads(0), 1);
        assert_eq!(super::default_threads(1), 1);
        assert_eq!(super::default_threads(2), 1);
        assert_eq!(super::default_threads(8), 7);
    }
}

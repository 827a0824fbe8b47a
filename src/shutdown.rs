//! Graceful shutdown: the one signal that tells every part of a proxy to
//! stop, the hooks run when it fires, and the SIGTERM / SIGINT handlers
//! that fire it.
//!
//! It owns:
//! - [`Shutdown`]: triggered once ([`Shutdown::trigger`]), observed by
//!   whoever needs to ([`Shutdown::is_triggered`], [`Shutdown::wait`]);
//!   it lives in [`crate::state::Shared`] as `shared.shutdown`;
//! - shutdown hooks ([`Shutdown::on_shutdown`]): async work registered by
//!   other parts (fleet deregistration, say) and run by
//!   [`crate::server::drain`] once the listener is closed, while the
//!   sessions drain, each bounded by the shutdown deadline;
//! - the order to drain ([`Shutdown::drain_sessions`]), given after the
//!   listener has closed: a client closed at once and reconnecting must not
//!   land in the accept queue of a listener about to close, which would
//!   reset it. The flag is here; each session hears it through the DRAIN
//!   bit of its registry entry's signal ([`crate::registry::Signal`], raised
//!   by [`crate::server::drain_sessions`]), which it polls with its kill,
//!   rather than through one shared `Notify`, whose every pending poll takes
//!   a lock all sessions on all threads share;
//! - [`on_signals`]: SIGTERM and SIGINT trigger the shutdown; a second one
//!   exits at once.
//!
//! What the listener and the sessions do once it fires is theirs
//! (`server.rs`, `session/mod.rs`); `docs/architecture.md` follows a shutdown
//! through them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{info, warn};

/// A hook's work, made when the shutdown starts.
type HookFn = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The shutdown signal of one proxy. Cloning gives another handle to the
/// same signal.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    triggered: AtomicBool,
    /// Sessions have been told to drain ([`Shutdown::drain_sessions`]).
    draining: AtomicBool,
    /// When [`Shutdown::trigger`] first ran.
    at: OnceLock<Instant>,
    /// Woken by the trigger ([`Shutdown::wait`]) and, once triggered, by
    /// every session that ends ([`Shutdown::session_ended`]).
    notify: Notify,
    /// Hooks not started yet; `None` once [`Shutdown::run_hooks`] took them.
    hooks: Mutex<Option<Vec<(String, HookFn)>>>,
}

/// A poisoned lock only means a thread panicked while holding it; the data
/// (senders, hooks) is still fine to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the shutdown: the listener stops accepting and, once it has
    /// closed, every session drains. Returns false if it had already
    /// started (nothing more happens).
    pub fn trigger(&self) -> bool {
        if self.0.triggered.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.0.at.set(Instant::now());
        self.0.notify.notify_waiters();
        true
    }

    /// Sessions must drain from now on (the listener has closed, or there
    /// is none): each answers what it has read and closes. Returns whether
    /// this call said so first. The sessions are told by
    /// [`crate::server::drain_sessions`], which calls this and then raises
    /// DRAIN in every registered session; one registering later reads
    /// [`Shutdown::sessions_draining`] when it starts.
    pub fn drain_sessions(&self) -> bool {
        !self.0.draining.swap(true, Ordering::AcqRel)
    }

    /// Sessions must drain (see [`Shutdown::drain_sessions`]).
    pub fn sessions_draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    pub fn is_triggered(&self) -> bool {
        self.0.triggered.load(Ordering::Acquire)
    }

    /// When the shutdown started, if it has.
    pub fn triggered_at(&self) -> Option<Instant> {
        self.0.at.get().copied()
    }

    /// `limit` after the shutdown started (after now, if it has not).
    pub fn deadline(&self, limit: Duration) -> Instant {
        self.triggered_at().unwrap_or_else(Instant::now) + limit
    }

    /// Resolves once the shutdown has started (at once if it has).
    pub async fn wait(&self) {
        crate::notify::until(&self.0.notify, || self.is_triggered()).await
    }

    /// Registers `hook`, run when the shutdown starts: as soon as the
    /// listener is closed, alongside the sessions' drain and the other hooks,
    /// and given until the shutdown deadline (`shutdown_ms` after the
    /// signal), after which it is dropped and the process exits anyway.
    /// `name` is what the log calls it. A hook registered once the shutdown
    /// is under way is started at once and not waited for.
    pub fn on_shutdown<F, Fut>(&self, name: impl Into<String>, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let f: HookFn = Box::new(move || Box::pin(hook()));
        let mut hooks = lock(&self.0.hooks);
        match hooks.as_mut() {
            Some(list) => list.push((name, f)),
            None if !self.is_triggered() => *hooks = Some(vec![(name, f)]),
            None => {
                drop(hooks);
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(f());
                    }
                    Err(_) => warn!(hook = %name, "shutdown hook registered too late and off a runtime: not run"),
                }
            }
        }
    }

    /// Runs every registered hook at once and waits for them until
    /// `deadline`; the ones still running then are dropped (and logged).
    pub async fn run_hooks(&self, deadline: Instant) {
        let hooks = lock(&self.0.hooks).take().unwrap_or_default();
        // No hook list from now on: a late hook starts at once (see on_shutdown).
        if hooks.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut left: Vec<String> = hooks.iter().map(|(n, _)| n.clone()).collect();
        let mut set = tokio::task::JoinSet::new();
        for (name, f) in hooks {
            let work = f();
            set.spawn(async move {
                work.await;
                name
            });
        }
        let all = async {
            while let Some(done) = set.join_next().await {
                match done {
                    Ok(name) => {
                        info!(hook = %name, ms = started.elapsed().as_millis() as u64, "shutdown hook done");
                        left.retain(|n| *n != name);
                    }
                    Err(e) => warn!(error = %e, "a shutdown hook failed"),
                }
            }
        };
        if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
            warn!(hooks = ?left, "shutdown hooks still running at the deadline: dropped");
        }
    }

    /// A client connection ended: wakes [`crate::server::drain`] once the
    /// shutdown has started.
    pub fn session_ended(&self) {
        if self.is_triggered() {
            self.0.notify.notify_waiters();
        }
    }

    /// Resolves at the next [`Shutdown::session_ended`] after shutdown
    /// started; `check` is tested once the wake-up is armed, so none is
    /// missed: resolves at once if it holds.
    pub(crate) async fn next_session_end(&self, check: impl Fn() -> bool) {
        crate::notify::next_or(&self.0.notify, check).await;
    }
}

/// Triggers `shutdown` on the first SIGTERM or SIGINT; a second one exits
/// the process at once (code 1), without waiting for the clients.
pub fn on_signals(shutdown: &Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "shutting down: no new clients; answering what was read, then closing"
        );
        shutdown.trigger();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        warn!(signal = name, "second signal: exiting without waiting for clients");
        std::process::exit(1);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn the_drain_is_said_once_after_the_trigger() {
        let s = Shutdown::new();
        assert!(s.trigger());
        assert!(!s.trigger(), "only the first trigger starts a shutdown");
        assert!(s.is_triggered() && s.triggered_at().is_some());
        assert!(!s.sessions_draining(), "sessions drain once the listener has closed");
        assert!(s.drain_sessions());
        assert!(!s.drain_sessions());
        assert!(s.sessions_draining());
        s.wait().await;
    }

    #[tokio::test]
    async fn hooks_run_once_and_a_slow_one_is_cut_at_the_deadline() {
        let s = Shutdown::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        s.on_shutdown("quick", move || async move {
            r.fetch_add(1, Ordering::SeqCst);
        });
        s.on_shutdown("stuck", std::future::pending::<()>);
        s.trigger();
        let t = Instant::now();
        s.run_hooks(Instant::now() + Duration::from_millis(100)).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // Taken: a second run has nothing to do, a late hook starts at once.
        s.run_hooks(Instant::now()).await;
        let r = ran.clone();
        s.on_shutdown("late", move || async move {
            r.fetch_add(1, Ordering::SeqCst);
        });
        for _ in 0..100 {
            if ran.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}

//! The registry of live client sessions, and the client pause: what CLIENT
//! LIST / KILL / PAUSE / UNPAUSE act on across sessions.
//!
//! Every session registers an [`Entry`] when it starts and removes it when
//! it ends: the registry's lock is taken on connect, on disconnect and by
//! CLIENT LIST / KILL, never per request. A session only stores into its own
//! entry with relaxed atomics, and not per request: the last command's spec
//! (a pointer into the static command table, so no allocation) when it
//! changes, and when it was last heard from once that has moved by 100 ms
//! (`session::ops::TOUCH_EVERY`). What changes rarely (name, library, RESP
//! version) sits behind a small lock of the entry's own, written by the
//! commands that change it; a subscriber's counts are stored by its
//! (un)subscribe commands, and the output bytes held for a client only when
//! a write leaves some (`session/outbuf.rs`).
//!
//! A kill, and the shutdown's order to drain, are bits raised in the
//! entry's [`Signal`], which the session reads at the top of a pass and
//! waits on in its select (the waker stored beside the bits) whenever some
//! signal was raised since it last looked ([`raised`]): the session
//! returns at once on a kill and its socket closes, so the killed client
//! reads EOF. One signal in the entry, rather than a oneshot channel for
//! each, keeps what a waiting session polls on the cache lines it touches
//! per request anyway: with 1,000 clients, polling two separate oneshot
//! allocations cost a cache miss each per wait (perf: 1.7% of the proxy's
//! CPU in `oneshot::Receiver::poll` alone).
//!
//! The pause ([`Pause`]) is one word the sessions load (relaxed) per read;
//! only while a pause is on do they look at each request's command flags and
//! wait on its `Notify`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::command::spec::CommandSpec;

/// A poisoned lock only means a thread panicked while holding it; the data
/// is still fine to read.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Flag bits of an [`Entry`] (CLIENT LIST's `flags=`).
pub mod flag {
    /// A MONITOR (`O`).
    pub const MONITOR: u32 = 1 << 0;
    /// A subscriber (`P`, TYPE pubsub).
    pub const PUBSUB: u32 = 1 << 1;
    /// Inside MULTI (`x`).
    pub const MULTI: u32 = 1 << 2;
    /// Waiting on a blocking command, or held by a client pause (`b`).
    pub const BLOCKED: u32 = 1 << 3;
    /// CLIENT NO-EVICT on (`e`).
    pub const NO_EVICT: u32 = 1 << 4;
}

/// Bits of an entry's [`Signal`].
pub mod signal {
    /// CLIENT KILL (or the idle timeout) picked the session: it returns at once.
    pub const KILL: u8 = 1 << 0;
    /// The shutdown asks the session to drain (answer what it read, then close).
    pub const DRAIN: u8 = 1 << 1;
}

/// Signals raised so far, any session's ([`raised`]).
static RAISED: AtomicU64 = AtomicU64::new(0);

/// How many signals have been raised so far, in any session. A session
/// looks at its own signal only when this has moved since it last did (and
/// left its waker there): the entry is an allocation of its own, and with
/// 1,000 clients reading its signal on every pass was a cache miss per
/// request (`perf record -e cpu-clock`, GET -P 1 -c 1000: 1.7% of the
/// proxy's CPU on that one load). This word is read by every session and
/// written only by a raise, so it stays in every core's cache.
#[inline]
pub fn raised() -> u64 {
    RAISED.load(Ordering::Acquire)
}

/// What other tasks tell a session (see [`signal`]): the bits, and the
/// waker of the session when it waits on them. Raised rarely; read by the
/// session once per pass (one relaxed load) and polled when it waits.
#[derive(Debug, Default)]
pub struct Signal {
    bits: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    /// The bits raised so far.
    #[inline]
    pub fn bits(&self) -> u8 {
        self.bits.load(Ordering::Acquire)
    }

    /// Raises `bit` and wakes the session; returns whether it was already
    /// raised.
    pub fn raise(&self, bit: u8) -> bool {
        let was = self.bits.fetch_or(bit, Ordering::AcqRel) & bit != 0;
        RAISED.fetch_add(1, Ordering::AcqRel);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
        was
    }

    /// Ready with the raised bits among `mask`; else the task is woken by the
    /// next [`Signal::raise`].
    pub fn poll(&self, cx: &mut Context<'_>, mask: u8) -> Poll<u8> {
        let b = self.bits() & mask;
        if b != 0 {
            return Poll::Ready(b);
        }
        {
            let mut w = lock(&self.waker);
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        // Raised between the load and the registration: not missed.
        match self.bits() & mask {
            0 => Poll::Pending,
            b => Poll::Ready(b),
        }
    }
}

/// What rarely changes about a client: set by HELLO, CLIENT SETNAME /
/// SETINFO, RESET.
#[derive(Debug, Clone, Default)]
pub struct Desc {
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    /// 2 or 3.
    pub resp: u8,
    /// The user logged in as (`None`: `default`).
    pub user: Option<Bytes>,
}

/// One live session, as other sessions see it.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    /// The client socket's file descriptor (`fd=`), -1 if unknown.
    fd: AtomicI32,
    pub connected: Instant,
    /// Milliseconds after [`Registry::base`] when the client last sent something.
    last_active: AtomicU64,
    /// The spec of the last command; null before the first.
    last_cmd: AtomicPtr<CommandSpec>,
    flags: AtomicU32,
    /// Commands queued in MULTI (-1 outside one).
    multi: AtomicI64,
    /// Channels, patterns and shard channels the client holds (`sub=`,
    /// `psub=`, `ssub=`): stored by its (un)subscribe commands only.
    subs: [AtomicU32; 3],
    /// Reply bytes held for the client (`omem=`) and the part of them
    /// encoded for its socket (`obl=`), as of its last write that left
    /// some (see `session/outbuf.rs`); zero once it has none.
    output: [AtomicU64; 2],
    desc: Mutex<Desc>,
    /// Kill and drain, raised by others (see the module's doc).
    pub signal: Signal,
    base: Instant,
}

impl Entry {
    pub fn fd(&self) -> i32 {
        self.fd.load(Ordering::Relaxed)
    }

    /// CLIENT KILL picked this session.
    #[inline]
    pub fn killed(&self) -> bool {
        self.signal.bits() & signal::KILL != 0
    }

    /// Set once the session has its socket.
    pub fn set_fd(&self, fd: i32) {
        self.fd.store(fd, Ordering::Relaxed);
    }

    /// The client sent something at `now` (one relaxed store).
    #[inline]
    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.base).as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }

    /// Seconds since the client last sent something.
    pub fn idle(&self, now: Instant) -> u64 {
        let last = self.base + Duration::from_millis(self.last_active.load(Ordering::Relaxed));
        now.saturating_duration_since(last).as_secs()
    }

    /// The command the client ran last (one relaxed store, no allocation).
    #[inline]
    pub fn set_cmd(&self, spec: &'static CommandSpec) {
        self.last_cmd
            .store(spec as *const CommandSpec as *mut CommandSpec, Ordering::Relaxed);
    }

    /// The last command's name (`client|list`), `NULL` before the first as
    /// Redis writes it.
    pub fn cmd(&self) -> &'static str {
        let p = self.last_cmd.load(Ordering::Relaxed);
        // SAFETY: only `set_cmd` stores here, and only from a
        // `&'static CommandSpec`; null is checked.
        unsafe { p.as_ref() }.map_or("NULL", |s| s.name)
    }

    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    pub fn set_flag(&self, bit: u32, on: bool) {
        if on {
            self.flags.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    pub fn multi(&self) -> i64 {
        self.multi.load(Ordering::Relaxed)
    }

    pub fn set_multi(&self, queued: Option<usize>) {
        self.multi.store(queued.map_or(-1, |n| n as i64), Ordering::Relaxed);
        self.set_flag(flag::MULTI, queued.is_some());
    }

    /// The client's channels, patterns and shard channels.
    pub fn subs(&self) -> [u32; 3] {
        self.subs.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Its (un)subscribe commands changed what the client holds.
    pub fn set_subs(&self, counts: [usize; 3]) {
        for (n, c) in self.subs.iter().zip(counts) {
            n.store(c.min(u32::MAX as usize) as u32, Ordering::Relaxed);
        }
    }

    /// Reply bytes held for the client, and the part encoded for its socket.
    pub fn output(&self) -> [u64; 2] {
        self.output.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Stored only when a write leaves bytes unsent, and once more when none
    /// are left (not per request).
    pub fn set_output(&self, held: usize, encoded: usize) {
        self.output[0].store(held as u64, Ordering::Relaxed);
        self.output[1].store(encoded as u64, Ordering::Relaxed);
    }

    pub fn desc(&self) -> Desc {
        lock(&self.desc).clone()
    }

    pub fn set_desc(&self, d: Desc) {
        *lock(&self.desc) = d;
    }

    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.connected).as_secs()
    }
}

/// The live sessions of one proxy, by client id, and the client pause.
#[derive(Debug)]
pub struct Registry {
    sessions: Mutex<HashMap<u64, Arc<Entry>>>,
    pub pause: Pause,
    base: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        let base = Instant::now();
        Registry {
            sessions: Mutex::default(),
            pause: Pause::new(base),
            base,
        }
    }
}

impl Registry {
    /// A session starts: its entry.
    pub fn register(&self, id: u64, addr: String, laddr: String) -> Arc<Entry> {
        let now = Instant::now();
        let e = Arc::new(Entry {
            id,
            addr,
            laddr,
            fd: AtomicI32::new(-1),
            connected: now,
            last_active: AtomicU64::new(0),
            last_cmd: AtomicPtr::new(std::ptr::null_mut()),
            flags: AtomicU32::new(0),
            multi: AtomicI64::new(-1),
            subs: Default::default(),
            output: Default::default(),
            desc: Mutex::new(Desc {
                resp: 2,
                ..Desc::default()
            }),
            signal: Signal::default(),
            base: self.base,
        });
        e.touch(now);
        lock(&self.sessions).insert(id, e.clone());
        e
    }

    /// Raises `bit` in every live session's signal (the shutdown's DRAIN).
    pub fn raise_all(&self, bit: u8) {
        let all: Vec<Arc<Entry>> = lock(&self.sessions).values().cloned().collect();
        for e in all {
            e.signal.raise(bit);
        }
    }

    /// A session ended.
    pub fn remove(&self, id: u64) {
        lock(&self.sessions).remove(&id);
    }

    /// Every live session, in id order (CLIENT LIST).
    pub fn snapshot(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = lock(&self.sessions).values().cloned().collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// Fires the kill of every session `pick` selects, except `me` (the
    /// caller closes itself after its reply). Returns how many were picked,
    /// `me` included, and whether `me` was.
    pub fn kill(&self, me: u64, pick: impl Fn(&Entry) -> bool) -> (usize, bool) {
        // A session already killed is on its way out, not a client any
        // more: a second CLIENT KILL finds no such client even in the moment
        // before it leaves the registry.
        let picked: Vec<Arc<Entry>> = lock(&self.sessions)
            .values()
            .filter(|e| pick(e) && (e.id == me || !e.killed()))
            .cloned()
            .collect();
        let mut self_too = false;
        for e in &picked {
            if e.id == me {
                self_too = true;
            } else {
                e.signal.raise(signal::KILL);
            }
        }
        (picked.len(), self_too)
    }
}

/// CLIENT PAUSE's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PauseMode {
    /// Commands that write (or may replicate: EVAL, PUBLISH ...) wait.
    Write = 1,
    /// Every command waits.
    All = 2,
}

/// The client pause: a mode and an end, read with relaxed loads.
#[derive(Debug)]
pub struct Pause {
    /// 0: none; else a [`PauseMode`] as u8.
    mode: AtomicU8,
    /// Milliseconds after `base` when the pause ends.
    until: AtomicU64,
    base: Instant,
    /// Serialises PAUSE / UNPAUSE (rare).
    write: Mutex<()>,
    /// Woken when the pause is lifted or changed.
    pub changed: Notify,
}

impl Pause {
    fn new(base: Instant) -> Pause {
        Pause {
            mode: AtomicU8::new(0),
            until: AtomicU64::new(0),
            base,
            write: Mutex::new(()),
            changed: Notify::new(),
        }
    }

    /// The pause in force now, with its end: one relaxed load when none is.
    #[inline]
    pub fn current(&self) -> Option<(PauseMode, Instant)> {
        let mode = match self.mode.load(Ordering::Relaxed) {
            0 => return None,
            1 => PauseMode::Write,
            _ => PauseMode::All,
        };
        let end = self.base + Duration::from_millis(self.until.load(Ordering::Relaxed));
        (Instant::now() < end).then_some((mode, end))
    }

    /// CLIENT PAUSE: as Redis, the stronger mode and the later end of the
    /// pause in force and this one.
    pub fn pause(&self, mode: PauseMode, timeout: Duration) {
        let _w = lock(&self.write);
        let end = (Instant::now() + timeout)
            .saturating_duration_since(self.base)
            .as_millis() as u64;
        let (old_mode, old_end) = match self.current() {
            Some((m, _)) => (Some(m), self.until.load(Ordering::Relaxed)),
            None => (None, 0),
        };
        let mode = old_mode.map_or(mode, |m| m.max(mode));
        self.until.store(end.max(old_end), Ordering::Relaxed);
        self.mode.store(mode as u8, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// CLIENT UNPAUSE.
    pub fn unpause(&self) {
        let _w = lock(&self.write);
        self.mode.store(0, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// Whether `e` has sent nothing for `limit` seconds or more at `now`.
pub fn idle_past(e: &Entry, now: Instant, limit: u64) -> bool {
    e.idle(now) >= limit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::spec;

    #[test]
    fn entries_register_and_leave_and_kill_fires_the_others() {
        let r = Registry::default();
        let a = r.register(1, "127.0.0.1:1".into(), "127.0.0.1:9".into());
        let b = r.register(2, "127.0.0.1:2".into(), "127.0.0.1:9".into());
        assert_eq!(a.cmd(), "NULL");
        a.set_cmd(spec::lookup(b"get").unwrap());
        assert_eq!(a.cmd(), "get");
        assert_eq!((a.subs(), a.output()), ([0; 3], [0; 2]));
        a.set_subs([2, 1, 3]);
        a.set_output(10, 4);
        assert_eq!((a.subs(), a.output()), ([2, 1, 3], [10, 4]));
        assert_eq!(r.snapshot().iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(r.kill(1, |_| true), (2, true));
        assert!(b.killed());
        assert!(!a.killed(), "the caller closes itself after its reply");
        // Killed already: no longer a client for a second KILL.
        assert_eq!(r.kill(1, |e| e.id == 2), (0, false));
        r.remove(2);
        assert_eq!(r.snapshot().len(), 1);
    }

    #[test]
    fn a_signal_wakes_the_waiting_session_and_is_not_missed() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let s = Signal::default();
        assert!(s.poll(&mut cx, signal::KILL | signal::DRAIN).is_pending());
        // Polled again with the same waker: still one registration.
        assert!(s.poll(&mut cx, signal::KILL | signal::DRAIN).is_pending());
        assert!(!s.raise(signal::DRAIN));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            s.poll(&mut cx, signal::KILL | signal::DRAIN),
            Poll::Ready(signal::DRAIN)
        );
        // A session already draining waits for KILL only.
        assert!(s.poll(&mut cx, signal::KILL).is_pending());
        assert!(!s.raise(signal::KILL));
        assert!(s.raise(signal::KILL), "raised twice");
        assert_eq!(s.poll(&mut cx, signal::KILL), Poll::Ready(signal::KILL));
    }

    #[test]
    fn pause_keeps_the_stronger_mode_and_the_later_end() {
        let r = Registry::default();
        assert!(r.pause.current().is_none());
        r.pause.pause(PauseMode::All, Duration::from_secs(10));
        r.pause.pause(PauseMode::Write, Duration::from_millis(1));
        let (mode, end) = r.pause.current().unwrap();
        assert_eq!(mode, PauseMode::All);
        assert!(end > Instant::now() + Duration::from_secs(5));
        r.pause.unpause();
        assert!(r.pause.current().is_none());
    }
}

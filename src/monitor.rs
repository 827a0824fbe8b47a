//! MONITOR: the clients that watch every command through this proxy, and
//! the lines they are sent, in Redis's format
//! (`+1339518083.107412 [0 127.0.0.1:60866] "keys" "*"`).
//!
//! With no monitor connected a session pays one relaxed atomic load per
//! request ([`Monitors::any`]). With monitors, the session formats the line
//! once and hands a copy (a `Bytes`, shared) to each monitor's bounded
//! channel. A monitor that does not keep up ([`MONITOR_LINES`] lines
//! waiting) is disconnected, as Redis disconnects a client past its output
//! buffer limit; lines are never dropped silently from a stream that stays
//! open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Lines one monitor may have waiting before it is disconnected.
pub const MONITOR_LINES: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connected monitors.
#[derive(Debug, Default)]
pub struct Monitors {
    active: AtomicUsize,
    subs: Mutex<Vec<(u64, mpsc::Sender<Bytes>)>>,
}

impl Monitors {
    /// Whether any monitor is connected (one relaxed load).
    #[inline]
    pub fn any(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Client `id` becomes a monitor: its lines arrive on the receiver,
    /// which closes if it falls [`MONITOR_LINES`] behind.
    pub fn add(&self, id: u64) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(MONITOR_LINES);
        let mut subs = lock(&self.subs);
        subs.retain(|(i, _)| *i != id);
        subs.push((id, tx));
        self.active.store(subs.len(), Ordering::Relaxed);
        rx
    }

    /// Client `id` is no longer a monitor (RESET, or it left).
    pub fn remove(&self, id: u64) {
        let mut subs = lock(&self.subs);
        subs.retain(|(i, _)| *i != id);
        self.active.store(subs.len(), Ordering::Relaxed);
    }

    /// Sends a command to every monitor; one that is full is dropped (its
    /// session sees the channel close and disconnects it).
    pub fn feed(&self, client_addr: &str, args: &[&[u8]]) {
        let line = line(SystemTime::now(), client_addr, args);
        let mut subs = lock(&self.subs);
        subs.retain(|(_, tx)| tx.try_send(line.clone()).is_ok());
        self.active.store(subs.len(), Ordering::Relaxed);
    }
}

/// One monitor line, as Redis writes it: a status reply with the time,
/// database 0, the client's address and the arguments quoted. AUTH's
/// and HELLO's credentials are `(redacted)`, as Redis 7.0 does.
pub fn line(at: SystemTime, client_addr: &str, args: &[&[u8]]) -> Bytes {
    let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut out = Vec::with_capacity(48 + client_addr.len() + args.iter().map(|a| a.len() + 3).sum::<usize>());
    out.extend_from_slice(format!("+{}.{:06} [0 {}]", t.as_secs(), t.subsec_micros(), client_addr).as_bytes());
    let auth = args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"auth"));
    let hello = args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"hello"));
    let mut redact_next = 0usize;
    for (i, a) in args.iter().enumerate() {
        out.push(b' ');
        if (auth && i > 0) || redact_next > 0 {
            redact_next = redact_next.saturating_sub(1);
            out.extend_from_slice(b"\"(redacted)\"");
            continue;
        }
        if hello && a.eq_ignore_ascii_case(b"auth") {
            redact_next = 2;
        }
        repr(a, &mut out);
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Redis's `sdscatrepr`: a quoted string with `\n`, `\r`, `\t`, `\a`, `\b`,
/// `\\`, `\"` escaped and other unprintable bytes as `\xhh`.
pub fn repr(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s {
        match c {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', c]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            7 => out.extend_from_slice(b"\\a"),
            8 => out.extend_from_slice(b"\\b"),
            b' '..=b'~' => out.push(c),
            _ => out.extend_from_slice(format!("\\x{c:02x}").as_bytes()),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_in_redis_format() {
        let at = UNIX_EPOCH + Duration::from_micros(1_339_518_083_107_412);
        let l = line(at, "127.0.0.1:60866", &[b"keys", b"*"]);
        assert_eq!(&l[..], b"+1339518083.107412 [0 127.0.0.1:60866] \"keys\" \"*\"\r\n");
        let l = line(at, "a:1", &[b"set", b"k", b"a \"b\"\n\x01\\"]);
        assert_eq!(
            &l[..],
            b"+1339518083.107412 [0 a:1] \"set\" \"k\" \"a \\\"b\\\"\\n\\x01\\\\\"\r\n"
        );
        let l = line(at, "a:1", &[b"auth", b"u", b"pw"]);
        assert!(l.ends_with(b"\"auth\" \"(redacted)\" \"(redacted)\"\r\n"));
        let l = line(at, "a:1", &[b"hello", b"3", b"AUTH", b"u", b"pw", b"setname", b"n"]);
        assert!(l.ends_with(b"\"hello\" \"3\" \"AUTH\" \"(redacted)\" \"(redacted)\" \"setname\" \"n\"\r\n"));
    }

    #[test]
    fn a_monitor_that_falls_behind_is_dropped() {
        let m = Monitors::default();
        assert!(!m.any());
        let mut rx = m.add(7);
        assert!(m.any());
        for _ in 0..MONITOR_LINES {
            m.feed("a:1", &[b"ping"]);
        }
        assert!(m.any());
        m.feed("a:1", &[b"ping"]);
        assert!(!m.any(), "the full monitor is dropped");
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, MONITOR_LINES);
        assert!(rx.try_recv().is_err());
    }
}

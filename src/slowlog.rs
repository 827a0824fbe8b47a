//! The proxy's own slow log (SLOWLOG GET / LEN / RESET / HELP): requests
//! whose reply took longer than `slowlog_log_slower_than_us`, measured from
//! when the proxy read the request to when its reply was ready to write
//! (so a shard's time and the network to it are included).
//!
//! Entries have Redis's six fields (id, unix time, microseconds, arguments,
//! client address, client name), arguments truncated as Redis does
//! ([`truncate`]), plus the shard that served the request, sent only to
//! `SLOWLOG GET <count> WITHSHARD` as a seventh field so stock clients see
//! exactly Redis's format.
//!
//! The session's side (taking one `Instant` per read, not per request, and
//! checking finished requests against the threshold) is in
//! `session/timing.rs`; this file only keeps the log, behind a lock taken
//! when an entry is added or read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::protocol::Encoder;

/// Redis's `SLOWLOG_ENTRY_MAX_ARGC`.
pub const MAX_ARGS: usize = 32;
/// Redis's `SLOWLOG_ENTRY_MAX_STRING`.
pub const MAX_STRING: usize = 128;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One slow request.
#[derive(Debug, Clone)]
pub struct SlowEntry {
    pub id: u64,
    /// Unix time, seconds.
    pub time: u64,
    pub micros: u64,
    pub args: Vec<Bytes>,
    pub addr: String,
    pub name: Bytes,
    /// The shard that served it; `*` when several did, `proxy` when the
    /// proxy answered itself.
    pub shard: String,
}

/// The log and its settings.
#[derive(Debug)]
pub struct SlowLog {
    /// Microseconds; negative: off (Redis's `slowlog-log-slower-than`).
    threshold: AtomicI64,
    max_len: AtomicUsize,
    next_id: AtomicU64,
    entries: Mutex<VecDeque<SlowEntry>>,
}

impl SlowLog {
    pub fn new(threshold_us: i64, max_len: usize) -> SlowLog {
        SlowLog {
            threshold: AtomicI64::new(threshold_us),
            max_len: AtomicUsize::new(max_len),
            next_id: AtomicU64::new(0),
            entries: Mutex::default(),
        }
    }

    /// The threshold, `None` when the log is off (one relaxed load).
    #[inline]
    pub fn threshold(&self) -> Option<Duration> {
        let t = self.threshold.load(Ordering::Relaxed);
        (t >= 0).then(|| Duration::from_micros(t as u64))
    }

    /// The settings as CONFIG GET names them: `slowlog-log-slower-than`,
    /// `slowlog-max-len`.
    pub fn settings(&self) -> [(&'static str, String); 2] {
        [
            (
                "slowlog-log-slower-than",
                self.threshold.load(Ordering::Relaxed).to_string(),
            ),
            ("slowlog-max-len", self.max_len.load(Ordering::Relaxed).to_string()),
        ]
    }

    pub fn set_threshold(&self, us: i64) {
        self.threshold.store(us, Ordering::Relaxed);
    }

    pub fn set_max_len(&self, n: usize) {
        self.max_len.store(n, Ordering::Relaxed);
        let mut e = lock(&self.entries);
        e.truncate(n);
    }

    /// Logs a request that took `took`.
    pub fn add(&self, args: &[&[u8]], took: Duration, addr: &str, name: Option<&Bytes>, shard: String) {
        let max = self.max_len.load(Ordering::Relaxed);
        if max == 0 {
            return;
        }
        let entry = SlowEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            micros: took.as_micros() as u64,
            args: truncate(args),
            addr: addr.to_string(),
            name: name.cloned().unwrap_or_default(),
            shard,
        };
        let mut e = lock(&self.entries);
        e.push_front(entry);
        e.truncate(max);
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&self) {
        lock(&self.entries).clear();
    }

    /// The newest `n` entries (all when `None`), newest first.
    pub fn newest(&self, n: Option<usize>) -> Vec<SlowEntry> {
        let e = lock(&self.entries);
        e.iter().take(n.unwrap_or(usize::MAX)).cloned().collect()
    }
}

/// The arguments as Redis keeps them: at most [`MAX_ARGS`] (the last one
/// saying how many more there were), each at most [`MAX_STRING`] bytes
/// followed by how many more there were.
pub fn truncate(args: &[&[u8]]) -> Vec<Bytes> {
    let n = args.len().min(MAX_ARGS);
    let mut out = Vec::with_capacity(n);
    for (i, a) in args.iter().take(n).enumerate() {
        if i == MAX_ARGS - 1 && args.len() > MAX_ARGS {
            out.push(Bytes::from(format!(
                "... ({} more arguments)",
                args.len() - MAX_ARGS + 1
            )));
        } else if a.len() > MAX_STRING {
            let mut s = a[..MAX_STRING].to_vec();
            s.extend_from_slice(format!("... ({} more bytes)", a.len() - MAX_STRING).as_bytes());
            out.push(Bytes::from(s));
        } else {
            out.push(Bytes::copy_from_slice(a));
        }
    }
    out
}

/// SLOWLOG's subcommands (`args[0]` is SLOWLOG; arity already checked).
pub fn command(log: &SlowLog, args: &[&[u8]], enc: &mut Encoder<'_>) {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"get" => {
            let count = match args
                .get(2)
                .map(|c| std::str::from_utf8(c).ok().and_then(|s| s.parse::<i64>().ok()))
            {
                None => Some(10),
                Some(Some(-1)) => None,
                Some(Some(c)) if c >= 0 => Some(c as usize),
                Some(_) => return enc.error("ERR count should be greater than or equal to -1"),
            };
            let with_shard = match args.get(3) {
                None => false,
                Some(w) if w.eq_ignore_ascii_case(b"withshard") && args.len() == 4 => true,
                Some(_) => return enc.error("ERR syntax error"),
            };
            let entries = log.newest(count);
            enc.array(entries.len());
            for e in entries {
                enc.array(if with_shard { 7 } else { 6 });
                enc.integer(e.id as i64);
                enc.integer(e.time as i64);
                enc.integer(e.micros as i64);
                enc.array(e.args.len());
                for a in &e.args {
                    enc.bulk(a);
                }
                enc.bulk(e.addr.as_bytes());
                enc.bulk(&e.name);
                if with_shard {
                    enc.bulk(e.shard.as_bytes());
                }
            }
        }
        b"len" => enc.integer(log.len() as i64),
        b"reset" => {
            log.reset();
            enc.ok();
        }
        _ => {
            let lines = [
                "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET [<count> [WITHSHARD]]",
                "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                "    Entries are made of:",
                "    id, timestamp, time in microseconds, arguments array, client IP and port,",
                "    client name (and, with WITHSHARD, the shard that served the request).",
                "    shardis: the proxy's own log: time from reading the request to its reply.",
                "LEN",
                "    Return the length of the slowlog.",
                "RESET",
                "    Reset the slowlog.",
                "HELP",
                "    Prints this help.",
            ];
            enc.help(&lines);
        }
    }
}

/// `CONFIG SET` of the slow log's parameters also sets the proxy's own:
/// each `slowlog-log-slower-than` / `slowlog-max-len` pair with a value
/// Redis accepts (the shards get the same CONFIG SET). CONFIG GET of them
/// answers the proxy's values ([`SlowLog::settings`]).
pub fn config_set(log: &SlowLog, args: &[&[u8]]) {
    for pair in args.get(2..).unwrap_or_default().chunks(2) {
        let [k, v] = pair else { continue };
        let Some(v) = std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        if k.eq_ignore_ascii_case(b"slowlog-log-slower-than") && v >= -1 {
            log.set_threshold(v);
        } else if k.eq_ignore_ascii_case(b"slowlog-max-len") && v >= 0 {
            log.set_max_len(v as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_truncated_as_redis_does() {
        let long = vec![b'x'; 200];
        let t = truncate(&[b"set", b"k", &long]);
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].len(), 128 + "... (72 more bytes)".len());
        assert!(t[2].ends_with(b"x... (72 more bytes)"));
        let many: Vec<&[u8]> = (0..40).map(|_| &b"a"[..]).collect();
        let t = truncate(&many);
        assert_eq!(t.len(), 32);
        assert_eq!(&t[31][..], b"... (9 more arguments)");
        assert_eq!(&t[30][..], b"a");
        let exact: Vec<&[u8]> = (0..32).map(|_| &b"a"[..]).collect();
        assert_eq!(truncate(&exact).last().map(|b| &b[..]), Some(&b"a"[..]));
    }

    #[test]
    fn the_log_keeps_the_newest_max_len() {
        let log = SlowLog::new(0, 2);
        for i in 0..3u8 {
            log.add(
                &[b"get", &[b'a' + i]],
                Duration::from_micros(5),
                "a:1",
                None,
                "s0".into(),
            );
        }
        assert_eq!(log.len(), 2);
        let e = log.newest(None);
        assert_eq!((e[0].id, e[1].id), (2, 1));
        assert_eq!(&e[0].args[1][..], b"c");
        config_set(
            &log,
            &[
                b"config",
                b"set",
                b"slowlog-max-len",
                b"1",
                b"slowlog-log-slower-than",
                b"-1",
            ],
        );
        assert_eq!(log.len(), 1);
        assert_eq!(log.threshold(), None);
        log.reset();
        assert!(log.is_empty());
    }
}

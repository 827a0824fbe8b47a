//! Hot-path counters for `/metrics` ([`crate::admin`]): fixed arrays of
//! relaxed atomics, one block per worker group, so the request path only
//! ever does an uncontended `fetch_add` on its own thread's cache lines: no
//! lock, no allocation, no map lookup. The admin endpoint sums the blocks at
//! scrape time.
//!
//! - [`CommandCounters`]: calls and proxy-made errors per command (indexed
//!   by the command id of [`crate::command::ids`], [`command_index`]), latency per
//!   command class, fan-outs and refusals. One per proxy, in
//!   [`crate::state::Shared`].
//! - [`ShardCounters`]: requests, error replies, failures, round-trip
//!   latency, live connections and reconnects of one shard's pool. One per
//!   [`crate::backend::Shard`].

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::command::ids;
use crate::command::spec::{CommandSpec, F_ADMIN, F_READONLY, F_WRITE};

/// Latency is timed on one read in this many (per session, per backend
/// connection), every request of a timed read counted: a clock read and a
/// duration cost more than all the counting, and a uniform sample keeps
/// the histograms' quantiles and mean. `_count` is then about 1/8 of the
/// requests; `commands_total` and `shard_requests_total` count them all.
pub const TIME_ONE_IN: u32 = 8;

/// Upper bounds of the latency buckets, in microseconds (the last bucket,
/// +Inf, is implicit).
pub const BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// A latency histogram: per-bucket (not cumulative) counts and the sum.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts `n` observations of `us` microseconds.
    #[inline]
    pub fn observe(&self, us: u64, n: u64) {
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_us.fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    /// Adds this histogram into `into` (a snapshot).
    pub fn add_to(&self, into: &mut HistogramSnapshot) {
        for (d, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *d += b.load(Ordering::Relaxed);
        }
        into.sum_us += self.sum_us.load(Ordering::Relaxed);
    }
}

/// A histogram read at one moment (summed over the groups).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound (µs) of the bucket holding quantile `q` of the
    /// observations, or `None` with none; the +Inf bucket reports the
    /// largest finite bound.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BUCKETS_US.get(i).copied().unwrap_or(BUCKETS_US[BUCKETS_US.len() - 1]));
            }
        }
        BUCKETS_US.last().copied()
    }

    /// The observations since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut d = HistogramSnapshot::default();
        for (i, b) in d.buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }
}

/// Command classes, from the table's flags: latency is kept per class.
pub const CLASSES: [&str; 4] = ["read", "write", "admin", "other"];

/// The class of a command (an index into [`CLASSES`]).
#[inline]
pub fn class_of(spec: Option<&CommandSpec>) -> usize {
    match spec {
        Some(s) if s.flags & F_ADMIN != 0 => 2,
        Some(s) if s.flags & F_WRITE != 0 => 1,
        Some(s) if s.flags & F_READONLY != 0 => 0,
        _ => 3,
    }
}

/// The label of each command slot: the command ids of [`ids`] (every
/// command and subcommand of the table, CLIENT SETINFO, the proxy's own
/// commands), then "unknown".
fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = vec!["unknown"; ids::count() + 1];
        ids::each(|i, spec, _| names[i] = spec.name);
        names
    })
}

/// How many command slots the counters have: one per command id, and
/// "unknown" last.
pub fn command_slots() -> usize {
    ids::count() + 1
}

/// The label of command slot `i` (`get`, `config|set`, `unknown`).
pub fn command_name(i: usize) -> &'static str {
    names().get(i).copied().unwrap_or("unknown")
}

/// The slot of a command: its id ([`ids::of_spec`], from the spec's
/// address, no name lookup); unknown names share the last slot.
#[inline]
pub fn command_index(spec: Option<&CommandSpec>) -> usize {
    spec.and_then(ids::of_spec).unwrap_or(ids::count())
}

/// One worker group's command counters.
#[derive(Debug)]
#[repr(align(128))]
struct CommandGroup {
    calls: Box<[AtomicU64]>,
    errors: Box<[AtomicU64]>,
    classes: [Histogram; CLASSES.len()],
    split: AtomicU64,
    broadcast: AtomicU64,
    refused_cross_shard: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Per-command counters of one proxy (see the module doc).
#[derive(Debug)]
pub struct CommandCounters {
    groups: Box<[CommandGroup]>,
}

/// Totals over the groups, for a scrape.
#[derive(Debug, Default)]
pub struct CommandSnapshot {
    pub calls: Vec<u64>,
    pub errors: Vec<u64>,
    pub classes: [HistogramSnapshot; CLASSES.len()],
    pub split: u64,
    pub broadcast: u64,
    pub refused_cross_shard: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn zeroes(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl CommandCounters {
    /// Counters for `groups` worker groups.
    pub fn new(groups: usize) -> CommandCounters {
        let n = command_slots();
        CommandCounters {
            groups: (0..groups.max(1))
                .map(|_| CommandGroup {
                    calls: zeroes(n),
                    errors: zeroes(n),
                    classes: Default::default(),
                    split: AtomicU64::new(0),
                    broadcast: AtomicU64::new(0),
                    refused_cross_shard: AtomicU64::new(0),
                    bytes_in: AtomicU64::new(0),
                    bytes_out: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// `g` is a worker's index, always in range: a compare, not the
    /// division `%` costs on every request.
    #[inline]
    fn group(&self, g: usize) -> &CommandGroup {
        self.groups.get(g).unwrap_or(&self.groups[0])
    }

    /// A request of command slot `cmd` was read (on group `g`).
    #[inline]
    pub fn call(&self, g: usize, cmd: usize) {
        if let Some(c) = self.group(g).calls.get(cmd) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The proxy answered a request of slot `cmd` with an error itself.
    #[inline]
    pub fn error(&self, g: usize, cmd: usize) {
        if let Some(c) = self.group(g).errors.get(cmd) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` requests of class `class` took `us` from read to reply written.
    #[inline]
    pub fn latency(&self, g: usize, class: usize, us: u64, n: u64) {
        if let Some(h) = self.group(g).classes.get(class) {
            h.observe(us, n);
        }
    }

    /// A request split over several shards (multi-key) or sent to all.
    #[inline]
    pub fn fanout(&self, g: usize, broadcast: bool) {
        let grp = self.group(g);
        let c = if broadcast { &grp.broadcast } else { &grp.split };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused because its keys are on several shards.
    #[inline]
    pub fn refused_cross_shard(&self, g: usize) {
        self.group(g).refused_cross_shard.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read from clients and written to them.
    #[inline]
    pub fn bytes(&self, g: usize, read: u64, written: u64) {
        let grp = self.group(g);
        if read > 0 {
            grp.bytes_in.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            grp.bytes_out.fetch_add(written, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> CommandSnapshot {
        let n = command_slots();
        let mut s = CommandSnapshot {
            calls: vec![0; n],
            errors: vec![0; n],
            ..Default::default()
        };
        for g in self.groups.iter() {
            for (d, c) in s.calls.iter_mut().zip(g.calls.iter()) {
                *d += c.load(Ordering::Relaxed);
            }
            for (d, c) in s.errors.iter_mut().zip(g.errors.iter()) {
                *d += c.load(Ordering::Relaxed);
            }
            for (d, h) in s.classes.iter_mut().zip(&g.classes) {
                h.add_to(d);
            }
            s.split += g.split.load(Ordering::Relaxed);
            s.broadcast += g.broadcast.load(Ordering::Relaxed);
            s.refused_cross_shard += g.refused_cross_shard.load(Ordering::Relaxed);
            s.bytes_in += g.bytes_in.load(Ordering::Relaxed);
            s.bytes_out += g.bytes_out.load(Ordering::Relaxed);
        }
        s
    }
}

/// One worker group's counters for one shard.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardGroup {
    pub requests: AtomicU64,
    /// Error replies from the server (`-ERR ...`).
    pub error_replies: AtomicU64,
    /// Requests failed by the proxy (connection down or lost, timeout).
    pub failures: AtomicU64,
    /// Connections up now.
    pub live: AtomicI64,
    /// Connections re-established after a failure.
    pub reconnects: AtomicU64,
    /// Connect attempts that failed, and connections lost.
    pub connection_failures: AtomicU64,
    /// Backend round trip: written to reply read.
    pub latency: Histogram,
}

/// Counters of one shard's pool (see the module doc).
#[derive(Debug)]
pub struct ShardCounters {
    groups: Box<[ShardGroup]>,
}

/// Totals over the groups, for a scrape.
#[derive(Debug, Default, Clone)]
pub struct ShardSnapshot {
    pub requests: u64,
    pub error_replies: u64,
    pub failures: u64,
    pub live: i64,
    pub reconnects: u64,
    pub connection_failures: u64,
    pub latency: HistogramSnapshot,
}

impl ShardCounters {
    pub fn new(groups: usize) -> ShardCounters {
        ShardCounters {
            groups: (0..groups.max(1)).map(|_| ShardGroup::default()).collect(),
        }
    }

    /// Group `g`'s counters (the connection tasks of that worker).
    #[inline]
    pub fn group(&self, g: usize) -> &ShardGroup {
        self.groups.get(g).unwrap_or(&self.groups[0])
    }

    pub fn snapshot(&self) -> ShardSnapshot {
        let mut s = ShardSnapshot::default();
        for g in self.groups.iter() {
            s.requests += g.requests.load(Ordering::Relaxed);
            s.error_replies += g.error_replies.load(Ordering::Relaxed);
            s.failures += g.failures.load(Ordering::Relaxed);
            s.live += g.live.load(Ordering::Relaxed);
            s.reconnects += g.reconnects.load(Ordering::Relaxed);
            s.connection_failures += g.connection_failures.load(Ordering::Relaxed);
            g.latency.add_to(&mut s.latency);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::spec::lookup_argv;

    #[test]
    fn every_command_has_its_own_slot() {
        let get = lookup_argv(&[b"get"]);
        assert_eq!(command_name(command_index(get)), "get");
        let cs = lookup_argv(&[b"config", b"set"]);
        assert_eq!(command_name(command_index(cs)), "config|set");
        assert_eq!(command_name(command_index(None)), "unknown");
        let setinfo = crate::command::lookup(&[b"client", b"setinfo", b"lib-name", b"x"]).map(|l| l.spec);
        assert_eq!(command_name(command_index(setinfo.ok())), "client|setinfo");
        ids::each(|i, spec, _| {
            assert_eq!(command_index(Some(spec)), i);
            assert_eq!(command_name(i), spec.name);
        });
        assert_eq!(command_slots(), ids::count() + 1);
    }

    #[test]
    fn histogram_quantiles_name_the_bucket_bound() {
        let h = Histogram::default();
        h.observe(80, 98);
        h.observe(3_000, 2);
        let mut s = HistogramSnapshot::default();
        h.add_to(&mut s);
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile_us(0.5), Some(100));
        assert_eq!(s.quantile_us(0.99), Some(5_000));
        assert_eq!(HistogramSnapshot::default().quantile_us(0.99), None);
        assert_eq!(class_of(lookup_argv(&[b"get"])), 0);
        assert_eq!(class_of(lookup_argv(&[b"set"])), 1);
    }
}

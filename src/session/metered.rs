//! The session's counts for `/metrics` (see [`crate::counters`]): calls and
//! proxy-made errors per command, fan-outs, cross-shard refusals, and
//! latency per command class.
//!
//! Cost per request: two relaxed `fetch_add`s on this worker's own lines
//! (calls; errors only when refused) and a local increment. Latency reuses
//! the per-read `Instant` the session already takes (`read_at`): one read
//! in [`TIME_ONE_IN`] leaves a mark (its last reply's seq and how many
//! requests of each class it had), and after a write the marks whose
//! replies are all written are timed with one more clock read, so every
//! request of a timed read counts the time from that read to the write that
//! finished the read's replies. Other reads cost no clock read.

use std::collections::VecDeque;
use std::time::Instant;

use super::Session;
use crate::counters::{CLASSES, TIME_ONE_IN, class_of, command_index};
use crate::error::{ErrorKind, ReplyError};

/// Most reads waiting for their replies that are kept for timing; older
/// ones are dropped (a client pipelining without reading).
const MAX_MARKS: usize = 256;

/// A session's metering state.
#[derive(Debug, Default)]
pub(super) struct Metered {
    /// The worker group the session runs on (it never changes thread).
    pub(super) group: usize,
    /// Requests of each class in the current read.
    classes: [u32; CLASSES.len()],
    /// Reads so far (one in [`TIME_ONE_IN`] is timed).
    reads: u32,
    /// Per read not fully answered: the seq after its last request, when it
    /// was read, its requests per class.
    marks: VecDeque<(u64, Instant, [u32; CLASSES.len()])>,
}

impl Metered {
    pub(super) fn new(group: usize) -> Metered {
        Metered {
            group,
            ..Metered::default()
        }
    }
}

impl Session {
    /// A request just read (the router has looked its command up).
    #[inline]
    pub(super) fn meter_call(&mut self) {
        let spec = self.router.spec;
        self.shared.counters.call(self.metered.group, command_index(spec));
        self.metered.classes[class_of(spec)] += 1;
    }

    /// The proxy refuses the current request with `e`.
    pub(super) fn meter_error(&self, e: &ReplyError) {
        let g = self.metered.group;
        self.shared.counters.error(g, command_index(self.router.spec));
        if e.kind() == ErrorKind::CrossShard {
            self.shared.counters.refused_cross_shard(g);
        }
    }

    /// The current request goes to several shards (`broadcast`: to all).
    #[inline]
    pub(super) fn meter_fanout(&self, broadcast: bool) {
        self.shared.counters.fanout(self.metered.group, broadcast);
    }

    /// The end of a read that had `n` requests.
    pub(super) fn meter_read(&mut self, n: u64) {
        self.shared.stats.commands.add(n);
        let m = &mut self.metered;
        let timed = m.reads % TIME_ONE_IN == 0;
        m.reads = m.reads.wrapping_add(1);
        if !timed || m.classes == [0; CLASSES.len()] {
            m.classes = [0; CLASSES.len()];
            return;
        }
        if m.marks.len() >= MAX_MARKS {
            m.marks.pop_front();
        }
        m.marks.push_back((self.replies.next_seq(), self.read_at, m.classes));
        m.classes = [0; CLASSES.len()];
    }

    /// After replies were written: times the reads now fully answered.
    pub(super) fn meter_written(&mut self) {
        let done = self.replies.head_seq();
        let m = &mut self.metered;
        if m.marks.front().is_none_or(|(end, _, _)| *end > done) {
            return;
        }
        let now = Instant::now();
        while let Some(&(end, at, classes)) = m.marks.front() {
            if end > done {
                break;
            }
            m.marks.pop_front();
            let us = now.saturating_duration_since(at).as_micros() as u64;
            for (class, &n) in classes.iter().enumerate() {
                if n > 0 {
                    self.shared.counters.latency(m.group, class, us, n as u64);
                }
            }
        }
    }
}

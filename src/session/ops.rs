//! The session's part in the operator's commands: keeping its registry entry
//! current (last command, idle time, flags), feeding monitors, CLIENT REPLY
//! muting, holding requests during a CLIENT PAUSE, and timing requests for
//! the slow log.
//!
//! Per read the session takes one `Instant` and loads the pause and the
//! slow log threshold (relaxed); per request it stores the command's spec
//! into its entry, loads the monitor count, and, while the slow log is on,
//! queues the request's seq, that instant and its bytes (a reference-counted
//! `Bytes`, no copy) until its reply is written. Nothing here locks or
//! allocates per request unless a monitor is connected or a request is slow.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::Session;
use super::replies::At;
use crate::client::ReplyMode;
use crate::command::spec::{F_ADMIN, F_MAY_REPLICATE, F_SKIP_MONITOR, F_SKIP_SLOWLOG, F_WRITE};
use crate::command::{self, Local};
use crate::error::ReplyError;
use crate::merge::Merge;
use crate::protocol::{Request, RequestParser};
use crate::registry::{PauseMode, flag};
use crate::router::Plan;
use crate::state::Shared;
use crate::topology::Topology;

/// Who served a request, for the slow log.
#[derive(Debug, Clone, Copy)]
pub(super) enum Served {
    Shard(usize),
    /// Several shards (a split, a broadcast, the lock group).
    Many,
    /// The proxy itself.
    Proxy,
}

impl Served {
    /// Who serves `plan`; `None` for plans not timed (a blocking command
    /// waits by design; a subscriber has no reply of its own; a refused
    /// request did not run).
    pub(super) fn of(plan: &Plan, parts: &[(usize, Bytes)]) -> Option<Served> {
        Some(match plan {
            Plan::Forward(s) => Served::Shard(*s),
            Plan::Split { .. } if parts.len() == 1 => Served::Shard(parts[0].0),
            Plan::CrossShard(p) if p.blocks() => return None,
            Plan::CrossShard(_) => Served::Many,
            Plan::Split { .. }
            | Plan::Broadcast { .. }
            | Plan::Lock(_)
            | Plan::Park(_)
            | Plan::ReadThrough { .. }
            | Plan::Hold
            | Plan::Tx(_) => Served::Many,
            // Refused: not run, so not logged (as Redis logs only what it ran).
            Plan::Local(Local::Monitor)
            | Plan::Block(_)
            | Plan::SpanPop(_)
            | Plan::Subscribe
            | Plan::ShardSub { .. }
            | Plan::Error(_) => {
                return None;
            }
            Plan::Local(_) | Plan::Admin(_) => Served::Proxy,
        })
    }

    fn name(self, topo: &Topology) -> String {
        match self {
            Served::Shard(i) => topo.names.get(i).map_or_else(|| "-".to_string(), |n| n.to_string()),
            Served::Many => "*".to_string(),
            Served::Proxy => "proxy".to_string(),
        }
    }
}

/// A request whose reply is not written yet, for the slow log.
pub(super) struct Timing {
    seq: u64,
    start: Instant,
    raw: Bytes,
    served: Served,
}

/// The requests waiting for their reply, for the slow log, oldest first:
/// the oldest inline, the rest in a queue. A client that sends one request
/// at a time (most) never touches the queue's heap buffer, which with
/// 1,000 clients was a cache miss per request: `perf record -e cpu-clock`,
/// GET -P 1 -c 1000, put 1.18% of the proxy's CPU in `check_slow`, 81% of
/// it on the two loads from that buffer.
/// The rest is boxed, made by the first client that pipelines: every
/// session's size is what an idle client costs.
#[derive(Default)]
pub(super) struct Timings {
    /// The oldest; `None` only when `rest` is empty too.
    first: Option<Timing>,
    // Boxed on purpose: 8 bytes in every session instead of 32.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Timing>>>,
}

impl Timings {
    fn push_back(&mut self, t: Timing) {
        if self.first.is_none() {
            self.first = Some(t);
        } else {
            self.rest.get_or_insert_default().push_back(t);
        }
    }

    fn front(&self) -> Option<&Timing> {
        self.first.as_ref()
    }

    fn pop_front(&mut self) -> Option<Timing> {
        let t = self.first.take();
        self.first = self.rest.as_mut().and_then(|r| r.pop_front());
        t
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// How stale the registry entry's last-heard time may be (CLIENT LIST's
/// `idle=`, in seconds, and the idle `timeout`): the session writes it
/// when it has moved on by this much, not on every read. The entry is
/// another allocation per client, and that write was a cache miss per
/// request with 1,000 clients (perf, GET -P 1 -c 1000: 61% of
/// `parse_and_dispatch`'s samples, 1.1% of the proxy's CPU, on it).
pub(super) const TOUCH_EVERY: Duration = Duration::from_millis(100);

impl Session {
    /// Once per read: when the client was heard from, and the pause and
    /// slow log settings for the requests of this read.
    pub(super) fn ops_read(&mut self) -> Option<(PauseMode, Instant)> {
        let now = Instant::now();
        self.read_at = now;
        if now.saturating_duration_since(self.touched) >= TOUCH_EVERY {
            self.touched = now;
            self.state.entry.touch(now);
        }
        self.slow = self.shared.slowlog.threshold();
        self.shared.clients.pause.current()
    }

    /// Before a request just read is executed: its command into the
    /// registry entry, a line for the monitors, and whether its reply is
    /// muted (CLIENT REPLY).
    pub(super) fn ops_before(&mut self, args: &[&[u8]]) {
        if let Some(spec) = self.router.spec {
            // Written when it changes: the entry's line stays out of the
            // cache of a client repeating one command (see TOUCH_EVERY).
            if !self.last_cmd.is_some_and(|c| std::ptr::eq(c, spec)) {
                self.last_cmd = Some(spec);
                self.state.entry.set_cmd(spec);
            }
            if self.shared.monitors.any() && spec.flags & (F_SKIP_MONITOR | F_ADMIN) == 0 {
                self.shared.monitors.feed(&self.state.addr, args);
            }
        }
        if self.state.reply != ReplyMode::On {
            let reply_on = self.router.spec.is_some_and(|s| s.name == "client|reply")
                && args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"on"));
            self.replies.muted = !reply_on;
            if self.state.reply == ReplyMode::SkipNext {
                self.state.reply = ReplyMode::On;
            }
        }
    }

    /// After a request just read was executed: it took slot `seq` if the
    /// replies have a new one; else it was answered at once.
    pub(super) fn ops_after(&mut self, req: &Request, args: &[&[u8]], seq: u64, served: Option<Served>) {
        self.replies.muted = false;
        let (Some(threshold), Some(served)) = (self.slow, served) else {
            return;
        };
        if self.router.spec.is_some_and(|s| s.flags & F_SKIP_SLOWLOG != 0) {
            return;
        }
        if self.replies.next_seq() > seq {
            self.timings.push_back(Timing {
                seq,
                start: self.read_at,
                raw: req.raw.clone(),
                served,
            });
        } else if threshold.is_zero() {
            let topo = self.shared.topology.load();
            self.log_slow(args, self.read_at.elapsed(), served.name(&topo));
        }
    }

    /// After replies were written: logs the finished requests that took at
    /// least the threshold.
    pub(super) fn check_slow(&mut self) {
        let done = self.replies.head_seq();
        if self.timings.front().is_none_or(|t| t.seq >= done) {
            return;
        }
        let now = Instant::now();
        // A request is slow when it started at or before `cutoff`: one
        // comparison per request, the duration computed only for the slow
        // ones (it was 37 instructions per request, bench/callgrind.sh).
        // `None`: the log is off, or the threshold reaches back before the
        // clock's start (nothing can be that slow).
        let cutoff = self.shared.slowlog.threshold().and_then(|th| now.checked_sub(th));
        while let Some(t) = self.timings.front() {
            if t.seq >= done {
                break;
            }
            let Some(t) = self.timings.pop_front() else { break };
            if cutoff.is_some_and(|c| t.start <= c) {
                let took = now.saturating_duration_since(t.start);
                let name = t.served.name(&self.shared.topology.load());
                let mut buf = BytesMut::from(&t.raw[..]);
                let limits = self.shared.topology.load().config.parser_limits();
                if let Ok(Some(req)) = RequestParser::new(limits).parse(&mut buf) {
                    let args = req.arg_list();
                    self.log_slow(&args, took, name);
                }
            }
        }
    }

    fn log_slow(&self, args: &[&[u8]], took: Duration, shard: String) {
        let name = self.state.name.as_ref();
        self.shared.slowlog.add(args, took, &self.state.addr, name, shard);
    }

    /// Whether a client pause in `mode` holds this request: every request
    /// under ALL; under WRITE, those that write or may replicate (EVAL,
    /// PUBLISH ...) and EXEC, as Redis 7.0 holds them.
    pub(super) fn pause_holds(mode: PauseMode, req: &Request) -> bool {
        if mode == PauseMode::All {
            return true;
        }
        let args = req.arg_list();
        command::lookup(&args).is_ok_and(|l| l.spec.flags & (F_WRITE | F_MAY_REPLICATE) != 0 || l.spec.name == "exec")
    }

    /// A request read during a pause waits here; the client is read no
    /// further, as Redis blocks a paused client.
    pub(super) fn hold_paused(&mut self, req: Request) {
        self.state.entry.set_flag(flag::BLOCKED, true);
        self.held = Some(Box::new(req));
    }

    /// The pause is over: the held request runs, then what followed it.
    pub(super) fn release_held(&mut self, rbuf: &mut BytesMut) {
        let Some(req) = self.held.take() else { return };
        self.state.entry.set_flag(flag::BLOCKED, false);
        let topo = self.shared.topology.load();
        self.dispatch(&topo, *req, At::Next, false);
        drop(topo);
        self.parse_and_dispatch(rbuf);
    }

    /// Writes monitor lines; false when the monitor was dropped for falling
    /// behind (`line` is `None`), and must be disconnected.
    /// Counted as closed past the normal class's output buffer limit: the
    /// lines it had not taken are its output buffer.
    pub(super) fn monitor_write(&mut self, line: Option<Bytes>) -> bool {
        let Some(line) = line else {
            self.shared.limits.output_closed(crate::limits::Class::Normal);
            tracing::warn!(
                client = self.state.id,
                addr = %self.state.addr,
                lines = crate::monitor::MONITOR_LINES,
                "MONITOR closed for falling behind (lines waiting past the limit)"
            );
            return false;
        };
        self.replies.out.extend_from_slice(&line);
        while let Some(Ok(l)) = self.monitor.as_mut().map(|rx| rx.try_recv()) {
            self.replies.out.extend_from_slice(&l);
        }
        true
    }

    /// A broadcast CONFIG SET: the proxy's slow log and output buffer
    /// limits follow it as the shards' do; CONFIG GET answers the proxy's
    /// own settings. A CONFIG SET of only `client-output-buffer-limit` is
    /// the proxy's alone: answered here into slot `at` and not sent to the
    /// shards (`None`), where it would limit the proxy's own connections.
    pub(super) fn config_hook(&mut self, args: &[&[u8]], mut merge: Merge, at: At) -> Option<Merge> {
        if self.router.spec.is_some_and(|s| s.name == "config|set") {
            crate::slowlog::config_set(&self.shared.slowlog, args);
            let pairs = args.get(2..).unwrap_or_default();
            let mut ours = 0;
            let mut failed = None;
            for pair in pairs.chunks(2) {
                let [k, v] = pair else { continue };
                if k.eq_ignore_ascii_case(b"client-output-buffer-limit") {
                    ours += 1;
                    if let Err(e) = self.shared.limits.output.config_set(&String::from_utf8_lossy(v)) {
                        failed = Some(e);
                    }
                }
            }
            if ours > 0 && ours * 2 == pairs.len() {
                let reply = match failed {
                    None => Ok(()),
                    Some(e) => Err(ReplyError::err(format!(
                        "CONFIG SET failed (possibly related to argument 'client-output-buffer-limit') - {e}"
                    ))),
                };
                let proto = self.state.proto;
                self.replies.reply_with(at, proto, |enc| match reply {
                    Ok(()) => enc.ok(),
                    Err(e) => e.encode(enc),
                });
                return None;
            }
        }
        if let Merge::ConfigGet { own } = &mut merge {
            own.extend(self.shared.slowlog.settings());
            own.push(("client-output-buffer-limit", self.shared.limits.output.config_value()));
        }
        Some(merge)
    }

    /// The connection becomes a monitor (after MONITOR's OK).
    pub(super) fn start_monitor(&mut self) {
        self.monitor = Some(self.shared.monitors.add(self.state.id));
        self.state.entry.set_flag(flag::MONITOR, true);
    }

    /// RESET: no longer a monitor.
    pub(super) fn stop_monitor(&mut self) {
        if self.monitor.take().is_some() {
            self.shared.monitors.remove(self.state.id);
            self.state.entry.set_flag(flag::MONITOR, false);
        }
    }
}

/// Resolves when no client pause is in force; never while `holding` is
/// false.
pub(super) async fn pause_over(shared: &Shared, holding: bool) {
    if !holding {
        return std::future::pending().await;
    }
    let p = &shared.clients.pause;
    loop {
        let changed = p.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match p.current() {
            None => return,
            Some((_, end)) => {
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(end.into()) => {}
                }
            }
        }
    }
}

/// The next monitor lines; never resolves when the session is no monitor.
/// `None`: the monitor fell behind and was dropped.
pub(super) async fn monitor_line(rx: &mut Option<tokio::sync::mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Drop for Session {
    /// A client that leaves while blocked is no longer counted as blocked
    /// (INFO clients); it leaves the registry (CLIENT LIST) and the monitors.
    fn drop(&mut self) {
        if self.blocked.is_some() && !self.blocked_uncounted {
            self.shared.stats.blocked.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.clients.remove(self.state.id);
        if self.monitor.is_some() {
            self.shared.monitors.remove(self.state.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(seq: u64) -> Timing {
        Timing {
            seq,
            start: Instant::now(),
            raw: Bytes::new(),
            served: Served::Proxy,
        }
    }

    #[test]
    fn timings_come_out_oldest_first_across_the_inline_slot_and_the_queue() {
        let mut t = Timings::default();
        assert!(t.is_empty() && t.front().is_none() && t.pop_front().is_none());
        for seq in 0..3 {
            t.push_back(timing(seq));
        }
        assert_eq!(t.front().map(|x| x.seq), Some(0));
        assert_eq!(t.pop_front().map(|x| x.seq), Some(0));
        // Pushed while the queue still holds older ones: behind them.
        t.push_back(timing(3));
        let order: Vec<u64> = std::iter::from_fn(|| t.pop_front().map(|x| x.seq)).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!(t.is_empty());
        // Empty again: the next one goes inline.
        t.push_back(timing(4));
        assert_eq!(t.front().map(|x| x.seq), Some(4));
        assert!(t.rest.as_ref().is_some_and(|r| r.is_empty()));
    }
}

//! A session's side of a cross-shard command ([`crate::xshard`]): its reply
//! slot, holding the client's later requests back until it answers, and the
//! task that runs it.

use std::sync::atomic::Ordering;

use super::Session;
use super::replies::{At, Slot};
use crate::registry::flag;
use crate::xshard::CrossPlan;

impl Session {
    /// Runs `plan` on a task of its own; its answer comes back as a
    /// completion into slot `at`. Later requests of this client wait (as
    /// behind a blocking command), so none overtakes it; only BLMOVE and
    /// BRPOPLPUSH count as blocked (INFO, CLIENT LIST).
    pub(super) fn cross_shard(&mut self, plan: Box<CrossPlan>, at: At) {
        let behind = !self.replies.is_empty();
        let seq = self.replies.put(at, Slot::One(None));
        self.blocked = Some(seq);
        if plan.blocks() {
            self.state.entry.set_flag(flag::BLOCKED, true);
            self.shared.stats.blocked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.blocked_uncounted = true;
        }
        let reply = self.reply_to(seq, 0);
        let topo = self.shared.topology.load_full();
        crate::xshard::spawn(topo, plan, self.state.proto, self.lane, behind, reply);
    }
}

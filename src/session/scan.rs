//! SCAN's walk within one call: when a shard's iteration ends before COUNT
//! keys were found, the same call goes on into the next shard (the walk
//! itself, pure, is [`crate::merge::scan`]).

use super::Session;
use super::replies::Slot;
use crate::backend::Completion;
use crate::merge::Merge;
use crate::protocol::reply;

impl Session {
    /// A shard answered a SCAN: takes its page and, when the call goes on,
    /// sends SCAN to the next shard into the same slot. True when the
    /// completion was used up that way (the slot still waits).
    pub(super) fn scan_step(&mut self, c: &Completion) -> bool {
        let Some(Slot::Many {
            merge: Merge::Scan(walk),
            ..
        }) = self.replies.get_mut(c.seq)
        else {
            return false;
        };
        let Ok(frame) = &c.result else { return false };
        if reply::is_error(frame) {
            return false;
        }
        let topo = self.shared.topology.load();
        // A reload that changed the number of shards ends the call where it
        // is: the cursor would not name the same shards any more.
        let same_shards = topo.shards.len() == walk.shards;
        let Some((shard, req)) = walk.take(frame, same_shards) else {
            return false;
        };
        self.send(&topo, shard, req, c.seq, 0);
        true
    }
}

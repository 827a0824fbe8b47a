//! SCAN through the proxy: the call starts on the shard the cursor names
//! (its low bits, see [`crate::merge::scan`]) and may go on into the next
//! shards within the same call; the session drives the walk.

use bytes::Bytes;

use super::{Plan, View};
use crate::error::ReplyError;
use crate::merge::{self, Merge, ScanWalk};

pub(super) fn scan(view: &View<'_>, args: &[&[u8]], parts: &mut Vec<(usize, Bytes)>) -> Plan {
    let cursor = std::str::from_utf8(args[1]).ok().and_then(|s| s.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        return Plan::Error(ReplyError::err("invalid cursor"));
    };
    let (shard, backend_cursor) = merge::split_scan_cursor(cursor);
    if shard >= view.names.len() {
        return Plan::Error(ReplyError::err("invalid cursor"));
    }
    // Lock keys live on every lock group member: SCAN lists them only from
    // the first member of the group.
    let reporter = view
        .locks
        .current
        .first()
        .and_then(|m| view.names.iter().position(|n| n == m));
    let lock_keys = view.locks.enabled().then(|| (view.locks.listed_once(), reporter));
    let walk = ScanWalk::new(args, shard, view.names.len(), lock_keys);
    parts.clear();
    parts.push((shard, walk.request(backend_cursor)));
    Plan::Split {
        merge: Merge::Scan(Box::new(walk)),
    }
}

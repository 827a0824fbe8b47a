//! SCAN through the proxy: one shard per call, the shard's index kept in
//! the low bits of the cursor the client sees (see [`crate::merge`]).

use bytes::Bytes;
use smallvec::SmallVec;

use super::{Plan, View};
use crate::error::ReplyError;
use crate::merge::{self, Merge};
use crate::protocol::Request;

pub(super) fn scan(view: &View<'_>, args: &[&[u8]], parts: &mut Vec<(usize, Bytes)>) -> Plan {
    let cursor = std::str::from_utf8(args[1]).ok().and_then(|s| s.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        return Plan::Error(ReplyError::err("invalid cursor"));
    };
    let (shard, backend_cursor) = merge::split_scan_cursor(cursor);
    if shard >= view.names.len() {
        return Plan::Error(ReplyError::err("invalid cursor"));
    }
    let mut cursor = itoa::Buffer::new();
    let mut sub: SmallVec<[&[u8]; 8]> = args.iter().copied().collect();
    sub[1] = cursor.format(backend_cursor).as_bytes();
    // Lock keys live on every lock group member: SCAN lists them only from
    // the first member of the group.
    let reporter = view
        .locks
        .current
        .first()
        .and_then(|m| view.names.iter().position(|n| n == m));
    let drop_lock_keys = view.locks.enabled() && reporter != Some(shard);
    parts.clear();
    parts.push((shard, Request::from_args(&sub).raw));
    Plan::Split {
        merge: Merge::Scan {
            shard,
            shards: view.names.len(),
            drop_lock_keys: drop_lock_keys.then(|| view.locks.listed_once()),
        },
    }
}

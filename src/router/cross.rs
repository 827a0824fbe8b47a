//! Keys of one command on several shards: run across them
//! ([`Plan::CrossShard`], see [`crate::xshard`]) when the command can be and
//! `[crossshard] commands` is on, else CROSSSHARD.

use super::{Plan, View};
use crate::command::spec::CommandSpec;
use crate::error::{ErrorKind, ReplyError};

/// Off the hot path: only requests that would be refused get here. `keys`:
/// the argument indices of the keys; `keys_ok`: they were all found (if
/// not, as for a bad numkeys, CROSSSHARD as before).
#[cold]
pub(super) fn cross_shard(view: &View<'_>, spec: &CommandSpec, args: &[&[u8]], keys: &[usize], keys_ok: bool) -> Plan {
    if keys_ok
        && view.config.crossshard.commands
        && let Some(p) = crate::xshard::plan::decide(spec.name, args, keys, |k| view.shard_of(k))
    {
        return Plan::CrossShard(Box::new(p));
    }
    Plan::Error(ReplyError::new(
        ErrorKind::CrossShard,
        "keys in request don't hash to the same shard",
    ))
}

//! Transactions and blocking pops whose keys live on several shards, behind
//! `[crossshard] transactions = "per-shard"` and `blocking = "all-shards"`
//! (both off by default: the CROSSSHARD error names the setting).
//!
//! - [`tx`]: a MULTI/EXEC over several shards (pure): the queued commands
//!   split into one MULTI/…/EXEC part per shard, ordered by each part's
//!   first command; the parts' EXEC replies put back in command order; the
//!   error that says which parts were applied when a shard fails mid-way.
//! - [`pops`]: BLPOP/BRPOP/BLMPOP/BZPOPMIN/BZPOPMAX/BZMPOP over several
//!   shards (pure): the command's keys and timeout, the per-shard commands,
//!   and the command that gives an element popped too many back.
//! - [`run`]: the tasks that carry both out against the shards (the
//!   session starts them, `session/spanning.rs`).
//!
//! What is atomic: each shard's part of a transaction (one MULTI/EXEC on
//! that shard), not the whole; a reader may see the first shard's writes
//! before the next shard's. A blocking pop delivers at most one element (or
//! one BLMPOP batch) and gives back any other shard's pop (LPUSH/RPUSH to the
//! same end, ZADD with its score): a reader may see that element missing for
//! the moment it is away.

pub mod pops;
pub mod run;
pub mod tx;

use crate::config::{Config, SpanMode};
use crate::error::{ErrorKind, ReplyError};

/// Whether transactions may span shards under `config`.
pub fn transactions_on(config: &Config) -> bool {
    config.crossshard.transactions == SpanMode::PerShard
}

/// Whether blocking pops may span shards under `config`.
pub fn blocking_on(config: &Config) -> bool {
    config.crossshard.blocking == SpanMode::AllShards
}

/// The refusal of a transaction whose keys are on several shards, with the
/// setting that would run it.
pub fn tx_refused() -> ReplyError {
    ReplyError::new(
        ErrorKind::CrossShard,
        "keys in transaction on several shards (set crossshard.transactions = \"per-shard\" to run it)",
    )
}

/// The refusal of a blocking pop whose keys are on several shards, with the
/// setting that would run it.
pub fn blocking_refused() -> ReplyError {
    ReplyError::new(
        ErrorKind::CrossShard,
        "keys of a blocking pop on several shards (set crossshard.blocking = \"all-shards\" to run it)",
    )
}

/// A command inside a cross-shard transaction must still have its own keys
/// on one shard: each shard's part is sent as it was queued.
pub fn command_spans() -> ReplyError {
    ReplyError::new(
        ErrorKind::CrossShard,
        "keys of one command in a transaction don't hash to the same shard (each command's keys must share a shard)",
    )
}

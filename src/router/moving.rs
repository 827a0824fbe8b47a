//! During a migration or a prepared change: which keys of a request must
//! move first ([`moves`]), whether a prepared change holds one ([`held`]),
//! and whether a read can be read through its old owner instead
//! ([`read_through`]).

use bytes::Bytes;

use super::{Move, Moves, View};
use crate::command::Route;
use crate::command::spec::CommandSpec;

/// The keys among `keys` that may still be on an old owner while a
/// migration runs (none without one), once each; lock keys never move.
pub fn moves(view: &View<'_>, keys: impl Iterator<Item = Bytes>) -> Moves {
    let mut moves = Moves::new();
    let Some(m) = view.migration else { return moves };
    for key in keys {
        if view.locks.is_lock_key(&key) {
            continue; // lock keys live on the lock group, not the ring
        }
        let owner = view.shard_of(&key);
        if let Some(from) = m.source_of(&key, &view.names[owner])
            && !moves.iter().any(|mv| mv.key == key)
        {
            moves.push(Move { from, key, to: owner });
        }
    }
    moves
}

/// Whether a request whose keys must move (`moves`) can be read through its
/// old owner instead ([`super::Plan::ReadThrough`]): a plain keyed command flagged
/// read-only, on exactly one key, that is not a script (a script's NOSCRIPT
/// recovery needs the forward path), does not block and may run inside
/// MULTI. Writes keep moving the key first: the read-through is only sound
/// because every write to a moving key moves it off the old owner before it
/// runs.
pub(super) fn read_through(spec: &CommandSpec, route: Route, keys: usize, moves: &Moves) -> bool {
    use crate::command::spec::{F_BLOCKING, F_NO_MULTI, F_NOSCRIPT, F_READONLY};
    route == Route::Keyed
        && keys == 1
        && moves.len() == 1
        && spec.flags & F_READONLY != 0
        && spec.flags & (F_NOSCRIPT | F_BLOCKING | F_NO_MULTI) == 0
}

/// True when a prepared change moves one of `keys` (lock keys never move).
pub fn held(view: &View<'_>, mut keys: impl Iterator<Item = Bytes>) -> bool {
    let Some(h) = view.hold else { return false };
    keys.any(|k| !view.locks.is_lock_key(&k) && h.holds(&k, &view.names[view.shard_of(&k)]))
}

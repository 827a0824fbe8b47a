//! What a request waiting for its keys to move holds (see [`super::parking`]).

use bytes::Bytes;
use smallvec::SmallVec;

use crate::error::ReplyError;
use crate::protocol::Request;
use crate::transaction::Exec;

/// A request parked until its keys have moved (see [`Slot::Migrating`]).
pub(super) struct Parked {
    /// What runs once the keys have moved.
    pub(super) then: Then,
    /// Per part: the key's old shard index and the key.
    pub(super) moves: SmallVec<[(usize, Bytes); 4]>,
    pub(super) left: usize,
    /// Why a key could not be moved: the request is then answered with it.
    pub(super) failed: Option<ReplyError>,
    /// Held by a prepared change rather than waiting for keys to move:
    /// when the hold ends it is routed again from scratch.
    pub(super) held: bool,
}

/// What a parked request is.
pub(super) enum Then {
    /// A request, routed again into its slot.
    Dispatch(Request),
    /// A transaction's EXEC, sent to its shard.
    Exec(Exec),
}

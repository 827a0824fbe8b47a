//! Redlock across shards: keys in the lock namespace live on every member of
//! the lock group, and every command on them answers by majority.
//!
//! Data, below the topology (a topology carries a [`group::LockGroup`]):
//! - [`glob`]: which keys are lock keys (`[redlock] keys`).
//! - [`quorum`]: the arithmetic (quorum, validity, majority replies).
//! - [`group`]: the lock group carried by each topology, and its changes.
//! - [`classify`]: how a command on a lock key is served ([`classify::Op`]).
//! - [`service`]: state shared by all sessions (counters, fencing high-water
//!   mark, grants, script cache).
//!
//! Actors, above the topology:
//! - [`members`]: a request's members, and which of them may vote.
//! - [`worker`]: the per-session worker that runs lock operations against
//!   the members.
//!
//! A session hands its lock requests to one worker task of its own, which
//! runs them one after another. That keeps a client's lock commands in order
//! (a release never overtakes the acquisition before it) and lets an
//! acquisition's follow-up work (fencing write-back, release after a failed
//! attempt) be queued on the member connections before the client sees the
//! reply. The worker talks to members through the ordinary shard pools, on
//! the session's lane, so a cleanup is always queued behind the request it
//! cleans up after on the same connection.
//!
//! Fencing: every member keeps a counter under [`FENCE_KEY`]. The acquisition
//! script returns it with the grant; the proxy takes the maximum over the
//! granting members (and its own high-water mark), adds one, and writes the
//! new value back to every member, needing a majority of acknowledgements
//! within the validity window before it replies. The next successful
//! acquisition of any lock needs a majority that overlaps that one, so it
//! reads a larger counter: tokens strictly increase as long as no majority
//! of members loses its data between two acquisitions.

pub mod classify;
pub mod glob;
pub mod group;
pub mod members;
pub mod quorum;
pub mod service;
pub mod worker;

pub use glob::Namespace;
pub use group::FENCE_KEY;

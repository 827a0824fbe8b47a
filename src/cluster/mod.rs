//! A fleet of proxies sharing one topology through etcd (`[cluster]`).
//!
//! - [`phase`]: the records and the phase machine, pure (prepare → every
//!   proxy acknowledges → commit → migrate → stable, or abort).
//! - [`store`]: the records in etcd (layout, compare-and-swap, leases, the
//!   migrator election).
//! - [`agent`]: one proxy following the fleet: join, hold and acknowledge,
//!   switch epochs, and when elected coordinate and migrate.
//! - [`fence`]: per-proxy ACL users, disabled on eviction.
//! - [`ctl`]: `shardis ctl apply | status | evict`.
//! - `view`: what the agent saw, published for the admin endpoint.
//!
//! The safety argument (docs/fleet.md): once any key of a slot has moved,
//! no proxy may write that slot's keys to the old owner. A change commits
//! only after every registered proxy holds the moving slots and has drained
//! what it sent before; a proxy that does not acknowledge blocks the change
//! (it is aborted at the ack timeout) until an operator evicts it, which
//! fences it at the shards first when fencing is on.

pub mod agent;
pub mod ctl;
pub mod fence;
pub mod phase;
pub mod store;
mod view;

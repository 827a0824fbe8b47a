//! shardis: a Redis-protocol sharding proxy.
//!
//! Clients speak Redis (RESP2 or RESP3) to shardis as if it were one server;
//! shardis spreads keys over many Redis shards and merges multi-key commands.
//!
//! # Map of the crate
//! A request flows top to bottom:
//! - [`server`]: the listener, client limit, SIGHUP reload.
//! - [`workers`]: thread-per-core worker runtimes; each has its own sessions
//!   and its own backend connections.
//! - [`session`]: one client connection: parse, dispatch, replies in order.
//! - [`protocol`]: client request parser (hand-written, with limits), backend
//!   reply framing, reply encoding for RESP2/RESP3.
//! - [`command`]: the Redis 7.0 command table (generated), key extraction from
//!   key specs, and the routing policy ([`command::Route`]).
//! - [`local`]: commands the proxy answers itself (HELLO, CLIENT, COMMAND, INFO ...).
//! - [`lock`]: Redlock for keys in the lock namespace: quorum, validity,
//!   fencing tokens, majority answers, lock-group changes.
//! - [`merge`]: combining the replies of fanned-out requests.
//! - [`transaction`]: MULTI/EXEC when every key is on one shard.
//! - [`topology`]: ring + backend pools + epoch, swapped atomically (`ArcSwap`).
//! - [`migration`]: after a ring change, moving keys to their new owners
//!   (background walk + on-demand moves by the sessions).
//! - [`ring`]: hash tags, xxh3, the weighted-rendezvous slot table.
//! - [`backend`]: per-shard pipelined connections, timeouts, reconnects.
//! - [`config`]: `proxy.toml` schema and validation.
//!
//! With the cargo feature `testing`, `testing` starts shardis and N Redis
//! shards in Docker containers for your own tests (see docs/containers.md).

pub mod backend;
pub mod command;
pub mod config;
pub mod local;
pub mod lock;
pub mod merge;
pub mod migration;
pub mod protocol;
pub mod ring;
pub mod server;
pub mod session;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod testkit;
pub mod topology;
pub mod transaction;
pub mod workers;

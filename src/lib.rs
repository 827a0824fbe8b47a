//! shardis: a Redis-protocol sharding proxy.
//!
//! Clients speak Redis (RESP2 or RESP3) to shardis as if it were one server;
//! shardis spreads keys over many Redis shards and merges multi-key commands.
//!
//! # Map of the crate
//! In dependency order: each module uses only those listed before it (the
//! generated command table aside). docs/architecture.md follows a request
//! and a reload through these files.
//! - [`error`]: typed errors: reply errors with a kind, backend errors.
//! - [`notify`]: waiting on a tokio `Notify` for a condition without
//!   missing a wake-up (a leaf).
//! - [`protocol`]: client request parser (hand-written, with limits), backend
//!   reply framing, reply encoding for RESP2/RESP3.
//! - [`command`]: the Redis 7.0 command table (generated), key extraction from
//!   key specs, each command's [`command::Route`] and id ([`command::ids`]).
//! - [`acl`]: users and permissions in Redis ACL syntax (`[[users]]`): the
//!   rule parser, a permission bitset per user, key patterns (with the glob
//!   matcher of [`lock::glob`], a leaf), the failed-login limit.
//! - [`tls`]: rustls configurations read from the certificate, key and CA
//!   files (errors name the file), and the stream trait sessions and
//!   backend connections are generic over (plain TCP or TLS).
//! - [`config`]: `proxy.toml` schema and validation (compiles the users,
//!   reads the TLS files; parses output buffer limits with
//!   [`limits::output`], a leaf).
//! - [`limits`]: limits that hold under attack: output buffer limits per
//!   client class, connections per source address, `max_clients` per user;
//!   their live values and counters.
//! - [`ring`]: hash tags, xxh3, the weighted-rendezvous slot table.
//! - [`workers`]: thread-per-core worker runtimes.
//! - [`counters`]: the `/metrics` counters the hot path bumps: per-command
//!   and per-shard arrays of relaxed atomics, one block per worker.
//! - [`shutdown`]: the graceful-shutdown signal, its hooks, SIGTERM/SIGINT.
//! - [`backend`]: per-shard pipelined connections, timeouts, reconnects; the
//!   one way to call a backend; the master's address followed through
//!   Sentinel, the ROLE check, reads on replicas; a session's inbox of
//!   completions ([`backend::inbox`]).
//! - [`lock`] (data): the lock group, lock-key classification, quorum
//!   arithmetic, the lock service's shared state.
//! - [`migration`]: the plan of a key move after a ring change (data), the
//!   migrator that carries it out ([`migration::mover`]), and reads of moving
//!   keys where they are ([`migration::read`]).
//! - [`hold`]: the slots a prepared fleet change moves, and the requests
//!   held on them.
//! - [`topology`]: ring + backend pools + lock group + epoch (+ a hold),
//!   swapped atomically (`ArcSwap`).
//! - [`registry`]: the live sessions (CLIENT LIST / KILL), each with the
//!   signal its session waits on (kill, drain), and the client pause.
//! - [`monitor`]: the connected MONITORs and their lines.
//! - [`slowlog`]: the proxy's SLOWLOG.
//! - [`state`]: what every session shares: the topology cell, lock service,
//!   counters, the registry, monitors and slow log.
//! - [`lock`] (actors): [`lock::members`] and the per-session
//!   [`lock::worker`] that runs Redlock against the members.
//! - [`failover`]: the per-proxy task that follows Sentinel failovers
//!   (`+switch-master` and a periodic re-ask) and checks replicas' lag.
//! - [`xshard`]: multi-key commands whose keys are on several shards, run
//!   across them (operands copied to one shard; two-shard moves as sagas).
//! - [`info`]: INFO's sections, the proxy's own and those summed over the shards.
//! - [`merge`]: combining the replies of fanned-out requests.
//! - [`transaction`]: MULTI/EXEC when every key is on one shard.
//! - [`spanning`]: transactions and blocking pops over several shards
//!   (`[crossshard] transactions`, `blocking`): the pure split, reassembly
//!   and give-back, and the tasks that run them against the shards.
//! - [`client`]: one connection's state (protocol, name, authentication, its user).
//! - [`router`]: the pure routing decision: request + topology + client
//!   state -> a [`router::Plan`], with no I/O.
//! - [`local`]: commands the proxy answers itself (HELLO, CLIENT, COMMAND, INFO ...).
//! - [`control`]: configuration reloads (SIGHUP, `SHARDIS.RELOAD`), starting
//!   the migrator.
//! - [`cluster`]: a fleet of proxies sharing one topology in etcd: the
//!   phase machine, the per-proxy agent, fencing, `shardis ctl`.
//! - [`session`]: one client connection: parse, route, execute the plan,
//!   replies in order.
//! - [`admin`]: the admin HTTP endpoint (`[admin] listen`): `/metrics`,
//!   `/healthz`, `/readyz`, `/api/status` and the status page.
//! - [`server`]: the listener (`SO_REUSEPORT`), client limit, and the
//!   drain at shutdown.
//!
//! With the cargo feature `testing`: [`testing`] starts shardis and N Redis
//! shards in Docker containers for your own tests (see docs/containers.md),
//! and [`testkit`] starts `redis-server` processes on free ports and waits on
//! conditions (the project's own tests and benches use it).

pub mod acl;
pub mod admin;
pub mod backend;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod control;
pub mod counters;
pub mod error;
pub mod failover;
pub mod hold;
pub mod info;
pub mod limits;
pub mod local;
pub mod lock;
pub mod merge;
pub mod migration;
pub mod monitor;
pub mod notify;
pub mod protocol;
pub mod registry;
pub mod ring;
pub mod router;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod slowlog;
pub mod spanning;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod testkit;
pub mod tls;
pub mod topology;
pub mod transaction;
pub mod workers;
pub mod xshard;

//! Integration tests: real `redis-server` shards, shardis in front, real
//! clients. One test binary (one link step) with a module per concern.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod basic;
mod blocking;
mod clients;
mod differential;
mod failures;
mod floods;
mod functions;
mod info;
mod limits;
mod locks;
mod migration;
mod migration_pace;
mod migration_reads;
mod ops;
mod protocol;
mod pubsub;
mod reload;
mod scan;
mod sharded_pubsub;
mod shutdown;
mod spanning;
mod spanning_pops;
mod subscriber;
mod transactions;
mod users;
mod xshard;
mod xshard_moves;

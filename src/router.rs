//! The routing decision: given the topology, the client's state and a parsed
//! request, what to do with it ([`Plan`]). Pure: no I/O, no locks, no shared
//! state touched; the session executes the plan.
//!
//! Everything about where a request goes is decided here, once: the command
//! table's route, authentication, transaction steps, lock keys (detected
//! here and nowhere else), requests that must wait for their keys to move
//! during a migration, cross-shard refusals, the split of multi-key commands
//! and how their replies merge. The user's permissions ([`crate::acl`]) are
//! checked right after authentication. [`steps`]: transaction steps and
//! `SHARDIS.*` with the legacy admin gate.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::command::spec::CommandSpec;
use crate::command::{self, Broadcast, Fanout, Local, Lookup, Route, TxCommand, keys::key_indices};
use crate::config::Config;
use crate::error::{ErrorKind, ReplyError};
use crate::hold::Hold;
use crate::lock::classify::{self, Op};
use crate::lock::group::LockGroup;
use crate::merge::{Merge, MgetParts};
use crate::migration::Migration;
use crate::protocol::Request;
use crate::protocol::request::{put_bulk, put_header};
use crate::ring::Ring;
use crate::topology::Topology;

/// The shard every pub/sub message goes through: the first backend.
pub const PUBSUB_SHARD: usize = 0;

/// What the router reads of a topology.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub ring: &'a Ring,
    /// Shard names in ring order.
    pub names: &'a [Arc<str>],
    pub locks: &'a LockGroup,
    /// The migration still moving keys, if any.
    pub migration: Option<&'a Migration>,
    /// A prepared change holding the keys it moves (fleet mode), if any.
    pub hold: Option<&'a Hold>,
    pub config: &'a Config,
}

impl<'a> View<'a> {
    pub fn of(topo: &'a Topology) -> View<'a> {
        View {
            ring: &topo.ring,
            names: &topo.names,
            locks: &topo.locks,
            migration: topo.active_migration(),
            hold: topo.hold.as_deref(),
            config: &topo.config,
        }
    }

    #[inline]
    fn shard_of(&self, key: &[u8]) -> usize {
        self.ring.shard_of(key)
    }
}

/// What the router reads of the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx<'a> {
    pub authenticated: bool,
    /// Passes the legacy admin gate: gave `SHARDIS.ADMIN` the admin
    /// password, or is a configured user (its permissions decide).
    pub admin: bool,
    /// The user's permissions, when some command or key is not allowed
    /// (see [`crate::acl`]).
    pub perms: Option<&'a crate::acl::Perms>,
    /// Inside MULTI: commands are queued.
    pub in_tx: bool,
    /// Earlier requests of this client wait for a migration: a keyed request
    /// waits behind them, so none overtakes an earlier one on the same key.
    pub parked: bool,
    /// This request waited for its keys to move and they have: it goes to
    /// its shard now (it is neither queued nor parked again).
    pub released: bool,
    /// This request was held by a prepared change and is routed again: it
    /// came before any transaction the client opened since, so it is not
    /// queued into it.
    pub rerouted: bool,
}

/// A key to move before a request runs, during a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The old owner's index in the migration's old topology.
    pub from: usize,
    pub key: Bytes,
    /// The new owner's index in the current topology.
    pub to: usize,
}

/// Keys to move; allocated only during a migration, for the requests that
/// wait.
pub type Moves = Vec<Move>;

/// What to do with a request. Small (it is returned for every request): the
/// sub-requests of a split are left in the [`Router`] ([`Router::parts`]), a
/// lock operation is boxed.
#[derive(Debug)]
pub enum Plan {
    /// Send the request as it is to this shard.
    Forward(usize),
    /// A blocking command: send it to this shard on a connection of its own;
    /// the client is served nothing more until it answers.
    Block(usize),
    /// A blocking pop whose keys are on several shards, with
    /// `crossshard.blocking = "all-shards"`: wait on each (see
    /// [`crate::spanning`]).
    SpanPop(crate::spanning::pops::Cmd),
    /// SUBSCRIBE / PSUBSCRIBE: the connection becomes a subscriber.
    Subscribe,
    /// SSUBSCRIBE (`subscribe`) / SUNSUBSCRIBE: one part per channel
    /// ([`Router::parts`]: its shard, and the command for that channel).
    ShardSub { subscribe: bool },
    /// Send each part ([`Router::parts`]: shard and sub-request, in part
    /// order) and merge the replies. SCAN is one part: the shard the cursor
    /// names, with the backend's cursor.
    Split { merge: Merge },
    /// Send the request to every shard and merge the replies; `script` is a
    /// script body the proxy keeps for NOSCRIPT recovery (SCRIPT LOAD).
    Broadcast { merge: Merge, script: Option<Bytes> },
    /// A command on lock keys, for the lock worker.
    Lock(Box<LockPlan>),
    /// Answered by the proxy ([`crate::local`]).
    Local(Local),
    /// A transaction step.
    Tx(TxStep),
    /// One of the proxy's admin commands.
    Admin(Admin),
    /// During a migration: move these keys first, then route the request
    /// again (released).
    Park(Moves),
    /// During a migration, a read-only command on one key (argument `key`)
    /// whose old owner is shard `from` of the migration's old topology: read
    /// it there if the key is still there, else on its new owner (see
    /// [`crate::migration::read`]). Nothing is moved.
    ReadThrough { from: usize, key: usize },
    /// A prepared change moves one of its keys (fleet mode): wait until the
    /// change is committed or aborted, then route the request again.
    Hold,
    /// Keys on several shards, of a command that runs across them
    /// (`[crossshard] commands`): for [`crate::xshard::spawn`].
    CrossShard(Box<crate::xshard::CrossPlan>),
    /// Answer with this error.
    Error(ReplyError),
}

/// A command on lock keys: the operation, and (EVAL) a script body the
/// proxy keeps for NOSCRIPT recovery.
#[derive(Debug)]
pub struct LockPlan {
    pub op: Op,
    pub script: Option<Bytes>,
}

#[derive(Debug)]
pub enum TxStep {
    Multi,
    Exec,
    Discard,
    /// Queue the request; these are its keys.
    Queue(Vec<Bytes>),
    /// PUBLISH (or, `sharded`, SPUBLISH): sent once EXEC has committed.
    Publish {
        sharded: bool,
    },
    /// Refuse the request and make EXEC answer EXECABORT.
    Refuse(ReplyError),
    /// WATCH: these keys, all on this shard.
    Watch {
        shard: usize,
        keys: Vec<Bytes>,
    },
    /// UNWATCH outside MULTI.
    Unwatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// The admin password was right: this connection may use admin commands
    /// (unless its IP is over the failed-login limit).
    Login,
    /// The admin password was wrong: counted as a failed login.
    BadPassword,
    /// Re-read the configuration file.
    Reload { force: bool },
}

/// The routing decision, with reusable buffers so routing a request
/// allocates nothing beyond its sub-requests.
#[derive(Debug, Default)]
pub struct Router {
    keys: Vec<usize>,
    /// The parts of the last [`Plan::Split`]: (shard, sub-request).
    pub parts: Vec<(usize, Bytes)>,
    /// The command of the last request routed, if it was found (CLIENT
    /// LIST's `cmd=`, MONITOR and SLOWLOG read its flags).
    pub spec: Option<&'static CommandSpec>,
}

impl Router {
    /// Decides what to do with `req` (whose arguments are `args`).
    pub fn route(&mut self, view: &View<'_>, ctx: Ctx, req: &Request, args: &[&[u8]]) -> Plan {
        self.spec = None;
        let lookup @ Lookup { spec, route, .. } = match command::lookup(args) {
            Ok(l) => {
                self.spec = Some(l.spec);
                l
            }
            // Unknown, wrong arity: not queued, and EXEC answers EXECABORT.
            Err(e) if ctx.in_tx => {
                return Plan::Tx(TxStep::Refuse(if command::is_proxy_command(args[0]) {
                    proxy_in_multi()
                } else {
                    e
                }));
            }
            Err(e) => return Plan::Error(e),
        };
        if !ctx.authenticated && !matches!(route, Route::Local(Local::Auth | Local::Hello | Local::Quit)) {
            return Plan::Error(ReplyError::new(ErrorKind::NoAuth, "Authentication required."));
        }
        if let Some(perms) = ctx.perms {
            if let Err(e) = crate::acl::check(perms, spec, lookup.id(), args, &mut self.keys) {
                // Inside MULTI, as Redis: not queued, and EXEC answers EXECABORT.
                return if ctx.in_tx {
                    Plan::Tx(TxStep::Refuse(e))
                } else {
                    Plan::Error(e)
                };
            }
        }
        // Inside MULTI everything but MULTI/EXEC/DISCARD/WATCH is queued (or
        // refused); UNWATCH is queued, as Redis does.
        if ctx.in_tx
            && !ctx.released
            && !ctx.rerouted
            && !matches!(
                route,
                Route::Transaction(TxCommand::Multi | TxCommand::Exec | TxCommand::Discard | TxCommand::Watch)
            )
        {
            return self.queue(view, spec, route, req, args);
        }
        if !ctx.released && (view.migration.is_some() || view.hold.is_some() || ctx.parked) {
            match route {
                Route::Keyed | Route::Blocking | Route::Fanout(_) => {
                    self.keys.clear();
                    let _ = key_indices(spec, args, &mut self.keys);
                    if held(view, self.keys.iter().filter_map(|&i| req.arg_bytes(i))) {
                        return Plan::Hold;
                    }
                    let moves = moves(view, self.keys.iter().filter_map(|&i| req.arg_bytes(i)));
                    if !ctx.parked && read_through(spec, route, self.keys.len(), &moves) {
                        return Plan::ReadThrough {
                            from: moves[0].from,
                            key: self.keys[0],
                        };
                    }
                    if !moves.is_empty() || ctx.parked {
                        return Plan::Park(moves);
                    }
                }
                Route::Broadcast(_) if view.migration.is_some() && spec.name.starts_with("flush") => {
                    return Plan::Error(ReplyError::err(
                        "shardis: keys are moving between shards (INFO migration); FLUSHALL/FLUSHDB would miss the keys not moved yet, retry when it is done",
                    ));
                }
                _ => {}
            }
        }
        match route {
            Route::Keyed => self.keyed(view, spec, req, args, Plan::Forward),
            Route::Blocking => self.keyed(view, spec, req, args, Plan::Block),
            Route::PubSub => Plan::Forward(PUBSUB_SHARD),
            Route::Subscribe => Plan::Subscribe,
            Route::ShardPubSub(kind) => pubsub::sharded(view, kind, req, args, &mut self.parts),
            Route::Fanout(kind) => fanout(view, kind, req, args, &mut self.parts),
            Route::Broadcast(kind) => broadcast(view, ctx, kind, spec, args, &mut self.parts),
            Route::Local(_) if gated(view, ctx) && command::admin_only(spec.name) => {
                Plan::Error(command::needs_admin(spec.name))
            }
            Route::Local(cmd) => Plan::Local(cmd),
            Route::Transaction(TxCommand::Watch) if !ctx.in_tx => self.watch(view, req, args),
            Route::Transaction(step) => transaction_step(step, ctx),
            Route::Proxy(cmd) => proxy(view, ctx, cmd, args),
            Route::Refuse(r) => Plan::Error(r.error(spec.name)),
        }
    }

    /// A command sent to the shard of its keys (`to` picks how).
    fn keyed(
        &mut self,
        view: &View<'_>,
        spec: &CommandSpec,
        req: &Request,
        args: &[&[u8]],
        to: fn(usize) -> Plan,
    ) -> Plan {
        self.keys.clear();
        // An `Err` means Redis itself would refuse the arguments (bad
        // numkeys, unbalanced lists) or, for scripts, that there are no
        // keys: route by what was found (no key: the first shard) and let
        // the backend give Redis's own answer.
        let keys_ok = key_indices(spec, args, &mut self.keys).is_ok();
        if view.locks.enabled() {
            let lock_keys = self.keys.iter().filter(|&&i| view.locks.is_lock_key(args[i])).count();
            if lock_keys > 0 {
                return lock_command(spec.name, args, req, lock_keys == self.keys.len());
            }
        }
        let mut shard = None;
        for &i in &self.keys {
            let s = view.shard_of(args[i]);
            match shard {
                None => shard = Some(s),
                Some(prev) if prev != s => {
                    if let Some(pop) = crate::spanning::pops::Cmd::of(spec.name) {
                        return match crate::spanning::blocking_on(view.config) {
                            true => Plan::SpanPop(pop),
                            false => Plan::Error(crate::spanning::blocking_refused()),
                        };
                    }
                    return cross::cross_shard(view, spec, args, &self.keys, keys_ok);
                }
                _ => {}
            }
        }
        to(shard.unwrap_or(0))
    }

    /// WATCH outside MULTI: every key on one shard (not lock keys).
    fn watch(&mut self, view: &View<'_>, req: &Request, args: &[&[u8]]) -> Plan {
        let keys = &args[1..];
        if view.locks.enabled() && keys.iter().any(|k| view.locks.is_lock_key(k)) {
            return Plan::Error(ReplyError::err("shardis: lock keys (redlock.keys) cannot be watched"));
        }
        let mut shards = keys.iter().map(|k| view.shard_of(k));
        let shard = shards.next().unwrap_or(0);
        if shards.any(|s| s != shard) {
            return Plan::Error(ReplyError::new(
                ErrorKind::CrossShard,
                "watched keys don't hash to the same shard",
            ));
        }
        Plan::Tx(TxStep::Watch {
            shard,
            keys: (1..args.len()).filter_map(|i| req.arg_bytes(i)).collect(),
        })
    }

    /// A command inside MULTI: checked, then queued.
    fn queue(&mut self, view: &View<'_>, spec: &CommandSpec, route: Route, req: &Request, args: &[&[u8]]) -> Plan {
        if let Some(plan) = pubsub::in_multi(spec, route) {
            return plan;
        }
        // Blocking commands do not block inside MULTI (Redis runs them once).
        if !matches!(route, Route::Keyed | Route::Blocking | Route::Fanout(_))
            && !matches!(spec.name, "ping" | "echo" | "unwatch")
        {
            return Plan::Tx(TxStep::Refuse(match route {
                Route::Refuse(r) => r.error(spec.name),
                Route::Proxy(_) => proxy_in_multi(),
                _ => ReplyError::err(format!(
                    "shardis: '{}' cannot be used inside MULTI: a transaction runs on one shard",
                    spec.name.replace('|', " ")
                )),
            }));
        }
        self.keys.clear();
        let _ = key_indices(spec, args, &mut self.keys);
        if view.locks.enabled() && self.keys.iter().any(|&i| view.locks.is_lock_key(args[i])) {
            return Plan::Tx(TxStep::Refuse(ReplyError::err(
                "shardis: lock keys (redlock.keys) cannot be used inside MULTI",
            )));
        }
        Plan::Tx(TxStep::Queue(
            self.keys.iter().filter_map(|&i| req.arg_bytes(i)).collect(),
        ))
    }
}

/// A command on lock keys: for the lock worker when every key is a lock
/// key, refused when it mixes them with other keys.
fn lock_command(name: &str, args: &[&[u8]], req: &Request, all_lock_keys: bool) -> Plan {
    if !all_lock_keys {
        return Plan::Error(ReplyError::err(
            "shardis: lock keys (redlock.keys) cannot be combined with other keys in one command",
        ));
    }
    match classify::classify(name, args) {
        Ok(op) => {
            let script = matches!(name, "eval" | "eval_ro").then(|| req.arg_bytes(1)).flatten();
            Plan::Lock(Box::new(LockPlan { op, script }))
        }
        Err(e) => Plan::Error(e),
    }
}

/// MGET, MSET, DEL/UNLINK/EXISTS/TOUCH: split by shard.
fn fanout(view: &View<'_>, kind: Fanout, req: &Request, args: &[&[u8]], parts: &mut Vec<(usize, Bytes)>) -> Plan {
    let step = if kind == Fanout::Mset { 2 } else { 1 };
    if kind == Fanout::Mset && (args.len() - 1) % 2 != 0 {
        return Plan::Error(ReplyError::wrong_arity("mset"));
    }
    let n_keys = (args.len() - 1) / step;
    if view.locks.enabled() {
        let lock_keys = (0..n_keys)
            .filter(|k| view.locks.is_lock_key(args[1 + k * step]))
            .count();
        if lock_keys > 0 {
            let name = match kind {
                Fanout::Mget => "mget",
                Fanout::Mset => "mset",
                Fanout::SumKeys => spec_name_of(args[0]),
            };
            return lock_command(name, args, req, lock_keys == n_keys);
        }
    }
    // Group keys by shard: `shards[p]` is part p's shard (parts in order of
    // first appearance), `key_parts[k]` key k's part. Both inline for
    // typical sizes, so grouping allocates nothing.
    let mut shards: SmallVec<[usize; 8]> = SmallVec::new();
    let mut key_parts = MgetParts::with_capacity(n_keys);
    for k in 0..n_keys {
        let s = view.shard_of(args[1 + k * step]);
        let part = match shards.iter().position(|&x| x == s) {
            Some(p) => p,
            None => {
                shards.push(s);
                shards.len() - 1
            }
        };
        key_parts.push(part as u16);
    }
    if shards.len() == 1 {
        // All keys on one shard: forward the request untouched.
        return Plan::Forward(shards[0]);
    }
    // Encode every part's sub-request into one buffer and split each off:
    // one allocation for all of them (the client's request plus a header
    // per part is enough room). With the merge table inline, MGET and MSET
    // of 10 keys over 3 shards: 22 and 20 allocations per request -> 5
    // (bench/alloc_count.rs).
    let n_parts = shards.len();
    let mut buf = BytesMut::with_capacity(req.raw.len() + n_parts * (24 + args[0].len()));
    parts.clear();
    for (part, &shard) in shards.iter().enumerate() {
        let n = key_parts.iter().filter(|&&p| p as usize == part).count();
        put_header(&mut buf, b'*', 1 + n * step);
        put_bulk(&mut buf, args[0]);
        for k in (0..n_keys).filter(|&k| key_parts[k] as usize == part) {
            for a in &args[1 + k * step..1 + (k + 1) * step] {
                put_bulk(&mut buf, a);
            }
        }
        parts.push((shard, buf.split().freeze()));
    }
    let merge = match kind {
        Fanout::Mget => Merge::Mget(key_parts),
        Fanout::Mset => Merge::AllOk,
        Fanout::SumKeys => Merge::Sum,
    };
    Plan::Split { merge }
}

/// Commands for every shard (or, for SCAN, the shard the cursor names).
fn broadcast(
    view: &View<'_>,
    ctx: Ctx,
    kind: Broadcast,
    spec: &CommandSpec,
    args: &[&[u8]],
    parts: &mut Vec<(usize, Bytes)>,
) -> Plan {
    let mut script = None;
    let what = || -> &'static str {
        match spec.name {
            "function|load" => "FUNCTION LOAD",
            "function|delete" => "FUNCTION DELETE",
            "function|flush" => "FUNCTION FLUSH",
            "function|restore" => "FUNCTION RESTORE",
            "config|set" => "CONFIG SET",
            "config|resetstat" => "CONFIG RESETSTAT",
            "config|rewrite" => "CONFIG REWRITE",
            _ => "the command",
        }
    };
    let merge = match kind {
        Broadcast::Dbsize => Merge::Sum,
        Broadcast::AllOk => Merge::AllOk,
        Broadcast::Keys => Merge::Concat {
            lock_keys: view.locks.enabled().then(|| view.locks.listed_once()),
        },
        Broadcast::RandomKey => Merge::AnyNonNull {
            start: rand_index(view.names.len()),
        },
        Broadcast::ScriptExists => Merge::AndArrays,
        Broadcast::First => {
            if args.len() == 3 && args[1].eq_ignore_ascii_case(b"load") {
                // SCRIPT LOAD: kept so a lock member that lacks the script
                // can be given it (NOSCRIPT recovery).
                script = Some(Bytes::copy_from_slice(args[2]));
            }
            Merge::First
        }
        Broadcast::Agree => Merge::Agree {
            what: what(),
            names: view.names.to_vec(),
        },
        Broadcast::AdminAgree => {
            if gated(view, ctx) {
                return Plan::Error(ReplyError::new(
                    ErrorKind::NoPerm,
                    format!("shardis: {} needs SHARDIS.ADMIN <admin_password> first", what()),
                ));
            }
            Merge::Agree {
                what: what(),
                names: view.names.to_vec(),
            }
        }
        Broadcast::Kill => Merge::AnyOk,
        Broadcast::FunctionList => Merge::FunctionList {
            names: view.names.to_vec(),
        },
        Broadcast::FunctionStats => Merge::FunctionStats {
            names: view.names.to_vec(),
        },
        Broadcast::ConfigGet => Merge::ConfigGet {
            own: vec![
                ("maxclients", view.config.limits.max_clients.to_string()),
                ("timeout", view.config.limits.client_idle_timeout_s.to_string()),
            ],
        },
        Broadcast::Scan => return scan(view, args, parts),
    };
    Plan::Broadcast { merge, script }
}

/// A cheap pseudo-random index (RANDOMKEY's starting shard).
fn rand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(n);
    (h.finish() as usize) % n.max(1)
}

/// The command table's name for the counting fan-out commands.
fn spec_name_of(name: &[u8]) -> &'static str {
    ["del", "unlink", "exists", "touch"]
        .into_iter()
        .find(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        .unwrap_or("del")
}

mod cross;
mod moving;
mod pubsub;
mod scan;
mod steps;
use moving::read_through;
pub use moving::{held, moves};
use scan::scan;
use steps::{gated, proxy, proxy_in_multi, transaction_step};

#[cfg(test)]
mod tests;

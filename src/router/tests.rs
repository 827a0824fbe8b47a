//! Routing without sockets: a table of requests and the plans they get, over
//! a topology of three shards (and, for migrations, one that grew from two).

use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::error::ErrorKind;
use crate::lock::classify::{Fallback, Op};

struct Fixture {
    cfg: Config,
    ring: Ring,
    names: Vec<Arc<str>>,
    locks: LockGroup,
    migration: Option<Migration>,
    hold: Option<crate::hold::Hold>,
}

fn backends(names: &[&str]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("[[backends]]\nname = \"{n}\"\naddr = \"127.0.0.1:{}\"\n", 7000 + i))
        .collect()
}

impl Fixture {
    /// Shards a, b, c; `extra` goes before the backends.
    fn new(extra: &str) -> Fixture {
        let cfg = Config::parse(&format!("{extra}\n{}", backends(&["a", "b", "c"]))).expect("config");
        let ring = Ring::for_config(&cfg);
        let names = cfg.backends.iter().map(|b| Arc::from(b.name.as_str())).collect();
        let locks = LockGroup::build(&cfg, None, None);
        Fixture {
            cfg,
            ring,
            names,
            locks,
            migration: None,
            hold: None,
        }
    }

    /// Shards a, b, c where a and b were: keys now on c are moving.
    fn migrating() -> Fixture {
        let mut f = Fixture::new("");
        let old_cfg = Config::parse(&backends(&["a", "b"])).expect("config");
        let old_ring = Ring::for_config(&old_cfg);
        let old_names: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        f.migration = Migration::plan(1, &old_ring, &old_names, Vec::new(), &f.ring, &f.names, 2);
        assert!(f.migration.is_some(), "c takes slots from a and b");
        f
    }

    fn view(&self) -> View<'_> {
        View {
            ring: &self.ring,
            names: &self.names,
            locks: &self.locks,
            migration: self.migration.as_ref(),
            hold: self.hold.as_ref(),
            config: &self.cfg,
        }
    }

    fn route(&self, ctx: Ctx, cmd: &str) -> Plan {
        self.route_parts(ctx, cmd).0
    }

    /// The plan, and the parts it left in the router (for a split).
    fn route_parts(&self, ctx: Ctx, cmd: &str) -> (Plan, Vec<(usize, Bytes)>) {
        let req = Request::from_args(&cmd.split(' ').collect::<Vec<_>>());
        let args: Vec<&[u8]> = req.args().collect();
        let mut router = Router::default();
        let plan = router.route(&self.view(), ctx, &req, &args);
        (plan, router.parts)
    }

    /// A key the ring puts on `shard`, and (during a migration) whose old
    /// owner was `old` (any when `None`).
    fn key_on(&self, shard: usize, old: Option<Option<usize>>) -> String {
        (0..10_000)
            .map(|i| format!("k{i}"))
            .find(|k| {
                self.ring.shard_of(k.as_bytes()) == shard
                    && old.is_none_or(|o| {
                        let m = self.migration.as_ref().expect("a migration");
                        m.source_of(k.as_bytes(), &self.names[shard]) == o
                    })
            })
            .expect("some key lands there")
    }
}

const USER: Ctx = Ctx {
    authenticated: true,
    admin: false,
    perms: None,
    in_tx: false,
    parked: false,
    released: false,
    rerouted: false,
};

fn in_tx() -> Ctx<'static> {
    Ctx { in_tx: true, ..USER }
}

#[track_caller]
fn error_of(plan: Plan) -> ReplyError {
    match plan {
        Plan::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[track_caller]
fn lock_of(plan: Plan) -> LockPlan {
    match plan {
        Plan::Lock(lock) => *lock,
        other => panic!("expected a lock operation, got {other:?}"),
    }
}

#[track_caller]
fn refused_in_tx(plan: Plan) -> String {
    match plan {
        Plan::Tx(TxStep::Refuse(e)) => e.to_string(),
        other => panic!("expected a refusal inside MULTI, got {other:?}"),
    }
}

#[test]
fn single_key_commands_go_to_the_owner() {
    let f = Fixture::new("");
    for shard in 0..3 {
        let k = f.key_on(shard, None);
        assert!(matches!(f.route(USER, &format!("GET {k}")), Plan::Forward(s) if s == shard));
        assert!(matches!(f.route(USER, &format!("blpop {k} 0")), Plan::Block(s) if s == shard));
    }
    // Same hash tag, same shard: a multi-key command runs there.
    assert!(matches!(f.route(USER, "RENAME {t}a {t}b"), Plan::Forward(_)));
    // No key: the first shard (Redis answers scripts without keys).
    assert!(matches!(f.route(USER, "EVAL return 0"), Plan::Forward(0)));
}

#[test]
fn keys_on_two_shards_are_crossshard() {
    let f = Fixture::new("[crossshard]\ncommands = false\n");
    let (a, b) = (f.key_on(0, None), f.key_on(1, None));
    for cmd in [
        format!("RENAME {a} {b}"),
        format!("SINTER {a} {b}"),
        format!("SMOVE {a} {b} m"),
        format!("EVAL x 2 {a} {b}"),
        format!("BLMOVE {a} {b} LEFT RIGHT 0"),
    ] {
        let e = error_of(f.route(USER, &cmd));
        assert_eq!(e.kind(), ErrorKind::CrossShard, "{cmd}");
        assert_eq!(e.to_string(), "CROSSSHARD keys in request don't hash to the same shard");
    }
}

#[test]
fn multi_key_commands_split_by_shard() {
    let f = Fixture::new("");
    let (a, b) = (f.key_on(0, None), f.key_on(1, None));
    // Another key on shard 0: same hash tag.
    let (a, a2) = (format!("{{{a}}}1"), format!("{{{a}}}2"));
    match f.route_parts(USER, &format!("MGET {a} {b} {a2}")) {
        (
            Plan::Split {
                merge: Merge::Mget(parts_of_keys),
            },
            parts,
        ) => {
            assert_eq!(&parts_of_keys[..], &[0, 1, 0]);
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].0, 0);
            assert_eq!(parts[1].0, 1);
            let want = Request::from_args(&["MGET", &a, &a2]).raw;
            assert_eq!(parts[0].1, want);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.route(USER, &format!("MSET {a} 1 {b} 2")),
        Plan::Split {
            merge: Merge::AllOk,
            ..
        }
    ));
    assert!(matches!(
        f.route(USER, &format!("del {a} {b}")),
        Plan::Split { merge: Merge::Sum, .. }
    ));
    // All on one shard: forwarded untouched.
    assert!(matches!(f.route(USER, &format!("EXISTS {a} {a}")), Plan::Forward(0)));
    assert_eq!(
        error_of(f.route(USER, &format!("MSET {a} 1 {b}"))).to_string(),
        "ERR wrong number of arguments for 'mset' command"
    );
}

#[test]
fn lock_keys_go_to_the_lock_worker() {
    let f = Fixture::new("");
    assert!(f.locks.enabled(), "three backends make a default lock group");
    match lock_of(f.route(USER, "SET lock:x tok NX PX 3000")) {
        LockPlan {
            op: Op::Acquire {
                ttl_ms, fence_reply, ..
            },
            script: None,
        } => {
            assert_eq!(ttl_ms, Some(3000));
            assert!(!fence_reply);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        lock_of(f.route(USER, "GET lock:x")),
        LockPlan {
            op: Op::Majority(Fallback::Nil),
            ..
        }
    ));
    // Every key a lock key, but MGET is no lock command.
    assert!(
        error_of(f.route(USER, "MGET lock:x lock:y"))
            .to_string()
            .contains("'mget' is not supported on lock keys")
    );
    assert!(matches!(
        lock_of(f.route(USER, "DEL lock:x lock:y")),
        LockPlan {
            op: Op::Majority(Fallback::Zero),
            ..
        }
    ));
    match lock_of(f.route(USER, "EVAL body 1 lock:x tok")) {
        LockPlan { script: Some(s), .. } => assert_eq!(&s[..], b"body"),
        other => panic!("{other:?}"),
    }
    assert!(
        error_of(f.route(USER, "MGET lock:x data"))
            .to_string()
            .contains("cannot be combined with other keys")
    );
    assert!(
        error_of(f.route(USER, "RENAME lock:x data"))
            .to_string()
            .contains("cannot be combined with other keys")
    );
    assert!(
        error_of(f.route(USER, "INCR lock:x"))
            .to_string()
            .contains("not supported on lock keys")
    );
    assert!(matches!(
        lock_of(f.route(USER, "SHARDIS.LOCK lock:x tok 100")),
        LockPlan {
            op: Op::Acquire { fence_reply: true, .. },
            ..
        }
    ));
    assert!(matches!(
        lock_of(f.route(USER, "shardis.fence lock:x tok")),
        LockPlan {
            op: Op::FenceOf { .. },
            ..
        }
    ));
    assert!(
        error_of(f.route(USER, "SHARDIS.LOCK data tok 100"))
            .to_string()
            .contains("not in the lock namespace")
    );
    // Redlock off: lock-looking keys are ordinary keys.
    let off = Fixture::new("[redlock]\nkeys = []\n");
    assert!(matches!(off.route(USER, "SET lock:x tok NX PX 10"), Plan::Forward(_)));
}

#[test]
fn authentication_comes_first() {
    let f = Fixture::new("password = \"pw\"");
    let anon = Ctx {
        authenticated: false,
        ..USER
    };
    let e = error_of(f.route(anon, "GET a"));
    assert_eq!(e.kind(), ErrorKind::NoAuth);
    assert_eq!(e.to_string(), "NOAUTH Authentication required.");
    assert_eq!(error_of(f.route(anon, "SHARDIS.RELOAD")).kind(), ErrorKind::NoAuth);
    assert!(matches!(f.route(anon, "AUTH pw"), Plan::Local(Local::Auth)));
    assert!(matches!(f.route(anon, "HELLO 3"), Plan::Local(Local::Hello)));
    assert!(matches!(f.route(anon, "QUIT"), Plan::Local(Local::Quit)));
    // Unknown commands are unknown before they are unauthenticated, as in Redis.
    assert!(
        error_of(f.route(anon, "NOSUCH x"))
            .to_string()
            .starts_with("ERR unknown command 'NOSUCH'")
    );
}

#[test]
fn transactions_are_steps_and_queues() {
    let f = Fixture::new("");
    let (a, b) = (f.key_on(0, None), f.key_on(1, None));
    assert!(matches!(f.route(USER, "MULTI"), Plan::Tx(TxStep::Multi)));
    assert_eq!(
        error_of(f.route(in_tx(), "MULTI")).to_string(),
        "ERR MULTI calls can not be nested"
    );
    assert_eq!(error_of(f.route(USER, "EXEC")).to_string(), "ERR EXEC without MULTI");
    assert_eq!(
        error_of(f.route(USER, "discard")).to_string(),
        "ERR DISCARD without MULTI"
    );
    assert!(matches!(f.route(in_tx(), "EXEC"), Plan::Tx(TxStep::Exec)));
    assert!(matches!(f.route(in_tx(), "DISCARD"), Plan::Tx(TxStep::Discard)));
    match f.route(in_tx(), &format!("MSET {a} 1 {b} 2")) {
        Plan::Tx(TxStep::Queue(keys)) => assert_eq!(keys, [a.as_bytes(), b.as_bytes()]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.route(in_tx(), "PING"), Plan::Tx(TxStep::Queue(k)) if k.is_empty()));
    assert!(refused_in_tx(f.route(in_tx(), "KEYS *")).contains("cannot be used inside MULTI"));
    assert!(refused_in_tx(f.route(in_tx(), "SET lock:x 1")).contains("lock keys"));
    // As in Redis: WATCH inside MULTI is an error that does not abort the
    // transaction; UNWATCH is queued.
    assert_eq!(
        error_of(f.route(in_tx(), "WATCH a")).to_string(),
        "ERR WATCH inside MULTI is not allowed"
    );
    assert!(matches!(f.route(in_tx(), "UNWATCH"), Plan::Tx(TxStep::Queue(k)) if k.is_empty()));
    assert_eq!(
        refused_in_tx(f.route(in_tx(), "SHARDIS.RELOAD")),
        "ERR shardis: SHARDIS.* commands cannot be used inside MULTI"
    );
    assert_eq!(
        refused_in_tx(f.route(in_tx(), "SHARDIS.NOPE")),
        "ERR shardis: SHARDIS.* commands cannot be used inside MULTI"
    );
    assert!(refused_in_tx(f.route(in_tx(), "NOSUCH")).starts_with("ERR unknown command"));
    assert!(refused_in_tx(f.route(in_tx(), "GET")).starts_with("ERR wrong number of arguments"));
}

#[test]
fn watched_keys_share_a_shard() {
    let f = Fixture::new("");
    let (a, b) = (f.key_on(0, None), f.key_on(1, None));
    match f.route(USER, &format!("WATCH {a} {a}")) {
        Plan::Tx(TxStep::Watch { shard, keys }) => {
            assert_eq!(shard, 0);
            assert_eq!(keys, [a.as_bytes(), a.as_bytes()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.route(USER, &format!("WATCH {b}")),
        Plan::Tx(TxStep::Watch { shard: 1, .. })
    ));
    assert!(
        error_of(f.route(USER, &format!("WATCH {a} {b}")))
            .to_string()
            .starts_with("CROSSSHARD")
    );
    assert!(matches!(f.route(USER, "UNWATCH"), Plan::Tx(TxStep::Unwatch)));
    assert!(
        error_of(f.route(USER, "WATCH"))
            .to_string()
            .contains("wrong number of arguments")
    );
}

#[test]
fn admin_commands_check_the_password_and_permission() {
    let open = Fixture::new("");
    assert!(matches!(
        open.route(USER, "SHARDIS.RELOAD"),
        Plan::Admin(Admin::Reload { force: false })
    ));
    assert!(matches!(
        open.route(USER, "shardis.reload force"),
        Plan::Admin(Admin::Reload { force: true })
    ));
    assert_eq!(
        error_of(open.route(USER, "SHARDIS.RELOAD now")).to_string(),
        "ERR syntax error: SHARDIS.RELOAD [FORCE]"
    );
    assert!(
        error_of(open.route(USER, "SHARDIS.ADMIN x"))
            .to_string()
            .contains("no admin_password is configured")
    );
    let guarded = Fixture::new("admin_password = \"s3cret\"");
    let e = error_of(guarded.route(USER, "SHARDIS.RELOAD"));
    assert_eq!(e.kind(), ErrorKind::NoPerm);
    assert!(matches!(
        guarded.route(USER, "SHARDIS.ADMIN s3cret"),
        Plan::Admin(Admin::Login)
    ));
    assert!(matches!(
        guarded.route(USER, "SHARDIS.ADMIN nope"),
        Plan::Admin(Admin::BadPassword)
    ));
    let admin = Ctx { admin: true, ..USER };
    assert!(matches!(
        guarded.route(admin, "SHARDIS.RELOAD"),
        Plan::Admin(Admin::Reload { force: false })
    ));
    // CONFIG SET/RESETSTAT/REWRITE change every shard: admin only, when guarded.
    let e = error_of(guarded.route(USER, "CONFIG SET maxmemory 1"));
    assert_eq!(e.kind(), ErrorKind::NoPerm);
    assert!(e.to_string().contains("CONFIG SET needs SHARDIS.ADMIN"), "{e}");
    assert_eq!(
        error_of(guarded.route(USER, "CONFIG RESETSTAT")).kind(),
        ErrorKind::NoPerm
    );
    assert!(matches!(
        guarded.route(admin, "CONFIG SET maxmemory 1"),
        Plan::Broadcast {
            merge: Merge::Agree { what: "CONFIG SET", .. },
            ..
        }
    ));
    assert!(matches!(
        open.route(USER, "CONFIG SET maxmemory 1"),
        Plan::Broadcast {
            merge: Merge::Agree { .. },
            ..
        }
    ));
    assert!(matches!(
        guarded.route(USER, "CONFIG GET maxmemory"),
        Plan::Broadcast {
            merge: Merge::ConfigGet { .. },
            ..
        }
    ));
    // Acting on other clients or seeing their traffic: admin only, when guarded.
    for cmd in [
        "CLIENT KILL ID 1",
        "CLIENT PAUSE 10",
        "CLIENT UNPAUSE",
        "MONITOR",
        "SLOWLOG RESET",
    ] {
        let e = error_of(guarded.route(USER, cmd));
        assert_eq!(e.kind(), ErrorKind::NoPerm, "{cmd}");
        assert!(matches!(guarded.route(admin, cmd), Plan::Local(_)), "{cmd}");
        assert!(matches!(open.route(USER, cmd), Plan::Local(_)), "{cmd}");
    }
    for cmd in ["CLIENT LIST", "CLIENT INFO", "SLOWLOG GET", "CLIENT REPLY ON"] {
        assert!(matches!(guarded.route(USER, cmd), Plan::Local(_)), "{cmd}");
    }
}

#[test]
fn during_a_migration_moving_keys_park_first() {
    let f = Fixture::migrating();
    let moving = f.key_on(2, Some(Some(0)));
    let staying = f.key_on(1, Some(None));
    match f.route(USER, &format!("SET {moving} v")) {
        Plan::Park(moves) => assert_eq!(
            &moves[..],
            &[Move {
                from: 0,
                key: Bytes::from(moving.clone()),
                to: 2
            }]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.route(USER, &format!("GET {staying}")), Plan::Forward(1)));
    // A read-only command on one moving key reads it where it is: nothing moves.
    for cmd in [
        "GET {k}",
        "HGET {k} f",
        "LRANGE {k} 0 -1",
        "TTL {k}",
        "OBJECT ENCODING {k}",
    ] {
        let cmd = cmd.replace("{k}", &moving);
        assert!(
            matches!(f.route(USER, &cmd), Plan::ReadThrough { from: 0, key } if key == cmd.split(' ').position(|a| a == moving).unwrap()),
            "{cmd}"
        );
    }
    // Not a script, a blocking read, a read of several keys, or behind a parked request.
    for cmd in [
        format!("EVAL_RO x 1 {moving}"),
        format!("SUNION {moving} {staying}"),
        format!("XREAD STREAMS {moving} 0"),
    ] {
        assert!(matches!(f.route(USER, &cmd), Plan::Park(_)), "{cmd}");
    }
    let behind = Ctx { parked: true, ..USER };
    assert!(matches!(f.route(behind, &format!("GET {moving}")), Plan::Park(m) if m.len() == 1));
    // A key named twice moves once; fan-out and blocking commands park too.
    assert!(matches!(
        f.route(USER, &format!("MGET {moving} {staying} {moving}")),
        Plan::Park(m) if m.len() == 1
    ));
    assert!(matches!(f.route(USER, &format!("BLPOP {moving} 0")), Plan::Park(_)));
    // Behind an earlier parked request, even a key that stays waits its turn.
    let parked = Ctx { parked: true, ..USER };
    assert!(matches!(f.route(parked, &format!("GET {staying}")), Plan::Park(m) if m.is_empty()));
    // Once released, a request goes to its new owner.
    let released = Ctx {
        released: true,
        parked: true,
        ..USER
    };
    assert!(matches!(f.route(released, &format!("GET {moving}")), Plan::Forward(2)));
    // Lock keys never move.
    assert!(matches!(f.route(USER, "GET lock:x"), Plan::Lock(_)));
    // FLUSHALL would miss keys not moved yet.
    assert!(
        error_of(f.route(USER, "FLUSHALL"))
            .to_string()
            .contains("keys are moving")
    );
    assert!(matches!(f.route(USER, "DBSIZE"), Plan::Broadcast { .. }));
    // The moves of an EXEC's keys.
    let keys = [Bytes::from(moving.clone()), Bytes::from(staying), Bytes::from(moving)];
    assert_eq!(moves(&f.view(), keys.into_iter()).len(), 1);
}

#[test]
fn keyless_commands() {
    let f = Fixture::new("");
    assert!(matches!(f.route(USER, "PING"), Plan::Local(Local::Ping)));
    assert!(matches!(f.route(USER, "PUBLISH ch m"), Plan::Forward(PUBSUB_SHARD)));
    assert!(matches!(f.route(USER, "SUBSCRIBE ch"), Plan::Subscribe));
    assert!(matches!(
        f.route(USER, "DBSIZE"),
        Plan::Broadcast {
            merge: Merge::Sum,
            script: None
        }
    ));
    assert!(matches!(
        f.route(USER, "KEYS *"),
        Plan::Broadcast {
            merge: Merge::Concat { lock_keys: Some(_) },
            ..
        }
    ));
    match f.route(USER, "SCRIPT LOAD return") {
        Plan::Broadcast {
            merge: Merge::First,
            script: Some(body),
        } => assert_eq!(&body[..], b"return"),
        other => panic!("{other:?}"),
    }
    // SCAN: the low bits of the cursor name the shard.
    let cursor = (5u64 << crate::merge::SCAN_SHARD_BITS) | 2;
    match f.route_parts(USER, &format!("SCAN {cursor} COUNT 10")) {
        (
            Plan::Split {
                merge: Merge::Scan(walk),
            },
            parts,
        ) => {
            assert_eq!((walk.shard, walk.shards), (2, 3));
            assert_eq!(parts, [(2, Request::from_args(&["SCAN", "5", "COUNT", "10"]).raw)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error_of(f.route(USER, "SCAN x")).to_string(), "ERR invalid cursor");
    assert_eq!(error_of(f.route(USER, "SCAN 3")).to_string(), "ERR invalid cursor");
    assert!(
        error_of(f.route(USER, "BGSAVE"))
            .to_string()
            .starts_with("ERR unsupported command 'bgsave'")
    );
    assert!(
        error_of(f.route(USER, "CLIENT TRACKING on"))
            .to_string()
            .starts_with("ERR CLIENT TRACKING is not supported by shardis: invalidation")
    );
}

/// A plan is returned and moved for every request: keep it a few words.
#[test]
fn a_plan_is_small() {
    assert!(
        std::mem::size_of::<Plan>() <= 96,
        "{} bytes",
        std::mem::size_of::<Plan>()
    );
}

mod hold;
mod pubsub;
mod xshard;

//! Routing of multi-key commands whose keys are on several shards: run
//! across them (`Plan::CrossShard`) unless `[crossshard] commands = false`,
//! after their keys move during a migration.

use super::*;

#[test]
fn keys_on_two_shards_run_across_them_unless_turned_off() {
    let f = Fixture::new("");
    let (a, b) = (f.key_on(0, None), f.key_on(1, None));
    for cmd in [
        format!("RENAME {a} {b}"),
        format!("SINTER {a} {b}"),
        format!("SMOVE {a} {b} m"),
        format!("BLMOVE {a} {b} LEFT RIGHT 0"),
        format!("SUNIONSTORE {b} {a}"),
    ] {
        assert!(matches!(f.route(USER, &cmd), Plan::CrossShard(_)), "{cmd}");
    }
    // A script cannot be split: still CROSSSHARD.
    let e = error_of(f.route(USER, &format!("EVAL x 2 {a} {b}")));
    assert_eq!(e.kind(), ErrorKind::CrossShard);
}

#[test]
fn a_cross_shard_command_on_moving_keys_parks_first() {
    let f = Fixture::migrating();
    let moving = f.key_on(2, Some(Some(0)));
    let staying = f.key_on(1, Some(None));
    let cmd = format!("SUNIONSTORE {moving} {staying}");
    match f.route(USER, &cmd) {
        Plan::Park(moves) => assert_eq!(moves.len(), 1),
        other => panic!("{other:?}"),
    }
    let released = Ctx { released: true, ..USER };
    match f.route(released, &cmd) {
        Plan::CrossShard(p) => assert_eq!(
            p.op,
            crate::xshard::Op::Copy {
                exec: 2,
                keep_ttl: false
            }
        ),
        other => panic!("{other:?}"),
    }
}

//! Routing of sharded pub/sub (by the channel's place on the ring, hash
//! tags honoured) and of PUBLISH / SPUBLISH inside MULTI.

use super::*;

#[test]
fn shard_channels_route_by_the_ring() {
    let f = Fixture::new("");
    let (a, b, c) = (f.key_on(0, None), f.key_on(1, None), f.key_on(2, None));
    for (shard, ch) in [(0, &a), (1, &b), (2, &c)] {
        assert!(matches!(f.route(USER, &format!("SPUBLISH {ch} m")), Plan::Forward(s) if s == shard));
    }
    // A hash tag puts a channel with the key of the same tag.
    let tagged = format!("{{{b}}}:events");
    assert!(matches!(
        f.route(USER, &format!("SPUBLISH {tagged} m")),
        Plan::Forward(1)
    ));
    // SSUBSCRIBE: one part per channel, on the channel's shard.
    match f.route_parts(USER, &format!("SSUBSCRIBE {a} {c} {tagged}")) {
        (Plan::ShardSub { subscribe: true }, parts) => assert_eq!(
            parts,
            [
                (0, Request::from_args(&["SSUBSCRIBE", &a]).raw),
                (2, Request::from_args(&["SSUBSCRIBE", &c]).raw),
                (1, Request::from_args(&["SSUBSCRIBE", &tagged]).raw),
            ]
        ),
        other => panic!("{other:?}"),
    }
    match f.route_parts(USER, "SUNSUBSCRIBE") {
        (Plan::ShardSub { subscribe: false }, parts) => assert!(parts.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.route(USER, "PUBSUB SHARDCHANNELS"),
        Plan::Broadcast {
            merge: Merge::Union,
            ..
        }
    ));
    // SHARDNUMSUB: each channel asked of its shard, answered in request order.
    match f.route_parts(USER, &format!("PUBSUB SHARDNUMSUB {c} {a} {c}")) {
        (Plan::Split { merge: Merge::Pairs(p) }, parts) => {
            assert_eq!(&p[..], [0, 1, 0]);
            assert_eq!(
                parts,
                [
                    (2, Request::from_args(&["PUBSUB", "SHARDNUMSUB", &c, &c]).raw),
                    (0, Request::from_args(&["PUBSUB", "SHARDNUMSUB", &a]).raw),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.route(USER, &format!("PUBSUB SHARDNUMSUB {b}")),
        Plan::Forward(1)
    ));
    assert!(matches!(f.route(USER, "PUBSUB SHARDNUMSUB"), Plan::Forward(0)));
}

#[test]
fn publish_inside_multi_is_kept_for_after_exec() {
    let f = Fixture::new("");
    assert!(matches!(
        f.route(in_tx(), "PUBLISH ch m"),
        Plan::Tx(TxStep::Publish { sharded: false })
    ));
    assert!(matches!(
        f.route(in_tx(), "spublish ch m"),
        Plan::Tx(TxStep::Publish { sharded: true })
    ));
    // Other pub/sub commands are still refused inside MULTI.
    assert!(refused_in_tx(f.route(in_tx(), "PUBSUB NUMSUB ch")).contains("cannot be used inside MULTI"));
    assert!(refused_in_tx(f.route(in_tx(), "SSUBSCRIBE ch")).contains("cannot be used inside MULTI"));
    assert!(refused_in_tx(f.route(in_tx(), "PUBLISH ch")).starts_with("ERR wrong number of arguments"));
}

//! Routing while a fleet change is prepared: only the keys it moves are held.

use std::sync::Arc;

use super::*;

/// Shards a, b, c with a change to a, b, c, d prepared: keys whose owner
/// would become d are held, the rest route as usual.
#[test]
fn a_prepared_change_holds_only_the_keys_it_moves() {
    let mut f = Fixture::new("");
    let next_cfg = Config::parse(&backends(&["a", "b", "c", "d"])).expect("config");
    let next_names: Vec<Arc<str>> = ["a", "b", "c", "d"].iter().map(|n| Arc::from(*n)).collect();
    f.hold = Some(crate::hold::Hold::new(
        2,
        &f.ring,
        Ring::for_config(&next_cfg),
        next_names.clone(),
    ));
    let next_ring = Ring::for_config(&next_cfg);
    let moving = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| &*next_names[next_ring.shard_of(k.as_bytes())] == "d")
        .expect("a key that moves to d");
    let staying = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| &*next_names[next_ring.shard_of(k.as_bytes())] != "d")
        .expect("a key that stays");
    let ctx = Ctx {
        authenticated: true,
        ..Ctx::default()
    };
    assert!(matches!(f.route(ctx, &format!("GET {moving}")), Plan::Hold));
    assert!(matches!(f.route(ctx, &format!("SET {moving} v")), Plan::Hold));
    // One moving key among several holds the whole request.
    assert!(matches!(f.route(ctx, &format!("MGET {staying} {moving}")), Plan::Hold));
    let owner = f.ring.shard_of(staying.as_bytes());
    assert!(matches!(f.route(ctx, &format!("GET {staying}")), Plan::Forward(s) if s == owner));
    // Lock keys never move, keyless commands are not held.
    assert!(!matches!(f.route(ctx, "GET lock:x"), Plan::Hold));
    assert!(matches!(f.route(ctx, "PING"), Plan::Local(_)));
    // Behind an earlier parked request, a key that stays waits its turn
    // (it is parked, not held); once released it goes to its shard.
    assert!(matches!(f.route(ctx, &format!("GET {staying}")), Plan::Forward(_)));
    let parked = Ctx { parked: true, ..ctx };
    assert!(matches!(f.route(parked, &format!("GET {staying}")), Plan::Park(m) if m.is_empty()));
    // A hold that timed out still holds: the request is answered TRYAGAIN
    // by the session, it never runs on the old owner while the change may
    // still commit.
    if let Some(h) = &f.hold {
        h.end(crate::hold::HoldEnd::TimedOut);
    }
    assert!(matches!(f.route(ctx, &format!("GET {moving}")), Plan::Hold));
}

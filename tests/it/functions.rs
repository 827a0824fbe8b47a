//! Redis functions and CONFIG through shardis: FUNCTION ... broadcast to
//! every shard and merged, FCALL routed by its keys, CONFIG SET applied on
//! every shard (a shard that fails is named), CONFIG GET with the proxy's
//! own limits.

use redis::Value;

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

pub const LIB: &str = "#!lua name=shardislib\n\
    redis.register_function('incr_by', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)\n\
    redis.register_function{function_name='get_ro', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}\n\
    redis.register_function('whoami', function(keys, args) return 'here' end)";

/// Two keys that live on different shards.
fn keys_on_two_shards(proxy: &Proxy) -> (String, String) {
    let a = "fk:0".to_string();
    let b = (1..1000)
        .map(|i| format!("fk:{i}"))
        .find(|k| proxy.shard_of(k) != proxy.shard_of(&a))
        .expect("a key on another shard");
    (a, b)
}

/// A reply's strings, integers and nils, depth first.
fn leaves(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().flat_map(leaves).collect(),
        Value::Map(kv) => kv.iter().flat_map(|(k, v)| [leaves(k), leaves(v)].concat()).collect(),
        Value::BulkString(b) => vec![String::from_utf8_lossy(b).into_owned()],
        Value::Int(n) => vec![n.to_string()],
        Value::Nil => vec!["nil".into()],
        other => vec![format!("{other:?}")],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_load_reaches_every_shard_and_fcall_routes_by_key() {
    let mut nodes = three_nodes();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let flushed: String = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut c).await.unwrap();
    assert_eq!(flushed, "OK");
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(LIB)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(name, "shardislib");
    for n in &nodes {
        let libs: Value = redis::cmd("FUNCTION").arg("LIST").query(&mut n.client()).unwrap();
        assert!(format!("{libs:?}").contains("shardislib"), "{}: {libs:?}", n.addr());
    }
    // Loading it again: Redis's own error, from every shard alike.
    let e = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(LIB)
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Library 'shardislib' already exists"), "{e}");
    let replaced: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIB)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(replaced, "shardislib");

    let (a, b) = keys_on_two_shards(&proxy);
    for k in [&a, &b] {
        let v: i64 = redis::cmd("FCALL")
            .arg("incr_by")
            .arg(1)
            .arg(k)
            .arg(5)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, 5);
        let direct: i64 = redis::cmd("GET")
            .arg(k)
            .query(&mut nodes[proxy.shard_of(k)].client())
            .unwrap();
        assert_eq!(direct, 5, "{k} written on its own shard");
        let ro: i64 = redis::cmd("FCALL_RO")
            .arg("get_ro")
            .arg(1)
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(ro, 5);
    }
    let e = redis::cmd("FCALL")
        .arg("incr_by")
        .arg(2)
        .arg(&a)
        .arg(&b)
        .arg(1)
        .query_async::<i64>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("CROSSSHARD"), "{e}");
    // No keys: the first shard runs it.
    let here: String = redis::cmd("FCALL")
        .arg("whoami")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(here, "here");

    // LIST merges by library name; DUMP and RESTORE round-trip.
    let list: Vec<Value> = redis::cmd("FUNCTION").arg("LIST").query_async(&mut c).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let dump: Vec<u8> = redis::cmd("FUNCTION").arg("DUMP").query_async(&mut c).await.unwrap();
    let deleted: String = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("shardislib")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(deleted, "OK");
    let list: Vec<Value> = redis::cmd("FUNCTION").arg("LIST").query_async(&mut c).await.unwrap();
    assert!(list.is_empty(), "{list:?}");
    let restored: String = redis::cmd("FUNCTION")
        .arg("RESTORE")
        .arg(dump)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(restored, "OK");
    let v: i64 = redis::cmd("FCALL")
        .arg("incr_by")
        .arg(1)
        .arg(&b)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 6);
    let e = redis::cmd("FUNCTION")
        .arg("KILL")
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOTBUSY"), "{e}");
    // STATS: the counts every shard agrees on (one library, three functions).
    let stats: Value = redis::cmd("FUNCTION").arg("STATS").query_async(&mut c).await.unwrap();
    let leaves = leaves(&stats);
    let at = |k: &str| {
        leaves
            .iter()
            .position(|l| l == k)
            .and_then(|i| leaves.get(i + 1))
            .cloned()
    };
    assert_eq!(at("running_script").as_deref(), Some("nil"), "{leaves:?}");
    assert_eq!(at("libraries_count").as_deref(), Some("1"), "{leaves:?}");
    assert_eq!(at("functions_count").as_deref(), Some("3"), "{leaves:?}");

    // A library on one shard only is reported, not hidden.
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("#!lua name=lonely\nredis.register_function('f', function() return 1 end)")
        .query(&mut nodes[1].client())
        .unwrap();
    let e = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("library 'lonely' is loaded on shard(s) shard-1 but not on shard-0, shard-2"),
        "{e}"
    );
    // STATS names the shards whose counts differ, with their counts.
    let e = redis::cmd("FUNCTION")
        .arg("STATS")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "the shards' function libraries differ (shard-0, shard-2: LUA libraries_count=1 functions_count=3; shard-1: LUA libraries_count=2 functions_count=4)"
        ),
        "{e}"
    );
    // A shard that is down is named.
    nodes[2].kill();
    let e = redis::cmd("FUNCTION")
        .arg("STATS")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("FUNCTION STATS failed on shard(s) shard-2 ("), "{msg}");
    assert!(msg.contains("it succeeded on shard-0, shard-1"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_reaches_every_shard_and_names_a_failing_one() {
    let mut nodes = three_nodes();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "[limits]\nmax_clients = 123\n").await;
    let mut c = proxy.conn().await;
    let ok: String = redis::cmd("CONFIG")
        .arg("SET")
        .arg("list-max-listpack-size")
        .arg("64")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    for n in &nodes {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("list-max-listpack-size")
            .query(&mut n.client())
            .unwrap();
        assert_eq!(v, ["list-max-listpack-size", "64"], "{}", n.addr());
    }
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("list-max-listpack-size")
        .arg("maxclients")
        .query_async(&mut c)
        .await
        .unwrap();
    let pairs: Vec<(&str, &str)> = got.chunks(2).map(|p| (p[0].as_str(), p[1].as_str())).collect();
    assert!(pairs.contains(&("maxclients", "123")), "{pairs:?}");
    assert!(pairs.contains(&("list-max-listpack-size", "64")), "{pairs:?}");
    // A bad value: Redis's own error, from every shard alike.
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("list-max-listpack-size")
        .arg("nope")
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("list-max-listpack-size"), "{e}");
    let reset: String = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut c).await.unwrap();
    assert_eq!(reset, "OK");

    nodes[1].kill();
    let e = redis::cmd("CONFIG")
        .arg("SET")
        .arg("list-max-listpack-size")
        .arg("32")
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("CONFIG SET failed on shard(s) shard-1"), "{msg}");
    assert!(msg.contains("it succeeded on shard-0, shard-2"), "{msg}");
}

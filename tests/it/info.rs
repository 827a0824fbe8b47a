//! INFO through shardis beside a plain redis-server: every field a plain
//! Redis 7.0 writes in the sections tools read is there too; section
//! selection as on Redis; a shard that is down is counted, not fatal.

use std::collections::BTreeSet;

use crate::support::{NodeClient, Proxy, RedisNode, three_nodes};

/// Section name (lowercase) -> its field names.
fn fields(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            out.push((h.trim().to_ascii_lowercase(), BTreeSet::new()));
        } else if let (Some((_, f)), Some((k, _))) = (out.last_mut(), line.split_once(':')) {
            f.insert(k.to_string());
        }
    }
    out
}

const SECTIONS: [&str; 9] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "cluster",
    "keyspace",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_has_every_field_of_plain_redis() {
    let mut nodes = three_nodes();
    let reference = RedisNode::start();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let mut c = proxy.conn().await;
    let mut direct = reference.client();
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut direct)
            .unwrap();
    }
    let plain: String = redis::cmd("INFO").query(&mut direct).unwrap();
    let ours: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    let (plain, ours) = (fields(&plain), fields(&ours));
    for s in SECTIONS {
        let want = &plain
            .iter()
            .find(|(n, _)| n == s)
            .unwrap_or_else(|| panic!("redis has {s}"))
            .1;
        let have = &ours
            .iter()
            .find(|(n, _)| n == s)
            .unwrap_or_else(|| panic!("shardis lacks # {s}"))
            .1;
        let missing: Vec<&String> = want.difference(have).collect();
        assert!(missing.is_empty(), "INFO {s}: shardis lacks {missing:?}");
    }
    // The order of Redis's sections, then the proxy's own.
    let names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "server",
            "clients",
            "memory",
            "persistence",
            "stats",
            "replication",
            "cpu",
            "modules",
            "errorstats",
            "cluster",
            "keyspace",
            "proxy",
            "migration",
            "locks"
        ]
    );
    let text: String = redis::cmd("INFO").arg("keyspace").query_async(&mut c).await.unwrap();
    assert!(text.contains("db0:keys=20,expires=0,avg_ttl=0"), "{text}");
    let text: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.unwrap();
    for want in [
        "redis_mode:standalone",
        "arch_bits:64",
        "shardis_version:",
        "multiplexing_api:",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let run_id = |t: &str| t.lines().find(|l| l.starts_with("run_id:")).map(str::to_string);
    let again: String = redis::cmd("INFO").arg("server").query_async(&mut c).await.unwrap();
    assert_eq!(run_id(&text), run_id(&again), "run_id is stable");
    assert_eq!(run_id(&text).map(|l| l.len()), Some("run_id:".len() + 40));

    // Several sections: those, and only those.
    let two: String = redis::cmd("INFO")
        .arg("server")
        .arg("clients")
        .query_async(&mut c)
        .await
        .unwrap();
    let names: Vec<String> = fields(&two).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["server", "clients"]);
    let plain_two: String = redis::cmd("INFO")
        .arg("server")
        .arg("clients")
        .query(&mut direct)
        .unwrap();
    let plain_names: Vec<String> = fields(&plain_two).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, plain_names);
    // An unknown section: empty, as on Redis.
    let none: String = redis::cmd("INFO")
        .arg("nosuchsection")
        .query_async(&mut c)
        .await
        .unwrap();
    let plain_none: String = redis::cmd("INFO").arg("nosuchsection").query(&mut direct).unwrap();
    assert_eq!(none, plain_none);
    assert_eq!(none, "");
    for all in ["default", "all", "everything"] {
        let t: String = redis::cmd("INFO").arg(all).query_async(&mut c).await.unwrap();
        assert!(
            t.contains("# Keyspace") && t.contains("# Proxy") && t.contains("cluster_enabled:0"),
            "{all}"
        );
        let plain: String = redis::cmd("INFO").arg(all).query(&mut direct).unwrap();
        for extra in ["# Commandstats", "# Latencystats"] {
            assert_eq!(t.contains(extra), plain.contains(extra), "INFO {all}: {extra}");
        }
    }
    let t: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(t.contains("cmdstat_set:calls=20,"), "{t}");

    // A shard down: out of the sums, counted, every section still there.
    nodes[2].kill();
    let text: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    assert!(text.contains("shards_unreachable:1\r\n"), "{text}");
    assert!(text.contains("shards_unreachable_names:shard-2\r\n"), "{text}");
    let names: Vec<String> = fields(&text).into_iter().map(|(n, _)| n).collect();
    for s in SECTIONS {
        assert!(names.iter().any(|n| n == s), "# {s} with a shard down");
    }
    assert!(text.contains("used_memory:"), "{text}");
}

//! Unit tests of INFO's section selection and of merging the shards' sections.

use super::*;
use crate::protocol::Protocol;
use bytes::{Bytes, BytesMut};

#[test]
fn sections_asked_for() {
    let args = |s: &str| s.split(' ').map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>();
    let w = |s: &str| {
        let a = args(s);
        let r: Vec<&[u8]> = a.iter().map(|x| x.as_slice()).collect();
        wanted(&r)
    };
    assert_eq!(w("INFO").len(), SECTIONS.len() - 2);
    assert!(!w("INFO default").contains(&"commandstats"));
    assert_eq!(w("info EVERYTHING").len(), SECTIONS.len());
    assert_eq!(w("INFO all").len(), SECTIONS.len());
    assert_eq!(w("INFO commandstats"), ["commandstats"]);
    assert_eq!(w("INFO clients server"), ["server", "clients"]);
    assert!(w("INFO nosuchsection").is_empty());
}

#[test]
fn shard_sections_are_summed() {
    let a = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nmaxmemory_policy:noeviction\r\nmem_fragmentation_ratio:1.50\r\n\r\n# Persistence\r\nloading:0\r\nrdb_last_save_time:200\r\nrdb_bgsave_in_progress:1\r\nrdb_last_bgsave_status:ok\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=100\r\n";
    let b = "# Memory\r\nused_memory:2048\r\nused_memory_human:2.00K\r\nmaxmemory_policy:noeviction\r\nmem_fragmentation_ratio:2.50\r\n\r\n# Persistence\r\nloading:0\r\nrdb_last_save_time:100\r\nrdb_bgsave_in_progress:0\r\nrdb_last_bgsave_status:err\r\n\r\n# Keyspace\r\ndb0:keys=2,expires=3,avg_ttl=300\r\n";
    let info = Info::new(
        vec!["memory", "persistence", "keyspace", "proxy"],
        vec![("proxy", "# Proxy\r\nshards:3\r\n\r\n".to_string())],
        vec![("memory", "proxy_used_memory_rss", "7".to_string())],
        vec!["a".into(), "b".into(), "c".into()],
    );
    let frame = |t: &str| Some(Ok(Bytes::from(format!("${}\r\n{t}\r\n", t.len()))));
    let mut buf = BytesMut::new();
    info.finish(
        vec![frame(a), None, frame(b)],
        &mut Encoder::new(&mut buf, Protocol::Resp2),
    );
    let out = String::from_utf8_lossy(&buf).into_owned();
    for want in [
        "used_memory:3072\r\n",
        "used_memory_human:3.00K\r\n",
        "maxmemory_policy:noeviction\r\n",
        "mem_fragmentation_ratio:2.50\r\n",
        "proxy_used_memory_rss:7\r\n",
        "rdb_last_save_time:100\r\n",
        "rdb_bgsave_in_progress:1\r\n",
        "rdb_last_bgsave_status:err\r\n",
        "db0:keys=5,expires=4,avg_ttl=250\r\n",
        "# Proxy\r\nshards_unreachable:1\r\nshards_unreachable_names:b\r\nshards:3\r\n",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    assert!(out.ends_with("shards:3\r\n\r\n"), "{out:?}");
}

#[test]
fn command_and_latency_stats_are_merged() {
    assert_eq!(
        combine(
            "cmdstat_get",
            &[
                "calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0",
                "calls=3,usec=5,usec_per_call=1.67,rejected_calls=1,failed_calls=0",
            ]
        ),
        "calls=5,usec=15,usec_per_call=3.00,rejected_calls=1,failed_calls=0"
    );
    assert_eq!(
        combine(
            "latency_percentiles_usec_get",
            &["p50=1.003,p99=2.007", "p50=3.001,p99=1.000"]
        ),
        "p50=3.001,p99=2.007"
    );
}

#[test]
fn huge_shard_numbers_saturate() {
    // Found by fuzz/merge: sums and avg_ttl's weighting overflowed (a
    // panic in debug builds, nonsense in release).
    let max = i64::MAX.to_string();
    assert_eq!(combine("used_memory", &[&max, "1"]), max);
    let big = format!("keys=1,expires={},avg_ttl={}", i128::MAX, i128::MAX);
    let out = combine_subfields(&[&big, &big]);
    assert!(out.starts_with(&format!("keys=2,expires={}", i128::MAX)), "{out}");
}

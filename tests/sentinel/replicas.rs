//! Reads on replicas (part of `tests/sentinel.rs`): reads spread over two
//! Sentinel-listed replicas (their `INFO commandstats`), a dead replica
//! skipped, the master once none is left; static replicas with
//! `read_from = "prefer-replica"`, and a shard whose `addr` is a replica
//! refusing writes (the ROLE check).

use std::time::Duration;

use super::support::{Proxy, RedisNode, ask, wait_replica_synced, wait_until_async};
use super::{Group, calls, info, serial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_skip_a_dead_one() {
    let _serial = serial().await;
    let mut g = Group::start(1, 2);
    let proxy = Proxy::start_text(
        &g.config("poll_ms = 200", "read_from = \"replica\"\nmax_replica_lag_ms = 2000"),
        0,
    )
    .await;
    let mut c = proxy.conn().await;
    wait_until_async(Duration::from_secs(5), "both replicas usable", async || {
        let t = info(&mut c, "proxy").await;
        t.matches("@ok/").count() == 2
    })
    .await;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("r{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Replication is asynchronous: wait until both replicas have the writes.
    for r in &g.replicas[0] {
        let port = r.port;
        wait_until_async(Duration::from_secs(5), "replicas to have the keys", async || {
            ask(port, &["DBSIZE"]).trim() == ":50"
        })
        .await;
    }
    let (m_get, r_get) = (
        calls(&g.masters[0], "get"),
        [calls(&g.replicas[0][0], "get"), calls(&g.replicas[0][1], "get")],
    );
    for round in 0..4 {
        for i in 0..50 {
            let v: i64 = redis::cmd("GET")
                .arg(format!("r{i}"))
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(v, i, "round {round}");
        }
    }
    let m_after = calls(&g.masters[0], "get") - m_get;
    let r_after = [
        calls(&g.replicas[0][0], "get") - r_get[0],
        calls(&g.replicas[0][1], "get") - r_get[1],
    ];
    println!("200 GETs: master {m_after}, replicas {r_after:?}");
    assert_eq!(m_after, 0, "reads went to the master");
    assert_eq!(r_after[0] + r_after[1], 200);
    assert!(
        r_after[0] >= 50 && r_after[1] >= 50,
        "not spread over the replicas: {r_after:?}"
    );
    // Writes: all on the master, none refused by a replica.
    assert_eq!(calls(&g.masters[0], "set"), 50);
    for r in &g.replicas[0] {
        assert!(
            !ask(r.port, &["INFO", "errorstats"]).contains("READONLY"),
            "a write reached a replica"
        );
    }

    // A dead replica is skipped: every read succeeds, on the other one.
    g.replicas[0][0].kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = calls(&g.replicas[0][1], "get");
    let mut failed = 0;
    for i in 0..50 {
        let r: redis::RedisResult<i64> = redis::cmd("GET").arg(format!("r{i}")).query_async(&mut c).await;
        if r.is_err() {
            failed += 1;
        }
    }
    let on_live = calls(&g.replicas[0][1], "get") - before;
    println!("after killing a replica: {failed} failed reads of 50, {on_live} on the live replica");
    assert_eq!(failed, 0);
    assert_eq!(on_live, 50);
    // The next lag check marks it skipped too (INFO proxy).
    let mut t = String::new();
    wait_until_async(Duration::from_secs(2), "the dead replica marked skipped", async || {
        t = info(&mut c, "proxy").await;
        t.contains("@skipped/")
    })
    .await;
    println!("{}", t.lines().find(|l| l.starts_with("shard0:")).unwrap_or(""));

    // No replica left: read_from = "replica" falls back to the master.
    g.replicas[0][1].kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = calls(&g.masters[0], "get");
    for i in 0..10 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("r{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, i);
    }
    assert_eq!(calls(&g.masters[0], "get") - before, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_replicas_and_the_role_check_without_sentinel() {
    let _serial = serial().await;
    let master = RedisNode::start();
    let replica = RedisNode::start_replica_of(&master);
    wait_replica_synced(replica.port);
    let timeouts = "[timeouts]\ncommand_ms = 500\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n";
    // read_from = "prefer-replica": reads spread over the static replica and the master.
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{timeouts}[[backends]]\nname = \"s\"\naddr = \"{}\"\nreplicas = [\"{}\"]\nread_from = \"prefer-replica\"\n",
        master.addr(),
        replica.addr()
    );
    let proxy = Proxy::start_text(&text, 0).await;
    let mut c = proxy.conn().await;
    wait_until_async(Duration::from_secs(5), "the replica usable", async || {
        info(&mut c, "proxy").await.contains("@ok/")
    })
    .await;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let port = replica.port;
    wait_until_async(Duration::from_secs(5), "the write replicated", async || {
        ask(port, &["GET", "k"]).contains("v")
    })
    .await;
    let (before_r, before_m) = (calls(&replica, "get"), calls(&master, "get"));
    for _ in 0..20 {
        let v: String = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
        assert_eq!(v, "v");
    }
    let (on_r, on_m) = (calls(&replica, "get") - before_r, calls(&master, "get") - before_m);
    println!("prefer-replica, 20 GETs: replica {on_r}, master {on_m}");
    assert!(
        on_r + on_m == 20 && on_r >= 8 && on_m >= 8,
        "not spread over the replica and the master: replica {on_r}, master {on_m}"
    );
    // With the replica gone, every read goes to the master, none fails; writes go on.
    drop(replica);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_m = calls(&master, "get");
    for _ in 0..10 {
        let v: String = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
        assert_eq!(v, "v");
    }
    assert_eq!(calls(&master, "get") - before_m, 10);
    let _: () = redis::cmd("SET").arg("k").arg("w").query_async(&mut c).await.unwrap();
    drop(proxy);

    // A shard whose `addr` is a replica: nothing is sent to it.
    let replica = RedisNode::start_replica_of(&master);
    wait_replica_synced(replica.port);
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{timeouts}[[backends]]\nname = \"wrong\"\naddr = \"{}\"\nreplicas = [\"{}\"]\n",
        replica.addr(),
        master.addr()
    );
    let proxy = Proxy::start_text(&text, 0).await;
    let mut c = proxy.conn().await;
    let sets = calls(&replica, "set");
    let e = redis::cmd("SET")
        .arg("k")
        .arg("x")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    println!("write to a shard whose addr is a replica: {e}");
    assert!(e.to_string().contains("backend wrong unavailable"), "{e}");
    assert!(e.to_string().contains("not a master"), "{e}");
    assert_eq!(calls(&replica, "set"), sets, "a write reached the replica");
    let t = info(&mut c, "proxy").await;
    assert!(!t.contains("role_refusals=0"), "{t}");
}

//! The admin HTTP endpoint (`[admin] listen`): `/metrics` counts the right
//! command and shard, `/readyz` follows a shard going down and coming back,
//! `/api/status` has the shards, a migration shows its progress, and a
//! shard's replicas and role-check refusals show in both.

use std::net::SocketAddr;
use std::time::Duration;

use redis::AsyncCommands;
use shardis::admin::metrics::{summary, value};

use crate::support::{Proxy, RedisNode, http_get, wait_replica_synced, wait_until_async};

const EXTRA: &str = "[timeouts]\ncommand_ms = 1000\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n[admin]\nlisten = \"127.0.0.1:0\"\n";

fn admin(p: &Proxy) -> SocketAddr {
    p.admin.expect("the admin endpoint is on")
}

async fn metrics(p: &Proxy) -> String {
    let (code, body) = http_get(admin(p), "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn status(p: &Proxy) -> serde_json::Value {
    let (code, body) = http_get(admin(p), "/api/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_command_and_shard() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let p = Proxy::start_on(&refs, EXTRA, 2).await;
    let (code, body) = http_get(admin(&p), "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let mut c = p.conn().await;
    // All on one shard (a hash tag), so its counter must move by at least 30.
    for i in 0..20 {
        let _: () = c.set(format!("{{t}}:{i}"), i).await.unwrap();
    }
    for i in 0..10 {
        let _: Option<i64> = c.get(format!("{{t}}:{i}")).await.unwrap();
    }
    // redis-rs's CLIENT SETINFO (Redis 7.2) has its own label: only the
    // unknown command below counts as unknown.
    let before = value(&metrics(&p).await, "shardis_commands_total{command=\"unknown\"}").unwrap_or(0.0);
    let _: Result<(), _> = redis::cmd("NOSUCHCMD").query_async(&mut c).await;
    let _: Vec<Option<i64>> = c.mget(&["a", "b", "c", "d", "e"]).await.unwrap();
    let shard = format!("shard-{}", p.shard_of("{t}:0"));
    let text = metrics(&p).await;
    let get = |s: &str| value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{}", summary(&text, "shardis_")));
    assert!(get("shardis_commands_total{command=\"set\"}") >= 20.0);
    assert!(get("shardis_commands_total{command=\"get\"}") >= 10.0);
    assert_eq!(get("shardis_commands_total{command=\"unknown\"}"), before + 1.0);
    assert_eq!(get("shardis_command_errors_total{command=\"unknown\"}"), 1.0);
    assert!(get(&format!("shardis_shard_requests_total{{shard=\"{shard}\"}}")) >= 30.0);
    // Latency is timed on one read in 8 (counters::TIME_ONE_IN), the first included.
    assert!(get(&format!("shardis_shard_duration_seconds_count{{shard=\"{shard}\"}}")) >= 1.0);
    assert!(get("shardis_command_duration_seconds_count{class=\"write\"}") >= 1.0);
    assert!(get("shardis_command_duration_seconds_count{class=\"read\"}") >= 1.0);
    assert!(get("shardis_fanout_total{kind=\"split\"}") >= 1.0);
    assert!(get("shardis_client_bytes_received_total") > 0.0);
    assert!(get("shardis_client_bytes_sent_total") > 0.0);
    assert_eq!(get("shardis_clients_connected"), 1.0);
    assert_eq!(get("shardis_config_epoch"), p.shared.topology.load().epoch as f64);
    for i in 0..3 {
        assert!(get(&format!("shardis_backend_connections{{shard=\"shard-{i}\"}}")) >= 1.0);
        assert_eq!(get(&format!("shardis_shard_up{{shard=\"shard-{i}\"}}")), 1.0);
    }
    assert!(text.contains("# TYPE shardis_shard_duration_seconds histogram"));
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_dead_shard_until_it_is_back() {
    let mut nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let p = Proxy::start_with(&refs, EXTRA).await;
    let a = admin(&p);
    wait_until_async(Duration::from_secs(10), "ready", async || {
        http_get(a, "/readyz").await.0 == 200
    })
    .await;
    nodes[1].kill();
    wait_until_async(Duration::from_secs(10), "not ready", async || {
        http_get(a, "/readyz").await.0 == 503
    })
    .await;
    let (_, body) = http_get(a, "/readyz").await;
    assert!(body.contains("shard-1"), "{body}");
    assert!(!body.contains("shard-0"), "{body}");
    let st = status(&p).await;
    assert_eq!(st["shards"][1]["up"], false);
    assert_eq!(st["shards"][0]["up"], true);
    nodes[1].restart();
    wait_until_async(Duration::from_secs(10), "ready again", async || {
        http_get(a, "/readyz").await.0 == 200
    })
    .await;
    let text = metrics(&p).await;
    assert!(value(&text, "shardis_backend_reconnects_total{shard=\"shard-1\"}").unwrap_or(0.0) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_describes_the_proxy() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let redlock = "[redlock]\nkeys = [\"lock:*\"]\n";
    let p = Proxy::start_with(&refs, &format!("{EXTRA}{redlock}")).await;
    let mut c = p.conn().await;
    let _: () = c.set("k", 1).await.unwrap();
    // The pools connect in the background: every shard up first.
    let a = admin(&p);
    wait_until_async(Duration::from_secs(10), "ready", async || {
        http_get(a, "/readyz").await.0 == 200
    })
    .await;
    let st = status(&p).await;
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["epoch"], p.shared.topology.load().epoch);
    assert_eq!(st["clients"]["connected"], 1);
    let shards = st["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3);
    let share: f64 = shards.iter().map(|s| s["slot_share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "{share}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["name"], format!("shard-{i}"));
        assert_eq!(s["addr"], nodes[i].addr());
        assert_eq!(s["up"], true);
    }
    assert!(st["migration"].is_null());
    assert_eq!(st["locks"]["enabled"], true);
    assert_eq!(st["locks"]["members"].as_array().map(Vec::len), Some(3));
    assert!(st["fleet"].is_null());
    // The page is served and polls the API.
    let (code, page) = http_get(admin(&p), "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("/api/status"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_shows_in_status_and_metrics() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let p = Proxy::start_on(&refs[..3], EXTRA, 2).await;
    let mut c = p.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.set(format!("m:{i}"), i).ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    // Add a fourth shard: keys move to it.
    let text = shardis::testkit::config_text(&refs, EXTRA);
    let dir = std::env::temp_dir().join(format!("shardis-admin-mig-{}", p.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    shardis::control::reload_forced(&p.shared, &path, false)
        .await
        .expect("reload");
    let _ = std::fs::remove_dir_all(&dir);
    let st = status(&p).await;
    let m = &st["migration"];
    assert!(m.is_object(), "{st}");
    assert_eq!(m["shards_total"], 3);
    assert!(m["percent"].as_f64().is_some());
    wait_until_async(Duration::from_secs(30), "migration done", async || {
        status(&p).await["migration"]["in_progress"] == false
    })
    .await;
    let st = status(&p).await;
    let m = &st["migration"];
    assert_eq!(m["percent"], 100.0);
    assert!(m["keys_moved"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(st["shards"].as_array().map(Vec::len), Some(4));
    let text = metrics(&p).await;
    assert_eq!(value(&text, "shardis_migration_in_progress"), Some(0.0));
    assert_eq!(value(&text, "shardis_migration_keys_moved"), m["keys_moved"].as_f64());
    assert_eq!(value(&text, "shardis_migration_shards_total"), Some(3.0));
    assert_eq!(value(&text, "shardis_config_epoch"), st["epoch"].as_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_role_refusals_show_in_status_and_metrics() {
    let master = RedisNode::start();
    let mut replica = RedisNode::start_replica_of(&master);
    let plain = RedisNode::start();
    let port = replica.port;
    tokio::task::spawn_blocking(move || wait_replica_synced(port))
        .await
        .unwrap();
    let (m, r) = (master.addr(), replica.addr());
    // `good` reads from its static replica; `wrong`'s address is a replica
    // (its ROLE check refuses every connection); `plain` checks nothing.
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{EXTRA}[[backends]]\nname = \"good\"\naddr = \"{m}\"\nreplicas = [\"{r}\"]\n\
         read_from = \"replica\"\n[[backends]]\nname = \"wrong\"\naddr = \"{r}\"\nreplicas = [\"{m}\"]\n\
         [[backends]]\nname = \"plain\"\naddr = \"{}\"\n",
        plain.addr()
    );
    let p = Proxy::start_text(&text, 0).await;
    let replica_of = |st: &serde_json::Value| st["shards"][0]["replication"]["replicas"][0].clone();
    let mut st = serde_json::Value::Null;
    wait_until_async(Duration::from_secs(10), "the replica usable", async || {
        st = status(&p).await;
        replica_of(&st)["usable"] == true
    })
    .await;
    let good = &st["shards"][0]["replication"];
    assert_eq!(good["master"], m, "{st}");
    assert_eq!(good["read_from"], "replica");
    assert_eq!(good["failovers"], 0);
    assert!(good["sentinel_master"].is_null());
    assert_eq!(replica_of(&st)["addr"], r);
    assert_eq!(replica_of(&st)["why"], "");
    assert!(st["shards"][2]["replication"].is_null(), "a plain shard: {st}");
    wait_until_async(Duration::from_secs(10), "a refused connection to `wrong`", async || {
        value(
            &metrics(&p).await,
            "shardis_backend_role_refusals_total{shard=\"wrong\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;

    // Reads on `good` go to the replica and are counted.
    let key = (0..).map(|i| format!("g{i}")).find(|k| p.shard_of(k) == 0).unwrap();
    let mut c = p.conn().await;
    for _ in 0..10 {
        let _: Option<String> = c.get(&key).await.unwrap();
    }
    let text = metrics(&p).await;
    let get = |s: &str| value(&text, s).unwrap_or_else(|| panic!("no {s} in\n{}", summary(&text, "shardis_")));
    let rl = format!("{{shard=\"good\",replica=\"{r}\"}}");
    assert_eq!(
        get(&format!("shardis_shard_master{{shard=\"good\",addr=\"{m}\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "shardis_shard_master{{shard=\"plain\",addr=\"{}\"}}",
            plain.addr()
        )),
        1.0
    );
    assert_eq!(get("shardis_shard_failovers_total{shard=\"good\"}"), 0.0);
    assert_eq!(get("shardis_backend_role_refusals_total{shard=\"good\"}"), 0.0);
    assert_eq!(get("shardis_backend_role_refusals_total{shard=\"plain\"}"), 0.0);
    assert_eq!(get(&format!("shardis_replica_usable{rl}")), 1.0);
    assert_eq!(get(&format!("shardis_replica_role_refusals_total{rl}")), 0.0);
    assert!(get(&format!("shardis_replica_lag_seconds{rl}")) < 1.0);
    assert_eq!(get("shardis_replica_reads_total{shard=\"good\"}"), 10.0);
    assert_eq!(get("shardis_replica_fallbacks_total{shard=\"good\"}"), 0.0);
    assert!(value(&text, "shardis_replica_reads_total{shard=\"plain\"}").is_none());
    let st = status(&p).await;
    let refused = st["shards"][1]["replication"]["role_refusals"].as_u64().unwrap_or(0);
    assert!(refused >= 1, "{st}");

    // A killed replica: skipped (usable 0, with the reason), reads fall back to the master.
    replica.kill();
    let mut why = String::new();
    wait_until_async(Duration::from_secs(10), "the dead replica skipped", async || {
        let st = status(&p).await;
        why = replica_of(&st)["why"].as_str().unwrap_or("").to_string();
        replica_of(&st)["usable"] == false
    })
    .await;
    assert!(!why.is_empty());
    for _ in 0..5 {
        let _: Option<String> = c.get(&key).await.unwrap();
    }
    let text = metrics(&p).await;
    assert_eq!(value(&text, &format!("shardis_replica_usable{rl}")), Some(0.0), "{why}");
    assert_eq!(
        value(&text, "shardis_replica_fallbacks_total{shard=\"good\"}"),
        Some(5.0)
    );
    assert_eq!(value(&text, "shardis_replica_reads_total{shard=\"good\"}"), Some(10.0));
}

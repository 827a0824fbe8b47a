//! A replica that falls behind is skipped, and the admin endpoint says so
//! (part of `tests/sentinel.rs`): one Sentinel-followed master, two
//! replicas, `read_from = "replica"`, `max_replica_lag_ms = 400`, a poll
//! every 150 ms, and a writer writing to the master through the proxy all
//! along.
//!
//! - One replica is SIGSTOPped: the proxy stops reading from it (for
//!   whichever reason it sees first: its INFO times out, its pool cannot
//!   connect, the Sentinels call it down); every read then succeeds on the
//!   other replica. After SIGCONT it catches up and takes reads again.
//! - One replica stops applying the replication stream while it still
//!   answers (`CLIENT PAUSE ... WRITE` on it: Redis then leaves the master's
//!   stream unprocessed): the proxy skips it as `lagging`, `/api/status` and
//!   `/metrics` show the lag; after `CLIENT UNPAUSE` it is read from again.
//!
//! Both wait on conditions with generous timeouts (a loaded 2-core machine).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::Value;
use shardis::admin::metrics::{summary, value};

use super::support::{Proxy, ask, http_get, wait_until_async};
use super::{Group, calls, serial};

/// `/api/status` of the proxy's admin endpoint.
pub(super) async fn status(admin: SocketAddr) -> Value {
    let (code, body) = http_get(admin, "/api/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// `/metrics` of the proxy's admin endpoint.
pub(super) async fn metrics(admin: SocketAddr) -> String {
    let (code, body) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The replica `addr` of shard 0 in a status.
fn replica<'a>(st: &'a Value, addr: &str) -> &'a Value {
    st["shards"][0]["replication"]["replicas"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["addr"] == addr))
        .unwrap_or(&Value::Null)
}

/// Waits until the replica `addr` is usable (`true`) or skipped, by
/// `/api/status`; the status then.
async fn wait_usable(admin: SocketAddr, addr: &str, usable: bool, what: &str) -> Value {
    let mut st = Value::Null;
    wait_until_async(Duration::from_secs(30), what, async || {
        st = status(admin).await;
        replica(&st, addr)["usable"] == usable
    })
    .await;
    st
}

/// `n` GETs of the keys `lag:0..` through the proxy: how many failed.
async fn read_all(c: &mut MultiplexedConnection, n: usize) -> usize {
    let mut failed = 0;
    for i in 0..n {
        let r: redis::RedisResult<i64> = redis::cmd("GET").arg(format!("lag:{}", i % 50)).query_async(c).await;
        if r.ok() != Some((i % 50) as i64) {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_or_stopped_replica_is_skipped_and_comes_back() {
    let _serial = serial().await;
    let g = Group::start(1, 2);
    let cfg = g.config(
        "poll_ms = 150\n[admin]\nlisten = \"127.0.0.1:0\"",
        "read_from = \"replica\"\nmax_replica_lag_ms = 400",
    );
    let proxy = Proxy::start_text(&cfg, 0).await;
    let admin = proxy.admin.expect("the admin endpoint is on");
    let (ra, rb) = (&g.replicas[0][0], &g.replicas[0][1]);
    let mut c = proxy.conn().await;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("lag:{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    for r in [ra, rb] {
        wait_usable(admin, &r.addr(), true, "both replicas usable").await;
        let port = r.port;
        wait_until_async(Duration::from_secs(10), "the keys replicated", async || {
            ask(port, &["DBSIZE"]).trim() == ":50"
        })
        .await;
    }
    let st = status(admin).await;
    let repl = &st["shards"][0]["replication"];
    assert_eq!(repl["master"], g.masters[0].addr(), "{st}");
    assert_eq!(repl["sentinel_master"], "shard-0", "{st}");
    assert_eq!(repl["read_from"], "replica", "{st}");
    assert_eq!(repl["failovers"], 0, "{st}");
    assert_eq!(repl["role_refusals"], 0, "{st}");
    assert!(repl["role_checks"].as_u64().unwrap_or(0) >= 1, "{st}");

    // The writer: the master's replication offset moves all along.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut wc = proxy.conn().await;
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let r: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(format!("w:{}", i % 500))
                    .arg(i)
                    .query_async(&mut wc)
                    .await;
                if r.is_ok() {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // 1. A stopped replica.
    ra.pause();
    let st = wait_usable(admin, &ra.addr(), false, "the stopped replica skipped").await;
    let why_stopped = replica(&st, &ra.addr())["why"].as_str().unwrap_or("").to_string();
    let text = metrics(admin).await;
    let usable_a = format!("shardis_replica_usable{{shard=\"shard-0\",replica=\"{}\"}}", ra.addr());
    let usable_b = format!("shardis_replica_usable{{shard=\"shard-0\",replica=\"{}\"}}", rb.addr());
    assert_eq!(
        value(&text, &usable_a),
        Some(0.0),
        "{}",
        summary(&text, "shardis_replica")
    );
    let (m0, b0) = (calls(&g.masters[0], "get"), calls(rb, "get"));
    let failed = read_all(&mut c, 100).await;
    let (on_master, on_b) = (calls(&g.masters[0], "get") - m0, calls(rb, "get") - b0);
    println!(
        "replica stopped, skipped as `{why_stopped}`: {failed} failed reads of 100, {on_b} on the other replica, {on_master} on the master"
    );
    assert_eq!(failed, 0);
    assert_eq!((on_b, on_master), (100, 0), "reads not all on the live replica");
    ra.resume();
    wait_usable(admin, &ra.addr(), true, "the resumed replica usable again").await;
    let a0 = calls(ra, "get");
    assert_eq!(read_all(&mut c, 100).await, 0);
    let on_a = calls(ra, "get") - a0;
    println!("resumed: {on_a} of 100 reads on it");
    assert!(on_a >= 30, "the resumed replica takes too few reads: {on_a}");

    // 2. A replica that answers but no longer applies its master's stream.
    let paused = ask(rb.port, &["CLIENT", "PAUSE", "60000", "WRITE"]);
    assert!(paused.starts_with("+OK"), "CLIENT PAUSE: {paused}");
    let st = wait_usable(admin, &rb.addr(), false, "the lagging replica skipped").await;
    let r = replica(&st, &rb.addr()).clone();
    let text = metrics(admin).await;
    let lag = value(
        &text,
        &format!(
            "shardis_replica_lag_seconds{{shard=\"shard-0\",replica=\"{}\"}}",
            rb.addr()
        ),
    )
    .unwrap_or(0.0);
    println!("replica paused: {r}; lag metric {lag} s");
    assert_eq!(r["why"], "lagging", "{st}");
    assert!(r["lag_ms"].as_u64().unwrap_or(0) >= 400, "{r}");
    assert!(lag >= 0.4, "{}", summary(&text, "shardis_replica"));
    assert_eq!(value(&text, &usable_b), Some(0.0));
    assert_eq!(value(&text, &usable_a), Some(1.0));
    let (m0, a0) = (calls(&g.masters[0], "get"), calls(ra, "get"));
    let failed = read_all(&mut c, 100).await;
    let (on_master, on_a) = (calls(&g.masters[0], "get") - m0, calls(ra, "get") - a0);
    println!("lagging: {failed} failed reads of 100, {on_a} on the other replica, {on_master} on the master");
    assert_eq!(failed, 0);
    assert_eq!((on_a, on_master), (100, 0), "reads not all on the replica in step");
    let unpaused = ask(rb.port, &["CLIENT", "UNPAUSE"]);
    assert!(unpaused.starts_with("+OK"), "CLIENT UNPAUSE: {unpaused}");
    wait_usable(admin, &rb.addr(), true, "the caught-up replica usable again").await;
    let b0 = calls(rb, "get");
    assert_eq!(read_all(&mut c, 100).await, 0);
    let on_b = calls(rb, "get") - b0;
    println!("caught up: {on_b} of 100 reads on it");
    assert!(on_b >= 30, "the caught-up replica takes too few reads: {on_b}");

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let text = metrics(admin).await;
    println!(
        "{} writes during the test; {}",
        written.load(Ordering::Relaxed),
        summary(&text, "shardis_replica").replace('\n', "; ")
    );
    assert!(written.load(Ordering::Relaxed) > 100, "the writer made little progress");
    assert_eq!(value(&text, &usable_a), Some(1.0));
    assert_eq!(value(&text, &usable_b), Some(1.0));
    assert_eq!(
        value(&text, "shardis_replica_fallbacks_total{shard=\"shard-0\"}"),
        Some(0.0)
    );
    assert!(value(&text, "shardis_replica_reads_total{shard=\"shard-0\"}").unwrap_or(0.0) >= 400.0);
}

//! The `shardis` binary: `--check`, start-up, and SIGHUP reloads that swap the
//! topology while clients keep working.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{NodeClient, RedisNode, free_port, wait_for_ping, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_shardis");

fn config(listen: u16, nodes: &[&RedisNode], names: &[&str]) -> String {
    let mut s = format!("listen = \"127.0.0.1:{listen}\"\n[timeouts]\ncommand_ms = 1000\n");
    for (n, name) in nodes.iter().zip(names) {
        s.push_str(&format!("[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n", n.addr()));
    }
    s
}

fn migration_field(c: &mut redis::Connection, field: &str) -> String {
    let text: String = redis::cmd("INFO").arg("migration").query(c).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn info_field(c: &mut redis::Connection, field: &str) -> String {
    let text: String = redis::cmd("INFO").arg("proxy").query(c).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn check_flag_validates_and_names_the_problem() {
    let dir = std::env::temp_dir().join(format!("shardis-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for (text, needle) in [
        ("backends = []", "backends: at least one backend"),
        (
            "[[backends]]\nname = \"a\"\naddr = \"h:1\"\n[[backends]]\nname = \"a\"\naddr = \"h:2\"\n",
            "backends[1].name: duplicate",
        ),
        (
            "[[backends]]\nname = \"a\"\naddr = \"h:1\"\nweight = 0\n",
            "backends[0].weight",
        ),
        ("[[backends]]\nname = \"a\"\naddr = \"nohost\"\n", "backends[0].addr"),
        (
            "admin_password = \"\"\n[[backends]]\nname = \"a\"\naddr = \"h:1\"\n",
            "admin_password",
        ),
        (
            "[[backends]]\nname = \"a\"\naddr = \"h:1\"\nbogus = 1\n",
            "unknown field `bogus`",
        ),
    ] {
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(BIN)
            .args(["--check", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // Without --check an invalid config also starts nothing.
    let bad = dir.join("bad.toml");
    let out = Command::new(BIN).args(["--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_swaps_the_topology_under_load() {
    let nodes: Vec<RedisNode> = (0..4).map(|_| RedisNode::start()).collect();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("shardis-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let three: Vec<&RedisNode> = nodes.iter().take(3).collect();
    let all: Vec<&RedisNode> = nodes.iter().collect();
    std::fs::write(&path, config(port, &three, &["a", "b", "c"])).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id() as i32;
    // The log is read as it comes: the test waits for lines in it (and a
    // full pipe would stall the proxy).
    let log = Arc::new(Mutex::new(String::new()));
    let log_reader = {
        let (stderr, log) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let guard = Kill(child);
    wait_for_ping(port);
    let url = format!("redis://127.0.0.1:{port}/");
    let mut c = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    assert_eq!(info_field(&mut c, "epoch"), "1");
    assert_eq!(info_field(&mut c, "shards"), "3");

    // Clients keep writing and reading through the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, ops, url) = (stop.clone(), ops.clone(), url.clone());
        std::thread::spawn(move || {
            let mut c = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("load:{}", i % 500);
                let _: () = redis::cmd("SET")
                    .arg(&k)
                    .arg(i)
                    .query(&mut c)
                    .expect("SET during reload");
                // Keys follow the ring: even when the key's owner changed
                // between the SET and the GET, the GET reads what was written.
                let v: Option<u64> = redis::cmd("GET").arg(&k).query(&mut c).expect("GET during reload");
                assert_eq!(v, Some(i), "read {v:?} after writing {i}");
                i += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_until(Duration::from_secs(5), "the client load to start", || {
        ops.load(Ordering::Relaxed) > 0
    });
    std::fs::write(&path, config(port, &all, &["a", "b", "c", "d"])).unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(Duration::from_secs(5), "the reload to be applied", || {
        info_field(&mut c, "epoch") == "2"
    });
    assert_eq!(info_field(&mut c, "shards"), "4");
    // New keys now reach the fourth shard.
    for i in 0..400 {
        let _: () = redis::cmd("SET").arg(format!("new:{i}")).arg(i).query(&mut c).unwrap();
    }
    let on_d: i64 = redis::cmd("DBSIZE").query(&mut nodes[3].client()).unwrap();
    assert!(on_d > 50, "the new shard got {on_d} of 400 new keys");

    // An invalid file is refused and the running topology stays.
    std::fs::write(
        &path,
        "[[backends]]\nname = \"a\"\naddr = \"x:1\"\n[[backends]]\nname = \"a\"\naddr = \"x:2\"\n",
    )
    .unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(Duration::from_secs(5), "the reload to be refused", || {
        log.lock().unwrap().contains("configuration reload refused")
    });
    assert_eq!(info_field(&mut c, "epoch"), "2");
    assert_eq!(info_field(&mut c, "shards"), "4");
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");

    // The admin command does the same and answers: the error for a bad file,
    // the new epoch for a good one.
    let e = redis::cmd("SHARDIS.RELOAD").query::<i64>(&mut c).unwrap_err();
    assert!(e.to_string().contains("duplicate backend name"), "{e}");
    assert_eq!(info_field(&mut c, "epoch"), "2");
    // Back to three shards while the client writes: d's keys move back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while migration_field(&mut c, "migration_in_progress") != "0" {
        assert!(Instant::now() < deadline, "the first migration did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&path, config(port, &three, &["a", "b", "c"])).unwrap();
    let epoch: i64 = redis::cmd("shardis.reload").query(&mut c).unwrap();
    assert_eq!(epoch, 3);
    assert_eq!(info_field(&mut c, "shards"), "3");
    while migration_field(&mut c, "migration_in_progress") != "0" {
        assert!(Instant::now() < deadline, "the second migration did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let on_d: i64 = redis::cmd("DBSIZE").query(&mut nodes[3].client()).unwrap();
    assert_eq!(on_d, 0, "the removed shard was drained");
    for i in 0..400 {
        let v: Option<i64> = redis::cmd("GET").arg(format!("new:{i}")).query(&mut c).unwrap();
        assert_eq!(v, Some(i), "new:{i} after the shard that held it left");
    }

    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the client saw no error during the reloads");
    assert!(ops.load(Ordering::Relaxed) > 100);
    drop(guard);
    log_reader.join().unwrap();
    let log = log.lock().unwrap();
    assert!(log.contains("shardis listening") && log.contains("epoch=1"), "{log}");
    assert!(log.contains("configuration reload refused"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `admin_password` set, SHARDIS.RELOAD needs SHARDIS.ADMIN first, on
/// each connection; a wrong password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_password_guards_reload() {
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let extra = "admin_password = \"s3cret\"\n";
    let proxy = crate::support::Proxy::start_with(&refs, extra).await;
    let dir = std::env::temp_dir().join(format!("shardis-admin-{}", proxy.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, crate::support::config_text(&refs, extra)).unwrap();
    proxy.shared.config_path.set(path).unwrap();
    let mut c = proxy.conn().await;
    let e = redis::cmd("SHARDIS.RELOAD")
        .query_async::<i64>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    let e = redis::cmd("SHARDIS.ADMIN")
        .arg("guess")
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid admin password"), "{e}");
    let ok: String = redis::cmd("SHARDIS.ADMIN")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let epoch: i64 = redis::cmd("SHARDIS.RELOAD").query_async(&mut c).await.unwrap();
    assert_eq!(epoch, 2);
    let mut other = proxy.conn().await;
    let e = redis::cmd("SHARDIS.RELOAD")
        .query_async::<i64>(&mut other)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "another connection is not admin: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}

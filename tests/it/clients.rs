//! Stock clients and tools against shardis: redis-py with its defaults,
//! redis-cli, redis-benchmark.

use std::process::Command;

use crate::support::{Proxy, three_nodes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_with_default_settings() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    crate::support::run_py("client_smoke.py", proxy.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_run_clean() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start(&refs).await;
    let port = proxy.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let cli = |args: &[&str]| {
            let o = Command::new("redis-cli")
                .args(["-p", &port])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        assert_eq!(cli(&["set", "user:1", "alice"]), "OK");
        assert_eq!(cli(&["set", "user:2", "bob"]), "OK");
        assert_eq!(cli(&["mget", "user:1", "user:2", "user:3"]), "alice\nbob"); // the trailing nil prints as an empty line
        assert_eq!(cli(&["--scan", "--pattern", "user:*"]).lines().count(), 2);
        Command::new("redis-benchmark")
            .args(["-p", &port, "-t", "set,get,mset", "-n", "2000", "-c", "20", "-q"])
            .output()
            .expect("redis-benchmark")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("WARNING") && !text.to_lowercase().contains("error"),
        "{text}"
    );
    for t in ["SET:", "GET:", "MSET (10 keys):"] {
        assert!(text.contains(t), "{t} missing in {text}");
    }
}

//! The status page in a real browser: a proxy in front of three real
//! `redis-server` shards (the first with a static replica it reads from)
//! with the admin endpoint on, Debian's headless Chromium loads `/`, runs
//! its JavaScript (which fetches `/api/status`), and the rendered DOM must
//! show the shards, their "up" badges, slot percentages, and the first
//! shard's master, failover count and usable replica. A screenshot goes to `target/browser-test/status.png`.
//!
//! Without Chromium (`chromium` or `chromium-browser` on PATH) the test says
//! SKIP and passes; scripts/install-deps.sh installs it.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use support::{Proxy, RedisNode};

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser"].into_iter().find_map(|b| {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| b.to_string())
    })
}

/// Runs headless Chromium on `url` with extra `args`; its stdout.
async fn run_chromium(bin: &str, url: &str, args: &[String]) -> String {
    let profile = std::env::temp_dir().join(format!("shardis-browser-{}", std::process::id()));
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1200,900",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finishes within 60 s")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the DOM's body (tags, styles and scripts stripped).
fn text_of(html: &str) -> String {
    let body = html.split_once("<body>").map_or(html, |(_, b)| b);
    let html = body.split_once("<script").map_or(body, |(b, _)| b);
    let mut out = String::new();
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_the_shards() {
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIP browser test: chromium is not installed (apt-get install -y chromium, or scripts/install-deps.sh)"
        );
        return;
    };
    let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let replica = RedisNode::start_replica_of(&nodes[0]);
    support::wait_replica_synced(replica.port);
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let extra = "[admin]\nlisten = \"127.0.0.1:0\"\n[redlock]\nkeys = [\"lock:*\"]\n";
    let first = format!("addr = \"{}\"\n", nodes[0].addr());
    let text = support::config_text(&refs, extra).replacen(
        &first,
        &format!("{first}replicas = [\"{}\"]\nread_from = \"replica\"\n", replica.addr()),
        1,
    );
    let p = Proxy::start_text(&text, 0).await;
    let admin = p.admin.expect("admin endpoint on");
    let mut c = p.conn().await;
    for i in 0..200 {
        let _: () = c.set(format!("k{i}"), i).await.expect("SET");
    }
    // The pools connect in the background: every shard up before the page loads.
    support::wait_until_async(Duration::from_secs(10), "ready", async || {
        support::http_get(admin, "/readyz").await.0 == 200
    })
    .await;
    support::wait_until_async(Duration::from_secs(10), "the replica usable", async || {
        let body = support::http_get(admin, "/api/status").await.1;
        body.contains("\"usable\":true")
    })
    .await;
    let url = format!("http://{admin}/");

    let dom = run_chromium(&bin, &url, &["--dump-dom".to_string()]).await;
    let text = text_of(&dom);
    for (i, node) in nodes.iter().enumerate() {
        assert!(
            text.contains(&format!("shard-{i}")),
            "shard-{i} missing from the page:\n{text}"
        );
        assert!(text.contains(&node.addr()), "address of shard-{i} missing:\n{text}");
    }
    assert!(text.matches(" up ").count() >= 3, "three 'up' badges expected:\n{text}");
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page reports an error:\n{text}"
    );
    let pct = regex_like_percent(&text);
    assert!(pct, "a slot share percentage expected:\n{text}");
    assert!(text.contains("Lock group") && text.contains("granted"), "{text}");
    // The replicated shard: its master, failovers, read mode and usable replica.
    let repl = text
        .split_once("Masters and replicas")
        .and_then(|(_, t)| t.split_once("Migration"))
        .map_or("", |(t, _)| t);
    for want in ["shard-0", "Failovers", "Role refusals", "replica reads", " usable "] {
        assert!(
            repl.contains(want),
            "{want:?} missing from the replication section:\n{repl}"
        );
    }
    assert!(repl.contains(&format!("{} ", replica.addr())), "the replica:\n{repl}");
    assert!(repl.contains(&nodes[0].addr()), "the master:\n{repl}");
    assert!(
        !repl.contains("shard-1"),
        "a plain shard in the replication section:\n{repl}"
    );

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-test");
    std::fs::create_dir_all(&dir).expect("create target/browser-test");
    let png = dir.join("status.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(&bin, &url, &[format!("--screenshot={}", png.display())]).await;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "no screenshot at {}", png.display());
    println!("status page screenshot: {}", png.display());
}

/// Whether `text` has a percentage like `33.3%`.
fn regex_like_percent(text: &str) -> bool {
    text.split_whitespace().any(|w| {
        w.strip_suffix('%')
            .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok_and(|v| v > 0.0 && v <= 100.0))
    })
}

//! Users and permissions (`[[users]]`): logins, NOPERM and WRONGPASS texts
//! compared with a plain redis-server given the same ACL user, key
//! patterns, admin commands, the legacy passwords, the failed-login limit,
//! redis-py with a username.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{Proxy, RedisNode, three_nodes};

const USERS: &str = r#"
[[users]]
name = "reader"
password = "rpass"
role = "read-only"

[[users]]
name = "writer"
password = "wpass"
role = "read-write"

[[users]]
name = "boss"
password_sha256 = "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
role = "admin"

[[users]]
name = "app"
password = "apass"
commands = "+@all -@admin"
keys = ["~app:*", "%R~shared:*"]

[[users]]
name = "news"
password = "npass"
commands = "+@all"
keys = ["allkeys"]
channels = ["&news:*"]

[[users]]
name = "off"
password = "x"
enabled = false
"#;

async fn conn_as(proxy_or_addr: &str, user: &str, pass: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{user}:{pass}@{proxy_or_addr}/"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("log in")
}

async fn users_proxy(nodes: &[RedisNode], extra: &str) -> Proxy {
    let refs: Vec<_> = nodes.iter().collect();
    Proxy::start_with(&refs, &format!("{extra}{USERS}")).await
}

/// The error of running `args` (code and text, as the client shows it).
async fn error_of(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(c).await {
        Ok(v) => panic!("{args:?} succeeded: {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

fn text(v: redis::Value) -> String {
    redis::from_redis_value::<String>(v).expect("a string reply")
}

async fn ok(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A plain redis-server with `rules` for user `u` (password `p`).
async fn redis_with_user(node: &RedisNode, u: &str, p: &str, rules: &str) -> redis::aio::MultiplexedConnection {
    let mut admin = redis::Client::open(format!("redis://{}/", node.addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(u).arg("on").arg(format!(">{p}"));
    for r in rules.split_whitespace() {
        cmd.arg(r);
    }
    let _: () = cmd.query_async(&mut admin).await.unwrap();
    conn_as(&node.addr(), u, p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_key_pattern_users_are_refused_as_redis_refuses() {
    let nodes = three_nodes();
    let proxy = users_proxy(&nodes, "").await;
    let addr = proxy.addr.to_string();
    let plain = RedisNode::start();

    let mut writer = conn_as(&addr, "writer", "wpass").await;
    ok(&mut writer, &["SET", "a", "1"]).await;
    let mut reader = conn_as(&addr, "reader", "rpass").await;
    assert_eq!(
        ok(&mut reader, &["GET", "a"]).await,
        redis::Value::BulkString(b"1".to_vec())
    );
    let mut redis_reader = redis_with_user(
        &plain,
        "reader",
        "rpass",
        "+@read +@connection -@admin -@dangerous -@write ~*",
    )
    .await;
    let want = error_of(&mut redis_reader, &["SET", "a", "2"]).await;
    assert_eq!(want, "NOPERM this user has no permissions to run the 'set' command");
    assert_eq!(error_of(&mut reader, &["SET", "a", "2"]).await, want);
    // The refusal leaves the connection open.
    assert_eq!(
        ok(&mut reader, &["GET", "a"]).await,
        redis::Value::BulkString(b"1".to_vec())
    );

    let mut app = conn_as(&addr, "app", "apass").await;
    let mut redis_app = redis_with_user(&plain, "app", "apass", "+@all -@admin ~app:* %R~shared:*").await;
    ok(&mut app, &["SET", "app:1", "v"]).await;
    ok(&mut app, &["GET", "shared:1"]).await;
    for args in [&["SET", "other", "v"][..], &["SET", "shared:1", "v"], &["GET", "other"]] {
        let want = error_of(&mut redis_app, args).await;
        assert_eq!(
            want,
            "NOPERM this user has no permissions to access one of the keys used as arguments"
        );
        assert_eq!(error_of(&mut app, args).await, want, "{args:?}");
    }
    // Across shards too: MGET checks every key before splitting.
    assert!(
        error_of(&mut app, &["MGET", "app:1", "other"])
            .await
            .starts_with("NOPERM")
    );
    // Inside MULTI a refused command aborts EXEC, as in Redis.
    ok(&mut app, &["MULTI"]).await;
    assert!(error_of(&mut app, &["SET", "other", "v"]).await.starts_with("NOPERM"));
    assert!(error_of(&mut app, &["EXEC"]).await.starts_with("EXECABORT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_patterns_are_checked_as_redis_checks_them() {
    let nodes = three_nodes();
    let proxy = users_proxy(&nodes, "").await;
    let plain = RedisNode::start();
    let mut news = conn_as(&proxy.addr.to_string(), "news", "npass").await;
    let mut redis_news = redis_with_user(&plain, "news", "npass", "+@all ~* &news:*").await;
    ok(&mut news, &["PUBLISH", "news:1", "m"]).await;
    ok(&mut news, &["SPUBLISH", "news:2", "m"]).await;
    // (A restricted subscriber's commands: tests/it/subscriber.rs.)
    let mut reader = conn_as(&proxy.addr.to_string(), "reader", "rpass").await;
    assert!(
        error_of(&mut reader, &["PSUBSCRIBE", "news:*"])
            .await
            .starts_with("NOPERM")
    );
    for args in [&["PUBLISH", "sport", "m"][..], &["SPUBLISH", "sport", "m"]] {
        let want = error_of(&mut redis_news, args).await;
        assert_eq!(
            want,
            "NOPERM this user has no permissions to access one of the channels used as arguments"
        );
        assert_eq!(error_of(&mut news, args).await, want, "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_need_the_admin_category() {
    let nodes = three_nodes();
    let proxy = users_proxy(&nodes, "").await;
    let addr = proxy.addr.to_string();
    let mut writer = conn_as(&addr, "writer", "wpass").await;
    for args in [
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"][..],
        &["CLIENT", "KILL", "ID", "999999"],
        &["SLOWLOG", "RESET"],
        &["MONITOR"],
        &["SHARDIS.RELOAD"],
        &["FLUSHALL"],
    ] {
        let cmd = args[..args.len().min(2)].join("|").to_ascii_lowercase();
        let name = if matches!(args[0], "MONITOR" | "SHARDIS.RELOAD" | "FLUSHALL") {
            args[0].to_ascii_lowercase()
        } else {
            cmd
        };
        assert_eq!(
            error_of(&mut writer, args).await,
            format!("NOPERM this user has no permissions to run the '{name}' command"),
        );
    }
    let mut boss = conn_as(&addr, "boss", "hunter2").await;
    ok(&mut boss, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
    ok(&mut boss, &["SLOWLOG", "RESET"]).await;
    let list = text(ok(&mut boss, &["CLIENT", "LIST"]).await);
    assert!(list.contains(" user=boss ") && list.contains(" user=writer "), "{list}");
    ok(&mut boss, &["FLUSHALL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_whoami_and_acl_introspection() {
    let nodes = three_nodes();
    let proxy = users_proxy(&nodes, "").await;
    let mut c = proxy.conn().await;
    // No `password` and users configured: the default user is off.
    assert_eq!(error_of(&mut c, &["GET", "a"]).await, "NOAUTH Authentication required.");
    let wrong = "WRONGPASS invalid username-password pair or user is disabled.";
    assert_eq!(error_of(&mut c, &["AUTH", "writer", "nope"]).await, wrong);
    assert_eq!(error_of(&mut c, &["AUTH", "ghost", "nope"]).await, wrong);
    assert_eq!(error_of(&mut c, &["AUTH", "off", "x"]).await, wrong);
    assert_eq!(error_of(&mut c, &["AUTH", "default", ""]).await, wrong);
    ok(&mut c, &["AUTH", "writer", "wpass"]).await;
    assert_eq!(
        ok(&mut c, &["ACL", "WHOAMI"]).await,
        redis::Value::BulkString(b"writer".to_vec())
    );
    // HELLO 3 AUTH switches user and protocol at once.
    let hello = ok(&mut c, &["HELLO", "3", "AUTH", "boss", "hunter2"]).await;
    assert!(format!("{hello:?}").contains("proto"), "{hello:?}");
    assert_eq!(
        ok(&mut c, &["ACL", "WHOAMI"]).await,
        redis::Value::BulkString(b"boss".to_vec())
    );
    let redis::Value::Array(users) = ok(&mut c, &["ACL", "USERS"]).await else {
        panic!("ACL USERS")
    };
    let users: Vec<String> = users.into_iter().map(text).collect();
    assert_eq!(users, ["app", "boss", "default", "news", "off", "reader", "writer"]);
    let redis::Value::Array(list) = ok(&mut c, &["ACL", "LIST"]).await else {
        panic!("ACL LIST")
    };
    let lines: Vec<String> = list.into_iter().map(text).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("user app on #") && l.ends_with(" ~app:* %R~shared:* &* +@all -@admin")),
        "{lines:?}"
    );
    let boss = "user boss on #f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7 ~* &* +@all";
    assert!(lines.iter().any(|l| l == boss), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("user off off #")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("wpass")), "{lines:?}");
    let redis::Value::Array(cats) = ok(&mut c, &["ACL", "CAT"]).await else {
        panic!("ACL CAT")
    };
    assert!(cats.into_iter().map(text).any(|c| c == "dangerous"));
    assert_eq!(
        ok(&mut c, &["ACL", "DRYRUN", "reader", "GET", "a"]).await,
        redis::Value::Okay
    );
    assert_eq!(
        text(ok(&mut c, &["ACL", "DRYRUN", "reader", "SET", "a", "b"]).await),
        "This user has no permissions to run the 'set' command"
    );
    assert!(error_of(&mut c, &["ACL", "SETUSER", "x"]).await.contains("proxy.toml"));
    let failures = proxy
        .shared
        .stats
        .auth_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failures, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_password_and_admin_password_keep_working() {
    let nodes = three_nodes();
    let refs: Vec<_> = nodes.iter().collect();
    let proxy = Proxy::start_with(&refs, "password = \"pw\"\nadmin_password = \"s3cret\"\n").await;
    let mut c = proxy.conn().await;
    assert_eq!(error_of(&mut c, &["GET", "a"]).await, "NOAUTH Authentication required.");
    ok(&mut c, &["AUTH", "pw"]).await;
    assert_eq!(
        ok(&mut c, &["ACL", "WHOAMI"]).await,
        redis::Value::BulkString(b"default".to_vec())
    );
    ok(&mut c, &["AUTH", "default", "pw"]).await;
    ok(&mut c, &["SET", "a", "1"]).await;
    assert!(
        error_of(&mut c, &["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await
            .contains("SHARDIS.ADMIN")
    );
    assert_eq!(
        error_of(&mut c, &["SHARDIS.ADMIN", "nope"]).await,
        "WRONGPASS invalid admin password"
    );
    assert_eq!(
        proxy
            .shared
            .stats
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    ok(&mut c, &["SHARDIS.ADMIN", "s3cret"]).await;
    ok(&mut c, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;

    // Legacy password beside users: `default` keeps it, the users log in too.
    let proxy = users_proxy(&nodes, "password = \"pw\"\n").await;
    let mut c = proxy.conn().await;
    ok(&mut c, &["AUTH", "pw"]).await;
    ok(&mut c, &["GET", "a"]).await;
    ok(&mut c, &["AUTH", "reader", "rpass"]).await;
    assert!(error_of(&mut c, &["SET", "a", "1"]).await.starts_with("NOPERM"));
    // RESET returns to the default user, which needs its password again.
    ok(&mut c, &["RESET"]).await;
    assert_eq!(error_of(&mut c, &["GET", "a"]).await, "NOAUTH Authentication required.");
}

/// Sends inline commands from a client bound to `from`, and returns each reply's first line.
async fn raw(addr: std::net::SocketAddr, from: &str, lines: &[&str]) -> Vec<String> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut out = Vec::new();
    for l in lines {
        w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut s))
            .await
            .unwrap()
            .unwrap();
        out.push(s.trim_end().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_per_source_ip() {
    let nodes = three_nodes();
    let proxy = users_proxy(&nodes, "").await;
    let addr = proxy.addr;
    let mut logged_in = conn_as(&addr.to_string(), "writer", "wpass").await;
    let wrong = "-WRONGPASS invalid username-password pair or user is disabled.";
    let bad: Vec<&str> = std::iter::repeat_n("AUTH writer nope", 10).collect();
    let replies = raw(addr, "127.0.0.1", &bad).await;
    assert!(replies.iter().all(|r| r == wrong), "{replies:?}");
    // The right password from the same IP is refused now, without a wait ...
    let t = std::time::Instant::now();
    assert_eq!(raw(addr, "127.0.0.1", &["AUTH writer wpass"]).await, [wrong]);
    assert!(t.elapsed() < Duration::from_secs(1));
    // ... while a client logged in before is served, and another IP logs in.
    ok(&mut logged_in, &["SET", "k", "v"]).await;
    assert_eq!(
        raw(addr, "127.0.0.2", &["AUTH writer wpass", "PING"]).await,
        ["+OK", "+PONG"]
    );
    let info = text(ok(&mut logged_in, &["INFO", "stats"]).await);
    assert!(info.contains("shardis_auth_failures:11"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_logs_in_with_a_username() {
    let nodes = three_nodes();
    let proxy = users_proxy(&nodes, "").await;
    crate::support::run_py("users.py", proxy.addr).await;
}

/// A reload (SHARDIS.RELOAD by a user allowed it) brings new users and
/// rules; a user removed can no longer log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_users() {
    let nodes = three_nodes();
    let refs: Vec<&RedisNode> = nodes.iter().collect();
    let proxy = users_proxy(&nodes, "").await;
    let dir = std::env::temp_dir().join(format!("shardis-users-{}", proxy.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let carol = "[[users]]\nname = \"carol\"\npassword = \"cpass\"\nrole = \"read-only\"\n";
    let without_writer = USERS.replace(
        "name = \"writer\"\npassword = \"wpass\"",
        "name = \"writer\"\npassword = \"changed\"",
    );
    std::fs::write(
        &path,
        crate::support::config_text(&refs, &format!("{without_writer}{carol}")),
    )
    .unwrap();
    proxy.shared.config_path.set(path).unwrap();
    let addr = proxy.addr.to_string();
    let mut writer = conn_as(&addr, "writer", "wpass").await;
    assert!(error_of(&mut writer, &["SHARDIS.RELOAD"]).await.starts_with("NOPERM"));
    let mut boss = conn_as(&addr, "boss", "hunter2").await;
    assert_eq!(ok(&mut boss, &["SHARDIS.RELOAD"]).await, redis::Value::Int(2));
    let mut c = proxy.conn().await;
    ok(&mut c, &["AUTH", "carol", "cpass"]).await;
    assert_eq!(
        error_of(&mut c, &["AUTH", "writer", "wpass"]).await,
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    ok(&mut c, &["AUTH", "writer", "changed"]).await;
    // A connection logged in before keeps its user.
    ok(&mut writer, &["SET", "k", "v"]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

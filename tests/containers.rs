//! Container tests: what local processes cannot show. Real `redis-server`
//! shards in containers on a private Docker network, shardis in a container in
//! front of them (reached from the host through its published port), and the
//! shipped docker-compose.yml.
//!
//! - a shard paused (hung) and unpaused;
//! - a shard stopped and started again with a new IP (hostname re-resolution);
//! - a shard cut off the network and joined again (partition);
//! - the proxy container reached from the host, used exactly as
//!   docs/containers.md shows downstream users (`shardis::testing::Cluster`);
//! - docker-compose.yml with one proxy (`SHARDIS_CONFIG=./deploy/compose-proxy.toml
//!   docker-compose up shardis`) + `redis-cli -p <port>`, and as shipped, a
//!   fleet: etcd and two proxies on one topology, grown to a fourth shard by
//!   `shardis ctl apply` from the host (`compose`, tests/containers/compose.rs);
//! - deploy/docker-compose.sentinel.yml: shards of a master and a replica
//!   under three Sentinels, a master container stopped, the proxy following
//!   the failover (`sentinel_compose`, tests/containers/sentinel_compose.rs).
//!
//! One test binary; the tests take a shared lock so only one cluster runs at
//! a time (2-core machines). The images are built on first use by
//! `scripts/build-images.sh` (idempotent). With no reachable Docker engine the
//! tests print a SKIP notice and pass, unless `SHARDIS_REQUIRE_DOCKER=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use shardis::testing::{self, Cluster};
use testcontainers::GenericImage;
use testcontainers::RunnableImage;
use testcontainers::clients::Cli;
use testcontainers::core::WaitFor;

#[path = "containers/compose.rs"]
mod compose;
#[path = "containers/sentinel_compose.rs"]
mod sentinel_compose;

/// Serializes the tests of this binary: one cluster at a time.
static LOCK: Mutex<()> = Mutex::new(());

/// shardis' command timeout in the clusters `Cluster::start` makes.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest an error for an unreachable shard may take: the command timeout
/// plus the connect timeout (a request may queue behind a connect attempt),
/// plus slack for a loaded 2-core machine.
const FAIL_WITHIN: Duration = Duration::from_millis(500 + 300 + 700);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Takes the lock and makes sure the engine is reachable and the images exist.
/// `None`: no Docker here, and it is not required; the caller returns.
fn docker_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let required = std::env::var("SHARDIS_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    match testing::docker_engine() {
        Ok(version) => {
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| eprintln!("containers: Docker engine {version} (server version, API)"));
        }
        Err(e) if required => panic!("SHARDIS_REQUIRE_DOCKER=1 but the Docker engine is unreachable: {e}"),
        Err(e) => {
            // Straight to the process' stderr: libtest captures eprintln!,
            // and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n**********************************************************************\n\
                 SKIP {test}: no reachable Docker engine ({e}).\n\
                 Set SHARDIS_REQUIRE_DOCKER=1 to make this a failure.\n\
                 **********************************************************************"
            );
            return None;
        }
    }
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_stale);
    static IMAGES: OnceLock<Result<(), String>> = OnceLock::new();
    let built = IMAGES.get_or_init(|| {
        let status = Command::new(repo_root().join("scripts/build-images.sh"))
            .current_dir(repo_root())
            .status()
            .map_err(|e| format!("cannot run scripts/build-images.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("scripts/build-images.sh failed: {status}"))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    Some(guard)
}

/// Removes what earlier runs that were killed (no unwinding, no Drop) left
/// behind: containers and networks named `shardis-<pid>-...` (see
/// `shardis::testing`) and compose projects `shardis-test-<pid>` whose test
/// process is gone. Never touches anything of a live process.
fn sweep_stale() {
    let dead = |name: &str| -> bool {
        let rest = name
            .strip_prefix("shardis-test-")
            .or_else(|| name.strip_prefix("shardis-"))
            .unwrap_or("");
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && pid != std::process::id().to_string() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let containers = testing::docker(&["ps", "-a", "--filter", "name=^/?shardis-", "--format", "{{.Names}}"]);
    for name in containers.unwrap_or_default().lines().filter(|n| dead(n)) {
        eprintln!("containers: removing stale container {name}");
        let _ = testing::docker(&["rm", "-f", "-v", name]);
    }
    let networks = testing::docker(&["network", "ls", "--filter", "name=shardis-", "--format", "{{.Name}}"]);
    for name in networks.unwrap_or_default().lines().filter(|n| dead(n)) {
        eprintln!("containers: removing stale network {name}");
        let _ = testing::docker(&["network", "rm", name]);
    }
}

/// A redis-rs connection to `url` whose own read timeout (10 s) is far above
/// shardis' command timeout, so shardis' timeouts are what is measured.
fn connect(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("redis url");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to shardis");
    con.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    con
}

fn get(con: &mut redis::Connection, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query(con)
}

fn set(con: &mut redis::Connection, key: &str, value: &str) -> redis::RedisResult<()> {
    redis::cmd("SET").arg(key).arg(value).exec(con)
}

/// One key per shard, written through shardis, each checked on the shard
/// container itself (routing reaches the container the ring names).
fn seed(cluster: &Cluster<'_>, con: &mut redis::Connection) -> Vec<String> {
    let keys: Vec<String> = (0..cluster.shards().len())
        .map(|i| cluster.key_on_shard(i, "key"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        set(con, k, &format!("v-{i}")).expect("SET through shardis");
        let on_shard = cluster.shard_cli(i, &["GET", k]).expect("redis-cli on the shard");
        assert_eq!(on_shard, format!("v-{i}"), "{k} is not on shard container {i}");
    }
    keys
}

/// The key of `down` fails with an error naming the shard, in time; the keys
/// of the other shards still read back their values, without waiting for it.
fn assert_only_shard_down(con: &mut redis::Connection, keys: &[String], down: usize) {
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        let start = Instant::now();
        let r = get(con, &keys[down]);
        let took = start.elapsed();
        let e = match r {
            Err(e) => e,
            Ok(v) => panic!("round {round}: GET {} on the downed shard answered {v:?}", keys[down]),
        };
        let name = format!("backend shard-{} unavailable", down + 1);
        assert!(e.to_string().contains(&name), "round {round}: {e}");
        assert!(took < FAIL_WITHIN, "round {round}: the error took {took:?}");
        slowest = slowest.max(took);
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != down) {
            let start = Instant::now();
            let v = get(con, k).unwrap_or_else(|e| panic!("round {round}: GET {k} on healthy shard {i}: {e}"));
            let took = start.elapsed();
            assert_eq!(v.as_deref(), Some(format!("v-{i}").as_str()));
            assert!(took < COMMAND_TIMEOUT, "GET on healthy shard {i} took {took:?}");
        }
    }
    eprintln!("shard {down} down: slowest error reply {slowest:?}");
}

/// Polls GET `key` until it succeeds; returns its value and how long it took.
fn wait_recovered(con: &mut redis::Connection, key: &str) -> (Option<String>, Duration) {
    let start = Instant::now();
    loop {
        match get(con, key) {
            Ok(v) => return (v, start.elapsed()),
            Err(_) if start.elapsed() < Duration::from_secs(15) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("shard did not come back within 15 s: {e}"),
        }
    }
}

/// When the proxy container started; the same value later means no restart.
fn started_at(cluster: &Cluster<'_>) -> String {
    testing::docker(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.StartedAt}}",
        cluster.proxy().id(),
    ])
    .expect("inspect the proxy container")
}

#[test]
fn paused_shard_errors_in_time_and_recovers() {
    let Some(_lock) = docker_or_skip("paused_shard_errors_in_time_and_recovers") else {
        return;
    };
    let docker = Cli::default();
    let cluster = Cluster::start(&docker, 3).expect("cluster");
    let proxy_started = started_at(&cluster);
    let mut con = connect(&cluster.proxy_url());
    let keys = seed(&cluster, &mut con);

    cluster.pause_shard(1).expect("docker pause");
    assert_only_shard_down(&mut con, &keys, 1);
    cluster.unpause_shard(1).expect("docker unpause");

    let (v, took) = wait_recovered(&mut con, &keys[1]);
    eprintln!("paused shard: served again {took:?} after unpause");
    assert_eq!(v.as_deref(), Some("v-1"), "a paused shard keeps its data");
    set(&mut con, &keys[1], "after").expect("SET after unpause");
    assert_eq!(cluster.shard_cli(1, &["GET", &keys[1]]).expect("redis-cli"), "after");
    assert_eq!(started_at(&cluster), proxy_started, "the proxy container restarted");
}

#[test]
fn restarted_shard_with_new_ip_is_found_by_name() {
    let Some(_lock) = docker_or_skip("restarted_shard_with_new_ip_is_found_by_name") else {
        return;
    };
    let docker = Cli::default();
    let cluster = Cluster::start(&docker, 3).expect("cluster");
    let proxy_started = started_at(&cluster);
    let mut con = connect(&cluster.proxy_url());
    let keys = seed(&cluster, &mut con);
    let old_ip = cluster.shard_ip(1).expect("shard ip");
    assert!(!old_ip.is_empty(), "shard 1 has no address on the cluster network");

    cluster.stop_shard(1).expect("docker stop");
    assert_only_shard_down(&mut con, &keys, 1);

    // Another Redis joins the network while the shard is down. If Docker
    // hands it the old address, a proxy that kept the old IP would now write
    // to this impostor and succeed; the checks below catch that.
    let filler = docker.run(
        RunnableImage::from((
            GenericImage::new("shardis/redis", "local")
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections")),
            Vec::new(),
        ))
        .with_network(cluster.network())
        .with_container_name(format!("{}-filler", cluster.network())),
    );
    cluster.start_shard(1).expect("docker start");
    let new_ip = cluster.shard_ip(1).expect("shard ip");
    eprintln!("restarted shard: address {old_ip} -> {new_ip}");
    assert_ne!(
        new_ip, old_ip,
        "precondition: Docker gave the restarted shard its old address"
    );

    let (v, took) = wait_recovered(&mut con, &keys[1]);
    eprintln!("restarted shard: served again {took:?} after start");
    assert_eq!(v, None, "the restarted shard is empty (no persistence)");
    set(&mut con, &keys[1], "after").expect("SET after restart");
    assert_eq!(
        cluster.shard_cli(1, &["GET", &keys[1]]).expect("redis-cli"),
        "after",
        "the write did not reach the restarted shard"
    );
    let on_filler = testing::docker(&["exec", filler.id(), "redis-cli", "GET", &keys[1]]).expect("redis-cli");
    assert_eq!(on_filler, "", "the write went to the container holding an old address");
    for i in [0, 2] {
        assert_eq!(
            get(&mut con, &keys[i]).expect("GET").as_deref(),
            Some(format!("v-{i}").as_str())
        );
    }
    assert_eq!(started_at(&cluster), proxy_started, "the proxy container restarted");
    drop(filler); // before the cluster's network goes
}

#[test]
fn partitioned_shard_errors_and_recovers() {
    let Some(_lock) = docker_or_skip("partitioned_shard_errors_and_recovers") else {
        return;
    };
    let docker = Cli::default();
    let cluster = Cluster::start(&docker, 3).expect("cluster");
    let proxy_started = started_at(&cluster);
    let mut con = connect(&cluster.proxy_url());
    let keys = seed(&cluster, &mut con);

    cluster.disconnect_shard(1).expect("docker network disconnect");
    assert_eq!(
        cluster.shard_ip(1).expect("inspect"),
        "",
        "the shard is still on the network"
    );
    assert_only_shard_down(&mut con, &keys, 1);
    // The shard itself is alive the whole time: only the network is cut.
    assert_eq!(cluster.shard_cli(1, &["GET", &keys[1]]).expect("redis-cli"), "v-1");

    cluster.connect_shard(1).expect("docker network connect");
    let (v, took) = wait_recovered(&mut con, &keys[1]);
    eprintln!("partitioned shard: served again {took:?} after reconnect");
    assert_eq!(
        v.as_deref(),
        Some("v-1"),
        "the shard kept its data through the partition"
    );
    set(&mut con, &keys[1], "after").expect("SET after reconnect");
    assert_eq!(cluster.shard_cli(1, &["GET", &keys[1]]).expect("redis-cli"), "after");
    assert_eq!(started_at(&cluster), proxy_started, "the proxy container restarted");
}

/// The example of docs/containers.md ("Testing against shardis in your own
/// tests"), verbatim from `let docker` on, then more checks.
#[test]
fn proxy_container_serves_host_clients_as_documented() {
    let Some(_lock) = docker_or_skip("proxy_container_serves_host_clients_as_documented") else {
        return;
    };
    // --- docs/containers.md example, begin ---
    use shardis::testing::Cluster;
    use testcontainers::clients::Cli;

    let docker = Cli::default();
    let cluster = Cluster::start(&docker, 3).expect("shardis cluster");
    let client = redis::Client::open(cluster.proxy_url()).expect("url");
    let mut con = client.get_connection().expect("connect to shardis");
    redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .exec(&mut con)
        .expect("SET");
    // Which shard got the key, and a look at it from inside that shard:
    let shard = cluster.shard_of("greeting");
    assert_eq!(
        cluster.shard_cli(shard, &["GET", "greeting"]).expect("redis-cli"),
        "hello"
    );
    // --- docs/containers.md example, end ---

    assert!(cluster.proxy_addr().ip().is_loopback());
    // Multi-key commands across the shards, from the host.
    let keys: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for k in &keys {
        mset.arg(k).arg(format!("{k}!"));
    }
    mset.exec(&mut con).expect("MSET");
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut con).expect("MGET");
    let want: Vec<Option<String>> = keys.iter().map(|k| Some(format!("{k}!"))).collect();
    assert_eq!(got, want);
    // Every shard got its share, and only its own keys.
    let mut total = 0;
    for i in 0..3 {
        let n: usize = cluster
            .shard_cli(i, &["DBSIZE"])
            .expect("redis-cli")
            .parse()
            .expect("DBSIZE");
        let expected = keys.iter().filter(|k| cluster.shard_of(k) == i).count() + usize::from(shard == i);
        assert_eq!(n, expected, "shard {i}");
        assert!(n > 0, "shard {i} got no keys");
        total += n;
    }
    assert_eq!(total, 31);
    let deleted: usize = redis::cmd("DEL").arg(&keys).query(&mut con).expect("DEL");
    assert_eq!(deleted, 30);
    // The image runs shardis as nobody, not root.
    let user = testing::docker(&["inspect", "--format", "{{.Config.User}}", cluster.proxy().id()]).expect("inspect");
    assert_eq!(user, "65534");
}

/// A shard container leaves the configuration: SHARDIS.RELOAD in the proxy
/// container starts a migration, and its keys move to the other shard
/// containers over the private network (MIGRATE between the Redis
/// containers, addressed by their hostnames as in the configuration).
#[test]
fn removed_shard_container_is_drained_to_the_others() {
    let Some(_lock) = docker_or_skip("removed_shard_container_is_drained_to_the_others") else {
        return;
    };
    let docker = Cli::default();
    let cluster = Cluster::start(&docker, 3).expect("cluster");
    let mut con = connect(&cluster.proxy_url());
    let keys: Vec<String> = (0..300).map(|i| format!("item:{i}")).collect();
    for k in &keys {
        set(&mut con, k, &format!("{k}!")).expect("SET");
    }
    let on_third = keys.iter().filter(|k| cluster.shard_of(k) == 2).count();
    assert!(on_third > 30, "{on_third}");
    // The same configuration without shard-3.
    let without: Vec<&str> = cluster
        .config()
        .split("\n[[backends]]")
        .filter(|block| !block.contains("\"shard-3\""))
        .collect();
    cluster
        .rewrite_config(&without.join("\n[[backends]]"))
        .expect("rewrite");
    let epoch: i64 = redis::cmd("SHARDIS.RELOAD").query(&mut con).expect("SHARDIS.RELOAD");
    assert_eq!(epoch, 2);
    // Every key reads its value at once (moved on demand or already moved).
    for k in &keys {
        assert_eq!(get(&mut con, k).expect("GET"), Some(format!("{k}!")), "{k}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO").arg("migration").query(&mut con).expect("INFO");
        if info.contains("migration_in_progress:0") {
            assert!(info.contains("migration_errors:0"), "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "migration did not finish: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dbsize = |i: usize| -> usize {
        cluster
            .shard_cli(i, &["DBSIZE"])
            .expect("redis-cli")
            .parse()
            .expect("n")
    };
    assert_eq!(dbsize(2), 0, "the removed shard container was drained");
    assert_eq!(dbsize(0) + dbsize(1), keys.len(), "every key is on a remaining shard");
}

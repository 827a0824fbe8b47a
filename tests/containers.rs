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
//!   docker-compose up shardis`) + `redis-cli -p <port>`;
//! - docker-compose.yml as shipped, a fleet: etcd and two proxies on one
//!   topology, grown to a fourth shard by `shardis ctl apply` from the host;
//! - deploy/docker-compose.sentinel.yml: shards of a master and a replica
//!   under three Sentinels, a master container stopped, the proxy following
//!   the failover (`sentinel_compose`).
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
use shardis::testkit::free_port;
use testcontainers::GenericImage;
use testcontainers::RunnableImage;
use testcontainers::clients::Cli;
use testcontainers::core::WaitFor;

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

/// `docker-compose` (v1) or `docker compose` (v2), whichever works here.
fn compose_command() -> Vec<&'static str> {
    let v1 = Command::new("docker-compose").arg("version").output();
    if v1.is_ok_and(|o| o.status.success()) {
        vec!["docker-compose"]
    } else {
        vec!["docker", "compose"]
    }
}

/// A project of a compose file (the shipped docker-compose.yml unless
/// [`ComposeProject::with_file`]) with every published port on a free host
/// port (so it runs beside anything, another project included), taken down
/// (containers, network) on drop.
struct ComposeProject {
    cmd: Vec<&'static str>,
    name: String,
    /// The compose file, relative to the repository.
    file: &'static str,
    /// Host port of `shardis`.
    port: u16,
    /// Host port of `shardis-2`.
    port_2: u16,
    /// Host port of `etcd`.
    etcd_port: u16,
    /// `SHARDIS_CONFIG`, when not the default (the fleet configuration).
    config: Option<&'static str>,
}

impl ComposeProject {
    /// Project `shardis-test-<pid>-<suffix>` (the pid lets `sweep_stale`
    /// remove what a killed run left).
    fn new(suffix: &str) -> ComposeProject {
        ComposeProject::with_file(suffix, "docker-compose.yml")
    }

    /// A project of `file` (relative to the repository; its own directory
    /// is the project directory, for the relative paths in it).
    fn with_file(suffix: &str, file: &'static str) -> ComposeProject {
        assert!(repo_root().join(file).exists(), "{file} is missing");
        ComposeProject {
            cmd: compose_command(),
            name: format!("shardis-test-{}-{suffix}", std::process::id()),
            file,
            port: free_port(),
            port_2: free_port(),
            etcd_port: free_port(),
            config: None,
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(self.cmd[0]);
        cmd.args(&self.cmd[1..])
            .args(["--project-name", &self.name, "--file"])
            .arg(repo_root().join(self.file))
            .args(args)
            .env("SHARDIS_PORT", self.port.to_string())
            .env("SHARDIS_PORT_2", self.port_2.to_string())
            .env("SHARDIS_ETCD_PORT", self.etcd_port.to_string())
            .current_dir(repo_root());
        if let Some(config) = self.config {
            cmd.env("SHARDIS_CONFIG", config);
        }
        cmd.output().expect("run docker compose")
    }

    /// Runs a compose command that must succeed.
    fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "compose {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the healthcheck of `service` says healthy.
    fn wait_healthy(&self, service: &str, within: Duration) {
        let ps = self.run(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&ps.stdout).trim().to_string();
        assert!(!id.is_empty(), "no {service} container in the project");
        let deadline = Instant::now() + within;
        loop {
            let health = testing::docker(&["inspect", "--format", "{{.State.Health.Status}}", &id]).expect("inspect");
            if health == "healthy" {
                return;
            }
            if Instant::now() >= deadline {
                let logs = self.run(&["logs", "--no-color", "--tail", "30", service]);
                panic!(
                    "{service} is {health} after {within:?}; its log:\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `redis-cli ARGS` inside `service`, trimmed stdout.
    fn cli(&self, service: &str, args: &[&str]) -> String {
        let mut all = vec!["exec", "-T", service, "redis-cli"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "redis-cli in {service}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn dbsize(&self, service: &str) -> usize {
        self.cli(service, &["DBSIZE"]).parse().expect("DBSIZE")
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let out = self.run(&["down", "--volumes", "--timeout", "2"]);
        if !out.status.success() {
            eprintln!("compose down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed (scripts/install-deps.sh)");
    // Drop only the final newline: an empty last line is a nil reply.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

/// docker-compose.yml with one proxy and no fleet, as before the fleet:
/// `SHARDIS_CONFIG=./deploy/compose-proxy.toml docker-compose up -d shardis`
/// (docs/containers.md).
#[test]
fn compose_up_serves_redis_cli() {
    let Some(_lock) = docker_or_skip("compose_up_serves_redis_cli") else {
        return;
    };
    let mut project = ComposeProject::new("single");
    project.config = Some("./deploy/compose-proxy.toml");
    let start = Instant::now();
    project.ok(&["up", "--detach", "shardis"]);
    // shardis' own healthcheck (redis-cli in its image) must turn healthy.
    project.wait_healthy("shardis", Duration::from_secs(30));
    eprintln!("compose: healthy {:?} after up", start.elapsed());

    let port = project.port;
    assert_eq!(redis_cli(port, &["PING"]), "PONG");
    assert_eq!(redis_cli(port, &["SET", "compose:a", "1"]), "OK");
    assert_eq!(
        redis_cli(port, &["MSET", "compose:b", "2", "compose:c", "3", "compose:d", "4"]),
        "OK"
    );
    assert_eq!(redis_cli(port, &["GET", "compose:a"]), "1");
    assert_eq!(
        redis_cli(
            port,
            &[
                "MGET",
                "compose:a",
                "compose:b",
                "compose:c",
                "compose:d",
                "compose:none"
            ]
        ),
        "1\n2\n3\n4\n"
    );
    // The keys are spread over the three Redis services, by hostname.
    let total: usize = ["redis-1", "redis-2", "redis-3"]
        .iter()
        .map(|svc| project.dbsize(svc))
        .sum();
    assert_eq!(total, 4);
    // Only the proxy asked for (and what it depends on) runs.
    let ps = project.run(&["ps", "-q", "shardis-2"]);
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "", "shardis-2 was started");
}

/// `shardis ctl ARGS` (the debug binary of this build) from the host; exit
/// status and stdout + stderr.
fn ctl(etcd_port: u16, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardis"))
        .args([
            "ctl",
            "--etcd",
            &format!("127.0.0.1:{etcd_port}"),
            "--cluster",
            "compose",
        ])
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run shardis ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Every `"epoch":N` in a compact `ctl status --json`, in order: the
/// cluster's first, then each proxy's (and any in the migration object).
fn epochs(status: &str) -> Vec<u64> {
    status
        .split("\"epoch\":")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Polls `ctl status --json` until `done` accepts its output (with all
/// whitespace removed); returns that output.
fn wait_status(etcd_port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = ctl(etcd_port, &["status", "--json"]);
        let compact: String = text.split_whitespace().collect();
        if status.success() && done(&compact) {
            return compact;
        }
        assert!(
            Instant::now() < deadline,
            "ctl status: not {what} after 30 s: {status}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The default docker-compose.yml: etcd and two proxies sharing one topology.
/// Keys written through both proxies; then `shardis ctl apply` from the host
/// adds redis-4 (profile "shard-4", started for it): both proxies serve the
/// new epoch, every key reads back through both, and the keys the new ring
/// gives shard-4 are on redis-4, the others on their owners, none twice.
#[test]
fn compose_fleet_adds_a_shard_with_ctl_apply() {
    let Some(_lock) = docker_or_skip("compose_fleet_adds_a_shard_with_ctl_apply") else {
        return;
    };
    let project = ComposeProject::new("fleet");
    let start = Instant::now();
    project.ok(&["up", "--detach"]);
    project.wait_healthy("shardis", Duration::from_secs(60));
    project.wait_healthy("shardis-2", Duration::from_secs(60));
    eprintln!("compose fleet: both proxies healthy {:?} after up", start.elapsed());
    let ps = project.run(&["ps", "-q", "redis-4"]);
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "",
        "redis-4 runs before it was asked for"
    );

    // Both proxies have registered (ids: compose hostname + listen port).
    let before = wait_status(project.etcd_port, "two proxies registered", |s| {
        s.contains("\"shardis:6380\"") && s.contains("\"shardis-2:6380\"")
    });
    eprintln!("compose fleet: {before}");

    let mut one = connect(&format!("redis://127.0.0.1:{}/", project.port));
    let mut two = connect(&format!("redis://127.0.0.1:{}/", project.port_2));
    let keys: Vec<String> = (0..400).map(|i| format!("fleet:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let con = if i % 2 == 0 { &mut one } else { &mut two };
        set(con, k, &format!("{k}!")).expect("SET through a proxy");
    }
    for con in [&mut one, &mut two] {
        for k in &keys {
            assert_eq!(
                get(con, k).expect("GET"),
                Some(format!("{k}!")),
                "{k} before the change"
            );
        }
    }
    let before_total: usize = ["redis-1", "redis-2", "redis-3"]
        .iter()
        .map(|svc| project.dbsize(svc))
        .sum();
    assert_eq!(before_total, keys.len());

    // The fourth shard, then the new backend set through etcd.
    project.ok(&["up", "--detach", "redis-4"]);
    project.wait_healthy("redis-4", Duration::from_secs(30));
    let file = "deploy/compose-cluster-backends-4.toml";
    let applied = Instant::now();
    let (status, out) = ctl(project.etcd_port, &["apply", file, "--timeout-ms", "60000"]);
    eprintln!("compose fleet: ctl apply ({:?}): {status}\n{out}", applied.elapsed());
    assert!(status.success(), "ctl apply {file}: {status}\n{out}");

    // Every key, through both proxies, right after the change.
    for con in [&mut one, &mut two] {
        for k in &keys {
            assert_eq!(get(con, k).expect("GET"), Some(format!("{k}!")), "{k} after the change");
        }
    }
    // Both proxies serve the new epoch, and nothing is in flight.
    let old_epoch = epochs(&before).first().copied().expect("an epoch in ctl status --json");
    let after = wait_status(project.etcd_port, "stable with both proxies on the new epoch", |s| {
        let e = epochs(s);
        s.contains("\"phase\":\"stable\"")
            && s.contains("\"shardis:6380\"")
            && s.contains("\"shardis-2:6380\"")
            && e.len() >= 3
            && e[0] > old_epoch
            && e.iter().all(|&n| n == e[0])
    });
    eprintln!("compose fleet: {after}");

    // Where the keys are now: as the new ring says (apply returned once the
    // migration was done), each on exactly one shard.
    let text = std::fs::read_to_string(repo_root().join(file)).expect("read the backends file");
    let ring = shardis::ring::Ring::for_config(&shardis::config::Config::parse(&text).expect("backends file"));
    let services = ["redis-1", "redis-2", "redis-3", "redis-4"];
    let sizes: Vec<usize> = services.iter().map(|svc| project.dbsize(svc)).collect();
    eprintln!("compose fleet: keys per shard after the change {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), keys.len(), "keys lost or duplicated");
    assert!(sizes[3] > 0, "no key moved to redis-4");
    for (i, svc) in services.iter().enumerate() {
        let expected = keys.iter().filter(|k| ring.shard_of(k.as_bytes()) == i).count();
        assert_eq!(sizes[i], expected, "{svc} does not hold the keys the new ring gives it");
    }
    let on_four = keys
        .iter()
        .find(|k| ring.shard_of(k.as_bytes()) == 3)
        .expect("a key of shard-4");
    assert_eq!(project.cli("redis-4", &["GET", on_four]), format!("{on_four}!"));

    // New writes through either proxy land on the new owner.
    set(&mut two, on_four, "again").expect("SET after the change");
    assert_eq!(project.cli("redis-4", &["GET", on_four]), "again");
    assert_eq!(get(&mut one, on_four).expect("GET").as_deref(), Some("again"));
}

//! docker-compose tests: the shipped docker-compose.yml with one proxy
//! (`SHARDIS_CONFIG=./deploy/compose-proxy.toml docker-compose up shardis`) +
//! `redis-cli -p <port>`, and as shipped, a fleet: etcd and two proxies on one
//! topology, grown to a fourth shard by `shardis ctl apply` from the host.
//! [`ComposeProject`] runs any compose file (`super::sentinel_compose`).

use std::process::Command;
use std::time::{Duration, Instant};

use shardis::testing;
use shardis::testkit::free_port;

use super::{connect, docker_or_skip, get, repo_root, set};

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
pub(super) struct ComposeProject {
    cmd: Vec<&'static str>,
    name: String,
    /// The compose file, relative to the repository.
    file: &'static str,
    /// Host port of `shardis`.
    pub(super) port: u16,
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
    pub(super) fn new(suffix: &str) -> ComposeProject {
        ComposeProject::with_file(suffix, "docker-compose.yml")
    }

    /// A project of `file` (relative to the repository; its own directory
    /// is the project directory, for the relative paths in it).
    pub(super) fn with_file(suffix: &str, file: &'static str) -> ComposeProject {
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

    pub(super) fn run(&self, args: &[&str]) -> std::process::Output {
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

    /// `compose up ARGS`, which must succeed. The published ports were free
    /// when picked, but another test binary running beside this one can
    /// take one before Docker binds it: then the project is taken down and
    /// brought up again on fresh ports (up to 3 tries).
    pub(super) fn up(&mut self, args: &[&str]) {
        let up: Vec<&str> = ["up"].iter().chain(args).copied().collect();
        for _ in 0..2 {
            let out = self.run(&up);
            if out.status.success() {
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("address already in use"),
                "compose {}: {err}",
                up.join(" ")
            );
            eprintln!("compose up: a published port was taken meanwhile; again on fresh ports");
            let _ = self.run(&["down", "--volumes", "--timeout", "2"]);
            (self.port, self.port_2, self.etcd_port) = (free_port(), free_port(), free_port());
        }
        self.ok(&up);
    }

    /// Runs a compose command that must succeed.
    pub(super) fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "compose {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the healthcheck of `service` says healthy.
    pub(super) fn wait_healthy(&self, service: &str, within: Duration) {
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
    pub(super) fn cli(&self, service: &str, args: &[&str]) -> String {
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

    pub(super) fn dbsize(&self, service: &str) -> usize {
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
    project.up(&["--detach", "shardis"]);
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
    let mut project = ComposeProject::new("fleet");
    let start = Instant::now();
    project.up(&["--detach"]);
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

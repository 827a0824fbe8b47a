//! deploy/docker-compose.sentinel.yml (issue 15): two shards, each a master
//! and a replica container, three Sentinel containers and a shardis container
//! whose backends are `master = "shard-N"` under `[sentinel]`
//! (deploy/compose-sentinel-proxy.toml). A master container is stopped
//! (`docker stop`): the proxy follows the failover, the other shard never
//! fails, and the values that had replicated are still there.

use std::time::{Duration, Instant};

use super::compose::ComposeProject;
use super::{connect, docker_or_skip, get, set};

/// `(master name, master service, replica service)` of each shard.
const SHARDS: [(&str, &str, &str); 2] = [("shard-1", "redis-1a", "redis-1b"), ("shard-2", "redis-2a", "redis-2b")];
const SENTINELS: [&str; 3] = ["sentinel-1", "sentinel-2", "sentinel-3"];
const KEYS: usize = 200;
/// Longest the proxy may take to answer for the failed shard again, from the
/// `docker stop`: the stop itself (Redis' shutdown, up to the 2 s grace),
/// `down-after-milliseconds` (1 s), the election and promotion (1-3 s), then
/// a few seconds of slack for a loaded 2-core machine.
const FOLLOW_WITHIN: Duration = Duration::from_secs(15);

/// `SENTINEL MASTER name` on `sentinel`, as field/value pairs.
fn sentinel_master(project: &ComposeProject, sentinel: &str, name: &str) -> Vec<(String, String)> {
    let text = project.cli(sentinel, &["-p", "26379", "SENTINEL", "MASTER", name]);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Waits until every Sentinel sees each master, its replica and the two other
/// Sentinels: before that a failover could lack its quorum or its replica.
fn wait_sentinels_ready(project: &ComposeProject) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut missing = Vec::new();
        for s in SENTINELS {
            for (name, _, _) in SHARDS {
                let f = sentinel_master(project, s, name);
                if field(&f, "flags") != "master"
                    || field(&f, "num-slaves") != "1"
                    || field(&f, "num-other-sentinels") != "2"
                {
                    missing.push(format!("{s}/{name}: {f:?}"));
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Sentinels are not ready:\n{}",
            missing.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The keys stored on `service` (`redis-cli --scan`).
fn keys_on(project: &ComposeProject, service: &str) -> Vec<String> {
    let mut keys: Vec<String> = project
        .cli(service, &["--scan"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

fn value_of(key: &str) -> String {
    format!("value-of-{key}")
}

#[test]
fn compose_sentinel_failover_is_followed() {
    let Some(_lock) = docker_or_skip("compose_sentinel_failover_is_followed") else {
        return;
    };
    let mut project = ComposeProject::with_file("sentinel", "deploy/docker-compose.sentinel.yml");
    let start = Instant::now();
    project.up(&["--detach"]);
    project.wait_healthy("shardis", Duration::from_secs(60));
    wait_sentinels_ready(&project);
    eprintln!(
        "sentinel compose: healthy, Sentinels ready {:?} after up",
        start.elapsed()
    );

    let mut con = connect(&format!("redis://127.0.0.1:{}/", project.port));
    for i in 0..KEYS {
        let k = format!("sc:{i}");
        set(&mut con, &k, &value_of(&k)).expect("SET through shardis");
    }
    // Which keys each shard holds, and both replicas have every one of them
    // (replication is asynchronous).
    let owned: Vec<Vec<String>> = SHARDS.iter().map(|(_, m, _)| keys_on(&project, m)).collect();
    assert!(owned.iter().all(|k| !k.is_empty()), "a shard holds no key: {owned:?}");
    assert_eq!(owned[0].len() + owned[1].len(), KEYS);
    for ((_, _, replica), keys) in SHARDS.iter().zip(&owned) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while project.dbsize(replica) != keys.len() {
            assert!(Instant::now() < deadline, "{replica} did not get the keys");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let (failed_key, other_key) = (&owned[0][0], &owned[1][0]);

    // Stop shard-1's master, probing both shards through the proxy meanwhile.
    let t0 = Instant::now();
    let mut stopped_at = None;
    let mut first_error = None;
    let mut errors = 0;
    let mut other_failures = Vec::new();
    let mut probes = 0;
    let recovered = std::thread::scope(|scope| {
        let stopper = scope.spawn(|| project.run(&["stop", "--timeout", "2", "redis-1a"]));
        let mut stopper = Some(stopper);
        loop {
            if stopper.as_ref().is_some_and(|s| s.is_finished()) {
                let out = stopper.take().map(|s| s.join().expect("the stop thread"));
                let out = out.expect("taken once");
                assert!(
                    out.status.success(),
                    "docker stop: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                stopped_at = Some(t0.elapsed());
            }
            probes += 1;
            match get(&mut con, other_key) {
                Ok(Some(v)) if v == value_of(other_key) => {}
                other => other_failures.push(format!("{:?}: {other:?}", t0.elapsed())),
            }
            match get(&mut con, failed_key) {
                Err(e) => {
                    assert!(e.to_string().contains("shard-1"), "an error not naming the shard: {e}");
                    first_error.get_or_insert(t0.elapsed());
                    errors += 1;
                }
                Ok(v) if first_error.is_some() && stopped_at.is_some() => {
                    assert_eq!(v, Some(value_of(failed_key)), "after the failover");
                    return t0.elapsed();
                }
                Ok(_) => {}
            }
            assert!(
                t0.elapsed() < FOLLOW_WITHIN,
                "shard-1 did not answer again within {FOLLOW_WITHIN:?} of the stop \
                 (stopped at {stopped_at:?}, first error at {first_error:?}, {errors} errors)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).expect("INFO proxy");
    let shard_lines: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("shard0:") || l.starts_with("shard1:"))
        .collect();
    eprintln!(
        "sentinel compose: docker stop of redis-1a returned after {stopped_at:?}; shard-1 failed from {first_error:?} \
         ({errors} errors) and answered again {recovered:?} after the stop began; {probes} probes of shard-2, \
         {} failed\n{}",
        other_failures.len(),
        shard_lines.join("\n")
    );
    assert!(other_failures.is_empty(), "shard-2 failed: {other_failures:?}");
    assert!(
        shard_lines
            .iter()
            .any(|l| l.contains("name=shard-1") && !l.contains("failovers=0")),
        "the proxy counted no failover: {shard_lines:?}"
    );
    // The Sentinels list the stopped master (its hostname no longer
    // resolves) as a replica with no address: the proxy leaves it out.
    assert!(
        !shard_lines.iter().any(|l| l.contains("replicas=:")),
        "a replica without an address: {shard_lines:?}"
    );

    // The replica is the master now, and it holds every value written before.
    let role = project.cli("redis-1b", &["ROLE"]);
    assert!(role.starts_with("master"), "redis-1b is not the master: {role}");
    for k in owned.iter().flatten() {
        assert_eq!(
            get(&mut con, k).expect("GET after the failover"),
            Some(value_of(k)),
            "{k}"
        );
    }
    // Writes on the failed-over shard land on the new master.
    set(&mut con, failed_key, "after").expect("SET after the failover");
    assert_eq!(project.cli("redis-1b", &["GET", failed_key]), "after");
}

//! Fleet tests (issue 10): several `shardis` processes share one topology in
//! etcd, and `shardis ctl ... apply` changes the shard set under load with
//! the two-phase protocol of `shared/notes/fleet-contract.md` (every
//! registered proxy acknowledges a prepared epoch before it is committed;
//! one elected proxy runs the background migration).
//!
//! Each scenario starts its own etcd ([`EtcdNode`]), its own `redis-server`
//! shards and its `shardis` binaries ([`ShardisProcess`]), runs a workload
//! of `INCR`s and `GET`s through the proxies while it changes the fleet or
//! breaks a part of it, then checks the data:
//!
//! - per key, the value read through a proxy lies between the acknowledged
//!   `INCR`s and those plus the ones that failed or were in doubt (below:
//!   a lost write; above: a write applied twice);
//! - no client ever reads a value lower than one it saw acknowledged (a
//!   stale read, say from a shard the key already left), nor gets an `INCR`
//!   answer not above it (a write applied to a stale copy);
//! - on the shards themselves: no key on two shards, none left on a removed
//!   shard (stranded), none missing, none on a shard other than the one the
//!   final ring names (misplaced).
//!
//! The scenarios run one at a time (a static lock): they start many
//! processes, and CI machines have two cores. Each prints a summary line
//! (`fleet[a] summary: ...`); `cargo test --test fleet -- --nocapture`
//! shows them.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use shardis::config::Config;
use shardis::ring::Ring;

use support::{EtcdNode, NodeClient, RedisNode, ShardisProcess};

const BIN: &str = env!("CARGO_BIN_EXE_shardis");
/// The workload's key space: `fleet:0` .. `fleet:1999`.
const KEYS: usize = 2000;
/// Client threads of the workload, bound round-robin to the proxies.
const CLIENTS: usize = 4;
/// Keys (`pad:N`) loaded before a change so that the migrator has work.
const PADDING: usize = 5000;
/// Padding for the scenario that kills the migrator in the middle of its work.
const PADDING_LONG_MIGRATION: usize = 100_000;
/// A client waits this long for a reply: longer than the proxies hold a
/// request for a moving slot (`hold_timeout_ms` below), so a held request
/// ends in the proxy's answer rather than a client timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// The proxies' `[cluster]` timeouts.
const ACK_TIMEOUT_MS: u64 = 5000;
const HOLD_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for a `ctl` command, and for a change to settle.
const CTL_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn proxy_id(i: usize) -> String {
    format!("proxy-{i}")
}

fn shard_name(i: usize) -> String {
    format!("s{i}")
}

fn fleet_key(i: usize) -> String {
    format!("fleet:{i}")
}

// ---------------------------------------------------------------------------
// shardis ctl

/// What one `shardis ctl` run gave: exit code (`None`: killed after
/// [`CTL_TIMEOUT`] or by a signal), stdout, stderr, how long it took.
#[derive(Debug)]
struct CtlOut {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl CtlOut {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout and stderr together, for searching and for messages.
    fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CtlOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `shardis ctl --etcd <etcd> --cluster <cluster> <args...>`, killed
/// if it takes longer than [`CTL_TIMEOUT`].
fn ctl(etcd: &str, cluster: &str, args: &[&str]) -> CtlOut {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(["ctl", "--etcd", etcd, "--cluster", cluster])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shardis ctl");
    // Read both pipes as they fill, so a chatty ctl never blocks on them.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if start.elapsed() > CTL_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for shardis ctl: {e}"),
        }
    };
    CtlOut {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// `ctl status --json`, parsed.
#[derive(Debug, Clone)]
struct Status {
    json: serde_json::Value,
}

impl Status {
    fn epoch(&self) -> u64 {
        self.json["epoch"].as_u64().unwrap_or(0)
    }

    fn phase(&self) -> &str {
        self.json["phase"].as_str().unwrap_or("")
    }

    /// No migration running: `"migration": null` (the contract), or a
    /// finished one's report (`"done": true`).
    fn migration_done(&self) -> bool {
        self.json
            .get("migration")
            .is_none_or(|m| m.is_null() || m["done"].as_bool() == Some(true))
    }

    /// The ids of the registered proxies.
    fn proxy_ids(&self) -> Vec<String> {
        self.json["proxies"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The epoch each registered proxy serves.
    fn served(&self) -> Vec<(String, u64)> {
        self.json["proxies"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["id"].as_str().unwrap_or("?").to_string(),
                            p["epoch"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The id of the proxy running the migration, where status names it
    /// (`"migrator"` at the top or inside `"migration"`).
    fn migrator(&self) -> Option<String> {
        self.json["migrator"]
            .as_str()
            .or_else(|| self.json["migration"]["migrator"].as_str())
            .map(str::to_string)
    }
}

// ---------------------------------------------------------------------------
// The fleet: etcd, shards, proxies

/// One scenario's processes. Shard `i` is named `s{i}` on the ring (a name
/// is a place on the ring, so removing a shard keeps the others' names);
/// proxy `i` has the fleet id `proxy-{i}`.
struct Fleet {
    tag: String,
    cluster: String,
    etcd: EtcdNode,
    shards: Vec<RedisNode>,
    proxies: Vec<ShardisProcess>,
    dir: PathBuf,
    /// Padding keys loaded by [`Fleet::preload`].
    padding: usize,
}

impl Fleet {
    /// etcd, `shards` redis-servers, and `proxies` proxies seeded with the
    /// first `seed` shards (proxy 0 starts first and seeds etcd; the others
    /// find the topology there).
    fn start(tag: &str, shards: usize, seed: usize, proxies: usize) -> Fleet {
        Fleet::start_with(tag, shards, seed, proxies, Some(""))
    }

    /// As [`Fleet::start`], with `cluster` extra lines in each proxy's
    /// `[cluster]` (say `fence = true`); with `None` the proxies are plain
    /// ones (no `[cluster]`, each with the seed backends), for the
    /// checker's own test.
    fn start_with(tag: &str, shards: usize, seed: usize, proxies: usize, cluster: Option<&str>) -> Fleet {
        let etcd = EtcdNode::start();
        let shards: Vec<RedisNode> = (0..shards).map(|_| RedisNode::start()).collect();
        let dir = std::env::temp_dir().join(format!("shardis-fleet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut fleet = Fleet {
            tag: tag.to_string(),
            cluster: format!("fleet-{tag}"),
            etcd,
            shards,
            proxies: Vec::new(),
            dir,
            padding: 0,
        };
        let members: Vec<usize> = (0..seed).collect();
        for i in 0..proxies {
            let config = match cluster {
                Some(extra) => fleet.proxy_config(i, &members, extra),
                None => format!("threads = 1\n{}", fleet.backends_text(&members)),
            };
            let p = ShardisProcess::start(BIN, &proxy_id(i), &config);
            fleet.proxies.push(p);
        }
        fleet
    }

    /// A proxy's configuration (without `listen`, which [`ShardisProcess`] sets).
    fn proxy_config(&self, i: usize, seed: &[usize], cluster_extra: &str) -> String {
        format!(
            "threads = 1\n\
             [timeouts]\ncommand_ms = 2000\nconnect_ms = 300\nreconnect_ms = 50\nreconnect_max_ms = 200\n\
             [cluster]\netcd = [\"{}\"]\nname = \"{}\"\nid = \"{}\"\n\
             ack_timeout_ms = {ACK_TIMEOUT_MS}\nhold_timeout_ms = {HOLD_TIMEOUT_MS}\n{}\n\
             {}",
            self.etcd.endpoint(),
            self.cluster,
            proxy_id(i),
            cluster_extra,
            self.backends_text(seed)
        )
    }

    /// `[[backends]]` for the shards `members` (plus Redlock off: its lock
    /// group would pin the first three shards).
    fn backends_text(&self, members: &[usize]) -> String {
        let mut s = String::from("[redlock]\nkeys = []\n");
        for &i in members {
            s.push_str(&format!(
                "[[backends]]\nname = \"{}\"\naddr = \"{}\"\n",
                shard_name(i),
                self.shards[i].addr()
            ));
        }
        s
    }

    fn ctl(&self, args: &[&str]) -> CtlOut {
        ctl(&self.etcd.endpoint(), &self.cluster, args)
    }

    /// `ctl apply` of a backends file naming the shards `members`.
    fn apply(&self, members: &[usize], extra: &[&str]) -> CtlOut {
        let names: Vec<String> = members.iter().map(|&i| shard_name(i)).collect();
        let path = self.dir.join(format!("backends-{}.toml", names.join("-")));
        std::fs::write(&path, self.backends_text(members)).unwrap();
        let path = path.to_str().unwrap().to_string();
        let mut args = vec!["apply", path.as_str()];
        args.extend_from_slice(extra);
        let out = self.ctl(&args);
        eprintln!("fleet[{}] ctl apply {names:?} {extra:?}: {out}", self.tag);
        out
    }

    fn status(&self) -> Result<Status, String> {
        let out = self.ctl(&["status", "--json"]);
        if !out.ok() {
            return Err(out.to_string());
        }
        serde_json::from_str(out.stdout.trim())
            .map(|json| Status { json })
            .map_err(|e| format!("status --json is not JSON ({e}): {out}"))
    }

    /// Polls `ctl status --json` (which may fail meanwhile, say while etcd
    /// is down) until `done` holds; panics with the last status after
    /// `within`.
    fn wait_status(&self, within: Duration, what: &str, mut done: impl FnMut(&Status) -> bool) -> Status {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.status() {
                Ok(s) if done(&s) => return s,
                Ok(s) => s.json.to_string(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "fleet[{}]: timed out after {within:?} waiting for {what}; last status: {last}",
                    self.tag
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the fleet is stable at an epoch above `above` with no
    /// migration running.
    fn wait_settled(&self, above: u64) -> Status {
        self.wait_status(
            SETTLE_WITHIN,
            &format!("phase stable, epoch > {above}, no migration"),
            |s| s.phase() == "stable" && s.epoch() > above && s.migration_done(),
        )
    }

    fn addrs(&self, which: &[usize]) -> Vec<SocketAddr> {
        which.iter().map(|&i| self.proxies[i].addr()).collect()
    }

    /// Through proxy 0: every workload key set to 0, and `padding` keys
    /// `pad:N` with 100-byte values.
    fn preload(&mut self, padding: usize) {
        let mut c = connect(self.proxies[0].addr()).expect("connect to proxy 0");
        let value = "p".repeat(100);
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                pipe.cmd("SET").arg(fleet_key(i)).arg(0).ignore();
            }
            let () = pipe.query(&mut c).expect("preload workload keys");
        }
        for chunk in (0..padding).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                pipe.cmd("SET").arg(format!("pad:{i}")).arg(&value).ignore();
            }
            let () = pipe.query(&mut c).expect("preload padding");
        }
        self.padding = padding;
    }

    /// Every key on every shard: key -> the shards (indexes) that hold it.
    fn locations(&self) -> HashMap<String, Vec<usize>> {
        let mut at: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, node) in self.shards.iter().enumerate() {
            let mut c = node.client();
            let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS on a shard");
            for k in keys {
                at.entry(k).or_default().push(i);
            }
        }
        at
    }

    fn dbsize(&self, shard: usize) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.shards[shard].client()).unwrap()
    }

    /// The checks of the module doc, once the fleet serves the shards
    /// `members` and no migration runs: values read through proxy
    /// `read_via` against the workload's tally, then every shard directly.
    fn verify(&self, tally: &Tally, members: &[usize], read_via: usize) -> Report {
        let mut problems = Vec::new();
        let mut c = connect(self.proxies[read_via].addr()).expect("connect to read the final values");
        let mut values: Vec<Option<i64>> = Vec::with_capacity(KEYS);
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                pipe.cmd("GET").arg(fleet_key(i));
            }
            let got: Vec<Option<i64>> = pipe.query(&mut c).expect("final GETs through a proxy");
            values.extend(got);
        }
        let (mut lost, mut duplicates) = (0, 0);
        for (i, v) in values.iter().enumerate() {
            let (acked, doubt) = (tally.acked[i], tally.doubt[i]);
            let v = v.unwrap_or(-1);
            if v < acked as i64 {
                lost += 1;
                if lost <= 5 {
                    problems.push(format!("lost: {} = {v}, {acked} INCRs acknowledged", fleet_key(i)));
                }
            } else if v > (acked + doubt) as i64 {
                duplicates += 1;
                if duplicates <= 5 {
                    problems.push(format!(
                        "duplicated: {} = {v}, {acked} INCRs acknowledged and {doubt} failed or in doubt",
                        fleet_key(i)
                    ));
                }
            }
        }

        // The shards themselves. The owner of a key is what a proxy given
        // the final backends file would compute: `ctl apply` validates that
        // file like a proxy.toml, and the ring comes from it the same way.
        let final_config = Config::parse(&self.backends_text(members)).expect("final backends parse");
        let ring = Ring::for_config(&final_config);
        let at = self.locations();
        let (mut on_two, mut stranded, mut misplaced, mut other) = (0, 0, 0, 0);
        let example = |problems: &mut Vec<String>, n: usize, what: String| {
            if n <= 5 {
                problems.push(what);
            }
        };
        for (key, shards) in &at {
            if !(key.starts_with("fleet:") || key.starts_with("pad:")) {
                other += 1;
                continue;
            }
            if shards.len() > 1 {
                on_two += 1;
                example(&mut problems, on_two, format!("on two shards: {key} on {shards:?}"));
            }
            for s in shards {
                if !members.contains(s) {
                    stranded += 1;
                    example(
                        &mut problems,
                        stranded,
                        format!("stranded: {key} on removed shard s{s}"),
                    );
                }
            }
            let owner = members[ring.shard_of(key.as_bytes())];
            if shards.iter().any(|&s| s != owner && members.contains(&s)) {
                misplaced += 1;
                example(
                    &mut problems,
                    misplaced,
                    format!("misplaced: {key} on {shards:?}, owner s{owner}"),
                );
            }
        }
        let expected = (0..KEYS)
            .map(fleet_key)
            .chain((0..self.padding).map(|i| format!("pad:{i}")));
        let mut missing = 0;
        for key in expected {
            if !at.contains_key(&key) {
                missing += 1;
                example(&mut problems, missing, format!("missing on every shard: {key}"));
            }
        }
        let counts = [
            ("lost", lost),
            ("duplicates", duplicates),
            ("stranded", stranded),
            ("on_two_shards", on_two),
            ("missing", missing),
            ("misplaced", misplaced),
            ("stale_reads", tally.stale as usize),
        ];
        let bad: usize = counts.iter().map(|(_, n)| n).sum();
        let summary = format!(
            "fleet[{}] summary: ops={} acked={} errors={:?} in_doubt={} {} other_keys={other}",
            self.tag,
            tally.ops,
            tally.acked.iter().sum::<u64>(),
            tally.errors,
            tally.doubt.iter().sum::<u64>(),
            counts
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        eprintln!("{summary}");
        problems.extend(tally.stale_examples.iter().cloned());
        for (kind, msg) in &tally.error_examples {
            eprintln!("fleet[{}] first {kind} error: {msg}", self.tag);
        }
        Report {
            summary,
            problems: if bad == 0 { Vec::new() } else { problems },
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Proxies first: they should not see their etcd or shards vanish
        // before they do (the fields would drop etcd first).
        self.proxies.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What [`Fleet::verify`] found: the summary line, and examples of each
/// kind of problem (empty when every count is zero).
struct Report {
    summary: String,
    problems: Vec<String>,
}

impl Report {
    fn assert_clean(&self) {
        assert!(
            self.problems.is_empty(),
            "{}\n{}",
            self.summary,
            self.problems.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// The workload

/// A synchronous client connection with [`CLIENT_TIMEOUT`] on reads and writes.
fn connect(addr: SocketAddr) -> redis::RedisResult<redis::Connection> {
    let c = redis::Client::open(format!("redis://{addr}/"))?.get_connection_with_timeout(Duration::from_secs(2))?;
    c.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    c.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(c)
}

/// An error's kind for the tally: the error code of an error reply
/// (`TRYAGAIN`, `ERR`, ...), else `timeout` or `io`.
fn error_kind(e: &redis::RedisError) -> String {
    if let Some(code) = e.code() {
        code.to_string()
    } else if e.is_timeout() {
        "timeout".into()
    } else if e.is_io_error() || e.is_connection_dropped() {
        "io".into()
    } else {
        format!("{:?}", e.kind())
    }
}

/// What one or all clients saw.
#[derive(Debug)]
struct Tally {
    ops: u64,
    /// Per workload key: INCRs answered with a value.
    acked: Vec<u64>,
    /// Per workload key: INCRs answered with an error, or not answered (they
    /// may or may not have been applied).
    doubt: Vec<u64>,
    /// Failed requests and connection attempts by kind.
    errors: BTreeMap<String, u64>,
    /// The first message of each kind of error.
    error_examples: BTreeMap<String, String>,
    /// Reads (GET, or INCR's answer) that went back behind a value this
    /// client had seen.
    stale: u64,
    stale_examples: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ops: 0,
            acked: vec![0; KEYS],
            doubt: vec![0; KEYS],
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            stale: 0,
            stale_examples: Vec::new(),
        }
    }

    fn error(&mut self, kind: String, msg: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.error_examples.entry(kind).or_insert(msg);
    }

    fn stale(&mut self, what: String) {
        self.stale += 1;
        if self.stale_examples.len() < 5 {
            self.stale_examples.push(what);
        }
    }

    fn merge(&mut self, o: Tally) {
        self.ops += o.ops;
        for i in 0..KEYS {
            self.acked[i] += o.acked[i];
            self.doubt[i] += o.doubt[i];
        }
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, m) in o.error_examples {
            self.error_examples.entry(k).or_insert(m);
        }
        self.stale += o.stale;
        for s in o.stale_examples {
            if self.stale_examples.len() < 10 {
                self.stale_examples.push(s);
            }
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// [`CLIENTS`] threads, client `t` on proxy `t % n` of the given ones (and
/// on to the next when it cannot connect), each sending INCR (3 in 4) or
/// GET on random workload keys until stopped.
struct Workload {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Workload {
    fn start(addrs: Vec<SocketAddr>) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let threads = (0..CLIENTS)
            .map(|t| {
                let (stop, ops, errors, addrs) = (stop.clone(), ops.clone(), errors.clone(), addrs.clone());
                std::thread::spawn(move || client(t, &addrs, &stop, &ops, &errors))
            })
            .collect();
        Workload {
            stop,
            ops,
            errors,
            threads,
        }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Waits until the clients completed `n` more requests (answered, with
    /// a value or an error); panics after `within`.
    fn progress(&self, n: u64, within: Duration, what: &str) {
        let from = self.ops();
        support::wait_until(within, &format!("{n} more requests {what}"), || self.ops() >= from + n);
    }

    fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::new();
        for t in self.threads {
            all.merge(t.join().expect("client thread"));
        }
        all
    }
}

fn client(t: usize, addrs: &[SocketAddr], stop: &AtomicBool, ops: &AtomicU64, errors: &AtomicU64) -> Tally {
    let mut tally = Tally::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + t as u64);
    let mut at = t % addrs.len();
    let mut conn: Option<redis::Connection> = None;
    // The highest value this client saw for each key (all start at 0).
    let mut seen = vec![0i64; KEYS];
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(addrs[at]) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tally.error("connect".into(), format!("{}: {e}", addrs[at]));
                    errors.fetch_add(1, Ordering::Relaxed);
                    at = (at + 1) % addrs.len();
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let k = rng.random_range(0..KEYS);
        let key = fleet_key(k);
        let result = if rng.random_ratio(1, 4) {
            redis::cmd("GET").arg(&key).query::<Option<i64>>(c).map(|v| {
                let v = v.unwrap_or(-1);
                if v < seen[k] {
                    tally.stale(format!(
                        "stale read: GET {key} = {v} via {} after this client saw {}",
                        addrs[at], seen[k]
                    ));
                }
                seen[k] = seen[k].max(v);
            })
        } else {
            let r = redis::cmd("INCR").arg(&key).query::<i64>(c);
            match &r {
                Ok(v) => {
                    tally.acked[k] += 1;
                    if *v <= seen[k] {
                        tally.stale(format!(
                            "stale write: INCR {key} = {v} via {} after this client saw {}",
                            addrs[at], seen[k]
                        ));
                    }
                    seen[k] = seen[k].max(*v);
                }
                Err(_) => tally.doubt[k] += 1,
            }
            r.map(|_| ())
        };
        tally.ops += 1;
        ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            errors.fetch_add(1, Ordering::Relaxed);
            tally.error(error_kind(&e), format!("{key} via {}: {e}", addrs[at]));
            if e.code().is_none() {
                // Not an error reply: the connection is in an unknown state.
                conn = None;
            }
        }
    }
    tally
}

// ---------------------------------------------------------------------------
// Scenarios

/// Adds a fourth shard, then removes one of the first three, with `proxies`
/// proxies under load.
fn add_then_remove(tag: &str, proxies: usize) {
    let _serial = serial();
    let mut fleet = Fleet::start(tag, 4, 3, proxies);
    fleet.preload(PADDING);
    let e0 = fleet.status().expect("status").epoch();
    let all: Vec<usize> = (0..proxies).collect();
    let load = Workload::start(fleet.addrs(&all));
    load.progress(500, Duration::from_secs(20), "before the change");

    let out = fleet.apply(&[0, 1, 2, 3], &[]);
    assert!(out.ok(), "adding s3: {out}");
    // apply returns once the migration is done; the phase may take a moment
    // more to read "stable".
    let s = fleet.wait_status(Duration::from_secs(10), "stable after apply", |s| {
        s.phase() == "stable" && s.migration_done()
    });
    assert!(s.epoch() > e0, "a new epoch after apply: {}", s.json);
    let e1 = s.epoch();
    for (id, served) in s.served() {
        assert_eq!(served, e1, "{id} serves the new epoch: {}", s.json);
    }
    assert!(fleet.dbsize(3) > 0, "s3 received keys");
    load.progress(500, Duration::from_secs(20), "after adding s3");

    let out = fleet.apply(&[1, 2, 3], &[]);
    assert!(out.ok(), "removing s0: {out}");
    let s = fleet.wait_status(Duration::from_secs(10), "stable after apply", |s| {
        s.phase() == "stable" && s.migration_done()
    });
    assert!(s.epoch() > e1, "{}", s.json);
    load.progress(500, Duration::from_secs(20), "after removing s0");
    let tally = load.stop();
    assert_eq!(fleet.dbsize(0), 0, "s0, removed, holds nothing");
    fleet.verify(&tally, &[1, 2, 3], 0).assert_clean();
}

/// a. Two proxies, three shards: a fourth joins under load, then one of the
/// first three leaves.
#[test]
fn a_two_proxies_add_then_remove_a_shard_under_load() {
    add_then_remove("a", 2);
}

/// b. The same with three proxies.
#[test]
fn b_three_proxies_add_then_remove_a_shard_under_load() {
    add_then_remove("b", 3);
}

/// c. A stopped proxy blocks a change (which must fail naming it, with
/// nothing moved) until it is evicted. With `resume_and_write`, it is
/// resumed afterwards and written to: fenced, it must answer no write on a
/// key that moved with success.
fn stopped_proxy_blocks_until_evicted(tag: &str, resume_and_write: bool) {
    let _serial = serial();
    // Fencing at the backends is an option of the fleet (`[cluster] fence`);
    // the test of the evicted proxy's writes turns it on.
    let cluster_extra = if resume_and_write { "fence = true" } else { "" };
    let mut fleet = Fleet::start_with(tag, 4, 3, 3, Some(cluster_extra));
    fleet.preload(PADDING);
    let before = fleet.locations();
    let e0 = fleet.status().expect("status").epoch();
    // The load runs through the two proxies that stay up.
    let load = Workload::start(fleet.addrs(&[0, 1]));
    load.progress(300, Duration::from_secs(20), "before the change");

    fleet.proxies[2].sigstop();
    let out = fleet.apply(&[0, 1, 2, 3], &["--timeout-ms", "3000"]);
    assert_eq!(
        out.code,
        Some(1),
        "apply must fail while proxy-2 cannot acknowledge: {out}"
    );
    assert!(out.text().contains(&proxy_id(2)), "the failure names proxy-2: {out}");
    assert!(
        out.elapsed < Duration::from_secs(3 + 12),
        "it fails about when --timeout-ms says: {out}"
    );
    let s = fleet.wait_status(Duration::from_secs(15), "the aborted change to settle", |s| {
        s.phase() == "stable"
    });
    eprintln!("fleet[{tag}] after the failed apply (epoch before: {e0}): {}", s.json);
    load.progress(300, Duration::from_secs(20), "after the failed change");
    let after = fleet.locations();
    let moved: Vec<&String> = before.keys().filter(|k| after.get(*k) != before.get(*k)).collect();
    assert!(
        moved.is_empty(),
        "an aborted change moves nothing: {} keys changed shard, e.g. {:?}",
        moved.len(),
        &moved[..moved.len().min(5)]
    );
    assert_eq!(fleet.dbsize(3), 0, "s3 got no keys from an aborted change");

    let out = fleet.ctl(&["evict", &proxy_id(2)]);
    assert!(out.ok(), "evict proxy-2: {out}");
    let s = fleet.status().expect("status");
    assert!(
        !s.proxy_ids().contains(&proxy_id(2)),
        "evicted, proxy-2 is no longer registered: {}",
        s.json
    );
    let out = fleet.apply(&[0, 1, 2, 3], &["--timeout-ms", "10000"]);
    assert!(out.ok(), "with proxy-2 evicted the change goes through: {out}");
    let s = fleet.wait_status(Duration::from_secs(10), "stable after apply", |s| {
        s.phase() == "stable" && s.migration_done()
    });
    assert!(s.epoch() > e0, "{}", s.json);
    assert!(fleet.dbsize(3) > 0, "s3 received keys");
    load.progress(300, Duration::from_secs(20), "after the change");
    let mut tally = load.stop();

    if resume_and_write {
        let now = fleet.locations();
        let moved: Vec<usize> = (0..KEYS)
            .filter(|&i| before.get(&fleet_key(i)) != now.get(&fleet_key(i)))
            .collect();
        assert!(
            moved.len() > KEYS / 8,
            "about a quarter of the keys moved to s3: {}",
            moved.len()
        );
        fleet.proxies[2].sigcont();
        let addr = fleet.proxies[2].addr();
        let mut fenced = Tally::new();
        let mut succeeded = Vec::new();
        let mut conn = None;
        for &i in moved.iter().take(300) {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(addr) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        fenced.error("connect".into(), e.to_string());
                        continue;
                    }
                },
            };
            match redis::cmd("INCR").arg(fleet_key(i)).query::<i64>(c) {
                Ok(v) => {
                    fenced.acked[i] += 1;
                    succeeded.push(format!("INCR {} = {v}", fleet_key(i)));
                }
                Err(e) => {
                    fenced.doubt[i] += 1;
                    if e.code().is_none() {
                        conn = None;
                    }
                    fenced.error(error_kind(&e), e.to_string());
                }
            }
        }
        eprintln!(
            "fleet[{tag}] writes through the evicted proxy-2: {} succeeded, errors {:?} (first: {:?})",
            succeeded.len(),
            fenced.errors,
            fenced.error_examples
        );
        tally.merge(fenced);
        assert!(
            succeeded.is_empty(),
            "the evicted proxy-2 acknowledged {} writes on moved keys, e.g. {:?}",
            succeeded.len(),
            &succeeded[..succeeded.len().min(5)]
        );
    }
    fleet.verify(&tally, &[0, 1, 2, 3], 0).assert_clean();
}

/// c. A SIGSTOPped proxy: `ctl apply --timeout-ms 3000` fails naming it and
/// moves nothing; after `ctl evict` the same apply succeeds.
#[test]
fn c_stopped_proxy_blocks_a_change_until_evicted() {
    stopped_proxy_blocks_until_evicted("c", false);
}

/// c (fencing). As above, then the evicted proxy wakes up (SIGCONT) and is
/// sent INCRs on keys that moved: it must answer errors, never success.
#[test]
fn c_fencing_evicted_proxy_never_acknowledges_writes_to_moved_keys() {
    stopped_proxy_blocks_until_evicted("c-fencing", true);
}

/// d. etcd dies right after `ctl apply --detach` returns and comes back 2 s
/// later: the load goes on and the change completes.
#[test]
fn d_etcd_killed_right_after_apply_detach() {
    let _serial = serial();
    let mut fleet = Fleet::start("d", 4, 3, 2);
    fleet.preload(PADDING);
    let e0 = fleet.status().expect("status").epoch();
    let load = Workload::start(fleet.addrs(&[0, 1]));
    load.progress(500, Duration::from_secs(20), "before the change");

    let out = fleet.apply(&[0, 1, 2, 3], &["--detach"]);
    assert!(out.ok(), "apply --detach: {out}");
    fleet.etcd.kill();
    let ops = load.ops();
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("fleet[d] requests during the 2 s etcd outage: {}", load.ops() - ops);
    fleet.etcd.restart();
    let s = fleet.wait_settled(e0);
    eprintln!("fleet[d] settled: {}", s.json);
    for (id, served) in s.served() {
        assert_eq!(served, s.epoch(), "{id} serves the new epoch: {}", s.json);
    }
    load.progress(500, Duration::from_secs(20), "after the change");
    let tally = load.stop();
    fleet.verify(&tally, &[0, 1, 2, 3], 0).assert_clean();
}

/// e. The proxy running the migration is SIGKILLed in the middle of it,
/// then evicted: another proxy finishes the migration.
#[test]
fn e_migrator_killed_mid_migration_another_proxy_finishes() {
    let _serial = serial();
    let mut fleet = Fleet::start("e", 4, 3, 2);
    fleet.preload(PADDING_LONG_MIGRATION);
    let e0 = fleet.status().expect("status").epoch();
    let load = Workload::start(fleet.addrs(&[0, 1]));
    load.progress(500, Duration::from_secs(20), "before the change");

    let out = fleet.apply(&[0, 1, 2, 3], &["--detach"]);
    assert!(out.ok(), "apply --detach: {out}");
    // The migrator names itself in the migration's report once it starts;
    // give it a moment, then fall back to proxy 0.
    let named_within = Instant::now() + Duration::from_secs(2);
    let s = loop {
        let s = fleet.status().expect("status");
        if s.migrator().is_some() || Instant::now() >= named_within {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let victim = match s.migrator() {
        Some(id) => id
            .strip_prefix("proxy-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < fleet.proxies.len())
            .unwrap_or_else(|| panic!("status names an unknown migrator {id}: {}", s.json)),
        None => 0,
    };
    fleet.proxies[victim].sigkill();
    eprintln!("fleet[e] killed the migrator proxy-{victim}; status before: {}", s.json);
    // The kill must have come in the middle: keys still to move.
    let ring = Ring::for_config(&Config::parse(&fleet.backends_text(&[0, 1, 2, 3])).unwrap());
    let pending = fleet
        .locations()
        .iter()
        .filter(|(k, shards)| k.starts_with("pad:") && shards.iter().any(|&s| s != ring.shard_of(k.as_bytes())))
        .count();
    assert!(
        pending > 0,
        "the migration had finished before the kill; raise PADDING_LONG_MIGRATION"
    );
    eprintln!("fleet[e] keys still to move at the kill: {pending}");

    let out = fleet.ctl(&["evict", &proxy_id(victim)]);
    assert!(out.ok(), "evict the killed migrator: {out}");
    let s = fleet.wait_settled(e0);
    eprintln!("fleet[e] settled: {}", s.json);
    assert!(!s.proxy_ids().contains(&proxy_id(victim)), "{}", s.json);
    load.progress(500, Duration::from_secs(20), "after the migration");
    let tally = load.stop();
    fleet.verify(&tally, &[0, 1, 2, 3], 1 - victim).assert_clean();
}

/// f. etcd down with no change in flight: both proxies serve on, without an
/// error, and still after etcd is back.
#[test]
fn f_etcd_outage_without_a_change_is_invisible_to_clients() {
    let _serial = serial();
    let mut fleet = Fleet::start("f", 3, 3, 2);
    fleet.preload(0);
    let load = Workload::start(fleet.addrs(&[0, 1]));
    load.progress(500, Duration::from_secs(20), "before the outage");
    fleet.etcd.kill();
    let (ops, errors) = (load.ops(), load.errors());
    std::thread::sleep(Duration::from_secs(3));
    let during = load.ops() - ops;
    eprintln!("fleet[f] requests during the 3 s etcd outage: {during}");
    assert!(
        during > 300,
        "the proxies serve while etcd is down: {during} requests in 3 s"
    );
    assert_eq!(load.errors(), errors, "no error while etcd is down");
    fleet.etcd.restart();
    load.progress(500, Duration::from_secs(20), "after etcd is back");
    let s = fleet.wait_status(Duration::from_secs(20), "status once etcd is back", |s| {
        s.phase() == "stable"
    });
    eprintln!("fleet[f] status after the outage: {}", s.json);
    let tally = load.stop();
    assert_eq!(tally.error_count(), 0, "no errors at all: {:?}", tally.error_examples);
    fleet.verify(&tally, &[0, 1, 2], 0).assert_clean();
}

/// The harness itself, runnable without a fleet: etcd comes back on its
/// ports after a kill, and a plain (non-fleet) `shardis` process answers,
/// hangs on SIGSTOP, answers again on SIGCONT and exits on SIGTERM.
#[test]
fn harness_etcd_restarts_and_shardis_process_takes_signals() {
    let _serial = serial();
    let mut etcd = EtcdNode::start();
    let endpoint = etcd.endpoint();
    etcd.kill();
    assert!(!etcd.is_running());
    assert!(
        std::net::TcpStream::connect(&endpoint).is_err(),
        "nothing listens on {endpoint} once etcd is killed"
    );
    etcd.restart();
    assert!(etcd.is_running());
    assert_eq!(etcd.endpoint(), endpoint, "same port after a restart");

    let shard = RedisNode::start();
    let config = format!("[[backends]]\nname = \"s0\"\naddr = \"{}\"\n", shard.addr());
    let mut p = ShardisProcess::start(BIN, "plain", &config);
    let addr = p.addr();
    let ping = |within| support::ping_within(addr, within);
    assert_eq!(ping(Duration::from_secs(1)), Ok(()));
    p.sigstop();
    assert!(
        ping(Duration::from_millis(600)).is_err(),
        "a stopped proxy answers nothing"
    );
    p.sigcont();
    assert_eq!(ping(Duration::from_secs(5)), Ok(()));
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "SIGTERM ends the proxy; log:\n{}", p.log());
    assert!(!p.is_running());
    assert!(
        p.log().contains("shardis listening"),
        "the log file has the proxy's output"
    );
}

/// The checker itself, on two plain (non-fleet) proxies in front of the
/// same three shards: a clean run reports nothing; a key deleted behind the
/// proxies' back is lost and missing, a key copied to a second shard is on
/// two shards and misplaced, and checking as if a shard had been removed
/// finds its keys stranded.
#[test]
fn checker_reports_clean_runs_clean_and_finds_planted_faults() {
    let _serial = serial();
    let mut fleet = Fleet::start_with("checker", 3, 3, 2, None);
    fleet.preload(1000);
    let load = Workload::start(fleet.addrs(&[0, 1]));
    load.progress(1000, Duration::from_secs(20), "on plain proxies");
    let tally = load.stop();
    assert!(tally.acked.iter().sum::<u64>() > 0);
    let report = fleet.verify(&tally, &[0, 1, 2], 0);
    report.assert_clean();
    assert_eq!(tally.error_count(), 0, "{:?}", tally.error_examples);

    // Plant faults straight on the shards.
    let at = fleet.locations();
    let (k0, k1) = (fleet_key(0), fleet_key(1));
    let home0 = at[&k0][0];
    let _: i64 = redis::cmd("DEL")
        .arg(&k0)
        .query(&mut fleet.shards[home0].client())
        .unwrap();
    let home1 = at[&k1][0];
    let other = (home1 + 1) % 3;
    let () = redis::cmd("SET")
        .arg(&k1)
        .arg(0)
        .query(&mut fleet.shards[other].client())
        .unwrap();
    let report = fleet.verify(&tally, &[0, 1, 2], 0);
    for needle in ["lost=1 ", "missing=1 ", "on_two_shards=1 ", "misplaced=1 "] {
        assert!(report.summary.contains(needle), "{needle}: {}", report.summary);
    }
    assert!(
        report.problems.iter().any(|p| p.contains("lost: fleet:0")),
        "{:?}",
        report.problems
    );
    assert!(
        report.problems.iter().any(|p| p.contains("on two shards: fleet:1")),
        "{:?}",
        report.problems
    );

    // As if s2 had left: whatever it holds is stranded.
    let on_s2 = fleet.dbsize(2);
    assert!(on_s2 > 0);
    let report = fleet.verify(&tally, &[0, 1], 0);
    assert!(!report.problems.is_empty());
    assert!(report.summary.contains("stranded="), "{}", report.summary);
    assert!(!report.summary.contains("stranded=0 "), "{}", report.summary);
}

/// A shard that joins a fleet gets the function libraries the others have
/// before any proxy routes to it: FCALL on keys that now live on the new
/// shard works through every proxy right after `ctl apply`.
#[test]
fn g_a_joining_shard_gets_the_function_libraries() {
    let _serial = serial();
    let fleet = Fleet::start("g", 4, 3, 2);
    let lib = "#!lua name=fleetlib\nredis.register_function('fleet_get', function(keys, args) return redis.call('GET', keys[1]) end)";
    let mut c = connect(fleet.addrs(&[0])[0]).expect("proxy 0");
    let loaded: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut c)
        .expect("FUNCTION LOAD");
    assert_eq!(loaded, "fleetlib");
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(fleet_key(i)).arg(i).query(&mut c).expect("SET");
    }
    let out = fleet.apply(&[0, 1, 2, 3], &[]);
    assert!(out.ok(), "adding s3: {out}");
    assert!(fleet.dbsize(3) > 0, "s3 received keys");
    let direct = redis::Client::open(format!("redis://{}/", fleet.shards[3].addr()))
        .and_then(|cl| cl.get_connection())
        .expect("s3 directly");
    let mut direct = direct;
    let libs: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query(&mut direct)
        .expect("FUNCTION LIST on s3");
    assert!(format!("{libs:?}").contains("fleetlib"), "s3 has the library: {libs:?}");
    for addr in fleet.addrs(&[0, 1]) {
        let mut c = connect(addr).expect("proxy");
        for i in 0..200 {
            let v: String = redis::cmd("FCALL")
                .arg("fleet_get")
                .arg(1)
                .arg(fleet_key(i))
                .query(&mut c)
                .unwrap_or_else(|e| panic!("FCALL fleet_get {} via {addr}: {e}", fleet_key(i)));
            assert_eq!(v, i.to_string());
        }
    }
}

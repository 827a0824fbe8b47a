//! INFO as one Redis 7.0 answers it: every default section with the fields
//! tools read, in Redis's order, plus the proxy's own sections.
//!
//! Sections are of three kinds:
//! - the proxy's own (`server`, `clients`, `replication`, `cpu`, `modules`,
//!   `cluster`, and `proxy`, `migration`, `locks`), written when the request
//!   arrives ([`Info::new`]);
//! - summed over the shards (`memory`, `persistence`, `stats`,
//!   `commandstats`, `errorstats`, `latencystats`, `keyspace`): the session sends one `INFO <those>` to every
//!   shard and [`Info::finish`] merges the answers field by field (counters
//!   summed, flags and durations their maximum, `rdb_last_save_time` the
//!   oldest, `*_human` recomputed from the sum, `dbN` / `errorstat_*`
//!   summed per sub-field), with the proxy's own counters and RSS in place;
//! - `proxy`, which also says how many shards did not answer
//!   (`shards_unreachable`): such a shard drops out of the sums, and every
//!   summed section is still there.
//!
//! `INFO` and `INFO default` give every section but `commandstats` and
//! `latencystats` (the shards' only: commands the proxy answers itself are
//! not counted there), which `all` and `everything` add; several names give
//! those sections; an unknown name gives nothing, as on Redis.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::backend::BackendResult;
use crate::command::table::REDIS_VERSION;
use crate::protocol::{Encoder, reply};
use crate::state::Shared;

/// Every section, in the order INFO writes them.
pub const SECTIONS: [&str; 16] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "commandstats",
    "errorstats",
    "latencystats",
    "cluster",
    "keyspace",
    "proxy",
    "migration",
    "locks",
];

/// The sections whose fields come from the shards.
const FROM_SHARDS: [&str; 7] = [
    "memory",
    "persistence",
    "stats",
    "commandstats",
    "errorstats",
    "latencystats",
    "keyspace",
];

/// Sections only `all` / `everything` (or their own name) ask for, as on Redis.
const NOT_DEFAULT: [&str; 2] = ["commandstats", "latencystats"];

/// Which sections `INFO args...` asks for, in INFO's order.
pub fn wanted(args: &[&[u8]]) -> Vec<&'static str> {
    let word = |w: &[u8]| args[1..].iter().any(|a| a.eq_ignore_ascii_case(w));
    let all = word(b"all") || word(b"everything");
    let default = args.len() == 1 || word(b"default");
    SECTIONS
        .into_iter()
        .filter(|s| all || (default && !NOT_DEFAULT.contains(s)) || word(s.as_bytes()))
        .collect()
}

/// An INFO reply being put together.
#[derive(Debug)]
pub struct Info {
    sections: Vec<&'static str>,
    /// The text of each section the proxy writes itself (header included).
    own: Vec<(&'static str, String)>,
    /// Fields the proxy puts in a shard section in place of (or besides)
    /// the shards' own: (section, field, value).
    fields: Vec<(&'static str, &'static str, String)>,
    /// The shards, in the order their answers come.
    names: Vec<Arc<str>>,
}

impl Info {
    /// `own` has the text of each section the proxy writes; `fields` the
    /// proxy's values in shard sections.
    pub fn new(
        sections: Vec<&'static str>,
        own: Vec<(&'static str, String)>,
        fields: Vec<(&'static str, &'static str, String)>,
        names: Vec<Arc<str>>,
    ) -> Info {
        Info {
            sections,
            own,
            fields,
            names,
        }
    }

    /// The `INFO` request for the shards, or `None` when no wanted section
    /// needs them.
    pub fn shard_request(&self) -> Option<Vec<&'static str>> {
        let needs: Vec<&'static str> = FROM_SHARDS.into_iter().filter(|s| self.sections.contains(s)).collect();
        if !needs.is_empty() {
            return Some(needs);
        }
        // `proxy` says how many shards answer: ask for the smallest section.
        self.sections.contains(&"proxy").then(|| vec!["keyspace"])
    }

    /// The text when no shard is asked.
    pub fn text_without_shards(&self) -> String {
        self.render(&[], 0)
    }

    /// Writes the reply from the shards' answers (in shard order); a shard
    /// that failed leaves the sums and is counted in `shards_unreachable`.
    pub fn finish(self, parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
        let mut texts = Vec::new();
        let mut down = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            match p
                .and_then(|r| r.ok())
                .filter(|f| !reply::is_error(f))
                .and_then(|f| reply::as_bytes(&f))
            {
                Some(body) => texts.push(String::from_utf8_lossy(&body).into_owned()),
                None => down.push(i),
            }
        }
        let parsed: Vec<Vec<Section>> = texts.iter().map(|t| parse(t)).collect();
        let mut info = self;
        let unreachable: Vec<String> = down
            .iter()
            .map(|&i| info.names.get(i).map_or("?", |n| n).to_string())
            .collect();
        if let Some((_, t)) = info.own.iter_mut().find(|(s, _)| *s == "proxy") {
            // Right after the header line.
            let at = t.find("\r\n").map_or(t.len(), |i| i + 2);
            t.insert_str(
                at,
                &format!(
                    "shards_unreachable:{}\r\nshards_unreachable_names:{}\r\n",
                    unreachable.len(),
                    unreachable.join(",")
                ),
            );
        }
        enc.verbatim(info.render(&parsed, down.len()).as_bytes());
    }

    fn render(&self, shards: &[Vec<Section>], _down: usize) -> String {
        let mut t = String::new();
        for s in &self.sections {
            if let Some((_, text)) = self.own.iter().find(|(n, _)| n == s) {
                t.push_str(text);
                continue;
            }
            if !FROM_SHARDS.contains(s) {
                continue;
            }
            let mut fields = merge_section(s, shards);
            for (sec, name, value) in &self.fields {
                if sec != s {
                    continue;
                }
                match fields.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => *v = value.clone(),
                    None => fields.push((name.to_string(), value.clone())),
                }
            }
            t.push_str("# ");
            t.push_str(&title(s));
            t.push_str("\r\n");
            for (n, v) in &fields {
                t.push_str(n);
                t.push(':');
                t.push_str(v);
                t.push_str("\r\n");
            }
            t.push_str("\r\n");
        }
        // Redis ends the last section without the blank line.
        if t.ends_with("\r\n\r\n") {
            t.truncate(t.len() - 2);
        }
        t
    }
}

/// A section's name in its header: `persistence` -> `Persistence`.
fn title(s: &str) -> String {
    match s {
        "cpu" => "CPU".to_string(),
        "errorstats" => "Errorstats".to_string(),
        _ => {
            let mut c = s.chars();
            c.next().map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        }
    }
}

/// One section of a shard's INFO: its lowercase name and its fields.
struct Section {
    name: String,
    fields: Vec<(String, String)>,
}

fn parse(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(h) = line.strip_prefix("# ") {
            out.push(Section {
                name: h.trim().to_ascii_lowercase(),
                fields: Vec::new(),
            });
        } else if let (Some(sec), Some((k, v))) = (out.last_mut(), line.split_once(':')) {
            sec.fields.push((k.to_string(), v.to_string()));
        }
    }
    out
}

/// A section merged over the shards that answered: fields in the first
/// shard's order (then any only later shards have).
fn merge_section(name: &str, shards: &[Vec<Section>]) -> Vec<(String, String)> {
    let mut order: Vec<&str> = Vec::new();
    for sec in shards.iter().flat_map(|s| s.iter().filter(|s| s.name == name)) {
        for (k, _) in &sec.fields {
            if !order.contains(&k.as_str()) {
                order.push(k);
            }
        }
    }
    let values = |field: &str| -> Vec<&str> {
        shards
            .iter()
            .flat_map(|s| s.iter().filter(|s| s.name == name))
            .filter_map(|sec| sec.fields.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str()))
            .collect()
    };
    let mut out: Vec<(String, String)> = order.iter().map(|f| (f.to_string(), combine(f, &values(f)))).collect();
    // `x_human` from the summed `x`.
    let sums: Vec<(String, String)> = out.clone();
    for (k, v) in out.iter_mut() {
        if let Some(base) = k.strip_suffix("_human")
            && let Some(n) = sums
                .iter()
                .find(|(b, _)| b == base)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        {
            *v = human(n);
        }
    }
    out
}

/// Fields whose value is a flag, a state or a duration: the largest.
fn is_max(field: &str) -> bool {
    field.ends_with("_in_progress")
        || field.ends_with("_scheduled")
        || field.ends_with("_enabled")
        || field.ends_with("_sec")
        || field.ends_with("_perc")
        || field.ends_with("_ratio")
        || field.ends_with("_bytes_per_sec")
        || field.starts_with("mem_fragmentation")
        || matches!(
            field,
            "loading" | "async_loading" | "rdb_last_cow_size" | "aof_last_cow_size" | "module_fork_last_cow_size"
        )
}

/// One field's value over the shards.
fn combine(field: &str, values: &[&str]) -> String {
    let Some(first) = values.first() else {
        return String::new();
    };
    if field == "rdb_last_save_time" {
        return values
            .iter()
            .filter_map(|v| v.parse::<i64>().ok())
            .min()
            .unwrap_or(0)
            .to_string();
    }
    if values.iter().all(|v| v.parse::<i64>().is_ok()) {
        let n = values.iter().filter_map(|v| v.parse::<i64>().ok());
        return if is_max(field) {
            n.max()
        } else {
            Some(n.fold(0, i64::saturating_add))
        }
        .unwrap_or(0)
        .to_string();
    }
    if values.iter().all(|v| v.parse::<f64>().is_ok()) {
        let n = values.iter().filter_map(|v| v.parse::<f64>().ok());
        let x = if is_max(field) { n.fold(0.0, f64::max) } else { n.sum() };
        return format!("{x:.2}");
    }
    if first.contains('=') {
        return combine_subfields(values);
    }
    // Status words: a shard in trouble wins.
    if let Some(bad) = values.iter().find(|v| **v == "err" || **v == "fail") {
        return bad.to_string();
    }
    first.to_string()
}

/// `keys=1,expires=0,avg_ttl=0` (keyspace), `count=3` (errorstats),
/// `calls=2,usec=9,usec_per_call=4.50,...` (commandstats): each integer
/// sub-field summed, `avg_ttl` weighted by `expires`, `usec_per_call`
/// recomputed; fractional ones (latency percentiles) their maximum.
fn combine_subfields(values: &[&str]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut sums: Vec<i128> = Vec::new();
    let mut maxima: Vec<Option<f64>> = Vec::new();
    let (mut ttl_weighted, mut ttl_keys) = (0i128, 0i128);
    for v in values {
        let sub = |name: &str| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|x| x.parse::<i128>().ok())
        };
        if let (Some(t), Some(e)) = (sub("avg_ttl"), sub("expires"))
            && t > 0
        {
            // Saturating: a shard's numbers are not ours to trust (an
            // overflow panicked in debug builds; found by fuzz/merge).
            ttl_weighted = ttl_weighted.saturating_add(t.saturating_mul(e));
            ttl_keys = ttl_keys.saturating_add(e);
        }
        for kv in v.split(',') {
            let Some((k, x)) = kv.split_once('=') else { continue };
            let (int, frac) = match x.parse::<i128>() {
                Ok(n) => (n, None),
                Err(_) => (0, x.parse::<f64>().ok()),
            };
            let i = match order.iter().position(|o| *o == k) {
                Some(i) => i,
                None => {
                    order.push(k);
                    sums.push(0);
                    maxima.push(None);
                    order.len() - 1
                }
            };
            sums[i] = sums[i].saturating_add(int);
            if let Some(f) = frac {
                maxima[i] = Some(maxima[i].map_or(f, |m: f64| m.max(f)));
            }
        }
    }
    let sum_of = |name: &str| order.iter().position(|o| *o == name).map(|i| sums[i]);
    order
        .iter()
        .enumerate()
        .map(|(i, k)| match *k {
            "avg_ttl" => format!("{k}={}", if ttl_keys > 0 { ttl_weighted / ttl_keys } else { 0 }),
            "usec_per_call" => {
                let calls = sum_of("calls").unwrap_or(0);
                let per = if calls > 0 {
                    sum_of("usec").unwrap_or(0) as f64 / calls as f64
                } else {
                    0.0
                };
                format!("{k}={per:.2}")
            }
            _ => match maxima[i] {
                Some(m) => format!("{k}={m:.3}"),
                None => format!("{k}={}", sums[i]),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Bytes as Redis writes `*_human` (`bytesToHuman`).
pub fn human(n: u64) -> String {
    let n = n as f64;
    const K: f64 = 1024.0;
    if n < K {
        format!("{n}B")
    } else if n < K * K {
        format!("{:.2}K", n / K)
    } else if n < K * K * K {
        format!("{:.2}M", n / (K * K))
    } else if n < K * K * K * K {
        format!("{:.2}G", n / (K * K * K))
    } else {
        format!("{:.2}T", n / (K * K * K * K))
    }
}

/// A 40-hex-digit id, the same for the life of the process (`run_id`).
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut s = String::new();
        for i in 0..3u8 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(now);
            h.write_u32(std::process::id());
            h.write_u8(i);
            s.push_str(&format!("{:016x}", h.finish()));
        }
        s.truncate(40);
        s
    })
}

/// The `# Server` section.
pub fn server(shared: &Shared, tcp_port: &str) -> String {
    let up = shared.started.elapsed().as_secs();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let config_file = shared
        .config_path
        .get()
        .and_then(|p| std::fs::canonicalize(p).ok().or_else(|| Some(p.clone())))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let api = if cfg!(target_os = "linux") { "epoll" } else { "kqueue" };
    format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\nredis_build_id:0\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\nmonotonic_clock:POSIX clock_gettime\r\nmultiplexing_api:{api}\r\natomicvar_api:c11-builtin\r\ngcc_version:0.0.0\r\nprocess_id:{}\r\nprocess_supervised:no\r\nrun_id:{}\r\ntcp_port:{tcp_port}\r\nserver_time_usec:{}\r\nuptime_in_seconds:{up}\r\nuptime_in_days:{}\r\nhz:10\r\nconfigured_hz:10\r\nlru_clock:{}\r\nexecutable:{exe}\r\nconfig_file:{config_file}\r\nio_threads_active:0\r\nshardis_version:{}\r\n\r\n",
        os_name(),
        usize::BITS,
        std::process::id(),
        run_id(),
        now.as_micros(),
        up / 86400,
        now.as_secs() & ((1 << 24) - 1),
        env!("CARGO_PKG_VERSION"),
    )
}

/// `Linux 6.1.0 x86_64`, as Redis writes `os`.
fn os_name() -> String {
    // SAFETY: uname fills the struct it is given; the fields are
    // NUL-terminated C strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return std::env::consts::OS.to_string();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {} {}", field(&u.sysname), field(&u.release), field(&u.machine))
}

/// The `# Replication` section of a server with no replicas.
pub fn replication() -> String {
    format!(
        "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_replid:{}\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:0\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:0\r\nrepl_backlog_size:1048576\r\nrepl_backlog_first_byte_offset:0\r\nrepl_backlog_histlen:0\r\n\r\n",
        run_id()
    )
}

/// The `# CPU` section: the proxy's own CPU time (getrusage). The proxy has
/// no main thread doing the work as Redis has: the `_main_thread` fields
/// repeat the process's.
pub fn cpu() -> String {
    let usage = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut r) } != 0 {
            return (0.0, 0.0);
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (secs(r.ru_stime), secs(r.ru_utime))
    };
    let (sys, user) = usage(libc::RUSAGE_SELF);
    let (csys, cuser) = usage(libc::RUSAGE_CHILDREN);
    format!(
        "# CPU\r\nused_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:{csys:.6}\r\nused_cpu_user_children:{cuser:.6}\r\nused_cpu_sys_main_thread:{sys:.6}\r\nused_cpu_user_main_thread:{user:.6}\r\n\r\n"
    )
}

/// The proxy's resident memory in bytes (0 where /proc is missing).
pub fn proxy_rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Commands per second through the proxy since the previous INFO that was
/// at least 100 ms earlier (Redis samples over its last 1.6 s).
pub fn ops_per_sec(shared: &Shared) -> u64 {
    static SAMPLE: Mutex<Option<(Instant, u64, u64)>> = Mutex::new(None);
    let now = Instant::now();
    let count = shared.stats.commands.get();
    let mut s = SAMPLE.lock().unwrap_or_else(|p| p.into_inner());
    match *s {
        Some((at, _, rate)) if now.duration_since(at).as_millis() < 100 => rate,
        Some((at, before, _)) => {
            let rate = (count.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()) as u64;
            *s = Some((now, count, rate));
            rate
        }
        None => {
            let rate = (count as f64 / shared.started.elapsed().as_secs_f64().max(1.0)) as u64;
            *s = Some((now, count, rate));
            rate
        }
    }
}

/// The proxy's own counters in `# Stats`.
pub fn stats_fields(shared: &Shared) -> Vec<(&'static str, &'static str, String)> {
    let st = &shared.stats;
    vec![
        (
            "stats",
            "total_connections_received",
            st.connections.load(Ordering::Relaxed).to_string(),
        ),
        ("stats", "total_commands_processed", st.commands.get().to_string()),
        ("stats", "instantaneous_ops_per_sec", ops_per_sec(shared).to_string()),
        (
            "stats",
            "rejected_connections",
            st.rejected.load(Ordering::Relaxed).to_string(),
        ),
        (
            "stats",
            "shardis_auth_failures",
            st.auth_failures.load(Ordering::Relaxed).to_string(),
        ),
        (
            "stats",
            "shardis_idle_clients_closed",
            st.idle_closed.load(Ordering::Relaxed).to_string(),
        ),
    ]
    .into_iter()
    .chain(
        shared
            .limits
            .stats_fields()
            .into_iter()
            .map(|(k, v)| ("stats", k, v.to_string())),
    )
    .collect()
}

/// The proxy's own memory, beside the shards' sums in `# Memory`.
pub fn memory_fields() -> Vec<(&'static str, &'static str, String)> {
    let rss = proxy_rss();
    vec![
        ("memory", "proxy_used_memory_rss", rss.to_string()),
        ("memory", "proxy_used_memory_rss_human", human(rss)),
    ]
}

#[cfg(test)]
mod tests;

//! The configuration file (`proxy.toml`): its schema, defaults and validation.
//!
//! Unknown keys are rejected and every error names the key and the reason, so
//! a typo never silently falls back to a default.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

mod fleet;
pub use fleet::{AdminConfig, ClusterConfig, FleetSpec};
mod redlock;
pub use redlock::{NoQuorum, RedlockConfig};
mod crossshard;
mod migration;
pub use crossshard::{CrossShardConfig, SpanMode};
mod limits;
pub use limits::LimitsConfig;
pub use migration::MigrationConfig;
mod sentinel;
pub use sentinel::{DEFAULT_POLL_MS, ReadFrom, SentinelConfig};
mod tls;
pub use tls::{BackendTls, BackendTlsOptions, TlsConfig};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on for clients.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub ring: RingConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Password clients must give (AUTH / HELLO AUTH); none by default.
    #[serde(default)]
    pub password: Option<String>,
    /// Password of the proxy's admin commands (`SHARDIS.RELOAD`): when set,
    /// a client must first run `SHARDIS.ADMIN <password>`. Unset (the
    /// default), any authenticated client may reload.
    #[serde(default)]
    pub admin_password: Option<String>,
    /// Users and their permissions in Redis ACL syntax (see [`crate::acl`]).
    #[serde(default)]
    pub users: Vec<crate::acl::UserConfig>,
    /// Worker threads; 0 (the default) means one fewer than the CPUs, at
    /// least one ([`crate::workers::default_threads`]). Read at start-up
    /// only. Each worker runs its own clients and its own backend
    /// connections (see [`crate::workers`]). Fewer threads than CPUs cost
    /// less CPU per request when the proxy shares a small machine with its
    /// clients or with Redis (on 2 vCPUs, 1 thread used about 23% less CPU
    /// per GET than 2 and served 29% more: README, Performance).
    #[serde(default)]
    pub threads: usize,
    #[serde(default)]
    pub redlock: RedlockConfig,
    /// Longest a graceful shutdown (SIGTERM, SIGINT) may take, in
    /// milliseconds; default 5000. The proxy stops accepting at once, lets
    /// every client have the replies to the requests it has already read,
    /// closes each connection at a request boundary, and exits when the
    /// last client is gone or this time has passed, whichever comes first
    /// (see [`crate::shutdown`]). A client blocked (BLPOP ...) keeps waiting
    /// for its reply until then.
    #[serde(default = "default_shutdown_ms")]
    pub shutdown_ms: u64,
    /// The proxy's SLOWLOG: requests slower than this many microseconds
    /// (read to reply) are logged; negative turns the log off. Default
    /// 10000, as Redis's `slowlog-log-slower-than`. Read at start-up and at
    /// each reload; `CONFIG SET slowlog-log-slower-than` changes it too.
    #[serde(default = "default_slowlog_us")]
    pub slowlog_log_slower_than_us: i64,
    /// Entries the SLOWLOG keeps (default 128, as Redis's `slowlog-max-len`).
    #[serde(default = "default_slowlog_len")]
    pub slowlog_max_len: usize,
    /// A fleet of proxies sharing one topology in etcd (see
    /// [`crate::cluster`]); without it the file is the topology.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// The Sentinels that monitor the backends given by `master` (see
    /// [`SentinelConfig`]).
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// `[admin]`: the HTTP endpoint for metrics, probes and the status page
    /// (see [`crate::admin`]); off without `listen`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[crossshard]`: requests whose keys are on several shards (see
    /// [`CrossShardConfig`]).
    #[serde(default)]
    pub crossshard: CrossShardConfig,
    /// `[tls]`: TLS towards clients and backends (see [`TlsConfig`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: TlsConfig,
    /// `[migration]`: the migrator's speed limit (see [`MigrationConfig`]).
    #[serde(default)]
    pub migration: MigrationConfig,
    /// With `[cluster]`, only the seed of an empty cluster: a proxy joining
    /// a cluster that has a topology ignores its own backends.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// How keys map to shards. See [`crate::ring`].
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RingConfig {
    /// The key space is cut into 2^slot_bits slots, each owned by one shard.
    /// More slots give a more even spread and cost memory (2 bytes a slot)
    /// and build time. 16..=22; default 18 (262,144 slots, 512 KiB).
    #[serde(default = "default_slot_bits")]
    pub slot_bits: u8,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            slot_bits: default_slot_bits(),
        }
    }
}

/// Timeouts, in milliseconds in the file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to a backend, handshake (AUTH, HELLO, PING) included.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Longest a request may wait for its backend reply before the client
    /// gets an error and the connection to that backend is reset.
    #[serde(default = "default_command_ms")]
    pub command_ms: u64,
    /// First delay before reconnecting to a failed backend; doubles up to
    /// `reconnect_max_ms`.
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            command_ms: default_command_ms(),
            reconnect_ms: default_reconnect_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn command(&self) -> Duration {
        Duration::from_millis(self.command_ms)
    }
}

/// Backend connection pools.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pipelined connections per shard, per worker thread (and per protocol
    /// version), shared by that worker's clients. A client always uses the
    /// same one, so its requests to a shard stay in order.
    #[serde(default = "default_connections")]
    pub connections: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connections: default_connections(),
        }
    }
}

/// One backend Redis: a shard.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The shard's identity on the ring. Changing `addr` moves no keys;
    /// changing `name` does.
    pub name: String,
    /// `host:port`; hostnames are resolved again on every reconnect. Empty
    /// (left out) for a backend given by `master`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// Instead of `addr`: the master name the Sentinels (`[sentinel]`)
    /// monitor; the proxy follows its failovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Where read-only commands go (see [`ReadFrom`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_from: ReadFrom,
    /// Static replicas of a backend given by `addr` (without Sentinel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// A replica further behind its master than this is not read from.
    /// (Left out of a serialized topology when default, so a fleet proxy
    /// of an earlier version still reads it.)
    #[serde(
        default = "sentinel::default_max_replica_lag_ms",
        skip_serializing_if = "sentinel::is_default_lag"
    )]
    pub max_replica_lag_ms: u64,
    /// Relative share of the key space (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// AUTH credentials for this backend, if it requires them.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `true` (or a table, see [`BackendTls`]): reached over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_listen() -> String {
    "127.0.0.1:6380".into()
}
fn default_slot_bits() -> u8 {
    18
}
fn default_connect_ms() -> u64 {
    1000
}
fn default_command_ms() -> u64 {
    2000
}
fn default_reconnect_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    2000
}
fn default_connections() -> usize {
    2
}
fn default_weight() -> u32 {
    1
}
fn default_shutdown_ms() -> u64 {
    5000
}
fn default_slowlog_us() -> i64 {
    10_000
}
fn default_slowlog_len() -> usize {
    128
}

/// A configuration that could not be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

impl Config {
    /// Longest a graceful shutdown may take ([`Config::shutdown_ms`]).
    pub fn shutdown(&self) -> Duration {
        Duration::from_millis(self.shutdown_ms)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_string()))?;
        cfg.validate()?;
        tls::load(&mut cfg)?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, uniqueness, address syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_addr("listen", &self.listen)?;
        if !(16..=22).contains(&self.ring.slot_bits) {
            return Err(invalid("ring.slot_bits", "must be between 16 and 22"));
        }
        if self.backends.is_empty() && self.cluster.is_none() {
            return Err(invalid("backends", "at least one backend is required"));
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if let Some(s) = &self.sentinel {
            sentinel::validate_sentinel(s)?;
        }
        if let Err(why) = self.crossshard.validate() {
            let (key, why) = why.split_once(": ").unwrap_or(("crossshard", why.as_str()));
            return Err(invalid(key, why));
        }
        if self.backends.len() > 4096 {
            return Err(invalid("backends", "at most 4096 backends are supported"));
        }
        let mut names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let key = format!("backends[{i}]");
            if b.name.is_empty()
                || b.name.len() > 128
                || b.name.bytes().any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            {
                return Err(invalid(
                    format!("{key}.name"),
                    "must be 1 to 128 characters with no spaces",
                ));
            }
            if !names.insert(b.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate backend name '{}'", b.name),
                ));
            }
            sentinel::validate_backend(&key, b, self.sentinel.as_ref())?;
            if b.weight == 0 || b.weight > 1000 {
                return Err(invalid(format!("{key}.weight"), "must be between 1 and 1000"));
            }
            if b.username.is_some() && b.password.is_none() {
                return Err(invalid(format!("{key}.username"), "a username needs a password"));
            }
        }
        let t = &self.timeouts;
        for (k, v) in [
            ("timeouts.connect_ms", t.connect_ms),
            ("timeouts.command_ms", t.command_ms),
            ("timeouts.reconnect_ms", t.reconnect_ms),
            ("timeouts.reconnect_max_ms", t.reconnect_max_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                return Err(invalid(k, "must be between 1 and 3600000 ms"));
            }
        }
        if t.reconnect_max_ms < t.reconnect_ms {
            return Err(invalid(
                "timeouts.reconnect_max_ms",
                "must not be below timeouts.reconnect_ms",
            ));
        }
        if let Err((key, why)) = self.limits.validate() {
            return Err(invalid(key, why));
        }
        if self.shutdown_ms > 3_600_000 {
            return Err(invalid("shutdown_ms", "must be at most 3600000 ms"));
        }
        if self.threads > 1024 {
            return Err(invalid(
                "threads",
                "must be at most 1024 (0: one fewer than the CPUs, at least 1)",
            ));
        }
        if self.admin_password.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("admin_password", "must not be empty (leave it out for none)"));
        }
        if let Err((key, why)) =
            crate::acl::Acl::build(&self.users, self.password.as_deref(), self.admin_password.is_some())
        {
            return Err(invalid(key, why));
        }
        if self.pool.connections == 0 || self.pool.connections > 64 {
            return Err(invalid("pool.connections", "must be between 1 and 64"));
        }
        self.validate_redlock(&names)
    }

    fn validate_redlock(&self, backends: &HashSet<&str>) -> Result<(), ConfigError> {
        let r = &self.redlock;
        for (i, k) in r.keys.iter().enumerate() {
            if k.is_empty() {
                return Err(invalid(format!("redlock.keys[{i}]"), "must not be empty"));
            }
        }
        if let Some(group) = &r.group {
            if group.len() < 3 {
                return Err(invalid("redlock.group", "Redlock needs at least 3 independent members"));
            }
            let mut seen = HashSet::new();
            for (i, name) in group.iter().enumerate() {
                if !backends.contains(name.as_str()) {
                    return Err(invalid(
                        format!("redlock.group[{i}]"),
                        format!("'{name}' is not the name of a backend"),
                    ));
                }
                if !seen.insert(name.as_str()) {
                    return Err(invalid(
                        format!("redlock.group[{i}]"),
                        format!("duplicate member '{name}'"),
                    ));
                }
            }
        }
        if r.member_timeout_ms == 0 || r.member_timeout_ms > 60_000 {
            return Err(invalid("redlock.member_timeout_ms", "must be between 1 and 60000 ms"));
        }
        if !(0.0..0.5).contains(&r.drift_factor) {
            return Err(invalid("redlock.drift_factor", "must be at least 0 and below 0.5"));
        }
        Ok(())
    }

    /// The lock group this configuration names, if Redlock is on: the
    /// configured group, else every backend when there are at least 3.
    pub fn lock_group(&self) -> Option<Vec<String>> {
        if self.redlock.keys.is_empty() {
            return None;
        }
        match &self.redlock.group {
            Some(g) => Some(g.clone()),
            None if self.backends.len() >= 3 => Some(self.backends.iter().map(|b| b.name.clone()).collect()),
            None => None,
        }
    }

    /// The request parser limits.
    pub fn parser_limits(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            max_bulk: self.limits.max_bulk,
            max_args: self.limits.max_args,
            max_inline: self.limits.max_inline,
            max_request: self.limits.max_request,
        }
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| invalid(key, format!("'{addr}' is not a valid host:port address ({why})"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing ':port'"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("empty host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 || key.ends_with("listen") => Ok(()),
        _ => Err(bad("port must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:6380"
[[backends]]
name = "a"
addr = "127.0.0.1:7001"
[[backends]]
name = "b"
addr = "redis-2:6379"
weight = 2
"#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[0].weight, 1);
        assert_eq!(c.ring.slot_bits, 18);
        assert_eq!(c.timeouts.command_ms, 2000);
        assert_eq!(c.shutdown_ms, 5000);
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("backends = []").contains("backends: at least one backend"));
        let dup = GOOD.replace("name = \"b\"", "name = \"a\"");
        assert!(
            err(&dup).contains("backends[1].name: duplicate backend name 'a'"),
            "{}",
            err(&dup)
        );
        let w0 = GOOD.replace("weight = 2", "weight = 0");
        assert!(err(&w0).contains("backends[1].weight"));
        let bad = GOOD.replace("redis-2:6379", "redis-2");
        assert!(err(&bad).contains("backends[1].addr"));
        let unknown = format!("bogus = 1\n{GOOD}");
        assert!(err(&unknown).contains("unknown field `bogus`"), "{}", err(&unknown));
        let typo = GOOD.replace("weight = 2", "wieght = 2");
        assert!(err(&typo).contains("wieght"));
        let long = format!("shutdown_ms = 3600001\n{GOOD}");
        assert!(err(&long).contains("shutdown_ms: must be at most"), "{}", err(&long));
        let zero = format!("shutdown_ms = 0\n{GOOD}");
        assert_eq!(Config::parse(&zero).unwrap().shutdown_ms, 0);
        let nob = "listen = \"127.0.0.1:1\"";
        assert!(err(nob).contains("backends"), "{}", err(nob));
    }
}

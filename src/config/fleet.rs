//! `[cluster]` (this proxy is one of a fleet, see [`crate::cluster`]) and
//! the part of the configuration a fleet shares through etcd ([`FleetSpec`]);
//! also `[admin]`, the admin HTTP endpoint ([`AdminConfig`]).

use serde::Deserialize;

use super::{Backend, Config, ConfigError, RedlockConfig, RingConfig, invalid};

/// `[admin]`: the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`,
/// `/api/status`, the status page at `/`). Not reloadable: bound once at
/// start.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to serve it on; none (the default): no endpoint. It has
    /// no authentication: keep it on loopback or a private network.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[cluster]`: this proxy is one of a fleet whose topology lives in etcd.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd v3 endpoints, `host:port` (or `http://host:port`).
    pub etcd: Vec<String>,
    /// The fleet's name: its keys live under `/shardis/<name>/` in etcd, so
    /// several fleets can share one etcd.
    pub name: String,
    /// This proxy's identity in the fleet; default `<hostname>:<listen port>`.
    #[serde(default)]
    pub id: Option<String>,
    /// The address clients reach this proxy at, as `status` shows it;
    /// default the listen address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// How long a prepared change waits for every registered proxy's
    /// acknowledgement before it is aborted (nothing moves then).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a request on a key that a prepared change moves is held
    /// before it is answered `-TRYAGAIN`.
    #[serde(default = "default_hold_timeout_ms")]
    pub hold_timeout_ms: u64,
    /// TTL of this proxy's liveness lease (`status` shows a proxy whose
    /// lease expired as not alive; it stays a member until evicted).
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: i64,
    /// Fence proxies at the backends: each proxy talks to the shards as its
    /// own ACL user (`shardis-proxy-<id>`), created with the backends'
    /// configured credentials; `ctl evict` disables that user and kills its
    /// connections on every shard before a change goes on without it.
    /// Needs Redis 6+ and ACL rights for the configured credentials.
    #[serde(default)]
    pub fence: bool,
}

fn default_ack_timeout_ms() -> u64 {
    10_000
}
fn default_hold_timeout_ms() -> u64 {
    15_000
}
fn default_lease_ttl_s() -> i64 {
    5
}

/// The part of the configuration every proxy of a fleet shares, kept in
/// etcd and changed with `shardis ctl apply`: the shards, the ring and the
/// lock group.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    #[serde(default)]
    pub ring: RingConfig,
    #[serde(default)]
    pub redlock: RedlockConfig,
    pub backends: Vec<Backend>,
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
        if c.etcd.is_empty() {
            return Err(invalid("cluster.etcd", "at least one etcd endpoint is required"));
        }
        if c.name.is_empty() || c.name.contains('/') || c.name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(invalid("cluster.name", "must be non-empty, with no '/' or spaces"));
        }
        if c.id.as_deref().is_some_and(|id| id.is_empty() || id.contains('/')) {
            return Err(invalid("cluster.id", "must be non-empty, with no '/'"));
        }
        for (k, v) in [
            ("cluster.ack_timeout_ms", c.ack_timeout_ms),
            ("cluster.hold_timeout_ms", c.hold_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&v) {
                return Err(invalid(k, "must be between 100 and 3600000 ms"));
            }
        }
        if !(1..=600).contains(&c.lease_ttl_s) {
            return Err(invalid("cluster.lease_ttl_s", "must be between 1 and 600 s"));
        }
        Ok(())
    }
}

impl FleetSpec {
    /// Parses a spec file's text (`[[backends]]`, optional `[ring]` and
    /// `[redlock]`), validated as a proxy would with `base`'s other settings.
    pub fn parse(text: &str, base: &Config) -> Result<FleetSpec, ConfigError> {
        let spec: FleetSpec =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_string()))?;
        spec.apply_to(base)?;
        Ok(spec)
    }

    /// The spec of a (validated) proxy configuration.
    pub fn of(cfg: &Config) -> FleetSpec {
        FleetSpec {
            ring: cfg.ring.clone(),
            redlock: cfg.redlock.clone(),
            backends: cfg.backends.clone(),
        }
    }

    /// `base` with this spec's shards, ring and lock group, validated.
    pub fn apply_to(&self, base: &Config) -> Result<Config, ConfigError> {
        let mut cfg = base.clone();
        cfg.ring = self.ring.clone();
        cfg.redlock = self.redlock.clone();
        cfg.backends = self.backends.clone();
        if cfg.backends.is_empty() {
            return Err(invalid("backends", "at least one backend is required"));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The spec with its lock group written out: a fleet's proxies must
    /// agree on it, so "every backend at start-up" becomes the names of the
    /// seeding file's backends (when there are at least 3).
    pub fn seeded(mut self) -> FleetSpec {
        if self.redlock.group.is_none() && self.backends.len() >= 3 && !self.redlock.keys.is_empty() {
            self.redlock.group = Some(self.backends.iter().map(|b| b.name.clone()).collect());
        }
        self
    }

    /// This spec as a change of `current`: without a `[redlock] group`
    /// it keeps the fleet's group (a group changes only when written).
    pub fn inherit(mut self, current: &FleetSpec) -> FleetSpec {
        if self.redlock.group.is_none() {
            self.redlock.group = current.redlock.group.clone();
        }
        self
    }

    /// The spec as TOML, as it is stored in etcd.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

//! The `[sentinel]` section and the replica settings of a backend
//! (`master`, `read_from`, `replicas`, `max_replica_lag_ms`): their schema,
//! defaults and validation. What the proxy does with them is
//! [`crate::backend::endpoint`] (following the master) and
//! [`crate::backend::replicas`] (reads on replicas).

use serde::Deserialize;

use super::{Backend, ConfigError, check_addr, invalid};

/// The Redis Sentinels that monitor the backends configured with `master`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// `host:port` of each Sentinel; any one that answers will do.
    pub addrs: Vec<String>,
    /// AUTH credentials for the Sentinels, if they need them.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// How often the proxy asks the Sentinels for each master (and its
    /// replicas), in case a `+switch-master` event was missed, and how often
    /// it polls replicas for their lag. Default 1000 ms.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Subscribe to `+switch-master` on one Sentinel (moving to the next
    /// when it fails) to follow a failover at once; default true. Off, the
    /// proxy learns of failovers by asking every `poll_ms` alone.
    #[serde(default = "default_true")]
    pub subscribe: bool,
}

fn default_poll_ms() -> u64 {
    1000
}

fn default_true() -> bool {
    true
}

/// Where a shard's read-only commands go.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFrom {
    /// Everything to the master (the default).
    #[default]
    Master,
    /// Reads spread over the usable replicas (none on the master while one
    /// is usable, so the master keeps its capacity for writes); with no
    /// usable replica (down, lagging, none known), to the master.
    Replica,
    /// Reads spread over the usable replicas and the master together: the
    /// master is one more read target (with two usable replicas it takes a
    /// third of the reads), so reads get the capacity of every node; with no
    /// usable replica, all to the master.
    PreferReplica,
}

pub(super) fn default_max_replica_lag_ms() -> u64 {
    5000
}

pub(super) fn is_default_lag(ms: &u64) -> bool {
    *ms == default_max_replica_lag_ms()
}

/// How often replicas are polled when the configuration has no `[sentinel]`.
pub const DEFAULT_POLL_MS: u64 = 1000;

/// Checks one backend's address and replica settings (`key` is
/// `backends[i]`); `sentinel` is the `[sentinel]` section, if any.
pub(super) fn validate_backend(key: &str, b: &Backend, sentinel: Option<&SentinelConfig>) -> Result<(), ConfigError> {
    match (&b.master, b.addr.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                format!("{key}.master"),
                "give either `addr` or `master` (the name Sentinel monitors), not both",
            ));
        }
        (Some(m), true) => {
            if m.is_empty() || m.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("{key}.master"),
                    "must be a non-empty name without spaces",
                ));
            }
            if sentinel.is_none() {
                return Err(invalid(
                    format!("{key}.master"),
                    "needs a [sentinel] section with the Sentinels' addrs",
                ));
            }
            if !b.replicas.is_empty() {
                return Err(invalid(
                    format!("{key}.replicas"),
                    "Sentinel names the replicas of a `master`; static replicas are for a backend with `addr`",
                ));
            }
        }
        (None, true) => {
            return Err(invalid(
                format!("{key}.addr"),
                "missing: give `addr` (host:port) or `master`",
            ));
        }
        (None, false) => check_addr(&format!("{key}.addr"), &b.addr)?,
    }
    for (j, r) in b.replicas.iter().enumerate() {
        check_addr(&format!("{key}.replicas[{j}]"), r)?;
    }
    if b.read_from != ReadFrom::Master && b.master.is_none() && b.replicas.is_empty() {
        return Err(invalid(
            format!("{key}.read_from"),
            "reads from replicas need replicas: a `master` Sentinel monitors, or static `replicas`",
        ));
    }
    if b.max_replica_lag_ms == 0 || b.max_replica_lag_ms > 3_600_000 {
        return Err(invalid(
            format!("{key}.max_replica_lag_ms"),
            "must be between 1 and 3600000 ms",
        ));
    }
    Ok(())
}

/// Checks the `[sentinel]` section.
pub(super) fn validate_sentinel(s: &SentinelConfig) -> Result<(), ConfigError> {
    if s.addrs.is_empty() {
        return Err(invalid("sentinel.addrs", "at least one Sentinel is required"));
    }
    for (i, a) in s.addrs.iter().enumerate() {
        check_addr(&format!("sentinel.addrs[{i}]"), a)?;
    }
    if s.username.is_some() && s.password.is_none() {
        return Err(invalid("sentinel.username", "a username needs a password"));
    }
    if s.poll_ms < 10 || s.poll_ms > 600_000 {
        return Err(invalid("sentinel.poll_ms", "must be between 10 and 600000 ms"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SENTINEL: &str = "[sentinel]\naddrs = [\"127.0.0.1:26379\", \"127.0.0.1:26380\"]\n";

    #[test]
    fn sentinel_backends_parse_and_errors_name_the_key() {
        let text = format!(
            "{SENTINEL}[[backends]]\nname = \"a\"\nmaster = \"shard-a\"\nread_from = \"prefer-replica\"\n\
             [[backends]]\nname = \"b\"\naddr = \"127.0.0.1:7002\"\nreplicas = [\"127.0.0.1:7003\"]\nread_from = \"replica\"\n"
        );
        let c = Config::parse(&text).unwrap();
        // A plain backend serializes as before (fleet proxies of earlier versions read it).
        let plain = serde_json::to_string(
            &Config::parse("[[backends]]\nname=\"a\"\naddr=\"h:1\"\n")
                .unwrap()
                .backends,
        )
        .unwrap();
        assert_eq!(
            plain,
            r#"[{"name":"a","addr":"h:1","weight":1,"username":null,"password":null}]"#
        );
        assert_eq!(c.backends[0].master.as_deref(), Some("shard-a"));
        assert_eq!(c.backends[0].read_from, super::ReadFrom::PreferReplica);
        assert_eq!(c.backends[1].replicas, ["127.0.0.1:7003"]);
        assert_eq!(c.sentinel.as_ref().unwrap().poll_ms, 1000);
        let err = |t: &str| Config::parse(t).unwrap_err().to_string();
        let both = "[sentinel]\naddrs=[\"h:1\"]\n[[backends]]\nname=\"a\"\naddr=\"h:2\"\nmaster=\"m\"\n";
        assert!(err(both).contains("backends[0].master: give either"), "{}", err(both));
        let no_sentinel = "[[backends]]\nname=\"a\"\nmaster=\"m\"\n";
        assert!(err(no_sentinel).contains("[sentinel]"), "{}", err(no_sentinel));
        let neither = "[[backends]]\nname=\"a\"\n";
        assert!(err(neither).contains("backends[0].addr: missing"), "{}", err(neither));
        let no_replicas = "[[backends]]\nname=\"a\"\naddr=\"h:2\"\nread_from=\"replica\"\n";
        assert!(
            err(no_replicas).contains("backends[0].read_from"),
            "{}",
            err(no_replicas)
        );
        let bad_mode = "[[backends]]\nname=\"a\"\naddr=\"h:2\"\nread_from=\"nearest\"\n";
        assert!(err(bad_mode).contains("nearest"), "{}", err(bad_mode));
        let empty = "[sentinel]\naddrs=[]\n[[backends]]\nname=\"a\"\nmaster=\"m\"\n";
        assert!(err(empty).contains("sentinel.addrs"), "{}", err(empty));
    }
}

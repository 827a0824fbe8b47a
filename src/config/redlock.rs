//! `[redlock]` in `proxy.toml`: which keys are locks, the lock group, and
//! the Redlock timing settings (see [`crate::lock`]).

use serde::Deserialize;

/// Redlock: keys in the lock namespace live on every member of the lock
/// group and every command on them answers by majority. See [`crate::lock`].
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedlockConfig {
    /// Glob patterns (`*`, `?`, `[...]`, `\` escapes, as Redis's KEYS) that
    /// name lock keys. Default `["lock:*"]`; an empty list turns Redlock off.
    #[serde(default = "default_lock_keys")]
    pub keys: Vec<String>,
    /// Backend names of the lock group (3 or more, independent masters).
    /// Default: every backend at start-up, when there are at least 3; a
    /// reload without `group` keeps the group the proxy started with.
    #[serde(default)]
    pub group: Option<Vec<String>>,
    /// Longest wait for one member's answer. An acquisition waits at most
    /// the smaller of this and a third of the lock's TTL.
    #[serde(default = "default_member_timeout_ms")]
    pub member_timeout_ms: u64,
    /// Clock drift allowance: validity = ttl - elapsed - (ttl * drift_factor + 2 ms).
    #[serde(default = "default_drift_factor")]
    pub drift_factor: f64,
    /// The reply to `SET k v NX PX ms` when a majority of the group could
    /// not be reached: `"nil"` (as for contention) or `"error"` (naming the
    /// unreachable members).
    #[serde(default)]
    pub on_no_quorum: NoQuorum,
}

impl Default for RedlockConfig {
    fn default() -> Self {
        RedlockConfig {
            keys: default_lock_keys(),
            group: None,
            member_timeout_ms: default_member_timeout_ms(),
            drift_factor: default_drift_factor(),
            on_no_quorum: NoQuorum::default(),
        }
    }
}

/// See [`RedlockConfig::on_no_quorum`].
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NoQuorum {
    #[default]
    Nil,
    Error,
}

fn default_lock_keys() -> Vec<String> {
    vec!["lock:*".to_string()]
}
fn default_member_timeout_ms() -> u64 {
    200
}
fn default_drift_factor() -> f64 {
    0.01
}

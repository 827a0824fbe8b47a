//! `[limits]`: what one client, one source address may take from the proxy
//! (the request parser's limits, the pipeline, the output buffer, the
//! connections). Enforced by [`crate::protocol`], [`crate::session`],
//! [`crate::server`] and [`crate::limits`].

use serde::Deserialize;

use crate::limits::output::OutputLimit;

/// Limits that protect the proxy from one client.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest bulk string in a request (bytes).
    #[serde(default = "default_max_bulk")]
    pub max_bulk: usize,
    /// Most arguments in one request.
    #[serde(default = "default_max_args")]
    pub max_args: usize,
    /// Longest inline command (bytes).
    #[serde(default = "default_max_inline")]
    pub max_inline: usize,
    /// Most bytes one request may take while it arrives.
    #[serde(default = "default_max_request")]
    pub max_request: usize,
    /// Most requests of one client awaiting replies; past it the proxy stops
    /// reading from that client until replies go out.
    #[serde(default = "default_max_pipeline")]
    pub max_pipeline: usize,
    /// Most client connections at once; more are refused with an error.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Close a client that has sent nothing for this many seconds (Redis's
    /// `timeout`; 0, the default, never). Blocked clients, subscribers and
    /// monitors are left alone, as Redis leaves them. Checked once a second
    /// by the sweeper in [`crate::server`], off the request path.
    #[serde(default)]
    pub client_idle_timeout_s: u64,
    /// Output buffer limit of a normal client, as Redis's
    /// `client-output-buffer-limit normal`: `"<hard> <soft> <seconds>"`.
    /// A client whose replies waiting in the proxy reach the hard limit, or
    /// stay over the soft limit for the seconds, is closed. Default
    /// `"256mb 64mb 60"` (Redis's normal class has none: `"0 0 0"` turns it
    /// off here too). MONITORs are normal clients.
    #[serde(default = "default_client_output_buffer_limit")]
    pub client_output_buffer_limit: String,
    /// The same for a client subscribed to shard channels (SSUBSCRIBE), as
    /// Redis's `client-output-buffer-limit pubsub`; default `"32mb 8mb 60"`
    /// as Redis's.
    #[serde(default = "default_pubsub_output_buffer_limit")]
    pub pubsub_output_buffer_limit: String,
    /// New connections a second from one source address (IPv6: one /64),
    /// in bursts of as many; more are answered `-ERR max connections per
    /// second from this address reached` and closed. 0 (the default): no
    /// limit.
    #[serde(default)]
    pub max_connections_per_second_per_ip: u32,
    /// Connections open at once from one source address (IPv6: one /64);
    /// more are answered `-ERR max number of clients from this address
    /// reached` and closed. 0 (the default): no limit.
    #[serde(default)]
    pub max_clients_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_bulk: default_max_bulk(),
            max_args: default_max_args(),
            max_inline: default_max_inline(),
            max_request: default_max_request(),
            max_pipeline: default_max_pipeline(),
            max_clients: default_max_clients(),
            client_idle_timeout_s: 0,
            client_output_buffer_limit: default_client_output_buffer_limit(),
            pubsub_output_buffer_limit: default_pubsub_output_buffer_limit(),
            max_connections_per_second_per_ip: 0,
            max_clients_per_ip: 0,
        }
    }
}

impl LimitsConfig {
    /// `Err((key, why))` for a value out of range.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (k, v) in [
            ("limits.max_bulk", self.max_bulk),
            ("limits.max_args", self.max_args),
            ("limits.max_inline", self.max_inline),
            ("limits.max_request", self.max_request),
            ("limits.max_pipeline", self.max_pipeline),
            ("limits.max_clients", self.max_clients),
        ] {
            if v == 0 {
                return Err((k, "must be positive".into()));
            }
        }
        if self.max_request > u32::MAX as usize - 16 {
            return Err(("limits.max_request", "must be below 4 GiB".into()));
        }
        for (k, v) in [
            ("limits.client_output_buffer_limit", &self.client_output_buffer_limit),
            ("limits.pubsub_output_buffer_limit", &self.pubsub_output_buffer_limit),
        ] {
            OutputLimit::parse(v).map_err(|why| (k, why))?;
        }
        Ok(())
    }
}

fn default_max_bulk() -> usize {
    512 * 1024 * 1024
}
fn default_max_args() -> usize {
    1024 * 1024
}
fn default_max_inline() -> usize {
    64 * 1024
}
fn default_max_request() -> usize {
    1024 * 1024 * 1024
}
fn default_max_pipeline() -> usize {
    4096
}
fn default_max_clients() -> usize {
    20_000
}
fn default_client_output_buffer_limit() -> String {
    "256mb 64mb 60".into()
}
fn default_pubsub_output_buffer_limit() -> String {
    "32mb 8mb 60".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_limits_are_validated() {
        let mut l = LimitsConfig::default();
        assert!(l.validate().is_ok());
        l.pubsub_output_buffer_limit = "32mb 8mb".into();
        assert_eq!(l.validate().map_err(|e| e.0), Err("limits.pubsub_output_buffer_limit"));
    }
}

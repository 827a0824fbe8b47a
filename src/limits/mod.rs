//! Limits that hold under attack (README, Security): what one client, one
//! source address or one user may take from the proxy, beyond the request
//! parser's limits and `max_pipeline` / `max_clients`.
//!
//! - [`output`]: output buffer limits per client class
//!   (`client_output_buffer_limit`, `pubsub_output_buffer_limit`, CONFIG
//!   SET `client-output-buffer-limit`), as Redis's.
//! - [`per_ip`]: new connections a second and connections open per source
//!   address, checked at accept.
//! - [`seats`]: `max_clients` per user, checked at login.
//!
//! One [`Limits`] per proxy, in [`crate::state::Shared`], with the counts of
//! what each limit refused or closed (INFO `# Stats`, `/metrics`).

pub mod output;
pub mod per_ip;
pub mod seats;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::LimitsConfig;
pub use output::{Breach, Class, OutputLimit, OutputLimits};

/// The limits' live state and counters.
#[derive(Debug, Default)]
pub struct Limits {
    pub output: OutputLimits,
    pub per_ip: per_ip::PerIp,
    pub seats: seats::Seats,
    /// Clients closed past an output buffer limit (normal, pubsub).
    pub output_closed: [AtomicU64; 2],
    /// Connections refused over `max_connections_per_second_per_ip`.
    pub ip_rate_refused: AtomicU64,
    /// Connections refused over `max_clients_per_ip`.
    pub ip_clients_refused: AtomicU64,
    /// Logins refused over a user's `max_clients`.
    pub user_clients_refused: AtomicU64,
}

impl Limits {
    /// The limits of `config` (at start-up).
    pub fn new(config: &LimitsConfig) -> Limits {
        let l = Limits::default();
        l.apply(config, None);
        l
    }

    /// Applies a (re)loaded `[limits]`: an output limit the file changes
    /// from `old` applies; one it leaves alone keeps what CONFIG SET may
    /// have set since.
    pub fn apply(&self, config: &LimitsConfig, old: Option<&LimitsConfig>) {
        let pairs = [
            (
                Class::Normal,
                &config.client_output_buffer_limit,
                old.map(|o| &o.client_output_buffer_limit),
            ),
            (
                Class::Pubsub,
                &config.pubsub_output_buffer_limit,
                old.map(|o| &o.pubsub_output_buffer_limit),
            ),
        ];
        for (class, new, old) in pairs {
            if old == Some(new) {
                continue;
            }
            // Validated with the configuration.
            if let Ok(l) = OutputLimit::parse(new) {
                self.output.set(class, l);
            }
        }
    }

    /// A client closed past its class's output buffer limit.
    pub fn output_closed(&self, class: Class) {
        self.output_closed[class as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, as INFO `# Stats` names them.
    pub fn stats_fields(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            (
                "client_output_buffer_limit_disconnections",
                l(&self.output_closed[0]) + l(&self.output_closed[1]),
            ),
            (
                "shardis_pubsub_output_buffer_limit_disconnections",
                l(&self.output_closed[1]),
            ),
            ("shardis_ip_rate_refused_connections", l(&self.ip_rate_refused)),
            ("shardis_ip_clients_refused_connections", l(&self.ip_clients_refused)),
            ("shardis_user_clients_refused_logins", l(&self.user_clients_refused)),
        ]
    }
}

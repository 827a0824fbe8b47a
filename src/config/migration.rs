//! `[migration]`: how fast the migrator may move keys after a ring change.
//!
//! The migrator competes with the foreground for the shards' CPU (SCAN,
//! MIGRATE's serialization on the source, RESTORE on the target) and blocks
//! each source while a MIGRATE runs. Unlimited by default; a limit trades
//! the move's speed for the foreground's rate (README, "Keys follow the
//! ring", has the figures).

use serde::Deserialize;

/// `[migration]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Most keys a second the migrator moves, over all the shards it walks
    /// (each walk gets an equal share); 0 (the default) for no limit. Moves
    /// on demand (writes to a key not moved yet) are not limited.
    #[serde(default)]
    pub max_keys_per_second: u64,
}

//! `[crossshard]`: what the proxy does with a request whose keys live on
//! several shards.
//!
//! Single multi-key commands (SINTER, SUNIONSTORE, RENAME, SMOVE ...) run
//! across shards by default, within `max_bytes`. Transactions and blocking
//! pops that span shards change what a client can observe (each shard's part
//! is atomic, not the whole), so they are refused unless turned on: the
//! CROSSSHARD error names the setting.

use serde::Deserialize;

/// `[crossshard]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrossShardConfig {
    /// Run single multi-key commands whose keys are on several shards
    /// (default true); false refuses them with CROSSSHARD, as Redis Cluster
    /// does.
    #[serde(default = "yes")]
    pub commands: bool,
    /// Largest total size, in bytes, of the operands copied between shards
    /// for one cross-shard command (their DUMP payloads); a command over it
    /// is refused with an error naming `crossshard.max_bytes`. Default 64 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// MULTI/EXEC over keys of several shards: "refuse" (the default) or
    /// "per-shard" (each shard's part atomic, parts committed one shard
    /// after another in the order of their first command).
    #[serde(default)]
    pub transactions: SpanMode,
    /// BLPOP/BRPOP/BLMPOP/BZPOPMIN/BZPOPMAX over keys of several shards:
    /// "refuse" (the default) or "all-shards" (wait on every shard involved,
    /// deliver exactly one element).
    #[serde(default)]
    pub blocking: SpanMode,
}

/// Whether a kind of request may span shards.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SpanMode {
    /// Refused with CROSSSHARD, which names the setting.
    #[default]
    Refuse,
    /// Transactions: each shard's part atomic, committed in order.
    PerShard,
    /// Blocking pops: wait on every shard involved.
    AllShards,
}

impl Default for CrossShardConfig {
    fn default() -> Self {
        CrossShardConfig {
            commands: true,
            max_bytes: default_max_bytes(),
            transactions: SpanMode::Refuse,
            blocking: SpanMode::Refuse,
        }
    }
}

impl CrossShardConfig {
    /// Checks the modes fit their settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.transactions == SpanMode::AllShards {
            return Err("crossshard.transactions: \"refuse\" or \"per-shard\"".into());
        }
        if self.blocking == SpanMode::PerShard {
            return Err("crossshard.blocking: \"refuse\" or \"all-shards\"".into());
        }
        if self.max_bytes == 0 {
            return Err("crossshard.max_bytes: must be at least 1".into());
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_mismatches_are_refused() {
        let c: CrossShardConfig = toml::from_str("transactions = \"per-shard\"\nblocking = \"all-shards\"\n").unwrap();
        assert!(c.validate().is_ok());
        assert!(c.commands);
        let c: CrossShardConfig = toml::from_str("transactions = \"all-shards\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("crossshard.transactions"));
        let c: CrossShardConfig = toml::from_str("blocking = \"per-shard\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("crossshard.blocking"));
        assert!(toml::from_str::<CrossShardConfig>("transactions = \"yes\"\n").is_err());
    }
}

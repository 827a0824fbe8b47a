//! The control plane of one proxy: configuration changes (SIGHUP and
//! `SHARDIS.RELOAD`) turned into a new topology, and the migrator started
//! when the new ring moves slots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::state::Shared;
use crate::topology::MigrationRunning;

/// Why a reload left the topology as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    MigrationRunning(#[from] MigrationRunning),
    #[error("this proxy is part of fleet '{0}': its topology lives in etcd; change it with `shardis ctl apply`")]
    Fleet(String),
}

impl PartialEq for ReloadError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// Re-reads `path` on every SIGHUP and applies a valid new configuration.
/// An invalid file is logged and the running topology stays.
/// `path` also becomes the file `SHARDIS.RELOAD` reads.
pub fn reload_on_sighup(shared: Arc<Shared>, path: PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let _ = shared.config_path.set(path.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reload(&shared, &path);
        }
    });
    Ok(())
}

/// Applies the configuration in `path`; returns the new epoch, or why the
/// file was refused (the running topology then stays). Refused while a
/// migration runs; see [`reload_forced`].
pub fn reload(shared: &Shared, path: &Path) -> Result<u64, ReloadError> {
    reload_forced(shared, path, false)
}

/// As [`reload`]; with `force`, a migration still running is abandoned
/// rather than the reload refused.
pub fn reload_forced(shared: &Shared, path: &Path, force: bool) -> Result<u64, ReloadError> {
    let result = Config::load(path)
        .map_err(ReloadError::from)
        .and_then(|cfg| apply(shared, cfg, force));
    if let Err(e) = &result {
        error!(error = %e, "configuration reload refused; keeping the running topology");
    }
    result
}

/// Puts `cfg` in service as the next topology and, when it moves slots,
/// starts the migrator. Returns the new epoch. Needs a tokio runtime.
pub fn apply(shared: &Shared, cfg: Config, force: bool) -> Result<u64, ReloadError> {
    let old = shared.topology.load_full();
    if let Some(c) = &old.config.cluster {
        return Err(ReloadError::Fleet(c.name.clone()));
    }
    if cfg.listen != old.config.listen {
        warn!(old = %old.config.listen, new = %cfg.listen, "listen address changes need a restart; keeping the old one");
    }
    drop(old);
    let applied = shared.topology.apply(Arc::new(cfg), shared.locks.max_ttl(), force)?;
    let topo = applied.topology;
    info!(
        epoch = topo.epoch,
        shards = topo.shards.len(),
        "configuration reloaded, new topology in service"
    );
    if !topo.locks.previous.is_empty() {
        warn!(
            group = ?topo.locks.current,
            joint_with = ?topo.locks.previous.iter().map(|(g, _)| g).collect::<Vec<_>>(),
            "lock group changed: grants need a majority of the old and the new group until the longest granted TTL has passed"
        );
    }
    if applied.started_migration
        && let Some(m) = topo.migration.clone()
    {
        tokio::spawn(crate::migration::mover::run(m, topo.clone()));
    }
    Ok(topo.epoch)
}

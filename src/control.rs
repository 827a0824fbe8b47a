//! The control plane of one proxy: configuration changes (SIGHUP and
//! `SHARDIS.RELOAD`) turned into a new topology, and the migrator started
//! when the new ring moves slots. A shard that joins is given the function
//! libraries and scripts the others have before the topology that routes to
//! it is put in service ([`replicate_functions`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use bytes::Bytes;

use crate::backend::{BackendSpec, Shard};
use crate::config::{Config, ConfigError};
use crate::protocol::Request;
use crate::protocol::reply;
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
    #[error("{0} (SHARDIS.RELOAD FORCE adds the shard without them)")]
    Seed(String),
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
            let _ = reload(&shared, &path).await;
        }
    });
    Ok(())
}

/// Applies the configuration in `path`; returns the new epoch, or why the
/// file was refused (the running topology then stays). Refused while a
/// migration runs; see [`reload_forced`].
pub async fn reload(shared: &Shared, path: &Path) -> Result<u64, ReloadError> {
    reload_forced(shared, path, false).await
}

/// As [`reload`]; with `force`, a migration still running is abandoned
/// rather than the reload refused, and a new shard that could not be given
/// the function libraries is added without them.
pub async fn reload_forced(shared: &Shared, path: &Path, force: bool) -> Result<u64, ReloadError> {
    let result = match Config::load(path) {
        Ok(cfg) => apply(shared, cfg, force).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = &result {
        error!(error = %e, "configuration reload refused; keeping the running topology");
    }
    result
}

/// Puts `cfg` in service as the next topology and, when it moves slots,
/// starts the migrator. Returns the new epoch. Needs a tokio runtime.
/// Backends at a new address are started first and given the function libraries and scripts of the
/// running shards; if that fails the change is refused, unless `force`.
pub async fn apply(shared: &Shared, cfg: Config, force: bool) -> Result<u64, ReloadError> {
    let old = shared.topology.load_full();
    if let Some(c) = &old.config.cluster {
        return Err(ReloadError::Fleet(c.name.clone()));
    }
    if cfg.listen != old.config.listen {
        warn!(old = %old.config.listen, new = %cfg.listen, "listen address changes need a restart; keeping the old one");
    }
    let mut cfg = cfg;
    // The listeners are bound at start: TLS for clients turned on or off,
    // or moved to another address, needs a restart. New certificate files
    // (read by Config::load) are put in service for new connections.
    let (was, is) = (&old.config.tls, &cfg.tls);
    if was.serves_clients() != is.serves_clients() || was.listen != is.listen {
        warn!("turning client TLS on or off, or moving tls.listen, needs a restart; keeping the running [tls]");
        cfg.tls = old.config.tls.clone();
    } else if was.server != is.server {
        info!("new TLS certificate files read: new client connections use them");
    }
    let cfg = Arc::new(cfg);
    let started: Vec<Arc<Shard>> = cfg
        .backends
        .iter()
        .map(|b| BackendSpec::from_config(b, &cfg))
        // A server the proxy already talks to keeps its libraries, whatever
        // else about its pool changed.
        .filter(|spec| !old.shards.iter().any(|s| *s.spec == *spec || s.spec.addr == spec.addr))
        .map(|spec| Shard::start(spec, shared.topology.executors()))
        .collect();
    if !started.is_empty() {
        let seeded = seed(&old.shards, &started, &shared.locks.scripts()).await;
        match seeded {
            Err(why) if !force => return Err(ReloadError::Seed(why)),
            Err(why) => warn!(error = %why, "forced reload: new shards added without the function libraries"),
            Ok(()) => {}
        }
    }
    let old_slowlog = (old.config.slowlog_log_slower_than_us, old.config.slowlog_max_len);
    drop(old);
    let applied = shared
        .topology
        .apply_started(cfg, shared.locks.max_ttl(), force, &started)?;
    let topo = applied.topology;
    // A slow log setting the file changes applies; one it leaves alone keeps
    // what CONFIG SET may have set since.
    if topo.config.slowlog_log_slower_than_us != old_slowlog.0 {
        shared.slowlog.set_threshold(topo.config.slowlog_log_slower_than_us);
    }
    if topo.config.slowlog_max_len != old_slowlog.1 {
        shared.slowlog.set_max_len(topo.config.slowlog_max_len);
    }
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

/// Gives the `to` shards the function libraries `from` has: FUNCTION DUMP
/// on `from`, FUNCTION RESTORE <payload> REPLACE on each of `to`. The error
/// names the shards that failed. A fleet proxy's agent calls this for the
/// shards a committed change adds.
pub async fn replicate_functions(from: &Shard, to: &[Arc<Shard>]) -> Result<(), String> {
    const LANE: usize = 0;
    let dump = from
        .call(LANE, Request::from_args(&["FUNCTION", "DUMP"]).raw)
        .await
        .map_err(|e| e.to_string())
        .and_then(|f| {
            if reply::is_error(&f) {
                Err(String::from_utf8_lossy(&f[1..]).trim_end().to_string())
            } else {
                reply::as_bytes(&f).ok_or_else(|| "unexpected reply to FUNCTION DUMP".to_string())
            }
        })
        .map_err(|e| format!("FUNCTION DUMP on {}: {e}", from.name()))?;
    let args: [&[u8]; 4] = [b"FUNCTION", b"RESTORE", &dump, b"REPLACE"];
    let restore = Request::from_args(&args).raw;
    let mut failed = Vec::new();
    for shard in to {
        match shard.call(LANE, restore.clone()).await {
            Ok(f) if reply::is_ok(&f) => {}
            Ok(f) => failed.push(format!(
                "{} ({})",
                shard.name(),
                String::from_utf8_lossy(&f[1..]).trim_end()
            )),
            Err(e) => failed.push(format!("{} ({e})", shard.name())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("FUNCTION RESTORE failed on {}", failed.join(", ")))
    }
}

/// Gives new shards the function libraries (from the first running shard
/// that answers FUNCTION DUMP) and the scripts the proxy keeps.
pub async fn seed(running: &[Arc<Shard>], started: &[Arc<Shard>], scripts: &[Bytes]) -> Result<(), String> {
    let mut why = String::from("no running shard to copy the function libraries from");
    let mut copied = false;
    for from in running {
        match replicate_functions(from, started).await {
            Ok(()) => {
                copied = true;
                break;
            }
            // A source that failed: try the next one; a target that failed
            // fails the same way from any source.
            // Redis before 7.0 has no functions: nothing to copy.
            Err(e) if e.starts_with("FUNCTION DUMP") && e.to_ascii_lowercase().contains("unknown") => {
                copied = true;
                break;
            }
            Err(e) if e.starts_with("FUNCTION DUMP") => why = e,
            Err(e) => return Err(format!("new shards did not take the function libraries: {e}")),
        }
    }
    if !copied {
        return Err(why);
    }
    for script in scripts {
        let args: [&[u8]; 3] = [b"SCRIPT", b"LOAD", script];
        let load = Request::from_args(&args).raw;
        for shard in started {
            match shard.call(0, load.clone()).await {
                Ok(f) if !reply::is_error(&f) => {}
                other => {
                    let e = match other {
                        Ok(f) => String::from_utf8_lossy(&f[1..]).trim_end().to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Err(format!("SCRIPT LOAD on new shard {}: {e}", shard.name()));
                }
            }
        }
    }
    if !started.is_empty() {
        info!(shards = ?started.iter().map(|s| s.name()).collect::<Vec<_>>(), scripts = scripts.len(), "new shards given the function libraries and scripts");
    }
    Ok(())
}

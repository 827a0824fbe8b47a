//! `shardis ctl`: the operator's side of the fleet — apply a new shard set,
//! show the fleet's state, evict a proxy that is gone.
//!
//! `apply` prepares the next epoch in etcd, then coordinates like the
//! elected proxy does (commit when every member acknowledged, abort when the
//! ack timeout passes), and returns once every proxy serves the new epoch
//! and, unless detached, the migration is done.

use std::time::{Duration, Instant};

use super::fence;
use super::phase::{self, ClusterDoc, Decision, Phase};
use super::store::{Snapshot, Store, now_ms};
use crate::config::{Config, FleetSpec};

/// How often `apply` looks at the fleet.
const POLL: Duration = Duration::from_millis(100);

/// A failed `ctl` command: the message for the operator.
pub type CtlResult = Result<(), String>;

async fn connect(etcd: &[String], cluster: &str) -> Result<Store, String> {
    let store = Store::connect(etcd, cluster)
        .await
        .map_err(|e| format!("cannot reach etcd at {}: {e}", etcd.join(",")))?;
    Ok(store)
}

async fn snapshot(store: &Store) -> Result<Snapshot, String> {
    store.snapshot().await.map_err(|e| format!("etcd: {e}"))
}

/// A configuration to validate a spec against: defaults everywhere else.
fn base() -> Config {
    Config::parse("[[backends]]\nname = \"validate\"\naddr = \"127.0.0.1:1\"\n").unwrap_or_else(|_| unreachable!())
}

/// Reads and validates a spec file (`[[backends]]`, `[ring]`, `[redlock]`).
pub fn read_spec(path: &std::path::Path) -> Result<FleetSpec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    FleetSpec::parse(&text, &base()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Options of `ctl apply`.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long the proxies get to acknowledge.
    pub ack_timeout_ms: u64,
    /// Return once every proxy serves the new epoch, without waiting for
    /// the migration to end.
    pub detach: bool,
}

pub async fn apply(etcd: &[String], cluster: &str, path: &std::path::Path, opts: ApplyOptions) -> CtlResult {
    let spec = read_spec(path)?;
    let store = connect(etcd, cluster).await?;
    let snap = snapshot(&store).await?;
    let Some(doc) = snap.doc.clone() else {
        let spec = spec.seeded();
        if store
            .swap_doc(0, &ClusterDoc::seed(spec.to_toml()))
            .await
            .map_err(|e| e.to_string())?
        {
            println!("fleet '{cluster}' seeded: epoch 1 with {} shards", spec.backends.len());
            return Ok(());
        }
        return Err("another client seeded the fleet at the same moment; run apply again".into());
    };
    let current: FleetSpec =
        toml::from_str(&doc.spec).map_err(|e| format!("the fleet's topology does not parse: {e}"))?;
    let spec = spec.inherit(&current);
    if let Err(e) = spec.apply_to(&base()) {
        let hint = match &current.redlock.group {
            Some(g) if e.to_string().starts_with("redlock.group") => format!(
                " (the fleet's lock group is [{}]: a spec that removes one of its members must set [redlock] group)",
                g.join(", ")
            ),
            _ => String::new(),
        };
        return Err(format!("{}: {e}{hint}", path.display()));
    }
    if spec == current && doc.change.is_none() {
        println!(
            "epoch {}: the fleet already serves this topology; nothing to do",
            doc.epoch
        );
        return Ok(());
    }
    let next = doc
        .prepare(spec.to_toml(), opts.ack_timeout_ms, now_ms())
        .map_err(|e| e.to_string())?;
    let epoch = next.change.as_ref().map_or(0, |c| c.epoch);
    if !store
        .swap_doc(snap.doc_revision, &next)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err("the fleet's topology changed meanwhile; run apply again".into());
    }
    let started = Instant::now();
    println!(
        "epoch {epoch} prepared ({} shards); waiting for {} proxies to acknowledge",
        spec.backends.len(),
        snap.members.len()
    );
    // Acknowledgements, commit, and every proxy serving the new epoch.
    let mut committed_at = None;
    loop {
        let s = snapshot(&store).await?;
        let Some(doc) = s.doc.clone() else {
            return Err("the fleet's topology disappeared from etcd".into());
        };
        match &doc.change {
            Some(c) if c.epoch == epoch && c.phase == Phase::Prepared => {
                let decision = phase::decide(&doc, &s.members, s.progress.as_ref(), now_ms());
                if decision != Decision::Wait {
                    let _ = store.swap_doc(s.doc_revision, &doc.after(&decision, now_ms())).await;
                }
            }
            Some(c) if c.epoch == epoch => {
                if committed_at.is_none() {
                    committed_at = Some(started.elapsed());
                    println!(
                        "epoch {epoch} committed after {} ms: every proxy acknowledged",
                        started.elapsed().as_millis()
                    );
                }
                let behind: Vec<&str> = s
                    .members
                    .iter()
                    .filter(|m| m.serving < epoch)
                    .map(|m| m.id.as_str())
                    .collect();
                if behind.is_empty() {
                    break;
                }
            }
            _ if doc.epoch >= epoch => break,
            _ => {
                let why = doc.last_outcome.clone().unwrap_or_else(|| "aborted".into());
                return Err(format!("epoch {epoch} was not applied: {why}; nothing moved"));
            }
        }
        tokio::time::sleep(POLL).await;
    }
    println!(
        "epoch {epoch} served by every proxy ({} ms after prepare)",
        started.elapsed().as_millis()
    );
    if opts.detach {
        return Ok(());
    }
    let mut last_print = Instant::now();
    loop {
        let s = snapshot(&store).await?;
        let doc = s.doc.clone().ok_or("the fleet's topology disappeared from etcd")?;
        if doc.epoch >= epoch && doc.change.is_none() {
            let p = s.progress.filter(|p| p.epoch == epoch).unwrap_or_default();
            println!(
                "migration done: {} keys moved by the migrator, {} on demand, {} ms after prepare; epoch {epoch} is stable",
                p.moved,
                p.moved_on_demand,
                started.elapsed().as_millis()
            );
            return Ok(());
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            match s.progress.filter(|p| p.epoch == epoch) {
                Some(p) => println!(
                    "migrating: {} keys moved, {} scanned, {} source shards left (migrator {})",
                    p.moved, p.scanned, p.sources_left, p.migrator
                ),
                None => println!("migrating: waiting for the elected migrator to report"),
            }
        }
        tokio::time::sleep(POLL * 2).await;
    }
}

/// The fleet's state as `status --json` prints it.
pub fn status_json(cluster: &str, s: &Snapshot) -> serde_json::Value {
    let doc = s.doc.as_ref();
    let shards = |spec: &str| -> serde_json::Value {
        toml::from_str::<FleetSpec>(spec)
            .map(|f| {
                f.backends
                    .iter()
                    .map(|b| serde_json::json!({"name": b.name, "addr": b.addr, "weight": b.weight}))
                    .collect::<Vec<_>>()
                    .into()
            })
            .unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "cluster": cluster,
        "epoch": doc.map(|d| d.epoch),
        "phase": doc.map(|d| d.phase_name()),
        "change": doc.and_then(|d| d.change.as_ref()).map(|c| serde_json::json!({
            "epoch": c.epoch,
            "phase": c.phase,
            "prepared_at_ms": c.prepared_at_ms,
            "committed_at_ms": c.committed_at_ms,
            "ack_timeout_ms": c.ack_timeout_ms,
            "shards": shards(&c.spec),
        })),
        "last_outcome": doc.and_then(|d| d.last_outcome.clone()),
        "shards": doc.map(|d| shards(&d.spec)),
        "migrator": s.migrator,
        "migration": s.progress,
        "proxies": s.members.iter().map(|m| serde_json::json!({
            "id": m.id,
            "addr": m.addr,
            "epoch": m.serving,
            "acked": m.acked,
            "alive": s.is_alive(&m.id),
            "pid": m.pid,
            "fenced_user": m.fence_user,
        })).collect::<Vec<_>>(),
        "unreadable": s.unreadable,
    })
}

pub async fn status(etcd: &[String], cluster: &str, json: bool) -> CtlResult {
    let store = connect(etcd, cluster).await?;
    let s = snapshot(&store).await?;
    if json {
        println!("{}", status_json(cluster, &s));
        return Ok(());
    }
    let Some(doc) = &s.doc else {
        println!("fleet '{cluster}': no topology yet (the first proxy seeds it)");
        return Ok(());
    };
    println!("fleet '{cluster}'  epoch {}  phase {}", doc.epoch, doc.phase_name());
    if let Some(o) = &doc.last_outcome {
        println!("last change: {o}");
    }
    if let Some(c) = &doc.change {
        println!("change: epoch {} {:?}", c.epoch, c.phase);
    }
    if let Ok(spec) = toml::from_str::<FleetSpec>(&doc.spec) {
        println!("\nSHARD            ADDR                    WEIGHT");
        for b in &spec.backends {
            println!("{:<16} {:<23} {}", b.name, b.addr, b.weight);
        }
    }
    println!("\nPROXY                    ADDR                    EPOCH  ACKED  ALIVE  MIGRATOR");
    for m in &s.members {
        println!(
            "{:<24} {:<23} {:<6} {:<6} {:<6} {}",
            m.id,
            m.addr,
            m.serving,
            m.acked,
            if s.is_alive(&m.id) { "yes" } else { "NO" },
            if s.migrator.as_deref() == Some(m.id.as_str()) {
                "*"
            } else {
                ""
            }
        );
    }
    if let Some(p) = &s.progress {
        println!(
            "\nmigration to epoch {}: {} (moved {}, on demand {}, scanned {}, sources left {}, by {})",
            p.epoch,
            if p.done { "done" } else { "running" },
            p.moved,
            p.moved_on_demand,
            p.scanned,
            p.sources_left,
            p.migrator
        );
    }
    for u in &s.unreadable {
        println!("warning: record '{u}' does not parse");
    }
    Ok(())
}

pub async fn evict(etcd: &[String], cluster: &str, id: &str, force: bool) -> CtlResult {
    let store = connect(etcd, cluster).await?;
    let s = snapshot(&store).await?;
    let Some(m) = s.member(id) else {
        let known: Vec<&str> = s.members.iter().map(|m| m.id.as_str()).collect();
        return Err(format!(
            "'{id}' is not a member of fleet '{cluster}' (members: {})",
            known.join(", ")
        ));
    };
    if let Some(user) = &m.fence_user {
        let mut backends = Vec::new();
        if let Some(doc) = &s.doc {
            for spec in std::iter::once(&doc.spec).chain(doc.change.as_ref().map(|c| &c.spec)) {
                if let Ok(f) = toml::from_str::<FleetSpec>(spec) {
                    for b in f.backends {
                        if !backends.iter().any(|x: &crate::config::Backend| x.name == b.name) {
                            backends.push(b);
                        }
                    }
                }
            }
        }
        let mut failed = Vec::new();
        for b in &backends {
            match fence::disable(b, user).await {
                Ok(()) => println!("fenced {user} on shard {}", b.name),
                Err(e) => failed.push(format!("{}: {e}", b.name)),
            }
        }
        if !failed.is_empty() && !force {
            return Err(format!(
                "could not fence {id} on every shard ({}); it stays a member. Fix the shards, or evict --force (unsafe if {id} may still run)",
                failed.join("; ")
            ));
        }
    } else if s.is_alive(id) {
        println!(
            "warning: {id} still holds a live lease (it may be running); it is not fenced at the shards (no [cluster] fence)"
        );
    }
    store.delete_member(id).await.map_err(|e| e.to_string())?;
    println!("evicted {id} from fleet '{cluster}'");
    Ok(())
}

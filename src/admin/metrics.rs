//! `/metrics`: a prometheus-client [`Registry`] with one custom
//! [`Collector`] that reads everything at scrape time: the hot-path arrays
//! of [`crate::counters`] (summed over the worker groups), the counters INFO
//! shows ([`crate::state::Stats`], the lock service, the migration stats)
//! and the topology. Nothing is kept in prometheus-client types between
//! scrapes, so the request path never touches them.
//!
//! Names (all prefixed `shardis_`): `commands_total{command}`,
//! `command_errors_total{command}`, `command_duration_seconds{class}`,
//! `shard_requests_total{shard}`, `shard_errors_total{shard,kind}`,
//! `shard_duration_seconds{shard}`, `shard_up{shard}`, `shard_slots{shard}`,
//! `backend_connections{shard}`, `backend_reconnects_total{shard}`,
//! `backend_connection_failures_total{shard}`, the masters, failovers,
//! role-check refusals and replicas of [`super::replication`]
//! (`shard_master{shard,addr}`, `shard_failovers_total{shard}`,
//! `backend_role_refusals_total{shard}`, `replica_usable{shard,replica}`,
//! `replica_lag_seconds{shard,replica}`, `replica_fallbacks_total{shard}`,
//! ...), `clients_connected`,
//! `clients_accepted_total`, `clients_refused_total`, `clients_blocked`,
//! `clients_idle_closed_total`, `auth_failures_total`,
//! `clients_output_limit_closed_total{class}`,
//! `clients_refused_per_ip_total{limit}`,
//! `logins_refused_user_max_clients_total`,
//! `client_bytes_received_total`, `client_bytes_sent_total`,
//! `fanout_total{kind}`, `refused_cross_shard_total`, `lock_granted_total`,
//! `lock_denied_total`, `lock_no_quorum_total`, `migration_in_progress`,
//! `migration_keys_scanned`, `migration_keys_moved`,
//! `migration_shards_left`, `migration_shards_total`, `migration_errors`,
//! `config_epoch`, `uptime_seconds`, `build_info{version}`, and in fleet
//! mode `fleet_info{cluster,id,phase}`, `fleet_members`, `fleet_members_alive`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::counters::{BUCKETS_US, CLASSES, HistogramSnapshot, command_name};
use crate::state::Shared;

/// The registry `/metrics` encodes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(shared: Arc<Shared>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ShardisCollector { shared }));
        Metrics { registry }
    }

    /// The text exposition of every metric now.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut body, &self.registry)?;
        Ok(body)
    }
}

/// Reads the proxy's counters at each scrape.
struct ShardisCollector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShardisCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardisCollector")
    }
}

type Fmt = Result<(), std::fmt::Error>;

/// One metric without labels.
fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, ty: MetricType, v: f64) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    value_of(&mut m, ty, v)
}

/// A counter or gauge value: integral values as integers (`42`, not `42.0`).
fn value_of(m: &mut MetricEncoder, ty: MetricType, v: f64) -> Fmt {
    let int = v.fract() == 0.0 && v.abs() < 9e15;
    match ty {
        MetricType::Counter if int => m.encode_counter::<NoLabelSet, _, u64>(&(v.max(0.0) as u64), None),
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        _ if int => m.encode_gauge(&(v as i64)),
        _ => m.encode_gauge(&v),
    }
}

/// One metric with a value per label set.
pub(super) fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: &[(L, f64)],
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in rows {
        let mut f = m.encode_family(labels)?;
        value_of(&mut f, ty, *v)?;
    }
    Ok(())
}

/// A histogram per label set, in seconds.
fn histograms<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, &HistogramSnapshot)],
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| (BUCKETS_US.get(i).map_or(f64::MAX, |us| *us as f64 / 1e6), *n))
            .collect();
        let mut f = m.encode_family(labels)?;
        f.encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count(), &buckets, None)?;
    }
    Ok(())
}

type Label = [(&'static str, String); 1];

fn label(k: &'static str, v: impl Into<String>) -> Label {
    [(k, v.into())]
}

impl Collector for ShardisCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        use MetricType::{Counter, Gauge};
        let e = &mut enc;
        let s = &self.shared;
        let topo = s.topology.load_full();

        // Per command: only the commands seen (the label values are table names).
        let cmd = s.counters.snapshot();
        let rows = |v: &[u64]| -> Vec<(Label, f64)> {
            v.iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (label("command", command_name(i)), *n as f64))
                .collect()
        };
        family(
            e,
            "shardis_commands",
            "Requests read, by command",
            Counter,
            &rows(&cmd.calls),
        )?;
        family(
            e,
            "shardis_command_errors",
            "Requests the proxy answered with an error itself (refusals, unknown commands, wrong arity), by command",
            Counter,
            &rows(&cmd.errors),
        )?;
        let classes: Vec<(Label, &HistogramSnapshot)> = CLASSES
            .iter()
            .zip(&cmd.classes)
            .map(|(c, h)| (label("class", *c), h))
            .collect();
        histograms(
            e,
            "shardis_command_duration_seconds",
            "From the read of a request to the write of its reply, by command class",
            &classes,
        )?;
        let fanout = [
            (label("kind", "split"), cmd.split as f64),
            (label("kind", "broadcast"), cmd.broadcast as f64),
        ];
        family(
            e,
            "shardis_fanout",
            "Requests sent to several shards (split by key) or to all",
            Counter,
            &fanout,
        )?;
        single(
            e,
            "shardis_refused_cross_shard",
            "Requests refused because their keys live on several shards",
            Counter,
            cmd.refused_cross_shard as f64,
        )?;
        single(
            e,
            "shardis_client_bytes_received",
            "Bytes read from clients",
            Counter,
            cmd.bytes_in as f64,
        )?;
        single(
            e,
            "shardis_client_bytes_sent",
            "Bytes written to clients",
            Counter,
            cmd.bytes_out as f64,
        )?;

        // Per shard.
        let snaps: Vec<_> = topo
            .shards
            .iter()
            .map(|sh| (sh.name().to_string(), sh.counters.snapshot()))
            .collect();
        let per = |f: &dyn Fn(&crate::counters::ShardSnapshot) -> f64| -> Vec<(Label, f64)> {
            snaps.iter().map(|(n, sn)| (label("shard", n.clone()), f(sn))).collect()
        };
        family(
            e,
            "shardis_shard_requests",
            "Requests sent to the shard",
            Counter,
            &per(&|x| x.requests as f64),
        )?;
        let errors: Vec<([(&str, String); 2], f64)> = snaps
            .iter()
            .flat_map(|(n, sn)| {
                [
                    (
                        [("shard", n.clone()), ("kind", "reply".to_string())],
                        sn.error_replies as f64,
                    ),
                    (
                        [("shard", n.clone()), ("kind", "failed".to_string())],
                        sn.failures as f64,
                    ),
                ]
            })
            .collect();
        family(
            e,
            "shardis_shard_errors",
            "Error replies from the shard (kind=reply) and requests failed by the proxy: down, lost, timed out (kind=failed)",
            Counter,
            &errors,
        )?;
        let lat: Vec<(Label, &HistogramSnapshot)> = snaps
            .iter()
            .map(|(n, sn)| (label("shard", n.clone()), &sn.latency))
            .collect();
        histograms(
            e,
            "shardis_shard_duration_seconds",
            "Backend round trip, written to reply read",
            &lat,
        )?;
        family(
            e,
            "shardis_shard_up",
            "1 when the shard has a live connection",
            Gauge,
            &per(&|x| f64::from(u8::from(x.live > 0))),
        )?;
        let counts = topo.ring.slot_counts();
        let slots: Vec<(Label, f64)> = topo
            .shards
            .iter()
            .enumerate()
            .map(|(i, sh)| (label("shard", sh.name()), counts.get(i).copied().unwrap_or(0) as f64))
            .collect();
        family(e, "shardis_shard_slots", "Ring slots the shard owns", Gauge, &slots)?;
        family(
            e,
            "shardis_backend_connections",
            "Pooled connections up",
            Gauge,
            &per(&|x| x.live as f64),
        )?;
        family(
            e,
            "shardis_backend_reconnects",
            "Pooled connections re-established after a failure",
            Counter,
            &per(&|x| x.reconnects as f64),
        )?;
        family(
            e,
            "shardis_backend_connection_failures",
            "Failed connects and lost pooled connections",
            Counter,
            &per(&|x| x.connection_failures as f64),
        )?;
        let repl: Vec<_> = topo
            .shards
            .iter()
            .map(|sh| {
                let r = super::replication::ShardReplication::of(sh);
                (sh.name().to_string(), r, sh.replicas.is_some())
            })
            .collect();
        super::replication::encode(e, &repl)?;

        // Clients.
        let st = &s.stats;
        single(
            e,
            "shardis_clients_connected",
            "Clients connected",
            Gauge,
            st.clients.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "shardis_clients_accepted",
            "Client connections accepted",
            Counter,
            st.connections.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "shardis_clients_refused",
            "Client connections refused at the client limit",
            Counter,
            st.rejected.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "shardis_clients_idle_closed",
            "Clients closed for being idle past limits.client_idle_timeout_s",
            Counter,
            st.idle_closed.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "shardis_auth_failures",
            "Failed logins (AUTH, HELLO AUTH), including those refused by the failed-login rate limit",
            Counter,
            st.auth_failures.load(Ordering::Relaxed) as f64,
        )?;
        let lim = &s.limits;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        family(
            e,
            "shardis_clients_output_limit_closed",
            "Clients closed past their class's output buffer limit",
            Counter,
            &[
                (label("class", "normal"), ld(&lim.output_closed[0])),
                (label("class", "pubsub"), ld(&lim.output_closed[1])),
            ],
        )?;
        family(
            e,
            "shardis_clients_refused_per_ip",
            "Connections refused by a per-address limit",
            Counter,
            &[
                (label("limit", "rate"), ld(&lim.ip_rate_refused)),
                (label("limit", "clients"), ld(&lim.ip_clients_refused)),
            ],
        )?;
        single(
            e,
            "shardis_logins_refused_user_max_clients",
            "Logins refused past the user's max_clients",
            Counter,
            ld(&lim.user_clients_refused),
        )?;
        single(
            e,
            "shardis_clients_blocked",
            "Clients waiting on a blocking command",
            Gauge,
            st.blocked.load(Ordering::Relaxed) as f64,
        )?;

        // Locks.
        let l = &s.locks;
        single(
            e,
            "shardis_lock_granted",
            "Redlock acquisitions granted",
            Counter,
            l.granted.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "shardis_lock_denied",
            "Redlock acquisitions denied (held elsewhere)",
            Counter,
            l.denied.load(Ordering::Relaxed) as f64,
        )?;
        single(
            e,
            "shardis_lock_no_quorum",
            "Redlock requests without a quorum of members",
            Counter,
            l.no_quorum.load(Ordering::Relaxed) as f64,
        )?;

        // Migration: the last topology change's, reset by the next one.
        let m = super::status::migration(&topo);
        let mg = |f: &dyn Fn(&super::status::MigrationStatus) -> f64| m.as_ref().map_or(0.0, f);
        single(
            e,
            "shardis_migration_in_progress",
            "1 while keys move after a topology change",
            Gauge,
            mg(&|m| f64::from(u8::from(m.in_progress))),
        )?;
        single(
            e,
            "shardis_migration_keys_scanned",
            "Keys the current (or last) migration scanned",
            Gauge,
            mg(&|m| m.keys_scanned as f64),
        )?;
        single(
            e,
            "shardis_migration_keys_moved",
            "Keys the current (or last) migration moved",
            Gauge,
            mg(&|m| m.keys_moved as f64),
        )?;
        single(
            e,
            "shardis_migration_shards_left",
            "Old shards the migration has still to walk",
            Gauge,
            mg(&|m| m.shards_left as f64),
        )?;
        single(
            e,
            "shardis_migration_shards_total",
            "Old shards the migration walks",
            Gauge,
            mg(&|m| m.shards_total as f64),
        )?;
        single(
            e,
            "shardis_migration_errors",
            "Failed MIGRATE or SCAN calls of the migration (retried)",
            Gauge,
            mg(&|m| m.errors as f64),
        )?;

        // The proxy.
        single(
            e,
            "shardis_config_epoch",
            "Epoch of the topology served",
            Gauge,
            topo.epoch as f64,
        )?;
        single(
            e,
            "shardis_uptime_seconds",
            "Seconds since the proxy started",
            Gauge,
            s.started.elapsed().as_secs_f64(),
        )?;
        let mut m = e.encode_descriptor("shardis_build", "The proxy's version", None, MetricType::Info)?;
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        if let Some(c) = &topo.config.cluster {
            let id = crate::cluster::agent::proxy_id(&topo.config, c);
            let view = s.fleet.load_full();
            let phase = view.as_ref().map_or("", |v| v.phase).to_string();
            let mut m = e.encode_descriptor(
                "shardis_fleet",
                "This proxy's fleet, id and the fleet's phase (fleet mode)",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("cluster", c.name.clone()), ("id", id), ("phase", phase)])?;
            let (members, alive) = view.as_ref().map_or((0, 0), |v| {
                (v.members.len(), v.members.iter().filter(|m| m.alive).count())
            });
            single(
                e,
                "shardis_fleet_members",
                "Proxies registered in the fleet",
                Gauge,
                members as f64,
            )?;
            single(
                e,
                "shardis_fleet_members_alive",
                "Proxies of the fleet whose lease is current",
                Gauge,
                alive as f64,
            )?;
        }
        Ok(())
    }
}

/// Parses text exposition lines `name{labels} value` into (series, value):
/// for tests and tools reading `/metrics`.
pub fn parse(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        if let Some((series, Ok(v))) = line.rsplit_once(' ').map(|(k, v)| (k, v.parse::<f64>())) {
            out.push((series.to_string(), v));
        }
    }
    out
}

/// The value of `series` (exactly as exposed, labels included) in `text`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    parse(text).into_iter().find(|(s, _)| s == series).map(|(_, v)| v)
}

/// Writes `rows` as a compact summary (series and value per line): used in
/// tests' failure messages.
pub fn summary(text: &str, prefix: &str) -> String {
    let mut s = String::new();
    for (k, v) in parse(text).into_iter().filter(|(k, _)| k.starts_with(prefix)) {
        let _ = writeln!(s, "{k} {v}");
    }
    s
}

//! The fleet's records in etcd: one client, the key layout under
//! `/shardis/<name>/`, and the few operations the agent and `ctl` need
//! (read everything at one revision, compare-and-swap the topology record,
//! members, liveness leases, the migrator election).
//!
//! etcd is the coordination engine (Raft, leases, revisions); this module
//! only names keys and (de)serializes JSON.
//!
//! Layout:
//! - `topology`: the [`ClusterDoc`], changed only by compare-and-swap on
//!   its mod revision;
//! - `members/<id>`: a [`Member`], no lease (see there);
//! - `alive/<id>`: present while the proxy's lease is kept alive;
//! - `migrator`: the id of the elected proxy, under its lease (created
//!   only if absent: etcd's election recipe);
//! - `migration`: the migrator's [`Progress`].

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

use super::phase::{ClusterDoc, Member, Progress};

/// Every etcd call gives up after this (the data path never waits on one).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub type EtcdError = etcd_client::Error;

/// Everything under the fleet's prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub doc: Option<ClusterDoc>,
    /// The topology record's mod revision (for compare-and-swap); 0 when absent.
    pub doc_revision: i64,
    pub members: Vec<Member>,
    /// Ids whose liveness lease is current.
    pub alive: Vec<String>,
    pub migrator: Option<String>,
    pub progress: Option<Progress>,
    /// Records that did not parse (named in logs and `status`).
    pub unreadable: Vec<String>,
}

impl Snapshot {
    pub fn is_alive(&self, id: &str) -> bool {
        self.alive.iter().any(|a| a == id)
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// A connection to etcd for one fleet.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    /// Connects to `endpoints` (`host:port` or URLs) for fleet `name`.
    pub async fn connect(endpoints: &[String], name: &str) -> Result<Store, EtcdError> {
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(urls, Some(opts)).await?;
        Ok(Store {
            client,
            prefix: format!("/shardis/{name}/"),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Everything under the prefix, at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, EtcdError> {
        let mut c = self.client.clone();
        let r = c
            .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let mut s = Snapshot {
            revision: r.header().map_or(0, |h| h.revision()),
            ..Snapshot::default()
        };
        for kv in r.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some(rest) = key.strip_prefix(&self.prefix) else {
                continue;
            };
            let value = kv.value();
            let bad = |s: &mut Snapshot| s.unreadable.push(rest.to_string());
            if rest == "topology" {
                match serde_json::from_slice(value) {
                    Ok(d) => {
                        s.doc = Some(d);
                        s.doc_revision = kv.mod_revision();
                    }
                    Err(_) => bad(&mut s),
                }
            } else if let Some(_id) = rest.strip_prefix("members/") {
                match serde_json::from_slice(value) {
                    Ok(m) => s.members.push(m),
                    Err(_) => bad(&mut s),
                }
            } else if let Some(id) = rest.strip_prefix("alive/") {
                s.alive.push(id.to_string());
            } else if rest == "migrator" {
                s.migrator = Some(String::from_utf8_lossy(value).into_owned());
            } else if rest == "migration" {
                match serde_json::from_slice(value) {
                    Ok(p) => s.progress = Some(p),
                    Err(_) => bad(&mut s),
                }
            }
        }
        Ok(s)
    }

    /// Writes `doc` if the record's mod revision is still `expected` (0: if
    /// there is none yet). False when someone changed it first.
    pub async fn swap_doc(&self, expected: i64, doc: &ClusterDoc) -> Result<bool, EtcdError> {
        let key = self.key("topology");
        let value = serde_json::to_vec(doc).unwrap_or_default();
        let cmp = if expected == 0 {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, expected)
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        Ok(c.txn(txn).await?.succeeded())
    }

    pub async fn put_member(&self, m: &Member) -> Result<(), EtcdError> {
        let mut c = self.client.clone();
        let value = serde_json::to_vec(m).unwrap_or_default();
        c.put(self.key(&format!("members/{}", m.id)), value, None).await?;
        Ok(())
    }

    /// Removes a member and its liveness key; true if it was a member.
    pub async fn delete_member(&self, id: &str) -> Result<bool, EtcdError> {
        let mut c = self.client.clone();
        let r = c.delete(self.key(&format!("members/{id}")), None).await?;
        c.delete(self.key(&format!("alive/{id}")), None).await?;
        Ok(r.deleted() > 0)
    }

    /// A lease of `ttl_s` seconds.
    pub async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let mut c = self.client.clone();
        Ok(c.lease_grant(ttl_s, None).await?.id())
    }

    /// Refreshes `lease` once; false if it has expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let mut c = self.client.clone();
        let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
            Ok(r) => Ok(r?.is_some_and(|r| r.ttl() > 0)),
            Err(_) => Ok(false),
        }
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut c = self.client.clone();
        c.lease_revoke(lease).await?;
        Ok(())
    }

    /// Marks `id` alive under `lease`.
    pub async fn put_alive(&self, id: &str, lease: i64) -> Result<(), EtcdError> {
        let mut c = self.client.clone();
        c.put(
            self.key(&format!("alive/{id}")),
            b"1".to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        Ok(())
    }

    /// Becomes the migrator if there is none (the key is bound to `lease`,
    /// so it goes when this proxy's lease does). True if `id` holds it now.
    pub async fn campaign(&self, id: &str, lease: i64) -> Result<bool, EtcdError> {
        let key = self.key("migrator");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                id.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client.clone();
        let r = c.txn(txn).await?;
        if r.succeeded() {
            return Ok(true);
        }
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op {
                return Ok(g.kvs().first().is_some_and(|kv| kv.value() == id.as_bytes()));
            }
        }
        Ok(false)
    }

    /// Gives up the migrator role if `id` holds it.
    pub async fn resign(&self, id: &str) -> Result<(), EtcdError> {
        let key = self.key("migrator");
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, id.as_bytes().to_vec())])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        c.txn(txn).await?;
        Ok(())
    }

    pub async fn put_progress(&self, p: &Progress) -> Result<(), EtcdError> {
        let mut c = self.client.clone();
        c.put(self.key("migration"), serde_json::to_vec(p).unwrap_or_default(), None)
            .await?;
        Ok(())
    }

    /// A stream that yields whenever something under the prefix changes.
    pub async fn watch(&self, from_revision: i64) -> Result<etcd_client::WatchStream, EtcdError> {
        let mut c = self.client.clone();
        let mut opts = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        c.watch(self.prefix.clone(), Some(opts)).await
    }
}

/// Unix time in milliseconds (the ack timeout is wall-clock: it is compared
/// by whichever coordinator reads the record).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

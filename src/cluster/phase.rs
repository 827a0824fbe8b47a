//! The fleet's phase machine, with no I/O: what is stored in etcd, what the
//! coordinator decides from it, and what one proxy does to follow it.
//!
//! A change of topology goes *stable(N)* → *prepared(N+1)* → *committed(N+1)*
//! → *stable(N+1)*, or *prepared(N+1)* → *stable(N)* (aborted):
//! - **prepared**: every proxy holds requests on keys whose owner changes and
//!   acknowledges; nothing moves.
//! - **committed** once every registered proxy has acknowledged: proxies
//!   route on the new ring, moving keys migrate-first, and the elected
//!   migrator moves the rest.
//! - **stable(N+1)** once the migrator reports it has walked every old shard.
//! - **aborted** (back to stable(N)) when some proxy did not acknowledge
//!   within the change's `ack_timeout_ms`: nothing had moved.
//!
//! Epoch numbers are never reused: an aborted N+1 is followed by N+2.

use serde::{Deserialize, Serialize};

/// The fleet's topology record (`/shardis/<name>/topology`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDoc {
    /// The epoch in service once no change is in flight.
    pub epoch: u64,
    /// Its [`crate::config::FleetSpec`], as TOML.
    pub spec: String,
    /// The highest epoch ever prepared (aborted ones included).
    pub last_epoch: u64,
    /// The change in flight, if any.
    #[serde(default)]
    pub change: Option<Change>,
    /// How the last change ended, for `status` ("committed epoch 4",
    /// "aborted epoch 5: not acknowledged by b within 10000 ms").
    #[serde(default)]
    pub last_outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub epoch: u64,
    pub spec: String,
    pub phase: Phase,
    /// Unix milliseconds (the ack timeout is measured from here).
    pub prepared_at_ms: u64,
    pub ack_timeout_ms: u64,
    #[serde(default)]
    pub committed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prepared,
    Committed,
}

/// One proxy of the fleet (`/shardis/<name>/members/<id>`): written by the
/// proxy, removed by its graceful shutdown or by `ctl evict`. Not tied to a
/// lease: a proxy that stops answering stays a member, and a change waits
/// for it, until an operator evicts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Where clients reach it.
    pub addr: String,
    /// The epoch it serves.
    pub serving: u64,
    /// The prepared epoch it holds requests for and acknowledges (0: none).
    pub acked: u64,
    pub pid: u32,
    pub started_ms: u64,
    /// Its ACL user on the shards when the fleet fences (`[cluster] fence`).
    #[serde(default)]
    pub fence_user: Option<String>,
    #[serde(default)]
    pub fence_password: Option<String>,
}

/// The migrator's report (`/shardis/<name>/migration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// The epoch the keys move to.
    pub epoch: u64,
    pub migrator: String,
    pub sources_left: usize,
    pub scanned: u64,
    pub moved: u64,
    pub moved_on_demand: u64,
    pub done: bool,
    pub updated_ms: u64,
}

/// What the coordinator (the elected proxy, or `ctl apply`) does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait,
    /// Every member acknowledged: commit.
    Commit,
    /// These members did not acknowledge in time: abort.
    Abort {
        missing: Vec<String>,
    },
    /// The migrator walked every old shard: the new epoch is stable.
    Finish,
}

/// The coordinator's decision on `doc`, given the members and the
/// migrator's report, at `now_ms`.
pub fn decide(doc: &ClusterDoc, members: &[Member], progress: Option<&Progress>, now_ms: u64) -> Decision {
    let Some(c) = &doc.change else { return Decision::Wait };
    match c.phase {
        Phase::Prepared => {
            let missing: Vec<String> = members
                .iter()
                .filter(|m| m.acked != c.epoch)
                .map(|m| m.id.clone())
                .collect();
            if missing.is_empty() {
                Decision::Commit
            } else if now_ms >= c.prepared_at_ms.saturating_add(c.ack_timeout_ms) {
                Decision::Abort { missing }
            } else {
                Decision::Wait
            }
        }
        Phase::Committed if progress.is_some_and(|p| p.epoch == c.epoch && p.done) => Decision::Finish,
        Phase::Committed => Decision::Wait,
    }
}

/// Why a change could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("epoch {epoch} is still {phase:?}; wait for it (shardis ctl status)")]
    InFlight { epoch: u64, phase: Phase },
}

impl ClusterDoc {
    /// The first record of a fleet, seeded from a proxy's own file.
    pub fn seed(spec: String) -> ClusterDoc {
        ClusterDoc {
            epoch: 1,
            spec,
            last_epoch: 1,
            change: None,
            last_outcome: None,
        }
    }

    /// `spec` prepared as the next epoch.
    pub fn prepare(&self, spec: String, ack_timeout_ms: u64, now_ms: u64) -> Result<ClusterDoc, PrepareError> {
        if let Some(c) = &self.change {
            return Err(PrepareError::InFlight {
                epoch: c.epoch,
                phase: c.phase,
            });
        }
        let epoch = self.last_epoch.max(self.epoch) + 1;
        Ok(ClusterDoc {
            last_epoch: epoch,
            change: Some(Change {
                epoch,
                spec,
                phase: Phase::Prepared,
                prepared_at_ms: now_ms,
                ack_timeout_ms,
                committed_at_ms: None,
            }),
            ..self.clone()
        })
    }

    /// The record after `decision` (unchanged for [`Decision::Wait`]).
    pub fn after(&self, decision: &Decision, now_ms: u64) -> ClusterDoc {
        let mut next = self.clone();
        let Some(c) = &mut next.change else { return next };
        match decision {
            Decision::Wait => {}
            Decision::Commit => {
                c.phase = Phase::Committed;
                c.committed_at_ms = Some(now_ms);
            }
            Decision::Abort { missing } => {
                next.last_outcome = Some(format!(
                    "aborted epoch {}: not acknowledged by {} within {} ms",
                    c.epoch,
                    missing.join(", "),
                    c.ack_timeout_ms
                ));
                next.change = None;
            }
            Decision::Finish => {
                next.last_outcome = Some(format!("committed epoch {}", c.epoch));
                next.epoch = c.epoch;
                next.spec = std::mem::take(&mut c.spec);
                next.change = None;
            }
        }
        next
    }

    /// The phase's name, as `status` prints it.
    pub fn phase_name(&self) -> &'static str {
        match &self.change {
            None => "stable",
            Some(c) if c.phase == Phase::Prepared => "prepared",
            Some(_) => "committed",
        }
    }
}

/// What one proxy has in service, as its agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Local {
    /// The epoch it serves (0: none yet).
    pub epoch: u64,
    /// The prepared epoch it holds requests for, if any.
    pub holding: Option<u64>,
    /// It still moves keys of a committed change on demand.
    pub migrating: bool,
}

/// One step a proxy takes to follow the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Serve `epoch` with `spec`, with no migration (its keys are where
    /// the ring says, or the proxy is starting).
    Adopt { epoch: u64, spec: String },
    /// Hold the keys that `spec` at `epoch` moves, then acknowledge.
    Prepare { epoch: u64, spec: String },
    /// Serve `epoch` with `spec`, moving keys from the epoch in service.
    Commit { epoch: u64, spec: String },
    /// The change was aborted: release the held requests on the old ring.
    Unhold,
    /// The fleet's migration is over: stop moving keys on demand.
    EndMigration,
}

/// The steps that bring a proxy in state `local` in line with `doc`.
pub fn follow(doc: &ClusterDoc, local: Local) -> Vec<Step> {
    let mut steps = Vec::new();
    let adopt = |steps: &mut Vec<Step>| {
        steps.push(Step::Adopt {
            epoch: doc.epoch,
            spec: doc.spec.clone(),
        })
    };
    match &doc.change {
        None => {
            if local.epoch != doc.epoch {
                adopt(&mut steps);
            } else {
                if local.holding.is_some() {
                    steps.push(Step::Unhold);
                }
                if local.migrating {
                    steps.push(Step::EndMigration);
                }
            }
        }
        Some(c) if c.phase == Phase::Prepared => {
            if local.epoch != doc.epoch {
                adopt(&mut steps);
            } else if local.holding.is_some_and(|h| h != c.epoch) {
                steps.push(Step::Unhold);
            }
            if local.epoch != doc.epoch || local.holding != Some(c.epoch) {
                steps.push(Step::Prepare {
                    epoch: c.epoch,
                    spec: c.spec.clone(),
                });
            }
        }
        Some(c) => {
            if local.epoch == c.epoch {
                return steps;
            }
            if local.epoch != doc.epoch {
                adopt(&mut steps);
            }
            steps.push(Step::Commit {
                epoch: c.epoch,
                spec: c.spec.clone(),
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, acked: u64) -> Member {
        Member {
            id: id.into(),
            addr: format!("{id}:6380"),
            serving: 1,
            acked,
            pid: 1,
            started_ms: 0,
            fence_user: None,
            fence_password: None,
        }
    }

    fn prepared() -> ClusterDoc {
        ClusterDoc::seed("v1".into())
            .prepare("v2".into(), 1000, 10_000)
            .expect("nothing in flight")
    }

    #[test]
    fn a_change_commits_only_when_every_member_acknowledged() {
        let doc = prepared();
        assert_eq!(doc.change.as_ref().map(|c| c.epoch), Some(2));
        let members = [member("a", 2), member("b", 0)];
        assert_eq!(decide(&doc, &members, None, 10_500), Decision::Wait);
        assert_eq!(
            decide(&doc, &members, None, 11_000),
            Decision::Abort {
                missing: vec!["b".into()]
            }
        );
        let members = [member("a", 2), member("b", 2)];
        assert_eq!(decide(&doc, &members, None, 10_500), Decision::Commit);
        // No member at all: nothing to wait for.
        assert_eq!(decide(&doc, &[], None, 10_001), Decision::Commit);
        // An acknowledgement of an earlier (aborted) epoch does not count.
        assert_eq!(decide(&doc, &[member("a", 1)], None, 10_001), Decision::Wait);
    }

    #[test]
    fn commit_then_finish_when_the_migrator_is_done() {
        let doc = prepared().after(&Decision::Commit, 10_200);
        assert_eq!(doc.phase_name(), "committed");
        assert_eq!(doc.epoch, 1, "the old epoch is in service until the move ends");
        let mut p = Progress {
            epoch: 2,
            done: false,
            ..Progress::default()
        };
        assert_eq!(
            decide(&doc, &[], Some(&p), 99_999),
            Decision::Wait,
            "never aborted once committed"
        );
        p.done = true;
        assert_eq!(decide(&doc, &[], Some(&p), 0), Decision::Finish);
        // A report about another epoch does not finish this one.
        let old = Progress {
            epoch: 1,
            done: true,
            ..Progress::default()
        };
        assert_eq!(decide(&doc, &[], Some(&old), 0), Decision::Wait);
        let done = doc.after(&Decision::Finish, 0);
        assert_eq!((done.epoch, done.spec.as_str(), done.change.is_none()), (2, "v2", true));
        assert_eq!(done.phase_name(), "stable");
    }

    #[test]
    fn an_aborted_epoch_is_never_reused_and_one_change_runs_at_a_time() {
        let doc = prepared();
        assert!(matches!(
            doc.prepare("v3".into(), 1000, 0),
            Err(PrepareError::InFlight { epoch: 2, .. })
        ));
        let aborted = doc.after(
            &Decision::Abort {
                missing: vec!["b".into()],
            },
            11_000,
        );
        assert_eq!((aborted.epoch, aborted.spec.as_str()), (1, "v1"));
        assert!(
            aborted
                .last_outcome
                .as_deref()
                .is_some_and(|o| o.contains("not acknowledged by b"))
        );
        let next = aborted.prepare("v3".into(), 1000, 12_000).expect("prepare");
        assert_eq!(next.change.map(|c| c.epoch), Some(3));
    }

    #[test]
    fn a_proxy_follows_every_phase() {
        let v = |epoch, holding, migrating| Local {
            epoch,
            holding,
            migrating,
        };
        let stable = ClusterDoc::seed("v1".into());
        // Starting: adopt what is in service.
        assert_eq!(
            follow(&stable, Local::default()),
            vec![Step::Adopt {
                epoch: 1,
                spec: "v1".into()
            }]
        );
        assert_eq!(follow(&stable, v(1, None, false)), vec![]);
        // Prepared: hold (once).
        let doc = prepared();
        let prep = Step::Prepare {
            epoch: 2,
            spec: "v2".into(),
        };
        assert_eq!(follow(&doc, v(1, None, false)), vec![prep.clone()]);
        assert_eq!(follow(&doc, v(1, Some(2), false)), vec![]);
        // A proxy starting while a change is prepared adopts, then holds.
        assert_eq!(
            follow(&doc, Local::default()),
            vec![
                Step::Adopt {
                    epoch: 1,
                    spec: "v1".into()
                },
                prep
            ]
        );
        // Committed: move to the new epoch, migrating from the old one.
        let committed = doc.after(&Decision::Commit, 0);
        let commit = Step::Commit {
            epoch: 2,
            spec: "v2".into(),
        };
        assert_eq!(follow(&committed, v(1, Some(2), false)), vec![commit.clone()]);
        assert_eq!(follow(&committed, v(2, None, true)), vec![]);
        // A proxy that starts now migrates on demand too.
        assert_eq!(
            follow(&committed, Local::default()),
            vec![
                Step::Adopt {
                    epoch: 1,
                    spec: "v1".into()
                },
                commit
            ]
        );
        // Finished: stop moving keys.
        let done = committed.after(&Decision::Finish, 0);
        assert_eq!(follow(&done, v(2, None, true)), vec![Step::EndMigration]);
        // One that missed it all (it was cut off, and evicted) adopts.
        assert_eq!(
            follow(&done, v(1, Some(2), false)),
            vec![Step::Adopt {
                epoch: 2,
                spec: "v2".into()
            }]
        );
        // Aborted: release what was held.
        let aborted = prepared().after(&Decision::Abort { missing: vec![] }, 0);
        assert_eq!(follow(&aborted, v(1, Some(2), false)), vec![Step::Unhold]);
        // Aborted and a new change prepared before this proxy saw it.
        let again = aborted.prepare("v3".into(), 1000, 0).expect("prepare");
        assert_eq!(
            follow(&again, v(1, Some(2), false)),
            vec![
                Step::Unhold,
                Step::Prepare {
                    epoch: 3,
                    spec: "v3".into()
                }
            ]
        );
    }
}

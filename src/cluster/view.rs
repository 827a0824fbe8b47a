//! Publishes what the agent reads from etcd (phase, epoch, the proxies) into
//! [`crate::state::Shared::fleet`], where the admin endpoint reads it.

use std::sync::Arc;

use super::store::Snapshot;
use crate::state::{FleetMember, FleetView, Shared};

/// Stores `snap`'s view of the fleet (nothing without a topology record).
pub(super) fn publish(shared: &Shared, snap: &Snapshot) {
    let Some(doc) = &snap.doc else { return };
    let members = snap
        .members
        .iter()
        .map(|m| FleetMember {
            id: m.id.clone(),
            addr: m.addr.clone(),
            serving: m.serving,
            alive: snap.alive.contains(&m.id),
        })
        .collect();
    shared.fleet.store(Some(Arc::new(FleetView {
        phase: doc.phase_name(),
        epoch: doc.epoch,
        members,
    })));
}

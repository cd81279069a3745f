//! What the monitor shows: a node's view (its orders) and the cluster view (for people,
//! proxies and `/metrics`).

use keel_core::{NodeId, Role};
use tokio::time::Instant;

use super::{Detector, Monitor};
use crate::settings::millis;
use crate::wire::{ClusterView, NodeStatus, PrimaryRef, StandbyView, View};

impl Monitor {
    /// The view of `node`. With `grant`, and when the node is the primary, not suspected
    /// and no failover runs, the view renews its lease, and the grant is recorded: a later
    /// failover waits it out.
    pub(super) fn view(&mut self, node: &NodeId, grant: bool, now: Instant) -> View {
        let role = self.role_of(node);
        let standbys = if role == Role::Primary {
            self.state
                .nodes
                .iter()
                .filter(|(n, _)| *n != node)
                .map(|(n, rec)| StandbyView {
                    node: n.clone(),
                    url: rec.url.clone(),
                    sync: rec.sync,
                })
                .collect()
        } else {
            Vec::new()
        };
        let lease_ms = (grant
            && role == Role::Primary
            && self.state.failover.is_none()
            && self.detector == Detector::Watching)
            .then(|| {
                self.soft(node).last_grant = Some(now);
                millis(self.settings.lease)
            });
        View {
            version: self.state.version,
            epoch: self.state.epoch,
            role,
            primary: self.primary_ref(),
            standbys,
            lease_ms,
            failover: self.state.failover.clone(),
            timing: self.settings.timing(),
            // A monitor of several groups adds the table (`groups::Groups`).
            slots_version: 0,
            slots: None,
            group: None,
        }
    }

    fn primary_ref(&self) -> Option<PrimaryRef> {
        let p = self.state.primary.as_ref()?;
        let rec = self.state.nodes.get(p)?;
        Some(PrimaryRef {
            node: p.clone(),
            url: rec.url.clone(),
        })
    }

    /// The whole picture, as `GET /v1/cluster` shows it.
    pub fn cluster_view(&self, now: Instant) -> ClusterView {
        let nodes = self
            .state
            .nodes
            .iter()
            .map(|(n, rec)| {
                let soft = self.soft.get(n);
                let role = self.role_of(n);
                let why = if role == Role::Primary {
                    None
                } else {
                    self.why_not_promotable(n, now)
                };
                NodeStatus {
                    node: n.clone(),
                    url: rec.url.clone(),
                    role,
                    sync: rec.sync,
                    promotable: role == Role::Standby && why.is_none(),
                    why_not_promotable: why,
                    lsn: soft.map(|s| s.best_lsn()).unwrap_or_default(),
                    epoch: soft.and_then(|s| s.epoch).unwrap_or_default(),
                    healthy: self.healthy(n, now),
                    last_heartbeat_ms_ago: soft
                        .and_then(|s| s.last_heartbeat)
                        .map(|t| millis(now.saturating_duration_since(t))),
                }
            })
            .collect();
        ClusterView {
            monitors: None,
            group: None,
            groups: Vec::new(),
            slots_version: 0,
            version: self.state.version,
            epoch: self.state.epoch,
            primary: self.primary_ref(),
            failover_in_progress: self.state.failover.is_some(),
            failover: self.state.failover.clone(),
            nodes,
        }
    }
}

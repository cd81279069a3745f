//! What the monitor's answers change: the timing, the failover in progress, the
//! monitor's lease, the epoch, the role and — on a primary — the standbys and the sync set.

use std::time::Duration;

use keel_client::wire::View;
use keel_core::Role;
use tokio::time::Instant;

use super::{Machine, Output, Timing};

impl Machine {
    /// Acts on the monitor's view. `sent_at` is when the request that brought it was sent
    /// (for the lease); `None` for a view that came with a refusal, which renews nothing.
    pub(super) fn apply_view(
        &mut self,
        view: &View,
        sent_at: Option<Instant>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.timing = Timing {
            heartbeat_interval: Duration::from_millis(view.timing.heartbeat_interval_ms.max(10)),
            heartbeat_timeout: Duration::from_millis(view.timing.heartbeat_timeout_ms.max(20)),
            lease: Duration::from_millis(view.timing.lease_ms),
            drift: Duration::from_millis(view.timing.drift_ms),
        };
        self.failover = view.failover.clone();
        match (view.lease_ms, sent_at) {
            (Some(ms), Some(at)) => {
                self.monitor_lease_until = Some(at + Duration::from_millis(ms));
            }
            _ if view.role != Role::Primary => self.monitor_lease_until = None,
            _ => {}
        }
        // The monitor has recorded this epoch durably: adopting it here refuses frames
        // from any older primary, so this node stops renewing that primary's lease at once.
        self.observe(view.epoch, out);

        let standbys: Vec<(String, String, bool)> = view
            .standbys
            .iter()
            .map(|s| (s.node.to_string(), s.url.clone(), s.sync))
            .collect();
        match view.role {
            Role::Primary if self.is_primary() => self.set_standbys(&standbys, now, out),
            Role::Primary => self.start_promotion(view.epoch, standbys, now, out),
            Role::Standby => {
                self.cancel_promotion();
                self.follow(view.primary.as_ref().map(|p| p.url.clone()), now, out);
            }
        }
        // The failover and the lease decide what waits and what may commit.
        self.settle(now, out);
        self.advance(now, out);
    }
}

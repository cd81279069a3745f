//! Failure detection and the failover steps: suspect, probe, confirm, pick, bump the
//! epoch, wait out the lease, promote, done; and the switchover's drain.

use keel_core::NodeId;
use tokio::time::Instant;

use super::{Detector, Monitor, ms};
use crate::wire::{EventKind, Failover, FailoverPhase, FailoverReason};

impl Monitor {
    pub(super) fn tick(&mut self, now: Instant) {
        self.standby_misses(now);
        if let Some(primary) = self.state.primary.clone() {
            match self.detector {
                Detector::Watching => {
                    let seen = self.primary_seen();
                    if now.saturating_duration_since(seen) >= self.settings.heartbeat_timeout {
                        self.suspect(&primary, seen, now);
                    }
                }
                Detector::Suspected { .. } => {}
                Detector::Confirmed { .. } => self.try_failover(now),
            }
        }
        if self.phase() == Some(FailoverPhase::WaitingForLeases)
            && self.leases_end.is_none_or(|end| now >= end)
        {
            self.promote();
        }
        if let Some(drain) = self.drain {
            let target = self.state.failover.as_ref().map(|f| f.to.clone());
            let why = target
                .as_ref()
                .and_then(|t| self.why_not_promotable(t, now));
            if now.saturating_duration_since(drain.since) >= self.settings.drain_timeout {
                self.abandon_switchover(format!(
                    "the drain did not finish within {} ms",
                    ms(self.settings.drain_timeout)
                ));
            } else if let Some(why) = why {
                self.abandon_switchover(format!("the target can no longer be promoted: {why}"));
            } else {
                self.check_drain(now);
            }
        }
    }

    /// `heartbeat_missed` for standbys, once per silence.
    fn standby_misses(&mut self, now: Instant) {
        let timeout = self.settings.heartbeat_timeout;
        let started = self.started;
        let missed: Vec<(NodeId, u128)> = self
            .state
            .nodes
            .keys()
            .filter(|n| self.state.primary.as_ref() != Some(*n))
            .filter_map(|n| {
                let soft = self.soft.get(n);
                if soft.is_some_and(|s| s.missed) {
                    return None;
                }
                let seen = soft
                    .and_then(|s| s.last_heartbeat)
                    .map_or(started, |t| t.max(started));
                let silent = now.saturating_duration_since(seen);
                (silent >= timeout).then(|| (n.clone(), ms(silent)))
            })
            .collect();
        for (node, silent) in missed {
            self.soft(&node).missed = true;
            self.event(
                EventKind::HeartbeatMissed,
                Some(&node),
                format!("no heartbeat from {node} for {silent} ms"),
            );
        }
    }

    /// No heartbeat for the timeout: stop renewing the lease (the view grants none while
    /// the detector is not watching) and start probing.
    fn suspect(&mut self, primary: &NodeId, seen: Instant, now: Instant) {
        let silent = ms(now.saturating_duration_since(seen));
        self.soft(primary).missed = true;
        self.event(
            EventKind::HeartbeatMissed,
            Some(primary),
            format!("no heartbeat from {primary} for {silent} ms"),
        );
        self.event(
            EventKind::Suspected,
            Some(primary),
            format!(
                "primary {primary} suspected after {silent} ms without a heartbeat; its lease is no longer renewed"
            ),
        );
        if self.settings.probe_retries == 0 {
            self.confirm(now);
        } else {
            self.send_probe(primary, 0);
        }
    }

    fn send_probe(&mut self, node: &NodeId, failed: u32) {
        let Some(url) = self.state.nodes.get(node).map(|r| r.url.clone()) else {
            return;
        };
        let probe = self.next_probe;
        self.next_probe += 1;
        self.detector = Detector::Suspected { probe, failed };
        self.out.push(super::Output::Probe {
            node: node.clone(),
            url,
            probe,
        });
    }

    pub(super) fn probe_result(&mut self, node: &NodeId, probe: u64, ok: bool, now: Instant) {
        let Detector::Suspected {
            probe: expected,
            failed,
        } = self.detector
        else {
            return;
        };
        if probe != expected || self.state.primary.as_ref() != Some(node) {
            return;
        }
        if ok {
            // It answers: give it a full timeout again, counted from this answer.
            self.detector = Detector::Watching;
            self.probe_ok_at = Some(now);
            self.event(
                EventKind::ProbeOk,
                Some(node),
                format!("{node} answered a probe; suspicion cleared"),
            );
            return;
        }
        let failed = failed + 1;
        let retries = self.settings.probe_retries;
        self.event(
            EventKind::ProbeFailed,
            Some(node),
            format!("probe {failed} of {retries} of {node} failed"),
        );
        if failed >= retries {
            self.confirm(now);
        } else {
            self.send_probe(node, failed);
        }
    }

    fn confirm(&mut self, now: Instant) {
        self.detector = Detector::Confirmed {
            blocked_reported: false,
        };
        self.try_failover(now);
    }

    /// The primary is confirmed failed: pick the candidate, bump the epoch durably and
    /// start waiting out the old primary's lease. Without a candidate, the failover stays
    /// blocked and is retried at every tick.
    fn try_failover(&mut self, now: Instant) {
        let Some(from) = self.state.primary.clone() else {
            return;
        };
        let Some(to) = self.best_candidate(now) else {
            if self.detector
                == (Detector::Confirmed {
                    blocked_reported: false,
                })
            {
                self.detector = Detector::Confirmed {
                    blocked_reported: true,
                };
                let reasons: Vec<String> = self
                    .reasons(now)
                    .into_iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect();
                let message = if reasons.is_empty() {
                    format!("{from} failed and there is no standby to promote")
                } else {
                    format!(
                        "{from} failed and no standby can be promoted ({})",
                        reasons.join("; ")
                    )
                };
                self.event(EventKind::NoPromotableStandby, Some(&from), message);
            }
            return;
        };
        let epoch = self.next_epoch();
        let grant_end = self
            .soft
            .get(&from)
            .and_then(|s| s.last_grant)
            .map(|t| t + self.settings.lease + self.settings.drift);
        // A failover that replaces a failed one (its candidate died too) still owes the
        // first primary its lease.
        let earlier = self.state.failover.as_ref().and(self.leases_end);
        self.leases_end = earlier.max(grant_end);
        self.state.epoch = epoch;
        self.state.primary = Some(to.clone());
        for (node, rec) in self.state.nodes.iter_mut() {
            if *node == from || *node == to {
                rec.sync = false;
                rec.promotable = false;
            } else {
                // Promotable again once the new primary reports waiting for it.
                rec.promotable = false;
            }
            if *node == from {
                rec.deposed = true;
            }
        }
        self.state.failover = Some(Failover {
            reason: FailoverReason::PrimaryFailed,
            from: from.clone(),
            to: to.clone(),
            epoch,
            phase: FailoverPhase::WaitingForLeases,
        });
        self.drain = None;
        self.detector = Detector::Watching;
        self.primary_since = now;
        self.probe_ok_at = None;
        self.dirty = true;
        self.event(
            EventKind::FailoverStarted,
            Some(&from),
            format!("{from} failed: promoting {to} in epoch {epoch}"),
        );
        match self.leases_end {
            Some(end) if end > now => {
                let wait = ms(end - now);
                self.event(
                    EventKind::WaitingForLeases,
                    Some(&from),
                    format!("waiting {wait} ms for the lease last granted to {from} to run out"),
                );
            }
            _ => self.promote(),
        }
    }

    /// The leases are over (or the old primary drained): the candidate may promote.
    fn promote(&mut self) {
        let Some(f) = self.state.failover.as_mut() else {
            return;
        };
        f.phase = FailoverPhase::Promoting;
        let (to, epoch) = (f.to.clone(), f.epoch);
        self.dirty = true;
        self.event(
            EventKind::Promoted,
            Some(&to),
            format!("{to} is told to promote in epoch {epoch}"),
        );
    }

    /// A switchover completes its drain once the target holds the primary's final lsn:
    /// the old primary stopped writing, so no lease needs waiting out.
    pub(super) fn check_drain(&mut self, now: Instant) {
        let (Some(drain), Some(f)) = (self.drain, self.state.failover.clone()) else {
            return;
        };
        let Some(final_lsn) = drain.final_lsn else {
            return;
        };
        let target_lsn = self
            .soft
            .get(&f.to)
            .map(|s| s.best_lsn())
            .unwrap_or_default();
        if target_lsn < final_lsn || self.why_not_promotable(&f.to, now).is_some() {
            return;
        }
        let epoch = self.next_epoch();
        self.state.epoch = epoch;
        self.state.primary = Some(f.to.clone());
        for (node, rec) in self.state.nodes.iter_mut() {
            if *node == f.from || *node == f.to {
                rec.sync = false;
            }
            rec.promotable = false;
            if *node == f.from {
                rec.deposed = true;
            }
        }
        if let Some(fo) = self.state.failover.as_mut() {
            fo.epoch = epoch;
        }
        self.drain = None;
        self.leases_end = None;
        self.detector = Detector::Watching;
        self.primary_since = now;
        self.probe_ok_at = None;
        self.dirty = true;
        self.promote();
    }

    pub(super) fn abandon_switchover(&mut self, why: String) {
        let Some(f) = self.state.failover.take() else {
            return;
        };
        self.drain = None;
        self.dirty = true;
        self.event(
            EventKind::FailoverAbandoned,
            Some(&f.to),
            format!(
                "switchover from {} to {} abandoned: {why}; {} stays primary",
                f.from, f.to, f.from
            ),
        );
    }

    /// The candidate heartbeats as primary in the new epoch: the failover is over.
    pub(super) fn failover_done(&mut self, node: &NodeId) {
        self.state.failover = None;
        self.leases_end = None;
        self.stats.failovers_total += 1;
        self.dirty = true;
        let epoch = self.state.epoch;
        self.event(
            EventKind::FailoverDone,
            Some(node),
            format!("{node} is primary in epoch {epoch}"),
        );
    }
}

//! The node and admin requests: register, heartbeat, sync drop, switchover.
//!
//! Every refusal is decided before anything is touched, so a refused request changes
//! nothing but the counters and the event stream.

use http::StatusCode;
use keel_core::{NodeId, Role};
use tokio::time::Instant;

use super::{Detector, Drain, Monitor, Pending, Refusal};
use crate::state::NodeRecord;
use crate::wire::{
    EventKind, Failover, FailoverPhase, FailoverReason, HeartbeatRequest, RegisterRequest,
    StandbyReport, SyncDropRequest, codes,
};

impl Monitor {
    pub(super) fn register(&mut self, req: RegisterRequest, now: Instant) -> Pending {
        let url = match check_url(&req.url) {
            Ok(url) => url,
            Err(why) => {
                return Pending::Refuse(
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        codes::BAD_REGISTER,
                        format!("url {:?}: {why}", req.url),
                    ),
                    None,
                );
            }
        };
        let node = req.node.clone();
        if let Err(refusal) = self.check_epoch_issued(&node, req.epoch, req.incarnation) {
            return Pending::Refuse(refusal, None);
        }
        let existing = self.state.nodes.get(&node).cloned();
        if let Some(rec) = &existing
            && rec.url != url
            && self.healthy(&node, now)
        {
            return Pending::Refuse(
                Refusal::new(
                    StatusCode::CONFLICT,
                    codes::URL_CONFLICT,
                    format!(
                        "{node} is registered with {} and still heartbeating; a second node cannot take its id",
                        rec.url
                    ),
                ),
                None,
            );
        }

        let restarted = existing
            .as_ref()
            .is_some_and(|rec| rec.incarnation != req.incarnation);
        let soft = self.soft(&node);
        if restarted || soft.epoch.is_none_or(|e| e < req.epoch) {
            soft.epoch = Some(req.epoch);
        }
        soft.lsn = req.lsn;
        // Registering is a sign of life like a heartbeat.
        soft.last_heartbeat = Some(now);
        soft.missed = false;

        match existing {
            None => {
                self.state.nodes.insert(
                    node.clone(),
                    NodeRecord::standby(url.clone(), req.incarnation),
                );
                self.dirty = true;
                self.event(
                    EventKind::Registered,
                    Some(&node),
                    format!("{node} registered at {url}"),
                );
            }
            Some(rec) if rec.incarnation == req.incarnation && rec.url == url => {
                // A repeated registration (a lost answer): nothing changes.
            }
            Some(_) => self.reregister(&node, url, req.incarnation, now),
        }
        if self.state.primary.is_none() {
            self.elect(&node, now);
        }
        Pending::View { node, grant: false }
    }

    /// A known node registers again: with a new incarnation it restarted.
    fn reregister(&mut self, node: &NodeId, url: String, incarnation: u64, now: Instant) {
        let is_primary = self.state.primary.as_ref() == Some(node);
        let old_incarnation = self.state.nodes.get(node).map(|r| r.incarnation);
        if let Some(rec) = self.state.nodes.get_mut(node) {
            rec.url = url.clone();
            rec.incarnation = incarnation;
        }
        self.dirty = true;
        self.event(
            EventKind::Registered,
            Some(node),
            match old_incarnation {
                Some(old) => format!("{node} registered again at {url}: restarted (incarnation {incarnation}, was {old})"),
                None => format!("{node} registered again at {url} (incarnation {incarnation})"),
            },
        );
        if old_incarnation == Some(incarnation) {
            // Same life, new URL (allowed once the old URL stopped heartbeating).
            return;
        }
        match (is_primary, self.phase()) {
            (true, None) => {
                // It restarted before anyone noticed: it stays primary, and every life of a
                // primary writes in its own epoch.
                self.elect(node, now);
            }
            (true, Some(FailoverPhase::Draining)) => {
                // A restart ends the drain: the switchover is abandoned and the node
                // stays primary in a new epoch.
                self.state.failover = None;
                self.drain = None;
                self.event(
                    EventKind::FailoverAbandoned,
                    Some(node),
                    format!("switchover abandoned: {node} restarted while draining"),
                );
                self.elect(node, now);
            }
            (true, Some(FailoverPhase::Promoting)) => {
                // The candidate restarted mid-promotion: it may have written in the
                // failover's epoch, so its new life takes the next one.
                let epoch = self.next_epoch();
                self.state.epoch = epoch;
                if let Some(f) = self.state.failover.as_mut() {
                    f.epoch = epoch;
                }
                self.primary_since = now;
                self.event(
                    EventKind::Promoted,
                    Some(node),
                    format!("{node} restarted while being promoted; it is told to promote in epoch {epoch}"),
                );
            }
            (true, Some(FailoverPhase::WaitingForLeases)) => {
                // The candidate restarted before it was told to promote: its log is
                // durable, it stays the candidate.
            }
            (false, _) => {
                if let Some(rec) = self.state.nodes.get_mut(node) {
                    rec.sync = false;
                    rec.promotable = false;
                }
                self.rejoin(node);
            }
        }
    }

    /// A deposed primary is back as a standby.
    fn rejoin(&mut self, node: &NodeId) {
        let Some(rec) = self.state.nodes.get_mut(node) else {
            return;
        };
        if rec.deposed {
            rec.deposed = false;
            self.dirty = true;
            self.event(
                EventKind::Rejoined,
                Some(node),
                format!("{node}, a former primary, is back as a standby"),
            );
        }
    }

    pub(super) fn heartbeat(&mut self, hb: HeartbeatRequest, now: Instant) -> Pending {
        if let Err(refusal) = self.check_epoch_issued(&hb.node, hb.epoch, hb.incarnation) {
            self.stats.heartbeats_refused += 1;
            return Pending::Refuse(refusal, None);
        }
        if let Err(refusal) = self.check_heartbeat(&hb) {
            self.stats.heartbeats_refused += 1;
            if refusal.status == StatusCode::CONFLICT {
                let key = (hb.incarnation, hb.epoch, refusal.error);
                let soft = self.soft(&hb.node);
                if soft.last_stale != Some(key) {
                    soft.last_stale = Some(key);
                    let message = format!("{} refused: {}", hb.node, refusal.message);
                    self.event(EventKind::StaleHeartbeat, Some(&hb.node), message);
                }
            }
            return Pending::Refuse(refusal, Some(hb.node));
        }
        self.stats.heartbeats_received += 1;
        let node = hb.node.clone();
        let soft = self.soft(&node);
        soft.last_heartbeat = Some(now);
        soft.lsn = hb.lsn;
        soft.epoch = Some(hb.epoch);
        soft.missed = false;
        soft.last_stale = None;

        if self.state.primary.as_ref() == Some(&node) {
            // Alive: whatever the detector thought, the primary is back.
            if self.detector != Detector::Watching {
                self.detector = Detector::Watching;
                self.event(
                    EventKind::ProbeOk,
                    Some(&node),
                    format!("{node} heartbeats again; suspicion cleared"),
                );
            }
        }
        if hb.role == Role::Standby {
            self.rejoin(&node);
        }
        // Only the acting primary, in the current epoch, speaks for the sync set.
        if hb.role == Role::Primary {
            self.standby_reports(&node, &hb.standbys);
        }
        if let Some(f) = &self.state.failover {
            match f.phase {
                FailoverPhase::Draining if f.from == node && hb.draining => {
                    if let Some(d) = self.drain.as_mut() {
                        d.final_lsn = Some(hb.lsn);
                    }
                    self.check_drain(now);
                }
                FailoverPhase::Draining if f.to == node => self.check_drain(now),
                FailoverPhase::Promoting
                    if f.to == node && hb.role == Role::Primary && hb.epoch == f.epoch =>
                {
                    self.failover_done(&node);
                }
                _ => {}
            }
        }
        Pending::View { node, grant: true }
    }

    /// Refuses an epoch above the highest this monitor ever issued (its current one:
    /// epochs only grow, durably). A node never has a reason to report one; taking it
    /// would let anyone push the next failover to an epoch of their choosing. The event
    /// is published once per node, incarnation and epoch, not once per retry.
    fn check_epoch_issued(
        &mut self,
        node: &NodeId,
        epoch: keel_core::Epoch,
        incarnation: u64,
    ) -> Result<(), Refusal> {
        if epoch <= self.state.epoch {
            return Ok(());
        }
        let issued = self.state.epoch;
        let message = format!(
            "{node} reported epoch {epoch}, but this monitor has issued epochs up to {issued} only; if its state was lost, start it with --epoch-floor {epoch}"
        );
        let key = (node.clone(), incarnation, epoch);
        if self.last_epoch_refused.as_ref() != Some(&key) {
            self.last_epoch_refused = Some(key);
            self.event(EventKind::EpochRefused, Some(node), message.clone());
        }
        Err(Refusal::new(
            StatusCode::CONFLICT,
            codes::EPOCH_NOT_ISSUED,
            message,
        ))
    }

    /// The refusals of `docs/failover.md`, decided before anything changes.
    fn check_heartbeat(&self, hb: &HeartbeatRequest) -> Result<(), Refusal> {
        let Some(rec) = self.state.nodes.get(&hb.node) else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                codes::UNKNOWN_NODE,
                format!("{} is not registered: POST /v1/register first", hb.node),
            ));
        };
        if rec.incarnation != hb.incarnation {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                codes::STALE_INCARNATION,
                format!(
                    "{} is registered with incarnation {}, not {}: register again",
                    hb.node, rec.incarnation, hb.incarnation
                ),
            ));
        }
        if let Some(seen) = self.soft.get(&hb.node).and_then(|s| s.epoch)
            && hb.epoch < seen
        {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                codes::STALE_EPOCH,
                format!(
                    "{} reported epoch {seen} before and now {}: epochs never go back",
                    hb.node, hb.epoch
                ),
            ));
        }
        if hb.role == Role::Primary
            && (self.role_of(&hb.node) != Role::Primary || hb.epoch != self.state.epoch)
        {
            let message = match &self.state.primary {
                Some(p) if *p != hb.node || self.role_of(p) != Role::Primary => format!(
                    "{} is not the primary of epoch {}; step down",
                    hb.node, self.state.epoch
                ),
                Some(_) => format!(
                    "{} is primary in epoch {}, not {}",
                    hb.node, self.state.epoch, hb.epoch
                ),
                None => format!("there is no primary in epoch {}", self.state.epoch),
            };
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                codes::STALE_EPOCH,
                message,
            ));
        }
        Ok(())
    }

    /// The primary's reports on its standbys: the two steps back into the sync set, and
    /// the loss of promotability when the primary no longer waits for a standby.
    fn standby_reports(&mut self, primary: &NodeId, reports: &[StandbyReport]) {
        for r in reports {
            if r.node == *primary {
                continue;
            }
            let Some(rec) = self.state.nodes.get(&r.node).cloned() else {
                continue;
            };
            self.soft(&r.node).acked_lsn = r.acked_lsn;
            let node = &r.node;
            if !rec.sync {
                if r.streaming {
                    self.set_flags(node, true, false);
                    self.event(
                        EventKind::BackInSync,
                        Some(node),
                        format!("{node} is streaming and caught up: in the sync set, promotable once {primary} waits for it"),
                    );
                }
            } else if !rec.promotable {
                if r.sync && r.streaming {
                    self.set_flags(node, true, true);
                    self.event(
                        EventKind::Promotable,
                        Some(node),
                        format!("{primary} waits for {node}'s acks: {node} is promotable"),
                    );
                }
            } else if !r.sync {
                // The primary does not wait for it (e.g. it restarted): safe only if it may
                // not be promoted.
                self.set_flags(node, true, false);
            }
        }
    }

    fn set_flags(&mut self, node: &NodeId, sync: bool, promotable: bool) {
        if let Some(rec) = self.state.nodes.get_mut(node)
            && (rec.sync, rec.promotable) != (sync, promotable)
        {
            rec.sync = sync;
            rec.promotable = promotable;
            self.dirty = true;
        }
    }

    pub(super) fn sync_drop(&mut self, req: SyncDropRequest) -> Pending {
        if !self.state.nodes.contains_key(&req.node) {
            return Pending::Refuse(
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    codes::UNKNOWN_NODE,
                    format!("{} is not registered: POST /v1/register first", req.node),
                ),
                None,
            );
        }
        if self.role_of(&req.node) != Role::Primary || req.epoch != self.state.epoch {
            return Pending::Refuse(
                Refusal::new(
                    StatusCode::CONFLICT,
                    codes::STALE_EPOCH,
                    format!(
                        "only the primary of epoch {} may drop a standby from the sync set; {} in epoch {} is not",
                        self.state.epoch, req.node, req.epoch
                    ),
                ),
                Some(req.node),
            );
        }
        let standby = req.standby;
        let in_set = self
            .state
            .nodes
            .get(&standby)
            .is_some_and(|r| r.sync || r.promotable);
        // Dropping a standby that is not in the set is answered like a drop: the primary
        // may stop waiting for it either way.
        if in_set && standby != req.node {
            self.set_flags(&standby, false, false);
            self.event(
                EventKind::DroppedFromSync,
                Some(&standby),
                format!(
                    "{} stopped waiting for {standby}: out of the sync set, not promotable",
                    req.node
                ),
            );
        }
        Pending::View {
            node: req.node,
            grant: false,
        }
    }

    pub(super) fn switchover(&mut self, to: Option<NodeId>, now: Instant) -> Pending {
        let refuse = |status, error, message: String| {
            Pending::Refuse(Refusal::new(status, error, message), None)
        };
        if let Some(f) = &self.state.failover {
            return refuse(
                StatusCode::CONFLICT,
                codes::FAILOVER_IN_PROGRESS,
                format!(
                    "a failover from {} to {} is already running ({:?})",
                    f.from, f.to, f.phase
                ),
            );
        }
        let Some(primary) = self.state.primary.clone() else {
            return refuse(
                StatusCode::CONFLICT,
                codes::NO_PRIMARY,
                "there is no primary to switch over from".to_owned(),
            );
        };
        if self.detector != Detector::Watching {
            return refuse(
                StatusCode::CONFLICT,
                codes::PRIMARY_SUSPECTED,
                format!("{primary} is suspected to have failed; an automatic failover decides"),
            );
        }
        let target = match to {
            Some(t) => {
                if !self.state.nodes.contains_key(&t) {
                    let mut r = Refusal::new(
                        StatusCode::CONFLICT,
                        codes::NO_PROMOTABLE_STANDBY,
                        format!("{t} is not a registered node"),
                    );
                    r.reasons.insert(t, "not registered".to_owned());
                    return Pending::Refuse(r, None);
                }
                if let Some(why) = self.why_not_promotable(&t, now) {
                    let mut r = Refusal::new(
                        StatusCode::CONFLICT,
                        codes::NO_PROMOTABLE_STANDBY,
                        format!("{t} cannot be promoted: {why}"),
                    );
                    r.reasons.insert(t, why);
                    return Pending::Refuse(r, None);
                }
                t
            }
            None => match self.best_candidate(now) {
                Some(t) => t,
                None => {
                    let mut r = Refusal::new(
                        StatusCode::CONFLICT,
                        codes::NO_PROMOTABLE_STANDBY,
                        "no standby can be promoted; see reasons",
                    );
                    r.reasons = self.reasons(now);
                    return Pending::Refuse(r, None);
                }
            },
        };
        let epoch = self.next_epoch();
        self.state.failover = Some(Failover {
            reason: FailoverReason::Switchover,
            from: primary.clone(),
            to: target.clone(),
            epoch,
            phase: FailoverPhase::Draining,
        });
        self.drain = Some(Drain {
            since: now,
            final_lsn: None,
        });
        self.dirty = true;
        self.event(
            EventKind::SwitchoverRequested,
            Some(&target),
            format!("switchover from {primary} to {target} requested"),
        );
        self.event(
            EventKind::FailoverStarted,
            Some(&primary),
            format!("{primary} drains: it stops taking writes and reports its final lsn"),
        );
        Pending::Cluster
    }
}

/// A node URL must be plain `http://host:port` with no path; a trailing `/` is dropped.
fn check_url(url: &str) -> Result<String, &'static str> {
    let trimmed = url.trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| "not a URL")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("only http:// and https:// URLs are supported");
    }
    match uri.authority() {
        Some(a) if a.port_u16().is_some() && !a.host().is_empty() => {}
        _ => return Err("the URL needs a host and a port, like http://127.0.0.1:8081"),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("the URL must not have a path or query");
    }
    Ok(trimmed.to_owned())
}

//! The monitor's decisions, as a pure state machine: inputs in, outputs out.
//!
//! [`Monitor::handle`] takes one [`Input`] and the current instant and returns what the
//! runtime must do, in order: [`Output::Persist`] the new state (durably, before any
//! [`Output::Reply`] after it is released), send [`Output::Probe`]s, publish
//! [`Output::Event`]s, and answer the request ([`Output::Reply`], exactly one per request
//! input). Nothing here reads a clock or does I/O, so tests drive every transition with
//! constructed instants and assert the outputs exactly.
//!
//! The code is split along the protocol's seams: this file holds the types and the
//! bookkeeping, `requests` the node and admin requests, `detector` failure
//! detection and the failover steps, `view` what is shown to nodes and operators;
//! [`groups`] runs several groups side by side, each with a machine of its own, and the
//! slot table (docs/shards.md).

mod detector;
pub mod groups;
mod requests;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http::StatusCode;
use keel_core::{Epoch, Lsn, NodeId, Role};
use tokio::time::Instant;

use crate::settings::Settings;
use crate::state::ClusterState;
use crate::wire::{
    ClusterView, EventKind, FailoverPhase, HeartbeatRequest, RegisterRequest, SyncDropRequest, View,
};

/// Something that happened to the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `POST /v1/register`.
    Register(RegisterRequest),
    /// `POST /v1/heartbeat`.
    Heartbeat(HeartbeatRequest),
    /// `POST /v1/sync/drop`.
    SyncDrop(SyncDropRequest),
    /// `POST /v1/failover` (already authorized): a switchover to `to`, or to the best
    /// promotable standby.
    Switchover {
        /// The target, if named.
        to: Option<NodeId>,
    },
    /// The answer to an [`Output::Probe`].
    ProbeResult {
        /// The probed node.
        node: NodeId,
        /// The probe's id, from the [`Output::Probe`].
        probe: u64,
        /// Whether `GET /health` answered within the timeout.
        ok: bool,
    },
    /// Time passed: check timeouts. The runtime sends one at least every half heartbeat
    /// interval and at [`Monitor::next_deadline`].
    Tick,
}

impl Input {
    /// Whether the input is a request that gets exactly one [`Output::Reply`].
    pub fn is_request(&self) -> bool {
        !matches!(self, Input::ProbeResult { .. } | Input::Tick)
    }
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Make this state durable before releasing any [`Output::Reply`] that follows it.
    Persist(ClusterState),
    /// Probe `GET {url}/health` with a timeout of one heartbeat interval, and feed the
    /// result back as [`Input::ProbeResult`].
    Probe {
        /// The node to probe.
        node: NodeId,
        /// Its base URL.
        url: String,
        /// The probe's id, to be returned in the result.
        probe: u64,
    },
    /// Publish an event (log it, stream it).
    Event(Event),
    /// Answer the request.
    Reply(Result<Answer, Refusal>),
}

/// A successful answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// To a node: what it must do now.
    View(View),
    /// To an operator (a switchover): the whole cluster.
    Cluster(ClusterView),
}

/// A refused request. It changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code (`crate::wire::codes`).
    pub error: &'static str,
    /// What was wrong, for a person.
    pub message: String,
    /// The node's view, when it is registered and the refusal is a `409` (boxed: a
    /// view is large and most refusals have none).
    pub view: Option<Box<View>>,
    /// Per standby, why it cannot be promoted (`no_promotable_standby`).
    pub reasons: BTreeMap<NodeId, String>,
    /// The monitor that leads the group, on `not_leader` (set by the runtime).
    pub leader: Option<String>,
}

impl Refusal {
    /// A refusal with no view, reasons or leader.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            view: None,
            reasons: BTreeMap::new(),
            leader: None,
        }
    }
}

/// One step, as the machine saw it. The runtime adds the wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Grows by one per event.
    pub id: u64,
    /// What happened.
    pub kind: EventKind,
    /// The node it is about.
    pub node: Option<NodeId>,
    /// The epoch at the time.
    pub epoch: Epoch,
    /// A sentence for a person.
    pub message: String,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Heartbeats accepted.
    pub heartbeats_received: u64,
    /// Heartbeats refused by the state machine (404, 409).
    pub heartbeats_refused: u64,
    /// Failovers and switchovers completed.
    pub failovers_total: u64,
}

/// What nodes told the monitor lately: rebuilt from heartbeats after a restart.
#[derive(Debug, Clone, Default)]
struct Soft {
    last_heartbeat: Option<Instant>,
    /// The node's own last lsn.
    lsn: Lsn,
    /// The last lsn the primary reported this node confirmed.
    acked_lsn: Lsn,
    /// The highest epoch the node reported (in this incarnation).
    epoch: Option<Epoch>,
    /// When the monitor last renewed this node's lease.
    last_grant: Option<Instant>,
    /// `heartbeat_missed` was published and no heartbeat came since.
    missed: bool,
    /// The last stale heartbeat published, so that a deposed primary that keeps
    /// heartbeating does not flood the event stream.
    last_stale: Option<(u64, Epoch, &'static str)>,
}

impl Soft {
    fn best_lsn(&self) -> Lsn {
        self.lsn.max(self.acked_lsn)
    }
}

/// The failure detector's view of the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detector {
    /// Heartbeats arrive (or the timeout has not run out yet).
    Watching,
    /// No heartbeat for `heartbeat_timeout`: lease not renewed, probing.
    Suspected {
        /// The probe in flight.
        probe: u64,
        /// How many probes failed so far.
        failed: u32,
    },
    /// Every probe failed; a failover is needed. Stays here while no standby can be
    /// promoted (retried at every tick).
    Confirmed {
        /// `no_promotable_standby` was published for this confirmation.
        blocked_reported: bool,
    },
}

/// A switchover waiting for the primary to drain.
#[derive(Debug, Clone, Copy)]
struct Drain {
    since: Instant,
    /// The primary's final lsn, once it reported `draining: true`.
    final_lsn: Option<Lsn>,
}

/// The monitor: cluster state, soft state and the failure detector.
#[derive(Debug)]
pub struct Monitor {
    settings: Settings,
    state: ClusterState,
    started: Instant,
    soft: HashMap<NodeId, Soft>,
    detector: Detector,
    /// When the current primary got its role: the detector gives it a full timeout.
    primary_since: Instant,
    /// The last time a probe of the primary answered.
    probe_ok_at: Option<Instant>,
    /// While a primary-failed failover runs: the end of every lease granted to the
    /// primaries it replaces, plus the drift margin.
    leases_end: Option<Instant>,
    drain: Option<Drain>,
    next_event: u64,
    next_probe: u64,
    stats: Stats,
    /// Set by every change of the cluster state during one `handle`.
    dirty: bool,
    out: Vec<Output>,
    /// The last epoch refused as never issued (node, incarnation, epoch): its event is
    /// published once, not at every retry.
    last_epoch_refused: Option<(NodeId, u64, Epoch)>,
}

/// The reply a request handler decided on; built after the version bump so that the
/// view it carries is the one that was persisted.
enum Pending {
    /// The node's view; with a lease renewal when `grant` and the node may have one.
    View { node: NodeId, grant: bool },
    /// The whole cluster (to an operator).
    Cluster,
    /// A refusal; when `view_of` names a registered node, its view rides along.
    Refuse(Refusal, Option<NodeId>),
}

impl Monitor {
    /// A monitor starting at `now` from the persisted state (`None`: a fresh cluster).
    /// The outputs are the `monitor_started` event.
    ///
    /// The monitor does not know when, before it stopped, it last renewed the primary's
    /// lease; every such grant happened before `now`, so it assumes one at `now`: a
    /// failover waits a full lease after the restart, never less than needed.
    pub fn new(
        settings: Settings,
        state: Option<ClusterState>,
        now: Instant,
    ) -> (Self, Vec<Output>) {
        let state = state.unwrap_or_default();
        let mut soft: HashMap<NodeId, Soft> = HashMap::new();
        if let Some(p) = &state.primary {
            soft.entry(p.clone()).or_default().last_grant = Some(now);
        }
        let leases_end = state
            .failover
            .as_ref()
            .filter(|f| f.phase == FailoverPhase::WaitingForLeases)
            .map(|_| now + settings.lease + settings.drift);
        let drain = state
            .failover
            .as_ref()
            .filter(|f| f.phase == FailoverPhase::Draining)
            .map(|_| Drain {
                since: now,
                final_lsn: None,
            });
        let mut monitor = Self {
            settings,
            state,
            started: now,
            soft,
            detector: Detector::Watching,
            primary_since: now,
            probe_ok_at: None,
            leases_end,
            drain,
            next_event: 1,
            next_probe: 1,
            stats: Stats::default(),
            dirty: false,
            out: Vec::new(),
            last_epoch_refused: None,
        };
        let message = match &monitor.state.primary {
            Some(p) => format!(
                "monitor started at version {} in epoch {}, primary {p}",
                monitor.state.version, monitor.state.epoch
            ),
            None => "monitor started with no primary".to_owned(),
        };
        monitor.event(EventKind::MonitorStarted, None, message);
        let out = std::mem::take(&mut monitor.out);
        (monitor, out)
    }

    /// Raises the epoch to `floor` when it is lower, as if the monitor had issued it:
    /// for a monitor whose state was lost while its nodes kept theirs (`keel monitor
    /// --epoch-floor`). Nodes then report epochs it accepts, and the next failover takes
    /// `floor + 1`.
    pub fn raise_epoch_floor(&mut self, floor: Epoch) -> Vec<Output> {
        self.out.clear();
        if floor > self.state.epoch {
            let was = self.state.epoch;
            self.state.epoch = floor;
            self.state.version += 1;
            self.out.push(Output::Persist(self.state.clone()));
            self.event(
                EventKind::EpochRaised,
                None,
                format!("epoch raised from {was} to {floor} (--epoch-floor)"),
            );
        }
        std::mem::take(&mut self.out)
    }

    /// Handles one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        self.out.clear();
        self.dirty = false;
        let pending = match input {
            Input::Register(req) => Some(self.register(req, now)),
            Input::Heartbeat(req) => Some(self.heartbeat(req, now)),
            Input::SyncDrop(req) => Some(self.sync_drop(req)),
            Input::Switchover { to } => Some(self.switchover(to, now)),
            Input::ProbeResult { node, probe, ok } => {
                self.probe_result(&node, probe, ok, now);
                None
            }
            Input::Tick => {
                self.tick(now);
                None
            }
        };
        if self.dirty {
            self.state.version += 1;
            // First: no event or answer may announce a change a crash could still undo.
            self.out.insert(0, Output::Persist(self.state.clone()));
        }
        if let Some(pending) = pending {
            let reply = match pending {
                Pending::View { node, grant } => Ok(Answer::View(self.view(&node, grant, now))),
                Pending::Cluster => Ok(Answer::Cluster(self.cluster_view(now))),
                Pending::Refuse(mut refusal, view_of) => {
                    if let Some(node) = view_of
                        && self.state.nodes.contains_key(&node)
                    {
                        refusal.view = Some(Box::new(self.view(&node, false, now)));
                    }
                    Err(refusal)
                }
            };
            self.out.push(Output::Reply(reply));
        }
        std::mem::take(&mut self.out)
    }

    /// The durable state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next instant at which a [`Input::Tick`] would change something (a suspicion, the
    /// end of a lease wait, a drain timeout), so that the runtime can wake up exactly then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = Vec::new();
        if self.state.primary.is_some() && self.detector == Detector::Watching {
            deadlines.push(self.primary_seen() + self.settings.heartbeat_timeout);
        }
        if self.phase() == Some(FailoverPhase::WaitingForLeases) {
            deadlines.extend(self.leases_end);
        }
        if let Some(d) = &self.drain {
            deadlines.push(d.since + self.settings.drain_timeout);
        }
        deadlines.into_iter().min()
    }

    // ---- bookkeeping shared by the handlers ----

    fn event(&mut self, kind: EventKind, node: Option<&NodeId>, message: impl Into<String>) {
        let id = self.next_event;
        self.next_event += 1;
        self.out.push(Output::Event(Event {
            id,
            kind,
            node: node.cloned(),
            epoch: self.state.epoch,
            message: message.into(),
        }));
    }

    fn soft(&mut self, node: &NodeId) -> &mut Soft {
        self.soft.entry(node.clone()).or_default()
    }

    fn phase(&self) -> Option<FailoverPhase> {
        self.state.failover.as_ref().map(|f| f.phase)
    }

    /// The role the monitor assigns: the recorded primary is primary, except while the
    /// monitor still waits out the old primary's leases before handing it over.
    fn role_of(&self, node: &NodeId) -> Role {
        if self.state.primary.as_ref() == Some(node)
            && self.phase() != Some(FailoverPhase::WaitingForLeases)
        {
            Role::Primary
        } else {
            Role::Standby
        }
    }

    /// The last sign of life of the primary, for the detector: its last heartbeat, its last
    /// answered probe, when it became primary, or when the monitor started (the grace
    /// period: a restarted monitor gives everyone a full timeout to reach it).
    fn primary_seen(&self) -> Instant {
        let mut seen = self.started.max(self.primary_since);
        if let Some(p) = &self.state.primary
            && let Some(t) = self.soft.get(p).and_then(|s| s.last_heartbeat)
        {
            seen = seen.max(t);
        }
        if let Some(t) = self.probe_ok_at {
            seen = seen.max(t);
        }
        seen
    }

    /// Whether a node heartbeated within the timeout.
    fn healthy(&self, node: &NodeId, now: Instant) -> bool {
        self.soft
            .get(node)
            .and_then(|s| s.last_heartbeat)
            .is_some_and(|t| now.saturating_duration_since(t) < self.settings.heartbeat_timeout)
    }

    /// The epoch for a new primary: above the cluster's and above any a node reported
    /// (a node may know a newer epoch than a monitor that lost its state).
    fn next_epoch(&self) -> Epoch {
        let reported = self.soft.values().filter_map(|s| s.epoch).max();
        let base = reported.map_or(self.state.epoch, |e| e.max(self.state.epoch));
        // Requests with epochs near the top are refused at the door (server.rs), so this
        // cannot wrap; saturating keeps it so even if that check were lost.
        Epoch(base.0.saturating_add(1))
    }

    /// Makes `node` the primary at a new epoch (first node, or a restarted primary).
    fn elect(&mut self, node: &NodeId, now: Instant) {
        let epoch = self.next_epoch();
        self.state.epoch = epoch;
        self.state.primary = Some(node.clone());
        if let Some(rec) = self.state.nodes.get_mut(node) {
            rec.sync = false;
            rec.promotable = false;
            rec.deposed = false;
        }
        self.primary_since = now;
        self.probe_ok_at = None;
        self.detector = Detector::Watching;
        self.dirty = true;
        self.event(
            EventKind::PrimaryElected,
            Some(node),
            format!("{node} is primary in epoch {epoch}"),
        );
    }

    /// Why a standby cannot be promoted now, or `None` when it can.
    fn why_not_promotable(&self, node: &NodeId, now: Instant) -> Option<String> {
        let rec = self.state.nodes.get(node)?;
        if self.state.primary.as_ref() == Some(node) {
            return Some("it is the primary".to_owned());
        }
        if !rec.sync {
            return Some(
                "not in the sync set: it has not caught up with the primary since it joined or was dropped"
                    .to_owned(),
            );
        }
        if !rec.promotable {
            return Some(
                "in the sync set, but the primary has not yet reported waiting for its acks"
                    .to_owned(),
            );
        }
        if !self.healthy(node, now) {
            let ago = self
                .soft
                .get(node)
                .and_then(|s| s.last_heartbeat)
                .map(|t| now.saturating_duration_since(t));
            return Some(match ago {
                Some(d) => format!("no heartbeat for {} ms", d.as_millis()),
                None => "no heartbeat since the monitor started".to_owned(),
            });
        }
        None
    }

    /// The promotable standby with the highest lsn (ties: the lowest id), if any.
    fn best_candidate(&self, now: Instant) -> Option<NodeId> {
        self.state
            .nodes
            .keys()
            .filter(|n| self.why_not_promotable(n, now).is_none())
            .max_by(|a, b| {
                let la = self.soft.get(*a).map(Soft::best_lsn).unwrap_or_default();
                let lb = self.soft.get(*b).map(Soft::best_lsn).unwrap_or_default();
                la.cmp(&lb).then_with(|| b.cmp(a))
            })
            .cloned()
    }

    /// Every standby's reason not to be promoted.
    fn reasons(&self, now: Instant) -> BTreeMap<NodeId, String> {
        self.state
            .nodes
            .keys()
            .filter(|n| self.state.primary.as_ref() != Some(*n))
            .filter_map(|n| self.why_not_promotable(n, now).map(|r| (n.clone(), r)))
            .collect()
    }
}

/// `d` in whole milliseconds, for messages.
fn ms(d: Duration) -> u128 {
    d.as_millis()
}

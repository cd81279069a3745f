//! The JSON bodies of the node ↔ monitor protocol (docs/failover.md), with serde.
//!
//! Both sides use these types: the monitor to parse requests and write answers, a data
//! node to write requests and parse answers. The module depends on serde and keel-core
//! only, so that a node can use it without pulling the monitor's runtime into its logic.
//! Field names are exactly those of docs/failover.md; change both together.

use keel_core::slots::{GroupId, SlotTable};
use keel_core::{Epoch, Lsn, NodeId, Role};
use serde::{Deserialize, Serialize};

/// `POST /v1/register`: a node announces itself when it starts (and again after a
/// `404 unknown_node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The node's id.
    pub node: NodeId,
    /// The base URL other nodes and the monitor reach it on (`http://127.0.0.1:8081`).
    pub url: String,
    /// A random number picked at every process start: a new one means a restart.
    pub incarnation: u64,
    /// The highest epoch the node has seen.
    pub epoch: Epoch,
    /// The last log position the node holds.
    pub lsn: Lsn,
    /// The group it joins, under a monitor that runs several (docs/shards.md); `None`:
    /// the monitor's first group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
}

/// `POST /v1/heartbeat`, every `heartbeat_interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The node's id.
    pub node: NodeId,
    /// The incarnation it registered with.
    pub incarnation: u64,
    /// The role it is acting in right now.
    pub role: Role,
    /// The highest epoch it has seen (for a primary: the epoch it writes in).
    pub epoch: Epoch,
    /// The last log position it holds.
    pub lsn: Lsn,
    /// Only from a primary: one report per standby it replicates to.
    #[serde(default)]
    pub standbys: Vec<StandbyReport>,
    /// Only from a primary: it has stopped taking writes for a switchover, and `lsn` is
    /// its final position.
    #[serde(default)]
    pub draining: bool,
    /// The version of the slot table the node holds (0: none); the answer carries the
    /// table when it is older than the monitor's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slots_version: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a primary says about one of its standbys in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyReport {
    /// The standby's id.
    pub node: NodeId,
    /// The stream to it is up and caught up.
    pub streaming: bool,
    /// The last log position it confirmed durable.
    pub acked_lsn: Lsn,
    /// The primary waits for its acks before acknowledging a write.
    pub sync: bool,
}

/// `POST /v1/sync/drop`: the primary asks to stop waiting for a standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDropRequest {
    /// The primary's id.
    pub node: NodeId,
    /// The epoch it writes in.
    pub epoch: Epoch,
    /// The standby to drop from the sync set.
    pub standby: NodeId,
}

/// `POST /v1/failover` (admin): a manual switchover, to `to` or to the best promotable
/// standby.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// The standby to promote; `None` for the best promotable one.
    #[serde(default)]
    pub to: Option<NodeId>,
}

/// `POST /v1/slots/move` (docs/shards.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The slots, as a person writes them (`0-99,200`); all one group's.
    pub slots: String,
    /// The group they go to.
    pub to: GroupId,
}

/// The monitor's answer to a register, heartbeat or sync drop (`200`), and the `view`
/// field of a `409`: what this node must do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The cluster-state version; every change bumps it.
    pub version: u64,
    /// The current epoch.
    pub epoch: Epoch,
    /// What the node must be now.
    pub role: Role,
    /// The primary, when there is one.
    pub primary: Option<PrimaryRef>,
    /// For the primary: whom to replicate to, and whether each is in the sync set.
    /// Empty for a standby.
    #[serde(default)]
    pub standbys: Vec<StandbyView>,
    /// Present when the monitor renews the node's lease with this answer; the lease runs
    /// from when the node *sent* the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// The failover in progress, if any.
    pub failover: Option<Failover>,
    /// The monitor's settings, which the nodes follow.
    pub timing: Timing,
    /// The slot table's version, under a monitor that runs groups (0: no table).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slots_version: u64,
    /// The slot table, when the node's is older than `slots_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotTable>,
    /// The node's group, under a monitor that runs several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
}

/// A node and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRef {
    /// The node's id.
    pub node: NodeId,
    /// Its base URL.
    pub url: String,
}

/// A standby as the primary must treat it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyView {
    /// The standby's id.
    pub node: NodeId,
    /// Its base URL.
    pub url: String,
    /// In the sync set: the primary must wait for its acks (once it reports `sync: true`
    /// for it).
    pub sync: bool,
}

/// A failover in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// Why it started.
    pub reason: FailoverReason,
    /// The primary being replaced.
    pub from: NodeId,
    /// The standby being promoted.
    pub to: NodeId,
    /// The epoch the new primary writes in (not yet bumped while `draining`: then it is
    /// the epoch the promotion will use).
    pub epoch: Epoch,
    /// How far it got.
    pub phase: FailoverPhase,
}

/// Why a failover started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverReason {
    /// The primary stopped heartbeating and did not answer probes.
    PrimaryFailed,
    /// An operator asked for it (`POST /v1/failover`).
    Switchover,
}

/// The steps of a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPhase {
    /// Switchover: the primary stops taking writes and reports its final lsn.
    Draining,
    /// The monitor waits out the lease it last granted the old primary.
    WaitingForLeases,
    /// The candidate is told it is primary; done when it heartbeats as primary at the
    /// new epoch.
    Promoting,
}

/// The monitor's timing settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// How often nodes heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long without a heartbeat before the primary is suspected.
    pub heartbeat_timeout_ms: u64,
    /// How long a lease renewal lasts.
    pub lease_ms: u64,
    /// Margin added to every lease wait for clock rate differences.
    pub drift_ms: u64,
}

/// The body of a `4xx` answer of the monitor: keel's usual `{"error", "message"}`, with
/// the node's `view` on a `409` so that it can act on the refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalBody {
    /// The stable code (see [`codes`]).
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
    /// The node's view, on `409 stale_epoch` / `409 stale_incarnation` when it is
    /// registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<View>,
    /// On `421 not_leader`: the URL of the monitor that leads, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The `error` codes of the monitor's refusals.
pub mod codes {
    /// `400`: a malformed register body, or an invalid id or URL.
    pub const BAD_REGISTER: &str = "bad_register";
    /// `400`: a malformed heartbeat.
    pub const BAD_HEARTBEAT: &str = "bad_heartbeat";
    /// `400`: a malformed sync-drop or failover request.
    pub const BAD_REQUEST: &str = "bad_request";
    /// `404`: the node never registered: register first.
    pub const UNKNOWN_NODE: &str = "unknown_node";
    /// `409`: another live node holds this id with another URL.
    pub const URL_CONFLICT: &str = "url_conflict";
    /// `409`: an incarnation other than the registered one.
    pub const STALE_INCARNATION: &str = "stale_incarnation";
    /// `409`: an epoch older than the node already reported, or a primary claim in the
    /// wrong epoch, or a sync drop from a node that is not the current primary.
    pub const STALE_EPOCH: &str = "stale_epoch";
    /// `409`: a switchover target (or any standby) that cannot be promoted.
    pub const NO_PROMOTABLE_STANDBY: &str = "no_promotable_standby";
    /// `409`: a failover is already running.
    pub const FAILOVER_IN_PROGRESS: &str = "failover_in_progress";
    /// `409`: a switchover while the primary is suspected (an automatic failover decides).
    pub const PRIMARY_SUSPECTED: &str = "primary_suspected";
    /// `409`: a switchover needs a primary.
    pub const NO_PRIMARY: &str = "no_primary";
    /// `409`: an epoch above the highest this monitor ever issued. Epochs are the
    /// monitor's; a node cannot bring its own.
    pub const EPOCH_NOT_ISSUED: &str = "epoch_not_issued";
    /// `421`: this monitor is not the leader of its group (`leader` names the one that
    /// is, when known); `503` when none is.
    pub const NOT_LEADER: &str = "not_leader";
    /// `404`: a registration in a group this monitor does not run.
    pub const UNKNOWN_GROUP: &str = "unknown_group";
    /// `409`: a registration in another group than the node's.
    pub const WRONG_GROUP: &str = "wrong_group";
    /// `400`: a switchover that names no node, under a monitor of several groups.
    pub const GROUP_NEEDED: &str = "group_needed";
}

/// `GET /v1/cluster`: the whole picture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The cluster-state version.
    pub version: u64,
    /// The current epoch.
    pub epoch: Epoch,
    /// The primary, when there is one.
    pub primary: Option<PrimaryRef>,
    /// Whether a failover is running (`failover` is not null).
    pub failover_in_progress: bool,
    /// The failover in progress, if any.
    pub failover: Option<Failover>,
    /// Every registered node, sorted by id.
    pub nodes: Vec<NodeStatus>,
    /// The group of monitors, when the monitor that answered is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitors: Option<GroupView>,
    /// The group this view is of, when the monitor runs several (docs/shards.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// Every group the monitor runs, when it runs several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupId>,
    /// The slot table's version, when the monitor runs several groups.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slots_version: u64,
}

/// A group of monitors, as one of them sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The monitor that answered (`m2`).
    pub answered_by: String,
    /// The monitor that leads (`m1`), when one is known.
    pub leader: Option<String>,
    /// The leader's URL, when one is known.
    pub leader_url: Option<String>,
    /// The Raft term.
    pub term: u64,
    /// The index of the last entry applied to the cluster state here.
    pub last_applied: Option<u64>,
    /// Every monitor of the group, by id, with its URL.
    pub members: Vec<MonitorMember>,
}

/// One monitor of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorMember {
    /// Its id (`m3`).
    pub id: String,
    /// Its URL.
    pub url: String,
}

/// One node in `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node: NodeId,
    /// Its base URL.
    pub url: String,
    /// Its assigned role.
    pub role: Role,
    /// In the sync set.
    pub sync: bool,
    /// May be promoted.
    pub promotable: bool,
    /// For a standby that may not be promoted: why not. `None` otherwise.
    pub why_not_promotable: Option<String>,
    /// The last lsn it reported (or the primary reported for it, when higher).
    pub lsn: Lsn,
    /// The last epoch it reported.
    pub epoch: Epoch,
    /// It heartbeated within `heartbeat_timeout`.
    pub healthy: bool,
    /// Milliseconds since its last heartbeat; `None` when none arrived since the monitor
    /// started.
    pub last_heartbeat_ms_ago: Option<u64>,
}

/// One step, on `GET /v1/events` (server-sent events, one JSON object per `data:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Grows by one per event, across the monitor's life (not across restarts).
    pub id: u64,
    /// Wall-clock time of the event, RFC 3339 UTC with milliseconds; for people, never
    /// compared with another clock.
    pub at: String,
    /// What happened.
    pub kind: EventKind,
    /// The node it is about, if any.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// The group it is about, when the monitor runs several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    /// The epoch at the time of the event.
    pub epoch: Epoch,
    /// A sentence for a person.
    pub message: String,
}

/// The kinds of [`EventRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The monitor (re)started.
    MonitorStarted,
    /// A node registered (first time, or with a new incarnation).
    Registered,
    /// The first node became primary, or the recorded primary started a new epoch.
    PrimaryElected,
    /// A node's heartbeats stopped for `heartbeat_timeout`.
    HeartbeatMissed,
    /// The primary is suspected: its lease is no longer renewed, probes start.
    Suspected,
    /// A probe of the suspected primary failed.
    ProbeFailed,
    /// A probe of the suspected primary answered: suspicion cleared.
    ProbeOk,
    /// A failover started (epoch bumped, or draining for a switchover).
    FailoverStarted,
    /// The monitor waits out the old primary's lease.
    WaitingForLeases,
    /// The candidate was told to promote.
    Promoted,
    /// The candidate heartbeated as primary in the new epoch.
    FailoverDone,
    /// A switchover was abandoned (drain timeout, target no longer promotable, primary
    /// restarted); the primary stays.
    FailoverAbandoned,
    /// No standby can be promoted; the failover is blocked.
    NoPromotableStandby,
    /// A standby left the sync set.
    DroppedFromSync,
    /// A standby is back in the sync set (step 1 of 2).
    BackInSync,
    /// A standby became promotable (step 2 of 2).
    Promotable,
    /// The old primary came back as a standby.
    Rejoined,
    /// An operator asked for a switchover.
    SwitchoverRequested,
    /// A heartbeat was refused as stale.
    StaleHeartbeat,
    /// A node reported an epoch this monitor never issued; it was refused.
    EpochRefused,
    /// The operator raised the epoch (`--epoch-floor`).
    EpochRaised,
    /// Slots were frozen at their owner, on their way to another group (docs/shards.md).
    SlotsMoving,
    /// A move is done: the slots are the target group's, in a new table version.
    SlotsMoved,
    /// A move was called off: the slots stay their owner's.
    MoveCancelled,
}

impl EventKind {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MonitorStarted => "monitor_started",
            EventKind::Registered => "registered",
            EventKind::PrimaryElected => "primary_elected",
            EventKind::HeartbeatMissed => "heartbeat_missed",
            EventKind::Suspected => "suspected",
            EventKind::ProbeFailed => "probe_failed",
            EventKind::ProbeOk => "probe_ok",
            EventKind::FailoverStarted => "failover_started",
            EventKind::WaitingForLeases => "waiting_for_leases",
            EventKind::Promoted => "promoted",
            EventKind::FailoverDone => "failover_done",
            EventKind::FailoverAbandoned => "failover_abandoned",
            EventKind::NoPromotableStandby => "no_promotable_standby",
            EventKind::DroppedFromSync => "dropped_from_sync",
            EventKind::BackInSync => "back_in_sync",
            EventKind::Promotable => "promotable",
            EventKind::Rejoined => "rejoined",
            EventKind::SwitchoverRequested => "switchover_requested",
            EventKind::StaleHeartbeat => "stale_heartbeat",
            EventKind::EpochRefused => "epoch_refused",
            EventKind::EpochRaised => "epoch_raised",
            EventKind::SlotsMoving => "slots_moving",
            EventKind::SlotsMoved => "slots_moved",
            EventKind::MoveCancelled => "move_cancelled",
        }
    }
}

/// `GET /health` of the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorHealth {
    /// Always `"ok"` when the monitor answers.
    pub status: String,
    /// The cluster-state version.
    pub version: u64,
    /// The current epoch.
    pub epoch: Epoch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_parses_the_documented_example() {
        let hb: HeartbeatRequest = serde_json::from_str(
            r#"{"node": "app1", "incarnation": 8402113, "role": "primary", "epoch": 3, "lsn": 1200,
                "standbys": [{"node": "app2", "streaming": true, "acked_lsn": 1200, "sync": true}],
                "draining": false}"#,
        )
        .expect("documented heartbeat parses");
        assert_eq!(hb.role, Role::Primary);
        assert_eq!(hb.standbys[0].acked_lsn, Lsn(1200));
    }

    #[test]
    fn standby_heartbeat_may_omit_standbys_and_draining() {
        let hb: HeartbeatRequest = serde_json::from_str(
            r#"{"node": "app2", "incarnation": 1, "role": "standby", "epoch": 3, "lsn": 7}"#,
        )
        .expect("short heartbeat parses");
        assert!(hb.standbys.is_empty());
        assert!(!hb.draining);
    }

    #[test]
    fn view_round_trips_the_documented_example() {
        let text = r#"{"version": 17, "epoch": 3, "role": "primary",
            "primary": {"node": "app1", "url": "http://127.0.0.1:8081"},
            "standbys": [{"node": "app2", "url": "http://127.0.0.1:8082", "sync": true}],
            "lease_ms": 500, "failover": null,
            "timing": {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 300, "lease_ms": 500, "drift_ms": 100}}"#;
        let view: View = serde_json::from_str(text).expect("documented view parses");
        let again: View = serde_json::from_str(&serde_json::to_string(&view).expect("serialize"))
            .expect("round trip");
        assert_eq!(view, again);
        assert_eq!(view.lease_ms, Some(500));
    }

    #[test]
    fn failover_phases_use_the_documented_names() {
        let f = Failover {
            reason: FailoverReason::PrimaryFailed,
            from: NodeId::new("app1").expect("id"),
            to: NodeId::new("app2").expect("id"),
            epoch: Epoch(4),
            phase: FailoverPhase::WaitingForLeases,
        };
        let v = serde_json::to_value(&f).expect("serialize");
        assert_eq!(v["reason"], "primary_failed");
        assert_eq!(v["phase"], "waiting_for_leases");
    }

    #[test]
    fn event_kind_names_match_serde() {
        for kind in [EventKind::MonitorStarted, EventKind::SwitchoverRequested] {
            assert_eq!(
                serde_json::to_value(kind).expect("serialize"),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
    }
}

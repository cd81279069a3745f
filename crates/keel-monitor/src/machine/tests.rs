//! Every transition of docs/failover.md, with constructed instants: no sleeps, no clock.

use std::time::Duration;

use http::StatusCode;
use keel_core::{Epoch, Lsn, NodeId, Role};
use tokio::time::Instant;

use super::*;
use crate::state::ClusterState;
use crate::wire::{
    EventKind, FailoverPhase, FailoverReason, HeartbeatRequest, RegisterRequest, StandbyReport,
    SyncDropRequest, View, codes,
};

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn url(n: &str) -> String {
    let port = match n {
        "app1" => 8081,
        "app2" => 8082,
        "app3" => 8083,
        _ => 8089,
    };
    format!("http://127.0.0.1:{port}")
}

fn incarnation(n: &str) -> u64 {
    match n {
        "app1" => 11,
        "app2" => 22,
        "app3" => 33,
        _ => 99,
    }
}

fn report(n: &str, streaming: bool, acked: u64, sync: bool) -> StandbyReport {
    StandbyReport {
        node: id(n),
        streaming,
        acked_lsn: Lsn(acked),
        sync,
    }
}

/// A monitor with its start instant, driven in milliseconds since that start.
struct Harness {
    m: Monitor,
    t0: Instant,
    started: Vec<Output>,
}

impl Harness {
    fn new() -> Self {
        Self::with(Settings::default(), None)
    }

    fn with(settings: Settings, state: Option<ClusterState>) -> Self {
        let t0 = Instant::now();
        let (m, started) = Monitor::new(settings, state, t0);
        Self { m, t0, started }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn run(&mut self, input: Input, ms: u64) -> Vec<Output> {
        let now = self.at(ms);
        self.m.handle(input, now)
    }

    fn register(&mut self, n: &str, epoch: u64, lsn: u64, ms: u64) -> Vec<Output> {
        self.register_as(n, incarnation(n), epoch, lsn, ms)
    }

    fn register_as(&mut self, n: &str, inc: u64, epoch: u64, lsn: u64, ms: u64) -> Vec<Output> {
        self.run(
            Input::Register(RegisterRequest {
                group: None,
                node: id(n),
                url: url(n),
                incarnation: inc,
                epoch: Epoch(epoch),
                lsn: Lsn(lsn),
            }),
            ms,
        )
    }

    fn heartbeat(&mut self, n: &str, role: Role, epoch: u64, lsn: u64, ms: u64) -> Vec<Output> {
        self.heartbeat_with(n, role, epoch, lsn, Vec::new(), false, ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn heartbeat_with(
        &mut self,
        n: &str,
        role: Role,
        epoch: u64,
        lsn: u64,
        standbys: Vec<StandbyReport>,
        draining: bool,
        ms: u64,
    ) -> Vec<Output> {
        self.run(
            Input::Heartbeat(HeartbeatRequest {
                slots_version: 0,
                node: id(n),
                incarnation: incarnation(n),
                role,
                epoch: Epoch(epoch),
                lsn: Lsn(lsn),
                standbys,
                draining,
            }),
            ms,
        )
    }

    fn tick(&mut self, ms: u64) -> Vec<Output> {
        self.run(Input::Tick, ms)
    }

    /// app1 primary in epoch 1, app2 a promotable standby (both steps of re-entry done),
    /// everything at t = 0.
    fn pair() -> Self {
        let mut h = Self::new();
        h.register("app1", 0, 0, 0);
        h.register("app2", 0, 0, 0);
        h.heartbeat_with(
            "app1",
            Role::Primary,
            1,
            10,
            vec![report("app2", true, 10, false)],
            false,
            0,
        );
        h.heartbeat_with(
            "app1",
            Role::Primary,
            1,
            10,
            vec![report("app2", true, 10, true)],
            false,
            0,
        );
        h.heartbeat("app2", Role::Standby, 1, 10, 0);
        assert!(h.m.state().nodes[&id("app2")].promotable);
        h
    }

    fn record(&self, n: &str) -> &crate::state::NodeRecord {
        &self.m.state().nodes[&id(n)]
    }
}

fn view(out: &[Output]) -> View {
    match out.last() {
        Some(Output::Reply(Ok(Answer::View(v)))) => v.clone(),
        other => panic!("expected a view as the last output, got {other:?}"),
    }
}

fn refusal(out: &[Output]) -> Refusal {
    match out.last() {
        Some(Output::Reply(Err(r))) => r.clone(),
        other => panic!("expected a refusal as the last output, got {other:?}"),
    }
}

fn kinds(out: &[Output]) -> Vec<EventKind> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.kind),
            _ => None,
        })
        .collect()
}

fn persisted(out: &[Output]) -> Option<ClusterState> {
    out.iter().find_map(|o| match o {
        Output::Persist(s) => Some(s.clone()),
        _ => None,
    })
}

fn probes(out: &[Output]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Probe { probe, .. } => Some(*probe),
            _ => None,
        })
        .collect()
}

/// Drives the primary of a pair to a confirmed failure: silent from t = 0, suspected at
/// 300 ms, both probes failed by `ms`.
fn fail_primary(h: &mut Harness, ms: u64) -> Vec<Output> {
    let out = h.tick(300);
    let p1 = probes(&out)[0];
    let out = h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p1,
            ok: false,
        },
        ms - 50,
    );
    let p2 = probes(&out)[0];
    h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p2,
            ok: false,
        },
        ms,
    )
}

// ---- registration ----

#[test]
fn an_epoch_the_monitor_never_issued_is_refused_once_with_an_event() {
    let mut h = Harness::new();
    let before = h.m.state().clone();
    let out = h.register("app1", 1 << 40, 0, 0);
    let r = refusal(&out);
    assert_eq!(
        (r.status, r.error),
        (StatusCode::CONFLICT, codes::EPOCH_NOT_ISSUED)
    );
    assert!(
        r.message.contains("--epoch-floor 1099511627776"),
        "{}",
        r.message
    );
    assert_eq!(kinds(&out), [EventKind::EpochRefused]);
    assert_eq!(persisted(&out), None);
    assert_eq!(
        h.m.state(),
        &before,
        "a refused registration changes nothing"
    );
    // Retries of the same claim are refused without another event.
    let out = h.register("app1", 1 << 40, 0, 10);
    assert_eq!(refusal(&out).error, codes::EPOCH_NOT_ISSUED);
    assert!(kinds(&out).is_empty());

    // A member's heartbeat from beyond the monitor's epoch is refused the same way, and
    // the next failover still takes the monitor's own next epoch.
    let mut h = Harness::pair();
    let out = h.heartbeat("app2", Role::Standby, 1 << 62, 10, 10);
    assert_eq!(refusal(&out).error, codes::EPOCH_NOT_ISSUED);
    assert_eq!(kinds(&out), [EventKind::EpochRefused]);
    assert_eq!(h.m.state().epoch, Epoch(1));
}

#[test]
fn an_epoch_floor_lets_nodes_of_a_lost_monitor_back_above_their_epoch() {
    let mut h = Harness::new();
    let out = h.m.raise_epoch_floor(Epoch(6));
    assert_eq!(persisted(&out).map(|s| s.epoch), Some(Epoch(6)));
    assert_eq!(kinds(&out), [EventKind::EpochRaised]);
    // Raising it to where it already is does nothing.
    assert!(h.m.raise_epoch_floor(Epoch(6)).is_empty());
    let out = h.register("app1", 6, 0, 0);
    let v = view(&out);
    assert_eq!(v.role, Role::Primary);
    assert_eq!(v.epoch, Epoch(7));
    assert_eq!(v.primary.map(|p| p.node), Some(id("app1")));
    assert_eq!(
        kinds(&out),
        [EventKind::Registered, EventKind::PrimaryElected]
    );
    assert_eq!(persisted(&out).map(|s| s.epoch), Some(Epoch(7)));
    // Registration does not grant a lease: the first heartbeat does.
    assert_eq!(v.lease_ms, None);
}

#[test]
fn later_registration_becomes_standby_not_in_sync() {
    let mut h = Harness::new();
    h.register("app1", 0, 0, 0);
    let out = h.register("app2", 0, 0, 0);
    let v = view(&out);
    assert_eq!(v.role, Role::Standby);
    assert_eq!(v.epoch, Epoch(1));
    assert!(v.standbys.is_empty());
    assert!(!h.record("app2").sync);
    assert!(!h.record("app2").promotable);
    // The primary's view now lists it, not in the sync set.
    let v = view(&h.heartbeat("app1", Role::Primary, 1, 0, 10));
    assert_eq!(v.standbys.len(), 1);
    assert_eq!(v.standbys[0].node, id("app2"));
    assert!(!v.standbys[0].sync);
}

#[test]
fn restarted_primary_stays_primary_in_a_new_epoch() {
    let mut h = Harness::pair();
    let out = h.register_as("app1", 12, 1, 10, 50);
    let v = view(&out);
    assert_eq!(v.role, Role::Primary);
    assert_eq!(v.epoch, Epoch(2));
    assert!(kinds(&out).contains(&EventKind::PrimaryElected));
    // Its old incarnation is now stale.
    let out = h.heartbeat("app1", Role::Primary, 2, 10, 60);
    assert_eq!(refusal(&out).error, codes::STALE_INCARNATION);
}

#[test]
fn restarted_standby_leaves_the_sync_set() {
    let mut h = Harness::pair();
    let out = h.register_as("app2", 23, 1, 10, 50);
    assert_eq!(view(&out).role, Role::Standby);
    assert!(!h.record("app2").sync);
    assert!(!h.record("app2").promotable);
    assert!(
        persisted(&out).is_some(),
        "the drop is recorded before the answer"
    );
}

#[test]
fn repeated_registration_changes_nothing() {
    let mut h = Harness::pair();
    let before = h.m.state().clone();
    let out = h.register("app2", 1, 10, 50);
    assert_eq!(persisted(&out), None);
    assert_eq!(h.m.state(), &before);
}

#[test]
fn same_id_with_another_url_is_refused_while_the_first_is_alive() {
    let mut h = Harness::pair();
    let mut req = RegisterRequest {
        group: None,
        node: id("app2"),
        url: "http://127.0.0.1:9999".to_owned(),
        incarnation: 77,
        epoch: Epoch(0),
        lsn: Lsn(0),
    };
    let out = h.run(Input::Register(req.clone()), 100);
    let r = refusal(&out);
    assert_eq!(
        (r.status, r.error),
        (StatusCode::CONFLICT, codes::URL_CONFLICT)
    );
    // Once the first has been silent for the timeout, the id may move.
    req.incarnation = 78;
    let out = h.run(Input::Register(req), 300);
    assert_eq!(view(&out).role, Role::Standby);
    assert_eq!(h.record("app2").url, "http://127.0.0.1:9999");
}

#[test]
fn registration_with_a_bad_url_is_refused() {
    let mut h = Harness::new();
    for bad in [
        "127.0.0.1:8081",
        "ftp://x:1",
        "https://x",
        "http://x:1/path",
        "http://x",
    ] {
        let out = h.run(
            Input::Register(RegisterRequest {
                group: None,
                node: id("app1"),
                url: bad.to_owned(),
                incarnation: 1,
                epoch: Epoch(0),
                lsn: Lsn(0),
            }),
            0,
        );
        let r = refusal(&out);
        assert_eq!(
            (r.status, r.error),
            (StatusCode::BAD_REQUEST, codes::BAD_REGISTER),
            "{bad}"
        );
    }
    assert!(h.m.state().nodes.is_empty());
}

// ---- heartbeats ----

#[test]
fn heartbeat_refusals_change_nothing() {
    let mut h = Harness::pair();
    let before = h.m.state().clone();
    // Unknown node.
    let out = h.heartbeat("app9", Role::Standby, 1, 0, 10);
    let r = refusal(&out);
    assert_eq!(
        (r.status, r.error),
        (StatusCode::NOT_FOUND, codes::UNKNOWN_NODE)
    );
    assert!(r.view.is_none());
    // Stale incarnation.
    let out = h.run(
        Input::Heartbeat(HeartbeatRequest {
            slots_version: 0,
            node: id("app2"),
            incarnation: 5,
            role: Role::Standby,
            epoch: Epoch(1),
            lsn: Lsn(10),
            standbys: vec![],
            draining: false,
        }),
        10,
    );
    let r = refusal(&out);
    assert_eq!(
        (r.status, r.error),
        (StatusCode::CONFLICT, codes::STALE_INCARNATION)
    );
    assert_eq!(r.view.as_ref().map(|v| v.version), Some(before.version));
    // An epoch older than one it reported.
    let out = h.heartbeat("app2", Role::Standby, 0, 10, 10);
    assert_eq!(refusal(&out).error, codes::STALE_EPOCH);
    // A standby claiming to be primary, even dropping its standby report.
    let out = h.heartbeat_with(
        "app2",
        Role::Primary,
        1,
        10,
        vec![report("app1", false, 0, false)],
        false,
        10,
    );
    let r = refusal(&out);
    assert_eq!(r.error, codes::STALE_EPOCH);
    assert_eq!(r.view.map(|v| v.role), Some(Role::Standby));
    // The primary claiming an epoch the monitor never issued.
    let out = h.heartbeat("app1", Role::Primary, 2, 10, 10);
    assert_eq!(refusal(&out).error, codes::EPOCH_NOT_ISSUED);

    assert_eq!(h.m.state(), &before, "no refusal changed the cluster state");
    assert_eq!(h.m.stats().heartbeats_refused, 5);
}

#[test]
fn repeated_stale_heartbeats_publish_one_event() {
    let mut h = Harness::pair();
    let out = h.heartbeat("app2", Role::Primary, 1, 10, 10);
    assert_eq!(kinds(&out), [EventKind::StaleHeartbeat]);
    let out = h.heartbeat("app2", Role::Primary, 1, 10, 110);
    assert!(kinds(&out).is_empty());
}

#[test]
fn primary_heartbeat_renews_the_lease_standby_gets_none() {
    let mut h = Harness::pair();
    let v = view(&h.heartbeat("app1", Role::Primary, 1, 10, 100));
    assert_eq!(v.lease_ms, Some(500));
    assert_eq!(v.timing.heartbeat_timeout_ms, 300);
    assert!(v.standbys[0].sync);
    let v = view(&h.heartbeat("app2", Role::Standby, 1, 10, 100));
    assert_eq!(v.lease_ms, None);
    assert_eq!(v.primary.map(|p| p.url), Some(url("app1")));
}

// ---- failure detection ----

#[test]
fn primary_suspected_after_heartbeat_timeout_not_before() {
    let mut h = Harness::pair();
    h.heartbeat("app1", Role::Primary, 1, 10, 100);
    h.heartbeat("app2", Role::Standby, 1, 10, 200);
    let out = h.tick(399);
    assert!(kinds(&out).is_empty());
    assert!(probes(&out).is_empty());
    assert_eq!(h.m.next_deadline(), Some(h.at(400)));
    let out = h.tick(400);
    assert_eq!(
        kinds(&out),
        [EventKind::HeartbeatMissed, EventKind::Suspected]
    );
    assert_eq!(probes(&out).len(), 1);
    assert_eq!(persisted(&out), None, "suspicion is not durable state");
    // A suspected primary that heartbeats gets no lease... until the heartbeat clears
    // the suspicion, which it does.
    let v = view(&h.heartbeat("app1", Role::Primary, 1, 10, 410));
    assert_eq!(v.lease_ms, Some(500));
}

#[test]
fn suspected_primary_gets_no_lease_from_other_replies() {
    let mut h = Harness::pair();
    h.tick(300);
    // A sync drop reply to the suspected primary carries no lease either.
    let out = h.run(
        Input::SyncDrop(SyncDropRequest {
            node: id("app1"),
            epoch: Epoch(1),
            standby: id("app2"),
        }),
        310,
    );
    assert_eq!(view(&out).lease_ms, None);
}

#[test]
fn probe_ok_clears_suspicion_and_restarts_the_timeout() {
    let mut h = Harness::pair();
    let out = h.tick(300);
    let p = probes(&out)[0];
    let out = h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p,
            ok: true,
        },
        350,
    );
    assert_eq!(kinds(&out), [EventKind::ProbeOk]);
    assert!(
        h.tick(649)
            .iter()
            .all(|o| !matches!(o, Output::Probe { .. }))
    );
    assert_eq!(probes(&h.tick(650)).len(), 1);
}

#[test]
fn a_stale_probe_result_is_ignored() {
    let mut h = Harness::pair();
    let out = h.tick(300);
    let p = probes(&out)[0];
    let out = h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p + 100,
            ok: false,
        },
        350,
    );
    assert!(out.is_empty());
}

#[test]
fn confirmed_failover_picks_the_promotable_standby_with_the_highest_lsn() {
    let mut h = Harness::pair();
    h.register("app3", 0, 0, 0);
    h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        10,
        vec![
            report("app2", true, 10, true),
            report("app3", true, 10, false),
        ],
        false,
        0,
    );
    h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        12,
        vec![
            report("app2", true, 11, true),
            report("app3", true, 12, true),
        ],
        false,
        0,
    );
    assert!(h.record("app3").promotable);
    h.heartbeat("app2", Role::Standby, 1, 11, 200);
    h.heartbeat("app3", Role::Standby, 1, 12, 200);
    let out = fail_primary(&mut h, 400);
    assert_eq!(
        kinds(&out),
        [
            EventKind::ProbeFailed,
            EventKind::FailoverStarted,
            EventKind::WaitingForLeases
        ]
    );
    let state = persisted(&out).expect("the new epoch is persisted at failover start");
    assert_eq!(state.epoch, Epoch(2));
    let f = state.failover.expect("failover recorded");
    assert_eq!((f.from, f.to.clone()), (id("app1"), id("app3")));
    assert_eq!(f.reason, FailoverReason::PrimaryFailed);
    assert_eq!(f.phase, FailoverPhase::WaitingForLeases);
    // The old primary is out of the sync set; the other standby waits for the new
    // primary to confirm it.
    assert!(!state.nodes[&id("app1")].sync);
    assert!(state.nodes[&id("app2")].sync);
    assert!(!state.nodes[&id("app2")].promotable);
}

#[test]
fn failover_waits_out_the_last_lease_to_the_millisecond() {
    let mut h = Harness::pair();
    // The last grant: at 20 ms. It ends at 20 + 500 + 100 = 620 ms.
    h.heartbeat("app1", Role::Primary, 1, 10, 20);
    h.heartbeat("app2", Role::Standby, 1, 10, 300);
    let out = h.tick(320);
    let p = probes(&out)[0];
    let out = h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p,
            ok: false,
        },
        400,
    );
    let p = probes(&out)[0];
    h.heartbeat("app2", Role::Standby, 1, 10, 410);
    h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p,
            ok: false,
        },
        420,
    );
    assert_eq!(h.m.next_deadline(), Some(h.at(620)));
    // The candidate is still a standby while the lease runs.
    let v = view(&h.heartbeat("app2", Role::Standby, 2, 10, 500));
    assert_eq!(v.role, Role::Standby);
    assert_eq!(
        v.failover.as_ref().map(|f| f.phase),
        Some(FailoverPhase::WaitingForLeases)
    );
    let out = h.tick(619);
    assert_eq!(
        h.m.state().failover.as_ref().map(|f| f.phase),
        Some(FailoverPhase::WaitingForLeases)
    );
    assert!(persisted(&out).is_none());
    let out = h.tick(620);
    assert_eq!(kinds(&out), [EventKind::Promoted]);
    assert_eq!(
        h.m.state().failover.as_ref().map(|f| f.phase),
        Some(FailoverPhase::Promoting)
    );
}

#[test]
fn promotion_completes_on_the_candidates_heartbeat_as_primary() {
    let mut h = Harness::pair();
    h.heartbeat("app2", Role::Standby, 1, 10, 250);
    fail_primary(&mut h, 450);
    h.tick(600);
    let v = view(&h.heartbeat("app2", Role::Standby, 2, 10, 610));
    assert_eq!(v.role, Role::Primary);
    assert_eq!(v.epoch, Epoch(2));
    assert_eq!(v.lease_ms, None, "no lease while the failover runs");
    assert_eq!(
        v.failover.as_ref().map(|f| f.phase),
        Some(FailoverPhase::Promoting)
    );
    assert_eq!(
        v.standbys
            .iter()
            .map(|s| (&s.node, s.sync))
            .collect::<Vec<_>>(),
        [(&id("app1"), false)]
    );
    let out = h.heartbeat("app2", Role::Primary, 2, 10, 700);
    assert_eq!(kinds(&out), [EventKind::FailoverDone]);
    assert!(persisted(&out).is_some_and(|s| s.failover.is_none()));
    let v = view(&out);
    assert_eq!(v.failover, None);
    assert_eq!(v.lease_ms, Some(500));
    assert_eq!(h.m.stats().failovers_total, 1);
}

#[test]
fn old_primary_coming_back_is_told_to_step_down_and_rejoins_as_standby() {
    let mut h = Harness::pair();
    h.heartbeat("app2", Role::Standby, 1, 10, 250);
    fail_primary(&mut h, 450);
    h.tick(600);
    h.heartbeat("app2", Role::Primary, 2, 10, 650);
    // Its old heartbeat: refused, and the view says who is primary now.
    let r = refusal(&h.heartbeat("app1", Role::Primary, 1, 12, 700));
    assert_eq!(r.error, codes::STALE_EPOCH);
    let v = r.view.expect("view in a 409");
    assert_eq!((v.role, v.epoch), (Role::Standby, Epoch(2)));
    assert_eq!(v.primary.map(|p| p.node), Some(id("app2")));
    // It restarts and registers: standby, out of sync.
    let out = h.register_as("app1", 13, 1, 12, 800);
    assert_eq!(view(&out).role, Role::Standby);
    assert!(kinds(&out).contains(&EventKind::Rejoined));
    assert!(!h.record("app1").sync && !h.record("app1").deposed);
}

#[test]
fn stale_standby_is_not_promoted_and_the_reason_is_shown() {
    let mut h = Harness::pair();
    // app2 is promotable but stopped heartbeating at 0 ms, like the primary.
    let out = fail_primary(&mut h, 400);
    assert_eq!(
        kinds(&out),
        [EventKind::ProbeFailed, EventKind::NoPromotableStandby]
    );
    assert!(persisted(&out).is_none());
    assert_eq!(
        h.m.state().epoch,
        Epoch(1),
        "no epoch bump without a candidate"
    );
    let c = h.m.cluster_view(h.at(400));
    let app2 = c
        .nodes
        .iter()
        .find(|n| n.node == id("app2"))
        .expect("app2 listed");
    assert!(!app2.promotable);
    assert_eq!(
        app2.why_not_promotable.as_deref(),
        Some("no heartbeat for 400 ms")
    );
    assert!(!c.failover_in_progress);
    // Retried at every tick, reported once.
    assert!(kinds(&h.tick(500)).is_empty());
    // The standby is back: the next tick starts the failover.
    h.heartbeat("app2", Role::Standby, 1, 10, 550);
    let out = h.tick(560);
    assert!(kinds(&out).contains(&EventKind::FailoverStarted));
}

#[test]
fn standby_out_of_the_sync_set_is_never_promoted() {
    let mut h = Harness::new();
    h.register("app1", 0, 0, 0);
    h.register("app2", 0, 0, 0);
    h.heartbeat("app2", Role::Standby, 1, 10, 250);
    let out = fail_primary(&mut h, 400);
    assert!(kinds(&out).contains(&EventKind::NoPromotableStandby));
    let c = h.m.cluster_view(h.at(400));
    let why = c.nodes[1].why_not_promotable.clone().unwrap_or_default();
    assert!(why.starts_with("not in the sync set"), "{why}");
}

#[test]
fn blocked_failover_ends_when_the_primary_heartbeats_again() {
    let mut h = Harness::pair();
    fail_primary(&mut h, 400);
    let v = view(&h.heartbeat("app1", Role::Primary, 1, 10, 500));
    assert_eq!(v.role, Role::Primary);
    assert_eq!(v.lease_ms, Some(500));
    assert!(kinds(&h.tick(600)).is_empty());
}

#[test]
fn candidate_failing_before_promotion_is_suspected_like_any_primary() {
    let mut h = Harness::pair();
    h.register("app3", 0, 0, 0);
    h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        10,
        vec![
            report("app2", true, 10, true),
            report("app3", true, 10, false),
        ],
        false,
        0,
    );
    h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        10,
        vec![
            report("app2", true, 10, true),
            report("app3", true, 10, true),
        ],
        false,
        0,
    );
    // Grant at 100: the lease ends at 700.
    h.heartbeat("app1", Role::Primary, 1, 10, 100);
    h.heartbeat("app2", Role::Standby, 1, 11, 300);
    h.heartbeat("app3", Role::Standby, 1, 10, 300);
    let out = h.tick(400);
    let p = probes(&out)[0];
    let out = h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p,
            ok: false,
        },
        420,
    );
    let p = probes(&out)[0];
    h.run(
        Input::ProbeResult {
            node: id("app1"),
            probe: p,
            ok: false,
        },
        440,
    );
    assert_eq!(
        h.m.state().failover.as_ref().map(|f| f.to.clone()),
        Some(id("app2"))
    );
    // app2 dies too. app3 is in the sync set but not promotable until a primary of the
    // new epoch reports waiting for it, so no one replaces app2.
    h.heartbeat("app3", Role::Standby, 2, 10, 600);
    let out = h.tick(740);
    let p = probes(&out);
    assert_eq!(p.len(), 1, "the silent candidate is suspected");
    let out = h.run(
        Input::ProbeResult {
            node: id("app2"),
            probe: p[0],
            ok: false,
        },
        760,
    );
    let p = probes(&out)[0];
    let out = h.run(
        Input::ProbeResult {
            node: id("app2"),
            probe: p,
            ok: false,
        },
        780,
    );
    assert!(kinds(&out).contains(&EventKind::NoPromotableStandby));
}

// ---- the sync set ----

#[test]
fn sync_drop_records_the_standby_out_of_the_sync_set_first() {
    let mut h = Harness::pair();
    let version = h.m.state().version;
    let out = h.run(
        Input::SyncDrop(SyncDropRequest {
            node: id("app1"),
            epoch: Epoch(1),
            standby: id("app2"),
        }),
        50,
    );
    assert!(
        matches!(out.first(), Some(Output::Persist(_))),
        "persist comes first"
    );
    let v = view(&out);
    assert_eq!(v.version, version + 1);
    assert!(!v.standbys[0].sync);
    assert_eq!(kinds(&out), [EventKind::DroppedFromSync]);
    assert!(!h.record("app2").promotable);
    // Dropping it again changes nothing.
    let out = h.run(
        Input::SyncDrop(SyncDropRequest {
            node: id("app1"),
            epoch: Epoch(1),
            standby: id("app2"),
        }),
        60,
    );
    assert!(persisted(&out).is_none());
    assert_eq!(view(&out).version, version + 1);
}

#[test]
fn sync_drop_from_anyone_but_the_current_primary_is_refused() {
    let mut h = Harness::pair();
    let before = h.m.state().clone();
    for (node, epoch) in [("app2", 1), ("app1", 0)] {
        let out = h.run(
            Input::SyncDrop(SyncDropRequest {
                node: id(node),
                epoch: Epoch(epoch),
                standby: id("app2"),
            }),
            50,
        );
        let r = refusal(&out);
        assert_eq!(
            (r.status, r.error),
            (StatusCode::CONFLICT, codes::STALE_EPOCH)
        );
        assert!(r.view.is_some());
    }
    assert_eq!(h.m.state(), &before);
}

#[test]
fn dropped_standby_reenters_the_sync_set_in_two_steps() {
    let mut h = Harness::pair();
    h.run(
        Input::SyncDrop(SyncDropRequest {
            node: id("app1"),
            epoch: Epoch(1),
            standby: id("app2"),
        }),
        10,
    );
    // Not streaming: nothing.
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        20,
        vec![report("app2", false, 10, false)],
        false,
        20,
    );
    assert!(persisted(&out).is_none());
    // Step 1: streaming → sync, not yet promotable.
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        20,
        vec![report("app2", true, 20, false)],
        false,
        30,
    );
    assert_eq!(kinds(&out), [EventKind::BackInSync]);
    assert!(view(&out).standbys[0].sync);
    assert!(h.record("app2").sync && !h.record("app2").promotable);
    // Still the primary reporting sync: false — no change.
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        20,
        vec![report("app2", true, 20, false)],
        false,
        40,
    );
    assert!(persisted(&out).is_none());
    // Step 2: the primary waits for its acks → promotable.
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        20,
        vec![report("app2", true, 20, true)],
        false,
        50,
    );
    assert_eq!(kinds(&out), [EventKind::Promotable]);
    assert!(h.record("app2").promotable);
}

#[test]
fn standby_the_primary_stops_waiting_for_is_no_longer_promotable() {
    let mut h = Harness::pair();
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        20,
        vec![report("app2", true, 20, false)],
        false,
        20,
    );
    assert!(persisted(&out).is_some());
    assert!(h.record("app2").sync && !h.record("app2").promotable);
}

// ---- switchover ----

#[test]
fn switchover_drains_then_promotes_without_a_lease_wait() {
    let mut h = Harness::pair();
    h.heartbeat("app1", Role::Primary, 1, 10, 50);
    let out = h.run(Input::Switchover { to: None }, 60);
    assert_eq!(
        kinds(&out),
        [EventKind::SwitchoverRequested, EventKind::FailoverStarted]
    );
    let Some(Output::Reply(Ok(Answer::Cluster(c)))) = out.last() else {
        panic!("expected the cluster view, got {out:?}");
    };
    assert_eq!(
        c.failover.as_ref().map(|f| (f.phase, f.epoch)),
        Some((FailoverPhase::Draining, Epoch(2)))
    );
    assert_eq!(c.epoch, Epoch(1), "the epoch is bumped only once drained");
    // The primary sees draining, no lease.
    let v = view(&h.heartbeat("app1", Role::Primary, 1, 15, 100));
    assert_eq!(v.failover.map(|f| f.phase), Some(FailoverPhase::Draining));
    assert_eq!(v.lease_ms, None);
    assert_eq!(v.role, Role::Primary);
    // It reports draining at lsn 15; app2 is at 14: wait.
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        15,
        vec![report("app2", true, 14, true)],
        true,
        150,
    );
    assert!(persisted(&out).is_none());
    // The target's own heartbeat at 15 completes the drain: epoch 2, promoting, no wait.
    let out = h.heartbeat("app2", Role::Standby, 1, 15, 160);
    assert_eq!(kinds(&out), [EventKind::Promoted]);
    let v = view(&out);
    assert_eq!((v.role, v.epoch), (Role::Primary, Epoch(2)));
    assert_eq!(
        v.failover.as_ref().map(|f| f.phase),
        Some(FailoverPhase::Promoting)
    );
    let out = h.heartbeat("app2", Role::Primary, 2, 15, 200);
    assert_eq!(kinds(&out), [EventKind::FailoverDone]);
    assert_eq!(h.m.state().primary, Some(id("app2")));
    assert!(h.record("app1").deposed);
}

#[test]
fn switchover_completes_on_the_primarys_acked_lsn_report() {
    let mut h = Harness::pair();
    h.run(
        Input::Switchover {
            to: Some(id("app2")),
        },
        10,
    );
    h.heartbeat("app2", Role::Standby, 1, 15, 20);
    let out = h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        16,
        vec![report("app2", true, 16, true)],
        true,
        30,
    );
    assert_eq!(kinds(&out), [EventKind::Promoted]);
    assert_eq!(view(&out).role, Role::Standby);
}

#[test]
fn switchover_is_refused_without_a_promotable_standby_or_during_a_failover() {
    let mut h = Harness::new();
    h.register("app1", 0, 0, 0);
    h.register("app2", 0, 0, 0);
    let r = refusal(&h.run(Input::Switchover { to: None }, 10));
    assert_eq!(
        (r.status, r.error),
        (StatusCode::CONFLICT, codes::NO_PROMOTABLE_STANDBY)
    );
    assert!(r.reasons.contains_key(&id("app2")));
    let r = refusal(&h.run(
        Input::Switchover {
            to: Some(id("app1")),
        },
        10,
    ));
    assert_eq!(r.error, codes::NO_PROMOTABLE_STANDBY);

    let mut h = Harness::pair();
    h.run(Input::Switchover { to: None }, 10);
    let r = refusal(&h.run(Input::Switchover { to: None }, 20));
    assert_eq!(r.error, codes::FAILOVER_IN_PROGRESS);
}

#[test]
fn switchover_is_abandoned_when_the_drain_times_out() {
    let mut h = Harness::pair();
    h.run(Input::Switchover { to: None }, 0);
    for ms in (100..5_000).step_by(100) {
        h.heartbeat("app1", Role::Primary, 1, 10, ms);
        h.heartbeat("app2", Role::Standby, 1, 10, ms);
    }
    assert!(h.m.state().failover.is_some());
    let out = h.tick(5_000);
    assert_eq!(kinds(&out), [EventKind::FailoverAbandoned]);
    assert_eq!(h.m.state().failover, None);
    assert_eq!(h.m.state().epoch, Epoch(1));
    assert_eq!(
        view(&h.heartbeat("app1", Role::Primary, 1, 10, 5_010)).lease_ms,
        Some(500)
    );
}

// ---- restarts ----

#[test]
fn restart_from_persisted_state_keeps_epoch_and_roles() {
    let mut h = Harness::pair();
    h.heartbeat("app2", Role::Standby, 1, 10, 250);
    fail_primary(&mut h, 450);
    let saved = h.m.state().clone();
    assert_eq!(saved.epoch, Epoch(2));

    let mut h = Harness::with(Settings::default(), Some(saved.clone()));
    assert_eq!(kinds(&h.started), [EventKind::MonitorStarted]);
    assert_eq!(h.m.state(), &saved);
    h.heartbeat("app2", Role::Standby, 2, 10, 200);
    // A restart mid lease wait waits a full lease + drift from the restart.
    assert!(persisted(&h.tick(599)).is_none());
    assert_eq!(kinds(&h.tick(600)), [EventKind::Promoted]);
    // A node cannot take the epoch back: the next election is above it.
    let v = view(&h.heartbeat("app2", Role::Primary, 2, 10, 610));
    assert_eq!((v.role, v.epoch), (Role::Primary, Epoch(2)));
}

#[test]
fn restarted_monitor_gives_the_primary_a_grace_period() {
    let h = Harness::pair();
    let saved = h.m.state().clone();
    let mut h = Harness::with(Settings::default(), Some(saved));
    assert!(probes(&h.tick(299)).is_empty());
    assert_eq!(probes(&h.tick(300)).len(), 1);
}

#[test]
fn restarted_monitor_waits_out_a_lease_it_may_have_granted_before() {
    let mut h = Harness::pair();
    h.heartbeat("app1", Role::Primary, 1, 10, 0);
    let saved = h.m.state().clone();
    let mut h = Harness::with(Settings::default(), Some(saved));
    h.heartbeat("app2", Role::Standby, 1, 10, 250);
    fail_primary(&mut h, 450);
    // Lease assumed granted at the restart (0 ms): the wait ends at 600 ms.
    assert!(kinds(&h.tick(599)).is_empty());
    assert_eq!(kinds(&h.tick(600)), [EventKind::Promoted]);
}

#[test]
fn every_change_bumps_the_version_and_event_ids_grow() {
    let mut h = Harness::new();
    let mut last_id = 0;
    let mut last_version = 0;
    let mut outs = vec![h.register("app1", 0, 0, 0), h.register("app2", 0, 0, 0)];
    outs.push(h.heartbeat_with(
        "app1",
        Role::Primary,
        1,
        1,
        vec![report("app2", true, 1, false)],
        false,
        10,
    ));
    for out in &outs {
        let v = view(out);
        assert!(v.version > last_version);
        last_version = v.version;
        for o in out {
            if let Output::Event(e) = o {
                assert!(e.id > last_id);
                last_id = e.id;
            }
        }
    }
}

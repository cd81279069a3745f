//! Several groups under one monitor (docs/shards.md): each group of nodes runs its own
//! [`Monitor`] — epoch, primary, sync set, failover — unchanged, and [`Groups`] routes
//! every input to the group it is about, keeps the slot table, and turns the groups'
//! outputs into one stream: one durable state ([`GroupsState`]) for every group and the
//! table, events numbered in one sequence and naming their group.
//!
//! Routing: a registration goes to the group it names (the first group when it names
//! none); a heartbeat, a sync drop, a probe's result and a switchover to a named node go
//! to that node's group; time goes to every group. A node belongs to one group for good:
//! registering it in another is refused.
//!
//! Pure, as [`Monitor`] is: time is an argument, and nothing here does I/O.

use std::collections::BTreeMap;

use http::StatusCode;
use keel_core::NodeId;
use keel_core::slots::{GroupId, SlotTable};
use tokio::time::Instant;

use super::{Answer, Event, Input, Monitor, Output, Refusal, Stats};
use crate::settings::Settings;
use crate::state::GroupsState;
use crate::wire::ClusterView;
use crate::wire::codes;

/// What the runtime must do, in order, for a monitor of several groups.
// A handful per input, carried out at once: boxing the large reply would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupsOutput {
    /// Make this state durable before releasing any reply that follows it.
    Persist(GroupsState),
    /// Probe a node of `group`, as [`Output::Probe`].
    Probe {
        group: GroupId,
        node: NodeId,
        url: String,
        probe: u64,
    },
    /// Publish an event of `group`; its id is the monitor's, across groups.
    Event { group: GroupId, event: Event },
    /// Answer the request.
    Reply(Result<Answer, Refusal>),
}

/// The groups and the slot table.
#[derive(Debug)]
pub struct Groups {
    state: GroupsState,
    groups: BTreeMap<GroupId, Monitor>,
    next_event: u64,
}

impl Groups {
    /// A monitor of several groups starting at `now` from `state` (a fresh one:
    /// [`GroupsState::new`]); the outputs are each group's `monitor_started` event.
    pub fn new(settings: Settings, state: GroupsState, now: Instant) -> (Self, Vec<GroupsOutput>) {
        let mut out = Vec::new();
        let mut groups = BTreeMap::new();
        let mut next_event = 1;
        for (group, cluster) in &state.groups {
            let (monitor, started) = Monitor::new(settings, Some(cluster.clone()), now);
            groups.insert(group.clone(), monitor);
            for output in started {
                if let Output::Event(mut event) = output {
                    event.id = next_event;
                    next_event += 1;
                    out.push(GroupsOutput::Event {
                        group: group.clone(),
                        event,
                    });
                }
            }
        }
        (
            Self {
                state,
                groups,
                next_event,
            },
            out,
        )
    }

    /// The durable state.
    pub fn state(&self) -> &GroupsState {
        &self.state
    }

    /// The slot table.
    pub fn slots(&self) -> &SlotTable {
        &self.state.slots
    }

    /// Group `group`'s machine.
    pub fn group(&self, group: &GroupId) -> Option<&Monitor> {
        self.groups.get(group)
    }

    /// Raises every group's epoch to `floor` where it is lower (`keel monitor
    /// --epoch-floor`); see [`Monitor::raise_epoch_floor`].
    pub fn raise_epoch_floor(&mut self, floor: keel_core::Epoch) -> Vec<GroupsOutput> {
        let mut out = Vec::new();
        let names: Vec<GroupId> = self.groups.keys().cloned().collect();
        for group in names {
            if let Some(monitor) = self.groups.get_mut(&group) {
                let outputs = monitor.raise_epoch_floor(floor);
                self.absorb(&group, outputs, None, &mut out);
            }
        }
        out
    }

    /// The groups' names, in order.
    pub fn names(&self) -> Vec<GroupId> {
        self.groups.keys().cloned().collect()
    }

    /// Counters for `/metrics`, summed over the groups.
    pub fn stats(&self) -> Stats {
        self.groups
            .values()
            .map(Monitor::stats)
            .fold(Stats::default(), |a, b| Stats {
                heartbeats_received: a.heartbeats_received + b.heartbeats_received,
                heartbeats_refused: a.heartbeats_refused + b.heartbeats_refused,
                failovers_total: a.failovers_total + b.failovers_total,
            })
    }

    /// Group `group`'s picture (the first group's when `None`), naming the group and every
    /// group the monitor runs when it runs several; `None` for a group it does not run.
    pub fn cluster_view(&self, group: Option<&GroupId>, now: Instant) -> Option<ClusterView> {
        let (name, monitor) = match group {
            Some(g) => (g, self.groups.get(g)?),
            None => self.groups.iter().next()?,
        };
        let mut view = monitor.cluster_view(now);
        if self.groups.len() > 1 {
            view.group = Some(name.clone());
            view.groups = self.names();
            view.slots_version = self.state.slots.version();
        }
        Some(view)
    }

    /// The next instant at which a tick would change something in any group.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter_map(Monitor::next_deadline)
            .min()
    }

    /// Handles one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<GroupsOutput> {
        let slots_version = match &input {
            Input::Heartbeat(req) => Some(req.slots_version),
            Input::Register(_) => Some(0),
            _ => None,
        };
        let targets = match self.route(&input) {
            Ok(targets) => targets,
            Err(refusal) => return vec![GroupsOutput::Reply(Err(refusal))],
        };
        let mut out = Vec::new();
        for group in targets {
            let Some(monitor) = self.groups.get_mut(&group) else {
                continue;
            };
            let outputs = monitor.handle(input.clone(), now);
            self.absorb(&group, outputs, slots_version, &mut out);
        }
        out
    }

    /// Which groups `input` goes to, or why it goes nowhere.
    fn route(&self, input: &Input) -> Result<Vec<GroupId>, Refusal> {
        let first = || self.state.groups.keys().next().cloned();
        let of = |node: &NodeId| self.state.group_of(node).cloned().or_else(first);
        let one = match input {
            Input::Tick => return Ok(self.state.groups.keys().cloned().collect()),
            Input::Register(req) => {
                let wanted = req.group.clone().or_else(first);
                if let Some(group) = &wanted
                    && !self.state.groups.contains_key(group)
                {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        codes::UNKNOWN_GROUP,
                        format!("no group {group}: this monitor runs {}", self.names_text()),
                    ));
                }
                if let (Some(wanted), Some(member)) = (&wanted, self.state.group_of(&req.node))
                    && member != wanted
                {
                    return Err(Refusal::new(
                        StatusCode::CONFLICT,
                        codes::WRONG_GROUP,
                        format!(
                            "{} is a node of {member}; it cannot join {wanted} as well",
                            req.node
                        ),
                    ));
                }
                wanted
            }
            Input::Heartbeat(req) => of(&req.node),
            Input::SyncDrop(req) => of(&req.node),
            Input::ProbeResult { node, .. } => of(node),
            Input::Switchover { to: Some(node) } => of(node),
            Input::Switchover { to: None } if self.state.groups.len() == 1 => first(),
            Input::Switchover { to: None } => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    codes::GROUP_NEEDED,
                    format!(
                        "this monitor runs {}: name the standby to promote (keel client failover --to NODE), which names its group",
                        self.names_text()
                    ),
                ));
            }
        };
        Ok(one.into_iter().collect())
    }

    /// The groups' names, for messages.
    fn names_text(&self) -> String {
        self.state
            .groups
            .keys()
            .map(GroupId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Turns group `group`'s outputs into the monitor's: its new state into the whole
    /// state (one version more), its events into the monitor's sequence, and the slot
    /// table into a node's view when the node's is older (`slots_version`).
    fn absorb(
        &mut self,
        group: &GroupId,
        outputs: Vec<Output>,
        slots_version: Option<u64>,
        out: &mut Vec<GroupsOutput>,
    ) {
        for output in outputs {
            out.push(match output {
                Output::Persist(cluster) => {
                    self.state.groups.insert(group.clone(), cluster);
                    self.state.version += 1;
                    GroupsOutput::Persist(self.state.clone())
                }
                Output::Probe { node, url, probe } => GroupsOutput::Probe {
                    group: group.clone(),
                    node,
                    url,
                    probe,
                },
                Output::Event(mut event) => {
                    event.id = self.next_event;
                    self.next_event += 1;
                    GroupsOutput::Event {
                        group: group.clone(),
                        event,
                    }
                }
                Output::Reply(Ok(Answer::View(mut view))) => {
                    view.slots_version = self.state.slots.version();
                    view.group = Some(group.clone());
                    if slots_version.is_some_and(|known| known < view.slots_version) {
                        view.slots = Some(self.state.slots.clone());
                    }
                    GroupsOutput::Reply(Ok(Answer::View(view)))
                }
                Output::Reply(reply) => GroupsOutput::Reply(reply),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_core::{Epoch, Lsn, Role};

    use super::*;
    use crate::wire::{EventKind, HeartbeatRequest, RegisterRequest};

    fn g(name: &str) -> GroupId {
        GroupId::new(name).expect("a group")
    }

    fn n(name: &str) -> NodeId {
        NodeId::new(name).expect("a node")
    }

    fn register(node: &str, group: Option<&str>) -> Input {
        Input::Register(RegisterRequest {
            group: group.map(g),
            node: n(node),
            url: format!("http://127.0.0.1:{}", 8000 + node.len()),
            incarnation: 1,
            epoch: Epoch(0),
            lsn: Lsn(0),
        })
    }

    fn heartbeat(node: &str, role: Role, epoch: u64, slots_version: u64) -> Input {
        Input::Heartbeat(HeartbeatRequest {
            slots_version,
            node: n(node),
            incarnation: 1,
            role,
            epoch: Epoch(epoch),
            lsn: Lsn(0),
            standbys: Vec::new(),
            draining: false,
        })
    }

    fn two_groups(now: Instant) -> Groups {
        let state = GroupsState::new(&[g("g1"), g("g2")]).expect("a state");
        Groups::new(Settings::default(), state, now).0
    }

    fn events(out: &[GroupsOutput]) -> Vec<(u64, &str, EventKind)> {
        out.iter()
            .filter_map(|o| match o {
                GroupsOutput::Event { group, event } => {
                    Some((event.id, group.as_str(), event.kind))
                }
                _ => None,
            })
            .collect()
    }

    fn reply(out: &[GroupsOutput]) -> &Result<Answer, Refusal> {
        out.iter()
            .find_map(|o| match o {
                GroupsOutput::Reply(r) => Some(r),
                _ => None,
            })
            .expect("a reply")
    }

    #[test]
    fn each_group_elects_its_own_primary_and_the_whole_state_is_persisted_first() {
        let now = Instant::now();
        let state = GroupsState::new(&[g("g1"), g("g2")]).expect("a state");
        let (mut groups, started) = Groups::new(Settings::default(), state, now);
        assert_eq!(
            events(&started),
            [
                (1, "g1", EventKind::MonitorStarted),
                (2, "g2", EventKind::MonitorStarted)
            ]
        );
        let out = groups.handle(register("app1", Some("g1")), now);
        assert!(matches!(out[0], GroupsOutput::Persist(_)), "{out:?}");
        let out = groups.handle(register("app3", Some("g2")), now);
        let GroupsOutput::Persist(persisted) = &out[0] else {
            panic!("the state first: {out:?}");
        };
        assert_eq!(
            persisted.version, 2,
            "one version per change, across groups"
        );
        assert_eq!(
            events(&out),
            [
                (5, "g2", EventKind::Registered),
                (6, "g2", EventKind::PrimaryElected)
            ],
            "numbered after g1's registration and election"
        );
        let state = groups.state();
        assert_eq!(state.groups[&g("g1")].primary, Some(n("app1")));
        assert_eq!(state.groups[&g("g2")].primary, Some(n("app3")));
        assert_eq!(state.groups[&g("g1")].epoch, Epoch(1));
        assert_eq!(
            state.groups[&g("g2")].epoch,
            Epoch(1),
            "an epoch of its own"
        );
        assert_eq!(state.group_of(&n("app3")), Some(&g("g2")));
        assert!(state.check().is_ok());
    }

    #[test]
    fn a_node_stays_in_its_group_and_an_unknown_group_is_named() {
        let now = Instant::now();
        let mut groups = two_groups(now);
        groups.handle(register("app1", Some("g1")), now);
        let out = groups.handle(register("app1", Some("g2")), now);
        let Err(refusal) = reply(&out) else {
            panic!("refused: {out:?}");
        };
        assert_eq!(refusal.status, StatusCode::CONFLICT);
        assert_eq!(
            refusal.message,
            "app1 is a node of g1; it cannot join g2 as well"
        );
        assert_eq!(out.len(), 1, "nothing changed: {out:?}");
        let out = groups.handle(register("app9", Some("g7")), now);
        let Err(refusal) = reply(&out) else {
            panic!("refused: {out:?}");
        };
        assert_eq!(refusal.status, StatusCode::NOT_FOUND);
        assert_eq!(refusal.message, "no group g7: this monitor runs g1, g2");
        // No group named: the first.
        groups.handle(register("app2", None), now);
        assert_eq!(groups.state().group_of(&n("app2")), Some(&g("g1")));
    }

    #[test]
    fn a_view_carries_the_table_until_the_node_holds_its_version() {
        let now = Instant::now();
        let mut groups = two_groups(now);
        let out = groups.handle(register("app1", Some("g1")), now);
        let Ok(Answer::View(view)) = reply(&out) else {
            panic!("a view: {out:?}");
        };
        assert_eq!(view.slots_version, 1);
        assert_eq!(
            view.slots.as_ref(),
            Some(groups.slots()),
            "a new node gets the table"
        );
        let out = groups.handle(heartbeat("app1", Role::Primary, 1, 1), now);
        let Ok(Answer::View(view)) = reply(&out) else {
            panic!("a view: {out:?}");
        };
        assert_eq!((view.slots_version, view.slots.is_none()), (1, true));
        let out = groups.handle(heartbeat("app1", Role::Primary, 1, 0), now);
        let Ok(Answer::View(view)) = reply(&out) else {
            panic!("a view: {out:?}");
        };
        assert!(view.slots.is_some(), "a node that holds none gets it again");
    }

    #[test]
    fn one_group_fails_over_while_the_other_is_untouched() {
        let mut now = Instant::now();
        let mut groups = two_groups(now);
        for (node, group) in [
            ("app1", "g1"),
            ("app2", "g1"),
            ("app3", "g2"),
            ("app4", "g2"),
        ] {
            groups.handle(register(node, Some(group)), now);
        }
        // app1 falls silent; every other node heartbeats.
        let settings = Settings::default();
        let step = settings.heartbeat_interval;
        let mut probes = Vec::new();
        for _ in 0..20 {
            now += step;
            for (node, role) in [
                ("app2", Role::Standby),
                ("app3", Role::Primary),
                ("app4", Role::Standby),
            ] {
                groups.handle(heartbeat(node, role, 1, 1), now);
            }
            for output in groups.handle(Input::Tick, now) {
                if let GroupsOutput::Probe {
                    group, node, probe, ..
                } = output
                {
                    probes.push((group, node, probe));
                }
            }
        }
        assert!(!probes.is_empty(), "app1 was probed");
        assert!(
            probes
                .iter()
                .all(|(group, node, _)| group == &g("g1") && node == &n("app1")),
            "{probes:?}"
        );
        // The probes fail, each answered as it comes: g1 confirms app1's death; g2 is as
        // it was.
        let mut out = Vec::new();
        while let Some((_, node, probe)) = probes.pop() {
            let answered = groups.handle(
                Input::ProbeResult {
                    node,
                    probe,
                    ok: false,
                },
                now,
            );
            for output in &answered {
                if let GroupsOutput::Probe {
                    group, node, probe, ..
                } = output
                {
                    probes.push((group.clone(), node.clone(), *probe));
                }
            }
            out.extend(answered);
        }
        let kinds: Vec<(&str, EventKind)> =
            events(&out).into_iter().map(|(_, g, k)| (g, k)).collect();
        assert!(kinds.contains(&("g1", EventKind::ProbeFailed)), "{kinds:?}");
        assert!(kinds.iter().all(|(group, _)| *group == "g1"), "{kinds:?}");
        let g2 = &groups.state().groups[&g("g2")];
        assert_eq!((g2.primary.clone(), g2.epoch), (Some(n("app3")), Epoch(1)));
        assert!(g2.failover.is_none());
    }

    #[test]
    fn a_switchover_names_its_node_when_there_are_several_groups() {
        let now = Instant::now();
        let mut groups = two_groups(now);
        let out = groups.handle(Input::Switchover { to: None }, now);
        let Err(refusal) = reply(&out) else {
            panic!("refused: {out:?}");
        };
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(
            refusal
                .message
                .starts_with("this monitor runs g1, g2: name the standby")
        );
    }
}

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
//! Moves (docs/shards.md): [`Groups::begin_move`] freezes slots at their owner in the
//! table's next version; [`Groups::next_copy`] says when the copy may run — the source
//! group's primary has reported (in its heartbeats) that it holds the frozen table, and
//! the target group has a primary, neither failing over — and to whom; the runtime copies
//! and reports [`Groups::copied`], which switches the slots to the target in one more
//! version; [`Groups::cancel_move`] calls a move off. Each step is one persisted state,
//! so a move survives any process's death: it completes or is cancelled, and at no
//! version do two groups own a slot.
//!
//! Pure, as [`Monitor`] is: time is an argument, and nothing here does I/O.

use std::collections::BTreeMap;

use http::StatusCode;
use keel_core::NodeId;
use keel_core::slots::{GroupId, Moving, SlotError, SlotTable, format_slots};
use tokio::time::Instant;

use super::{Answer, Event, Input, Monitor, Output, Refusal, Stats};
use crate::settings::Settings;
use crate::state::GroupsState;
use crate::wire::ClusterView;
use crate::wire::EventKind;
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

/// How long a move may stay frozen with no piece of it copied before the monitor calls
/// it off: its slots' writes wait, then fail, while it is, so a copy that cannot be made
/// (a group without a primary for good, data the target cannot take) must not hold them
/// for ever. Each piece a copy gets past where any copy got before gives it this long
/// again.
pub const MOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The groups and the slot table.
#[derive(Debug)]
pub struct Groups {
    state: GroupsState,
    groups: BTreeMap<GroupId, Monitor>,
    next_event: u64,
    /// The table version each node said it holds, in its last heartbeat.
    holds: BTreeMap<NodeId, u64>,
    /// The move under way, as this machine times it: a new leader gives a move it finds
    /// a whole [`MOVE_TIMEOUT`] of its own.
    move_clock: Option<MoveClock>,
}

/// When the move frozen at `since` was first seen, or last went further.
#[derive(Debug, Clone, Copy)]
struct MoveClock {
    since: u64,
    seen: Instant,
    /// The most pieces of it any copy has got through: a copy that starts again from
    /// the first piece gives the move no more time until it goes past them.
    furthest: usize,
}

/// A copy the runtime may run now: the frozen slots from the source group's primary to
/// the target group's (docs/shards.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOrder {
    /// The move, as the table holds it.
    pub moving: Moving,
    /// The source group's primary, which holds the frozen table.
    pub from_node: NodeId,
    pub from_url: String,
    /// The target group's primary.
    pub to_node: NodeId,
    pub to_url: String,
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
                holds: BTreeMap::new(),
                move_clock: None,
            },
            out,
        )
    }

    /// Freezes `slots` at their owner on their way to `to`, in the table's next version:
    /// the state to persist and the event, or why not (another move under way, slots of
    /// several owners or already `to`'s, an unknown group).
    pub fn begin_move(
        &mut self,
        slots: &[keel_core::slots::Slot],
        to: &GroupId,
    ) -> Result<Vec<GroupsOutput>, SlotError> {
        let next = self.state.slots.with_freeze(slots, to)?;
        let Some(m) = next.moving().cloned() else {
            return Err(SlotError::NoMove);
        };
        let message = format!(
            "slots {} frozen at {} on their way to {} (table version {})",
            format_slots(&m.slots),
            m.from,
            m.to,
            next.version()
        );
        Ok(self.new_table(next, &m.from, EventKind::SlotsMoving, message))
    }

    /// The copy of the move under way that may run now, if one may: the source group's
    /// primary holds the frozen table (it takes no write to the slots), the target's holds
    /// it too (it imports only a move it knows), and both groups have a primary that is
    /// not being replaced.
    pub fn next_copy(&self, now: Instant) -> Option<CopyOrder> {
        let moving = self.state.slots.moving()?.clone();
        let primary = |group: &GroupId| {
            let view = self.groups.get(group)?.cluster_view(now);
            if view.failover_in_progress {
                return None;
            }
            view.primary.map(|p| (p.node, p.url))
        };
        let (from_node, from_url) = primary(&moving.from)?;
        let (to_node, to_url) = primary(&moving.to)?;
        let holds = |node: &NodeId| self.holds.get(node).copied().unwrap_or(0) >= moving.since;
        // The target must hold the move too: it imports only a move it knows of.
        (holds(&from_node) && holds(&to_node)).then_some(CopyOrder {
            moving,
            from_node,
            from_url,
            to_node,
            to_url,
        })
    }

    /// The copy of the move frozen at version `since` has got through `pieces` pieces at
    /// `now`, each durable at the target. When no copy got that far before, the move is
    /// going on, so its [`MOVE_TIMEOUT`] starts again; a copy that fails at the same piece
    /// time after time does not keep it frozen for ever.
    pub fn piece_copied(&mut self, since: u64, pieces: usize, now: Instant) {
        if let Some(clock) = self.move_clock.as_mut()
            && clock.since == since
            && pieces > clock.furthest
        {
            clock.furthest = pieces;
            clock.seen = now;
        }
    }

    /// The copy of the move frozen at version `since` is done, in `pieces` pieces (the
    /// target's primary holds every key of the slots durably): the slots become the
    /// target's in the table's next version. Nothing when that move is no longer under
    /// way (cancelled, or already switched by an earlier report).
    pub fn copied(&mut self, since: u64, pieces: usize) -> Vec<GroupsOutput> {
        let Some(m) = self.state.slots.moving().cloned() else {
            return Vec::new();
        };
        if m.since != since {
            return Vec::new();
        }
        let Ok(next) = self.state.slots.with_switch() else {
            return Vec::new();
        };
        let message = format!(
            "slots {} moved from {} to {}, copied in {pieces} piece{} (table version {})",
            format_slots(&m.slots),
            m.from,
            m.to,
            if pieces == 1 { "" } else { "s" },
            next.version()
        );
        self.new_table(next, &m.to, EventKind::SlotsMoved, message)
    }

    /// Calls the move under way off: its slots stay their owner's, unfrozen, in the
    /// table's next version. What the target copied is never served, and a later move of
    /// the slots replaces it.
    pub fn cancel_move(&mut self) -> Result<Vec<GroupsOutput>, SlotError> {
        self.cancel_because("")
    }

    /// Calls the move under way off, saying why in the event (after "cancelled").
    fn cancel_because(&mut self, why: &str) -> Result<Vec<GroupsOutput>, SlotError> {
        let m = self
            .state
            .slots
            .moving()
            .cloned()
            .ok_or(SlotError::NoMove)?;
        let next = self.state.slots.with_cancel()?;
        let message = format!(
            "move of slots {} from {} to {} cancelled{why}: they stay {}'s (table version {})",
            format_slots(&m.slots),
            m.from,
            m.to,
            m.from,
            next.version()
        );
        Ok(self.new_table(next, &m.from, EventKind::MoveCancelled, message))
    }

    /// When the move under way times out, if one is.
    fn move_deadline(&self) -> Option<Instant> {
        let m = self.state.slots.moving()?;
        match self.move_clock {
            Some(clock) if clock.since == m.since => Some(clock.seen + MOVE_TIMEOUT),
            _ => None,
        }
    }

    /// Takes `table` as the new table: the state to persist, then the event.
    fn new_table(
        &mut self,
        table: SlotTable,
        group: &GroupId,
        kind: EventKind,
        message: String,
    ) -> Vec<GroupsOutput> {
        self.state.slots = table;
        self.state.version += 1;
        let epoch = self
            .state
            .groups
            .get(group)
            .map(|c| c.epoch)
            .unwrap_or_default();
        let event = Event {
            id: self.next_event,
            kind,
            node: None,
            epoch,
            message,
        };
        self.next_event += 1;
        vec![
            GroupsOutput::Persist(self.state.clone()),
            GroupsOutput::Event {
                group: group.clone(),
                event,
            },
        ]
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
            .chain(self.move_deadline())
            .min()
    }

    /// Handles one input at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<GroupsOutput> {
        // The move under way is timed from when this machine first sees it.
        match (self.state.slots.moving(), self.move_clock) {
            (Some(m), Some(clock)) if clock.since == m.since => {}
            (Some(m), _) => {
                self.move_clock = Some(MoveClock {
                    since: m.since,
                    seen: now,
                    furthest: 0,
                });
            }
            (None, _) => self.move_clock = None,
        }
        let mut timed_out = Vec::new();
        if matches!(input, Input::Tick) && self.move_deadline().is_some_and(|d| now >= d) {
            let why = format!(
                ": nothing of it copied for {} s (the monitor's log says why the copies failed)",
                MOVE_TIMEOUT.as_secs()
            );
            timed_out = self.cancel_because(&why).unwrap_or_default();
            self.move_clock = None;
        }
        timed_out.extend(self.handle_routed(input, now));
        timed_out
    }

    /// [`Groups::handle`] once the move's clock is seen to.
    fn handle_routed(&mut self, input: Input, now: Instant) -> Vec<GroupsOutput> {
        if let Input::Heartbeat(req) = &input
            && self.state.group_of(&req.node).is_some()
        {
            self.holds.insert(req.node.clone(), req.slots_version);
        }
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
    fn a_move_freezes_waits_for_the_source_to_hold_the_freeze_then_switches_once() {
        let now = Instant::now();
        let mut groups = two_groups(now);
        let slots = keel_core::slots::parse_slots("0-99").expect("slots");
        // No primary in g2 yet: the freeze is recorded, but no copy may run.
        groups.handle(register("app1", Some("g1")), now);
        let out = groups.begin_move(&slots, &g("g2")).expect("a move");
        let GroupsOutput::Persist(persisted) = &out[0] else {
            panic!("the state first: {out:?}");
        };
        assert_eq!(persisted.slots.version(), 2);
        assert!(persisted.slots.frozen(keel_core::slots::Slot(99)));
        assert_eq!(events(&out)[0].1, "g1");
        assert_eq!(events(&out)[0].2, EventKind::SlotsMoving);
        groups.handle(register("app3", Some("g2")), now);
        assert_eq!(
            groups.next_copy(now),
            None,
            "app1 does not hold the freeze yet"
        );

        // app1's heartbeat says it holds version 1: its answer carries the frozen table.
        let out = groups.handle(heartbeat("app1", Role::Primary, 1, 1), now);
        let Ok(Answer::View(view)) = reply(&out) else {
            panic!("a view: {out:?}");
        };
        assert_eq!(view.slots.as_ref().map(SlotTable::version), Some(2));
        assert_eq!(groups.next_copy(now), None);
        groups.handle(heartbeat("app1", Role::Primary, 1, 2), now);
        assert_eq!(
            groups.next_copy(now),
            None,
            "app3 does not hold the move yet"
        );
        groups.handle(heartbeat("app3", Role::Primary, 1, 2), now);
        let order = groups.next_copy(now).expect("the copy may run");
        assert_eq!(
            (
                order.from_node.as_str(),
                order.to_node.as_str(),
                order.moving.since
            ),
            ("app1", "app3", 2)
        );
        assert!(matches!(
            groups.begin_move(&[keel_core::slots::Slot(200)], &g("g2")),
            Err(SlotError::MoveUnderWay { .. })
        ));

        // Only the copy of this move switches it, and only once.
        assert!(groups.copied(7, 1).is_empty());
        let out = groups.copied(2, 3);
        let GroupsOutput::Persist(persisted) = &out[0] else {
            panic!("the state first: {out:?}");
        };
        assert_eq!(persisted.slots.version(), 3);
        assert_eq!(persisted.slots.owner(keel_core::slots::Slot(0)), &g("g2"));
        assert_eq!(persisted.slots.moving(), None);
        assert_eq!(events(&out)[0].1, "g2");
        assert_eq!(events(&out)[0].2, EventKind::SlotsMoved);
        let said = out.iter().find_map(|o| match o {
            GroupsOutput::Event { event, .. } => Some(event.message.as_str()),
            _ => None,
        });
        assert_eq!(
            said,
            Some("slots 0-99 moved from g1 to g2, copied in 3 pieces (table version 3)")
        );
        assert!(groups.copied(2, 1).is_empty(), "switched once");
        assert_eq!(groups.next_copy(now), None);

        // A move called off leaves the slots with their owner.
        groups
            .begin_move(&[keel_core::slots::Slot(200)], &g("g2"))
            .expect("a move");
        let out = groups.cancel_move().expect("a cancel");
        assert_eq!(events(&out)[0].2, EventKind::MoveCancelled);
        assert_eq!(groups.slots().version(), 5);
        assert_eq!(groups.slots().owner(keel_core::slots::Slot(200)), &g("g1"));
        assert!(
            groups.copied(4, 1).is_empty(),
            "a late copy of it changes nothing"
        );
        assert_eq!(groups.cancel_move(), Err(SlotError::NoMove));
    }

    #[test]
    fn a_move_with_nothing_copied_in_time_is_called_off_and_each_piece_gives_it_time_again() {
        let now = Instant::now();
        let mut groups = two_groups(now);
        groups
            .begin_move(&[keel_core::slots::Slot(7)], &g("g2"))
            .expect("a move");
        assert!(groups.handle(Input::Tick, now).is_empty());
        assert_eq!(groups.next_deadline(), Some(now + MOVE_TIMEOUT));
        let almost = groups.handle(
            Input::Tick,
            now + MOVE_TIMEOUT - std::time::Duration::from_millis(1),
        );
        assert!(
            events(&almost)
                .iter()
                .all(|(_, _, k)| *k != EventKind::MoveCancelled)
        );
        assert!(groups.slots().moving().is_some());
        // A piece copied starts the clock again; a piece of another move does not, nor a
        // copy that started again and has not gone past where one got before.
        let secs = std::time::Duration::from_secs;
        groups.piece_copied(9, 1, now + secs(20));
        assert_eq!(groups.next_deadline(), Some(now + MOVE_TIMEOUT));
        groups.piece_copied(2, 1, now + secs(10));
        groups.piece_copied(2, 2, now + secs(20));
        assert_eq!(groups.next_deadline(), Some(now + secs(20) + MOVE_TIMEOUT));
        groups.piece_copied(2, 1, now + secs(30));
        groups.piece_copied(2, 2, now + secs(40));
        assert_eq!(
            groups.next_deadline(),
            Some(now + secs(20) + MOVE_TIMEOUT),
            "the same two pieces again"
        );
        let now = now + secs(20);
        assert!(
            events(&groups.handle(Input::Tick, now + MOVE_TIMEOUT / 2))
                .iter()
                .all(|(_, _, k)| *k != EventKind::MoveCancelled)
        );
        let out = groups.handle(Input::Tick, now + MOVE_TIMEOUT);
        assert!(
            matches!(out[0], GroupsOutput::Persist(_)),
            "persisted first: {out:?}"
        );
        let cancelled = out.iter().find_map(|o| match o {
            GroupsOutput::Event { event, .. } if event.kind == EventKind::MoveCancelled => {
                Some(event.message.clone())
            }
            _ => None,
        });
        assert_eq!(
            cancelled.as_deref(),
            Some(
                "move of slots 7 from g1 to g2 cancelled: nothing of it copied for 30 s (the monitor's log says why the copies failed): they stay g1's (table version 3)"
            )
        );
        assert!(groups.slots().moving().is_none());
        assert_eq!(groups.slots().owner(keel_core::slots::Slot(7)), &g("g1"));
        assert_eq!(
            groups.next_deadline(),
            None,
            "no move, no deadline of its own"
        );
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

    /// Moves, copies, cancels and late copies in random order, interleaved with nodes
    /// falling silent, failovers and restarts, over many seeds: the whole state stays
    /// valid, a move's slots stay their owner's until its own copy switches them, a copy
    /// is only ever ordered from and to primaries that hold the frozen table, and no
    /// change but a switch moves a slot.
    #[test]
    fn moves_keep_one_owner_per_slot_through_failovers_in_any_order() {
        use keel_core::slots::Slot;
        let nodes = [
            ("app1", "g1"),
            ("app2", "g1"),
            ("app3", "g2"),
            ("app4", "g2"),
        ];
        let (mut switches, mut failovers) = (0, 0);
        for seed in 1..=150u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                // xorshift64*: enough chance for a test, and the same run per seed.
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
            };
            let mut now = Instant::now();
            let mut groups = two_groups(now);
            // What each node was last told: role, epoch, and the table version it holds.
            let mut told: BTreeMap<&str, (Role, u64, u64)> = BTreeMap::new();
            let mut silent: BTreeMap<&str, u32> = BTreeMap::new();
            for (node, group) in nodes {
                groups.handle(register(node, Some(group)), now);
                told.insert(node, (Role::Standby, 0, 0));
            }
            let mut last_version = groups.state().version;
            for step in 0..400 {
                let before = groups.slots().clone();
                let mut switched_by_copy = false;
                let out = match next(12) {
                    0 => {
                        let from = if next(2) == 0 { "g1" } else { "g2" };
                        let to = if from == "g1" { "g2" } else { "g1" };
                        let start = u16::try_from(next(16_000)).unwrap_or(0);
                        let slots: Vec<Slot> = (start
                            ..start + 1 + u16::try_from(next(50)).unwrap_or(0))
                            .map(Slot)
                            .filter(|s| groups.slots().owner(*s) == &g(from))
                            .collect();
                        groups.begin_move(&slots, &g(to)).unwrap_or_default()
                    }
                    1 => groups.cancel_move().unwrap_or_default(),
                    2 => match groups.next_copy(now) {
                        Some(order) => {
                            // Ordered only from and to current primaries that hold it.
                            let from = groups
                                .group(&order.moving.from)
                                .map(|m| m.state().primary.clone());
                            let to = groups
                                .group(&order.moving.to)
                                .map(|m| m.state().primary.clone());
                            assert_eq!(
                                from,
                                Some(Some(order.from_node.clone())),
                                "seed {seed} step {step}"
                            );
                            assert_eq!(
                                to,
                                Some(Some(order.to_node.clone())),
                                "seed {seed} step {step}"
                            );
                            for node in [&order.from_node, &order.to_node] {
                                assert!(
                                    told[node.as_str()].2 >= order.moving.since,
                                    "seed {seed} step {step}: {node} holds an older table"
                                );
                            }
                            switched_by_copy = true;
                            groups.copied(order.moving.since, 1)
                        }
                        None => Vec::new(),
                    },
                    // A late copy: of an earlier move, or of none under way.
                    3 => {
                        let stale = groups
                            .slots()
                            .moving()
                            .map_or(next(20), |m| m.since.saturating_sub(1 + next(3)));
                        groups.copied(stale, 1)
                    }
                    4 => {
                        let (node, _) = nodes[usize::try_from(next(4)).unwrap_or(0)];
                        silent.insert(node, u32::try_from(next(15)).unwrap_or(0));
                        Vec::new()
                    }
                    _ => {
                        now += Settings::default().heartbeat_interval;
                        let mut out = Vec::new();
                        for (node, _) in nodes {
                            if silent.get(node).is_some_and(|left| *left > 0) {
                                *silent.entry(node).or_default() -= 1;
                                continue;
                            }
                            let (role, epoch, holds) = told[node];
                            let mut beat = heartbeat(node, role, epoch, holds);
                            // A primary streams to its group's other node, caught up, as
                            // its sync standby, so that the monitor may promote it.
                            if let (Input::Heartbeat(req), Role::Primary) = (&mut beat, role) {
                                let mine = nodes.iter().find(|(n, _)| *n == node).map(|(_, g)| *g);
                                for (other, group) in nodes {
                                    if other != node
                                        && Some(group) == mine
                                        && silent.get(other).is_none_or(|left| *left == 0)
                                    {
                                        req.standbys.push(crate::wire::StandbyReport {
                                            node: n(other),
                                            streaming: true,
                                            acked_lsn: Lsn(0),
                                            sync: true,
                                        });
                                    }
                                }
                            }
                            let answered = groups.handle(beat, now);
                            for o in &answered {
                                if let GroupsOutput::Reply(Ok(Answer::View(view))) = o {
                                    let holds =
                                        view.slots.as_ref().map_or(holds, SlotTable::version);
                                    told.insert(node, (view.role, view.epoch.0, holds));
                                }
                            }
                            out.extend(answered);
                        }
                        // Probes answer as the node is: alive unless silent; a failed
                        // probe may ask for the next.
                        let mut pending = groups.handle(Input::Tick, now);
                        while !pending.is_empty() {
                            let probes: Vec<(NodeId, u64)> = pending
                                .iter()
                                .filter_map(|o| match o {
                                    GroupsOutput::Probe { node, probe, .. } => {
                                        Some((node.clone(), *probe))
                                    }
                                    _ => None,
                                })
                                .collect();
                            out.append(&mut pending);
                            for (node, probe) in probes {
                                let ok = silent.get(node.as_str()).is_none_or(|left| *left == 0);
                                pending.extend(
                                    groups.handle(Input::ProbeResult { node, probe, ok }, now),
                                );
                            }
                        }
                        out
                    }
                };
                for o in &out {
                    if let GroupsOutput::Event { event, .. } = o
                        && event.kind == EventKind::FailoverDone
                    {
                        failovers += 1;
                    }
                    if let GroupsOutput::Persist(state) = o {
                        assert_eq!(
                            state.version,
                            last_version + 1,
                            "seed {seed} step {step}: one version per change"
                        );
                        last_version = state.version;
                        assert!(
                            state.check().is_ok(),
                            "seed {seed} step {step}: {:?}",
                            state.check()
                        );
                    }
                }
                let after = groups.slots();
                assert!(
                    after.version() >= before.version(),
                    "seed {seed} step {step}"
                );
                if let Some(m) = after.moving() {
                    assert!(
                        m.slots.iter().all(|s| after.owner(*s) == &m.from),
                        "seed {seed} step {step}: a frozen slot changed hands"
                    );
                }
                if after.version() == before.version() {
                    continue;
                }
                let changed: Vec<u16> = (0..keel_core::slots::SLOTS)
                    .filter(|s| before.owner(Slot(*s)) != after.owner(Slot(*s)))
                    .collect();
                if !changed.is_empty() {
                    switches += 1;
                    assert!(
                        switched_by_copy,
                        "seed {seed} step {step}: slots moved without a copy"
                    );
                    let m = before.moving().expect("a move was under way");
                    assert!(
                        changed.iter().all(|s| m.has(Slot(*s))) && changed.len() == m.slots.len(),
                        "seed {seed} step {step}: a switch moved other slots than its move's"
                    );
                }
            }
        }
        // The runs did what they are for: moves completed, and groups failed over.
        eprintln!("{switches} switches, {failovers} failovers");
        assert!(
            switches > 100 && failovers > 20,
            "{switches} switches, {failovers} failovers"
        );
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

//! The monitors: one alone, which persists each change at once (as with `monitor.json`),
//! or a group of three or five that replicates the cluster state with Raft, as `keel
//! monitor --peers` does on openraft.
//!
//! Raft is modelled at the level of what keel relies on, not message for message:
//! - a monitor that hears from no leader for 500–750 ms (its clock) stands for election
//!   in a new term; it wins with the votes of a majority, at most one per term, from
//!   monitors whose logs it covers;
//! - a monitor that heard from an elected leader votes for no one else for 750 ms
//!   (openraft's leader lease, `election_timeout_max`);
//! - the log keeps whole cluster states, so it is its last entry; a leader's entries go
//!   out with every heartbeat (100 ms) and commit once a majority holds one of its term;
//! - a new leader commits an entry of its own term before it uses its log.
//!
//! The machine is `keel monitor`'s own, [`Groups`]: one group or several, with the slot
//! table and the steps of a slot move. The leader's runtime copies the slots of a move as
//! `keel_monitor::runtime` does: piece by piece from the source group's primary to the
//! target's, one request at a time, going on from the last piece when a copy between
//! the same two nodes is tried again, and reports each piece and the end to the machine.
//!
//! The runtime around the decision machine is keel's own, step by step
//! (`keel_monitor::runtime`): only the leader has a machine, built from the replicated
//! state once everything in its log is committed; each `Persist` commits before the
//! outputs behind it are carried out, and the monitor takes no input meanwhile; a commit
//! that no majority confirms within [`COMMIT_TIMEOUT`] costs the leader its machine until
//! a majority acknowledges it again; a node's lease is renewed only while a majority
//! acknowledged the leader less than [`GRANT_CONFIDENCE`] ago, counted from when the
//! leader sent what they acknowledged. The timings are the ones keel ships.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use keel_client::node::{Mark, SlotData};
use keel_client::wire::{EventKind, codes};
use keel_core::NodeId;
use keel_core::slots::{GroupId, Slot, format_slots};
use keel_monitor::Settings as MonitorSettings;
use keel_monitor::machine::groups::{CopyOrder, Groups, GroupsOutput};
use keel_monitor::machine::{self as monitor, Answer as MonitorAnswer};
use keel_monitor::raft::{COMMIT_TIMEOUT, GRANT_CONFIDENCE};
use keel_monitor::runtime::{COPY_RETRY, COPY_TIMEOUT};
use keel_monitor::state::GroupsState;
use tokio::time::Instant;

use crate::config::Flaw;
use crate::net::{Addr, LogId, MonitorRequest, Msg, RaftMsg, Refused, Time};
use crate::world::{Clock, Event, MS, World, node_index, node_name};

/// How long the monitor waits for a probe's answer (one heartbeat interval).
const PROBE_TIMEOUT: Time = 100 * MS;
/// How often the monitor's runtime ticks its machine (half a heartbeat interval).
const MONITOR_TICK: Time = 50 * MS;

fn micros(d: Duration) -> Time {
    d.as_micros() as Time
}

/// Raft's timing, as `keel monitor` configures openraft.
struct Timing {
    heartbeat: Time,
    /// openraft's tick: its timers are looked at this often.
    tick: Time,
    election_min: Time,
    election_max: Time,
}

fn timing() -> Timing {
    let c = keel_monitor::raft::config();
    Timing {
        heartbeat: c.heartbeat_interval * MS,
        tick: c.heartbeat_interval * 3 / 2 * MS,
        election_min: c.election_timeout_min * MS,
        election_max: c.election_timeout_max * MS,
    }
}

/// The node request an answer goes back to: (node, its request number).
type Asker = Option<(usize, u64)>;

/// A monitor's part in Raft.
pub(crate) enum Role {
    Follower,
    /// Standing for election, with the votes it has.
    Candidate(BTreeSet<usize>),
    /// Leading: per monitor, the last position it holds and the latest send it
    /// acknowledged in this term (the leader's clock); and when it last sent appends.
    Leader {
        peers: BTreeMap<usize, (LogId, u64)>,
        last_sent: Option<u64>,
    },
}

/// What Raft keeps on one monitor.
pub(crate) struct Raft {
    // Durable, as openraft keeps its vote and log in redb.
    term: u64,
    voted_for: Option<usize>,
    /// The vote is for a leader known to be elected (openraft's committed vote).
    committed: bool,
    last: LogId,
    state: Option<GroupsState>,
    // Lost in a crash.
    /// When the vote last changed or was confirmed by the leader (its clock): openraft's
    /// vote utime, from which its election timer and leader lease run.
    vote_at: u64,
    /// The election timeout, drawn once when the process starts, as openraft does.
    timeout: Time,
    /// A vote answer showed a longer log than this monitor's: it waits longer before it
    /// stands again, so that the monitor with the longer log wins.
    greater_log: bool,
    commit: u64,
    role: Role,
}

impl Raft {
    /// The leader this monitor knows of.
    fn leader(&self) -> Option<usize> {
        self.voted_for.filter(|_| self.committed)
    }
}

/// Carrying out stopped at a `Persist`, until the entry commits.
struct Blocked {
    index: u64,
    rest: Vec<GroupsOutput>,
    asker: Asker,
}

/// What the runtime hands its machine, one at a time: an input, an operator's request,
/// or the end of a copy.
pub(crate) enum Job {
    Input(monitor::Input),
    /// `POST /v1/slots/move`.
    Move(Vec<Slot>, GroupId),
    /// `POST /v1/slots/cancel`.
    Cancel,
    /// The copy of the move frozen at `since` is done, in `pieces` pieces.
    Copied {
        since: u64,
        pieces: usize,
    },
}

/// The copy of a move under way (`keel_monitor::runtime`'s `copy_slots`): one export,
/// then its import, at a time.
struct CopyRun {
    order: CopyOrder,
    /// The request in flight.
    req: u64,
    /// Where the piece being exported starts.
    after: Option<Mark>,
    /// Where the piece being imported ends (`None`: the last piece).
    upto: Option<Mark>,
    /// Pieces durable at the target.
    pieces: usize,
}

/// How far the last copy got: a copy between the same two nodes goes on from there.
struct SoFar {
    since: u64,
    from: NodeId,
    to: NodeId,
    upto: Mark,
    pieces: usize,
}

/// One monitor process.
pub(crate) struct MonitorActor {
    pub(crate) up: bool,
    /// The decision machine: a lone monitor's while it runs, a group's leader's while it
    /// may decide.
    pub(crate) machine: Option<Groups>,
    /// What a lone monitor persisted last: what a restart finds.
    persisted: Option<GroupsState>,
    pub(crate) life: u64,
    pub(crate) clock: Clock,
    /// Probes in flight: the probed node.
    probes: BTreeMap<u64, usize>,
    raft: Raft,
    blocked: Option<Blocked>,
    /// What came while carrying out was blocked.
    queue: VecDeque<(Asker, Job)>,
    /// A commit failed: decide again only once a majority acknowledges this leader.
    stalled: bool,
    /// The copy running, if one is.
    copy: Option<CopyRun>,
    /// How far the last copy got.
    so_far: Option<SoFar>,
    /// No copy starts before this (the monitor's clock, µs): a failed one waits
    /// [`COPY_RETRY`].
    copy_again_at: u64,
}

impl MonitorActor {
    pub(crate) fn new(clock: Clock) -> Self {
        Self {
            up: false,
            machine: None,
            persisted: None,
            life: 0,
            clock,
            probes: BTreeMap::new(),
            raft: Raft {
                term: 0,
                voted_for: None,
                committed: false,
                last: (0, 0),
                state: None,
                vote_at: 0,
                timeout: 0,
                greater_log: false,
                commit: 0,
                role: Role::Follower,
            },
            blocked: None,
            queue: VecDeque::new(),
            stalled: false,
            copy: None,
            so_far: None,
            copy_again_at: 0,
        }
    }
}

impl World {
    fn group(&self) -> bool {
        self.monitors.len() > 1
    }

    fn majority(&self) -> usize {
        self.monitors.len() / 2 + 1
    }

    /// Monitor `k`'s clock now, in µs.
    fn local(&self, k: usize) -> u64 {
        self.monitors[k].clock.local(self.now)
    }

    pub(crate) fn monitor_now(&self, k: usize) -> Instant {
        self.base + Duration::from_micros(self.local(k))
    }

    // --- life --------------------------------------------------------------------------------

    pub(crate) fn start_monitor(&mut self, k: usize) {
        let m = &mut self.monitors[k];
        m.up = true;
        m.life += 1;
        m.probes.clear();
        m.blocked = None;
        m.queue.clear();
        m.stalled = false;
        m.copy = None;
        m.so_far = None;
        m.copy_again_at = 0;
        if self.group() {
            let t = timing();
            let timeout = self.rng.range(t.election_min, t.election_max);
            // openraft ticks every 1.5 heartbeat intervals from the process's start.
            let phase = self.rng.range(0, t.tick);
            let life = self.monitors[k].life;
            self.at(self.now + phase, Event::RaftTick { monitor: k, life });
            let now = self.local(k);
            let raft = &mut self.monitors[k].raft;
            raft.vote_at = now;
            raft.timeout = timeout;
            raft.greater_log = false;
            raft.commit = 0;
            raft.role = Role::Follower;
        } else {
            let now = self.monitor_now(k);
            let state = self.monitors[k]
                .persisted
                .clone()
                .unwrap_or_else(|| self.fresh.clone());
            let (machine, outputs) = Groups::new(MonitorSettings::default(), state, now);
            self.monitors[k].machine = Some(machine);
            self.monitor_carry_out(k, outputs, None);
        }
        let life = self.monitors[k].life;
        self.at(
            self.now + MONITOR_TICK,
            Event::MonitorTick { monitor: k, life },
        );
    }

    pub(crate) fn crash_monitor(&mut self, k: usize) {
        if !self.monitors[k].up {
            return;
        }
        self.monitors[k].up = false;
        self.drop_machine(k);
        // Lost with the process: what is in flight and who leads. Raft's vote and log
        // are on disk.
        let m = &mut self.monitors[k];
        m.blocked = None;
        m.queue.clear();
        self.note(Addr::Monitor(k), "crashed".into());
    }

    fn drop_machine(&mut self, k: usize) {
        if let Some(machine) = self.monitors[k].machine.take() {
            self.failovers += machine.stats().failovers_total;
        }
        // The copy's answers go nowhere now (keel's copy task reports to a runtime that
        // no longer decides).
        self.monitors[k].copy = None;
    }

    pub(crate) fn monitor_tick(&mut self, k: usize, life: u64) {
        if life != self.monitors[k].life || !self.monitors[k].up {
            return;
        }
        if self.monitors[k].machine.is_some() && self.monitors[k].blocked.is_none() {
            self.monitor_input(k, None, Job::Input(monitor::Input::Tick));
            self.drive_move(k);
        }
        self.at(
            self.now + MONITOR_TICK,
            Event::MonitorTick { monitor: k, life },
        );
    }

    // --- the runtime around the machine -----------------------------------------------------

    fn monitor_input(&mut self, k: usize, asker: Asker, job: Job) {
        if self.monitors[k].blocked.is_some() {
            self.monitors[k].queue.push_back((asker, job));
            return;
        }
        let now = self.monitor_now(k);
        let Some(machine) = self.monitors[k].machine.as_mut() else {
            self.refuse_not_leader(k, asker);
            return;
        };
        let outputs = match job {
            Job::Input(input) => Ok(machine.handle(input, now)),
            Job::Move(slots, to) => machine
                .begin_move(&slots, &to)
                .map_err(|e| format!("move of slots {} refused: {e}", format_slots(&slots))),
            Job::Cancel => machine
                .cancel_move()
                .map_err(|e| format!("cancel refused: {e}")),
            Job::Copied { since, pieces } => Ok(machine.copied(since, pieces)),
        };
        match outputs {
            Ok(outputs) => self.monitor_carry_out(k, outputs, asker),
            Err(why) => self.note(Addr::Monitor(k), why),
        }
    }

    /// Carries out the machine's outputs in order; in a group, a `Persist` stops it until
    /// the entry commits.
    fn monitor_carry_out(&mut self, k: usize, outputs: Vec<GroupsOutput>, mut asker: Asker) {
        let mut outputs = outputs.into_iter();
        while let Some(output) = outputs.next() {
            match output {
                GroupsOutput::Persist(state) => {
                    if !self.group() {
                        self.committed(&state);
                        self.monitors[k].persisted = Some(state);
                        continue;
                    }
                    let raft = &mut self.monitors[k].raft;
                    raft.last = (raft.term, raft.last.1 + 1);
                    raft.state = Some(state);
                    let index = raft.last.1;
                    self.send_appends(k);
                    if self.flaw() == Flaw::AnswerBeforeCommit {
                        continue;
                    }
                    self.monitors[k].blocked = Some(Blocked {
                        index,
                        rest: outputs.collect(),
                        asker,
                    });
                    let life = self.monitors[k].life;
                    self.at(
                        self.now + micros(COMMIT_TIMEOUT),
                        Event::CommitTimeout {
                            monitor: k,
                            life,
                            index,
                        },
                    );
                    return;
                }
                GroupsOutput::Probe { node, probe, .. } => {
                    let Some(i) = node_index(node.as_str()) else {
                        continue;
                    };
                    self.monitors[k].probes.insert(probe, i);
                    self.send(Addr::Monitor(k), Addr::Node(i), Msg::Probe { probe });
                    self.at(
                        self.now + PROBE_TIMEOUT,
                        Event::ProbeTimeout { monitor: k, probe },
                    );
                }
                GroupsOutput::Event { group, event: e } => {
                    match e.kind {
                        EventKind::SlotsMoved => self.moves += 1,
                        EventKind::MoveCancelled => self.cancelled += 1,
                        _ => {}
                    }
                    self.note(
                        Addr::Monitor(k),
                        format!("event {group} {:?}: {}", e.kind, e.message),
                    );
                    let table_changed = matches!(
                        e.kind,
                        EventKind::SlotsMoving | EventKind::SlotsMoved | EventKind::MoveCancelled
                    );
                    if let Some(table) = self.monitors[k]
                        .machine
                        .as_ref()
                        .map(|m| m.slots().clone())
                        .filter(|_| table_changed)
                    {
                        // The first client watches the monitor's events, as `keel proxy
                        // --cluster` does, and reads the table again; the others learn
                        // it from the 421s of nodes that hold a newer one.
                        let msg = Msg::Table(Box::new(table));
                        self.send(Addr::Monitor(k), Addr::Client(0), msg);
                    }
                }
                GroupsOutput::Reply(result) => {
                    let Some((node, req)) = asker.take() else {
                        continue;
                    };
                    let answer = match result {
                        Ok(MonitorAnswer::View(mut view)) => {
                            if self.group()
                                && !self.confident(k)
                                && self.flaw() != Flaw::LeaseWithoutMajority
                            {
                                view.lease_ms = None;
                            }
                            Ok(Box::new(view))
                        }
                        Ok(MonitorAnswer::Cluster(_)) => continue,
                        Err(refusal) => Err(Refused {
                            error: refusal.error,
                            view: refusal.view,
                            leader: None,
                        }),
                    };
                    self.send(
                        Addr::Monitor(k),
                        Addr::Node(node),
                        Msg::FromMonitor { req, answer },
                    );
                }
            }
        }
    }

    /// The cluster state is committed (persisted, alone): each group's epoch and the
    /// version only go forward, and a table version names one table.
    fn committed(&mut self, state: &GroupsState) {
        for (group, cluster) in &state.groups {
            let seen = self.monitor_epochs.entry(group.clone()).or_default();
            if cluster.epoch < *seen {
                let was = *seen;
                self.fail(
                    "epochs never go back",
                    format!(
                        "the monitors committed epoch {} of {group} after epoch {was}",
                        cluster.epoch
                    ),
                );
                return;
            }
            *seen = cluster.epoch;
        }
        self.committed_version = self.committed_version.max(state.version);
        let version = state.slots.version();
        match self.tables.get(&version) {
            Some(known) if *known != state.slots => self.fail(
                "a committed cluster state is never lost",
                format!("the monitors committed two different slot tables of version {version}"),
            ),
            Some(_) => {}
            None => {
                self.tables.insert(version, state.slots.clone());
            }
        }
    }

    /// `421 not_leader` with the leader's name, or `503 not_leader` when this monitor
    /// knows none (or leads but may not decide).
    fn refuse_not_leader(&mut self, k: usize, asker: Asker) {
        let Some((node, req)) = asker else {
            return;
        };
        let leader = self.monitors[k].raft.leader().filter(|l| *l != k);
        let answer = Err(Refused {
            error: codes::NOT_LEADER,
            view: None,
            leader,
        });
        self.send(
            Addr::Monitor(k),
            Addr::Node(node),
            Msg::FromMonitor { req, answer },
        );
    }

    /// A commit did not come within [`COMMIT_TIMEOUT`]: the machine's state is ahead of
    /// the group's, so it goes, and the request behind it is refused.
    pub(crate) fn commit_timeout(&mut self, k: usize, life: u64, index: u64) {
        let m = &self.monitors[k];
        if m.life != life || m.blocked.as_ref().is_none_or(|b| b.index != index) {
            return;
        }
        self.note(
            Addr::Monitor(k),
            format!("entry {index} did not commit within {COMMIT_TIMEOUT:?}; stops deciding"),
        );
        self.monitors[k].stalled = true;
        self.stop_deciding(k);
    }

    /// Drops the machine and refuses what waited for it.
    fn stop_deciding(&mut self, k: usize) {
        self.drop_machine(k);
        if let Some(blocked) = self.monitors[k].blocked.take() {
            self.refuse_not_leader(k, blocked.asker);
        }
        while let Some((asker, _)) = self.monitors[k].queue.pop_front() {
            self.refuse_not_leader(k, asker);
        }
    }

    /// Whether a majority acknowledged this leader less than [`GRANT_CONFIDENCE`] ago.
    fn confident(&self, k: usize) -> bool {
        self.quorum_ack(k)
            .is_some_and(|at| self.local(k).saturating_sub(at) < micros(GRANT_CONFIDENCE))
    }

    /// When the latest send that a majority (the leader counting itself) acknowledged
    /// went out, on the leader's clock.
    fn quorum_ack(&self, k: usize) -> Option<u64> {
        let Role::Leader { peers, .. } = &self.monitors[k].raft.role else {
            return None;
        };
        let mut acked: Vec<u64> = peers.values().map(|(_, sent)| *sent).collect();
        acked.push(self.local(k));
        acked.sort_unstable_by(|a, b| b.cmp(a));
        acked.get(self.majority() - 1).copied()
    }

    /// A leader takes up a machine once everything in its log is committed (and, after a
    /// failed commit, once a majority acknowledges it again).
    fn take_up_machine(&mut self, k: usize) {
        let m = &self.monitors[k];
        let leads = matches!(m.raft.role, Role::Leader { .. });
        if !m.up || !leads || m.machine.is_some() || m.blocked.is_some() {
            return;
        }
        if m.raft.commit < m.raft.last.1 || (m.stalled && !self.confident(k)) {
            return;
        }
        self.monitors[k].stalled = false;
        let state = self.monitors[k].raft.state.clone();
        let version = state.as_ref().map_or(0, |s| s.version);
        if version < self.committed_version {
            self.fail(
                "a committed cluster state is never lost",
                format!(
                    "{} leads from version {version}, but version {} was committed",
                    Addr::Monitor(k),
                    self.committed_version
                ),
            );
            return;
        }
        let now = self.monitor_now(k);
        let state = state.unwrap_or_else(|| self.fresh.clone());
        let (machine, started) = Groups::new(MonitorSettings::default(), state, now);
        let term = self.monitors[k].raft.term;
        let groups: Vec<String> = machine
            .state()
            .groups
            .iter()
            .map(|(g, c)| {
                format!(
                    "{g} epoch {}, primary {}",
                    c.epoch,
                    c.primary.as_ref().map_or("-", |p| p.as_str())
                )
            })
            .collect();
        self.note(
            Addr::Monitor(k),
            format!(
                "leads the group in term {term}: {}; slot table version {}",
                groups.join("; "),
                machine.slots().version()
            ),
        );
        self.monitors[k].machine = Some(machine);
        self.monitors[k].probes.clear();
        self.monitor_carry_out(k, started, None);
    }

    // --- what nodes send -------------------------------------------------------------------

    pub(crate) fn monitor_receive(&mut self, k: usize, from: Addr, msg: Msg) {
        match (from, msg) {
            (Addr::Node(node), Msg::ToMonitor { req, body }) => {
                let input = match body {
                    MonitorRequest::Register(r) => monitor::Input::Register(r),
                    MonitorRequest::Heartbeat(h) => monitor::Input::Heartbeat(h),
                    MonitorRequest::SyncDrop(d) => monitor::Input::SyncDrop(d),
                };
                self.monitor_input(k, Some((node, req)), Job::Input(input));
            }
            (Addr::Node(_), Msg::ProbeOk { probe }) => self.probe_result(k, probe, true),
            (Addr::Sim, Msg::MoveSlots { slots, to }) => {
                self.monitor_input(k, None, Job::Move(slots, to));
            }
            (Addr::Sim, Msg::CancelMove) => self.monitor_input(k, None, Job::Cancel),
            (Addr::Node(_), Msg::Piece { req, piece }) => self.piece_received(k, req, piece),
            (Addr::Node(_), Msg::Imported { req, result }) => self.imported(k, req, result),
            (Addr::Monitor(j), Msg::Raft(msg)) => self.raft_receive(k, j, msg),
            _ => {}
        }
    }

    pub(crate) fn probe_result(&mut self, k: usize, probe: u64, ok: bool) {
        if !self.monitors[k].up {
            return;
        }
        let Some(node) = self.monitors[k].probes.remove(&probe) else {
            return;
        };
        let Some(node) = keel_core::NodeId::new(node_name(node)).ok() else {
            return;
        };
        self.monitor_input(
            k,
            None,
            Job::Input(monitor::Input::ProbeResult { node, probe, ok }),
        );
    }

    // --- Raft ------------------------------------------------------------------------------

    pub(crate) fn raft_tick(&mut self, k: usize, life: u64) {
        if life != self.monitors[k].life || !self.monitors[k].up {
            return;
        }
        let t = timing();
        self.at(self.now + t.tick, Event::RaftTick { monitor: k, life });
        let now = self.local(k);
        let raft = &self.monitors[k].raft;
        match &raft.role {
            Role::Leader { last_sent, .. } => {
                if last_sent.is_none_or(|at| now >= at + t.heartbeat) {
                    self.send_appends(k);
                }
                self.take_up_machine(k);
            }
            _ => {
                // openraft's election timer: from the vote's last update, longer while
                // the vote is for an elected leader (its lease), and longer still after
                // a longer log was seen.
                let mut wait = raft.timeout;
                if raft.committed {
                    wait += t.election_max;
                }
                if raft.greater_log {
                    wait += 2 * t.election_max;
                }
                if now >= raft.vote_at + wait {
                    self.stand(k);
                }
            }
        }
    }

    /// The monitor that leads the latest term, if it is up.
    pub(crate) fn leader_now(&self) -> Option<usize> {
        (0..self.monitors.len())
            .filter(|&k| {
                self.monitors[k].up && matches!(self.monitors[k].raft.role, Role::Leader { .. })
            })
            .max_by_key(|&k| self.monitors[k].raft.term)
    }

    fn peers(&self, k: usize) -> Vec<usize> {
        (0..self.monitors.len()).filter(|j| *j != k).collect()
    }

    fn stand(&mut self, k: usize) {
        let now = self.local(k);
        let raft = &mut self.monitors[k].raft;
        raft.term += 1;
        raft.voted_for = Some(k);
        raft.committed = false;
        raft.vote_at = now;
        raft.greater_log = false;
        raft.role = Role::Candidate(BTreeSet::from([k]));
        let (term, last) = (raft.term, raft.last);
        self.note(
            Addr::Monitor(k),
            format!("stands for election in term {term}"),
        );
        for j in self.peers(k) {
            self.send(
                Addr::Monitor(k),
                Addr::Monitor(j),
                Msg::Raft(RaftMsg::Vote { term, last }),
            );
        }
    }

    fn send_appends(&mut self, k: usize) {
        let now = self.local(k);
        let raft = &mut self.monitors[k].raft;
        if let Role::Leader { last_sent, .. } = &mut raft.role {
            *last_sent = Some(now);
        }
        let msg = RaftMsg::Append {
            term: raft.term,
            last: raft.last,
            state: raft.state.clone().map(Box::new),
            commit: raft.commit,
            sent: now,
        };
        for j in self.peers(k) {
            self.send(Addr::Monitor(k), Addr::Monitor(j), Msg::Raft(msg.clone()));
        }
    }

    /// Takes the vote (`term`, `node`) if it is not older than this monitor's (Raft: one
    /// vote per term); a leader that takes another's stops deciding. Returns whether it
    /// was taken.
    fn update_vote(&mut self, k: usize, term: u64, node: Option<usize>, committed: bool) -> bool {
        let now = self.local(k);
        let raft = &self.monitors[k].raft;
        let same_term = term == raft.term;
        // Of one term, the elected leader's vote beats a candidate's own.
        let taken = term > raft.term
            || (same_term
                && (raft.voted_for.is_none()
                    || raft.voted_for == node
                    || node.is_none()
                    || (committed && !raft.committed)));
        if !taken {
            return false;
        }
        let led = matches!(raft.role, Role::Leader { .. });
        let keeps = same_term && raft.voted_for == node;
        let raft = &mut self.monitors[k].raft;
        raft.vote_at = now;
        if keeps {
            raft.committed |= committed;
            return true;
        }
        if same_term && node.is_none() {
            // An answer of the same term: nothing to learn.
            return true;
        }
        raft.term = term;
        raft.voted_for = node;
        raft.committed = committed;
        raft.role = Role::Follower;
        if led {
            self.note(
                Addr::Monitor(k),
                format!("no longer leads: term {term} began"),
            );
            self.stop_deciding(k);
        }
        true
    }

    fn raft_receive(&mut self, k: usize, from: usize, msg: RaftMsg) {
        match msg {
            RaftMsg::Append {
                term,
                last,
                state,
                commit,
                sent,
            } => {
                let ok = self.update_vote(k, term, Some(from), true);
                let raft = &mut self.monitors[k].raft;
                if ok {
                    if last > raft.last {
                        raft.last = last;
                        raft.state = state.map(|s| *s);
                    }
                    if raft.last == last {
                        raft.commit = raft.commit.max(commit);
                    }
                }
                let answer = RaftMsg::AppendAnswer {
                    term: raft.term,
                    ok,
                    last: raft.last,
                    sent,
                };
                self.send(Addr::Monitor(k), Addr::Monitor(from), Msg::Raft(answer));
            }
            RaftMsg::AppendAnswer {
                term,
                ok,
                last,
                sent,
            } => {
                if !ok {
                    if term > self.monitors[k].raft.term {
                        self.update_vote(k, term, None, false);
                    }
                    return;
                }
                let mine = self.monitors[k].raft.term;
                let Role::Leader { peers, .. } = &mut self.monitors[k].raft.role else {
                    return;
                };
                if term != mine {
                    return;
                }
                let seen = peers.entry(from).or_insert((last, sent));
                *seen = (seen.0.max(last), seen.1.max(sent));
                self.advance_commit(k);
            }
            RaftMsg::Vote { term, last } => {
                let now = self.local(k);
                let raft = &self.monitors[k].raft;
                // openraft's leader lease: no vote while the vote is for an elected
                // leader confirmed within election_timeout_max.
                let leased = raft.committed && now <= raft.vote_at + timing().election_max;
                let granted = !leased && last >= raft.last && {
                    self.update_vote(k, term, Some(from), false)
                };
                let raft = &self.monitors[k].raft;
                let answer = RaftMsg::VoteAnswer {
                    term: raft.term,
                    granted,
                    last: raft.last,
                };
                self.send(Addr::Monitor(k), Addr::Monitor(from), Msg::Raft(answer));
            }
            RaftMsg::VoteAnswer {
                term,
                granted,
                last,
            } => {
                let majority = self.majority();
                let raft = &mut self.monitors[k].raft;
                let Role::Candidate(votes) = &mut raft.role else {
                    return;
                };
                if granted && term == raft.term {
                    votes.insert(from);
                    if votes.len() >= majority {
                        self.elected(k);
                    }
                    return;
                }
                if last > raft.last {
                    raft.greater_log = true;
                }
                if term > raft.term {
                    self.update_vote(k, term, None, false);
                }
            }
        }
    }

    fn elected(&mut self, k: usize) {
        let now = self.local(k);
        let raft = &mut self.monitors[k].raft;
        let term = raft.term;
        raft.role = Role::Leader {
            peers: BTreeMap::new(),
            last_sent: None,
        };
        raft.committed = true;
        raft.vote_at = now;
        // An entry of its own term: committing it commits everything before it.
        raft.last = (term, raft.last.1 + 1);
        if let Some(other) = self.leaders.insert(term, k)
            && other != k
        {
            self.fail(
                "at most one monitor leads a term",
                format!(
                    "{} and {} both lead term {term}",
                    Addr::Monitor(other),
                    Addr::Monitor(k)
                ),
            );
            return;
        }
        self.note(Addr::Monitor(k), format!("elected leader of term {term}"));
        self.send_appends(k);
    }

    /// Commits up to the highest index of this term that a majority holds, then goes on
    /// with what waited for it.
    fn advance_commit(&mut self, k: usize) {
        let majority = self.majority();
        let raft = &self.monitors[k].raft;
        let Role::Leader { peers, .. } = &raft.role else {
            return;
        };
        let mut held: Vec<u64> = peers
            .values()
            .filter(|(last, _)| last.0 == raft.term)
            .map(|(last, _)| last.1)
            .collect();
        held.push(raft.last.1);
        held.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&commit) = held.get(majority - 1) else {
            return;
        };
        if commit <= raft.commit {
            return;
        }
        self.monitors[k].raft.commit = commit;
        if commit == self.monitors[k].raft.last.1
            && let Some(state) = self.monitors[k].raft.state.take()
        {
            self.committed(&state);
            self.monitors[k].raft.state = Some(state);
        }
        if let Some(b) = self.monitors[k].blocked.take_if(|b| b.index <= commit) {
            self.monitor_carry_out(k, b.rest, b.asker);
            while self.monitors[k].blocked.is_none() && self.monitors[k].machine.is_some() {
                let Some((asker, job)) = self.monitors[k].queue.pop_front() else {
                    break;
                };
                self.monitor_input(k, asker, job);
            }
        }
        self.take_up_machine(k);
    }
}

// --- the copies of slot moves ----------------------------------------------------------

impl World {
    /// `keel_monitor::runtime`'s `drive_move`: starts the copy of the move under way when
    /// the machine says it may run and no copy runs.
    fn drive_move(&mut self, k: usize) {
        let m = &self.monitors[k];
        if !m.up || m.blocked.is_some() || m.copy.is_some() || self.local(k) < m.copy_again_at {
            return;
        }
        let now = self.monitor_now(k);
        let Some(order) = m.machine.as_ref().and_then(|g| g.next_copy(now)) else {
            return;
        };
        let since = order.moving.since;
        // What the last copy imported between these two nodes is durable at the target,
        // and the source's slots are frozen: go on after it.
        let (after, pieces) = m
            .so_far
            .as_ref()
            .filter(|s| s.since == since && s.from == order.from_node && s.to == order.to_node)
            .map_or((None, 0), |s| (Some(s.upto.clone()), s.pieces));
        self.note(
            Addr::Monitor(k),
            format!(
                "copies slots {} from {} to {}, from piece {}",
                format_slots(&order.moving.slots),
                order.from_node,
                order.to_node,
                pieces + 1
            ),
        );
        self.monitors[k].copy = Some(CopyRun {
            order,
            req: 0,
            after,
            upto: None,
            pieces,
        });
        self.export_next(k);
    }

    /// Asks the source primary for the next piece.
    fn export_next(&mut self, k: usize) {
        self.next_req += 1;
        let req = self.next_req;
        let Some(copy) = self.monitors[k].copy.as_mut() else {
            return;
        };
        copy.req = req;
        let Some(from) = node_index(copy.order.from_node.as_str()) else {
            return;
        };
        let msg = Msg::Export {
            req,
            since: copy.order.moving.since,
            after: copy.after.clone(),
        };
        self.send(Addr::Monitor(k), Addr::Node(from), msg);
        self.copy_timer(k, req);
    }

    fn copy_timer(&mut self, k: usize, req: u64) {
        let life = self.monitors[k].life;
        self.at(
            self.now + micros(COPY_TIMEOUT),
            Event::CopyTimeout {
                monitor: k,
                life,
                req,
            },
        );
    }

    /// The source's piece: into the target, when it goes on from where the last ended.
    fn piece_received(&mut self, k: usize, req: u64, piece: Result<Box<SlotData>, String>) {
        let Some(copy) = self.monitors[k].copy.as_ref().filter(|c| c.req == req) else {
            return;
        };
        let from = copy.order.from_node.clone();
        let data = match piece {
            Ok(data) => data,
            Err(why) => return self.copy_failed(k, format!("export from {from}: {why}")),
        };
        if let (Some(upto), Some(after)) = (&data.upto, &copy.after)
            && upto <= after
        {
            let why =
                format!("export from {from}: a piece ends ({upto:?}) where the one before did");
            return self.copy_failed(k, why);
        }
        self.next_req += 1;
        let next = self.next_req;
        let Some(copy) = self.monitors[k].copy.as_mut() else {
            return;
        };
        copy.req = next;
        copy.upto = data.upto.clone();
        let Some(to) = node_index(copy.order.to_node.as_str()) else {
            return;
        };
        self.send(
            Addr::Monitor(k),
            Addr::Node(to),
            Msg::Import { req: next, data },
        );
        self.copy_timer(k, next);
    }

    /// The target holds the piece durably: the next piece, or the copy is done.
    fn imported(&mut self, k: usize, req: u64, result: Result<usize, String>) {
        let Some(copy) = self.monitors[k].copy.as_mut().filter(|c| c.req == req) else {
            return;
        };
        if let Err(why) = result {
            let why = format!("import into {}: {why}", copy.order.to_node);
            return self.copy_failed(k, why);
        }
        copy.pieces += 1;
        let (since, pieces) = (copy.order.moving.since, copy.pieces);
        match copy.upto.take() {
            None => {
                self.monitors[k].copy = None;
                self.monitors[k].so_far = None;
                self.monitor_input(k, None, Job::Copied { since, pieces });
            }
            Some(upto) => {
                copy.after = Some(upto.clone());
                let so_far = SoFar {
                    since,
                    from: copy.order.from_node.clone(),
                    to: copy.order.to_node.clone(),
                    upto,
                    pieces,
                };
                self.monitors[k].so_far = Some(so_far);
                let now = self.monitor_now(k);
                if let Some(machine) = self.monitors[k].machine.as_mut() {
                    machine.piece_copied(since, pieces, now);
                }
                self.export_next(k);
            }
        }
    }

    /// The copy failed: the next is tried [`COPY_RETRY`] later.
    fn copy_failed(&mut self, k: usize, why: String) {
        self.monitors[k].copy = None;
        self.monitors[k].copy_again_at = self.local(k) + micros(COPY_RETRY);
        self.note(
            Addr::Monitor(k),
            format!("copy failed: {why}; trying again shortly"),
        );
    }

    /// An export or import that got no answer within [`COPY_TIMEOUT`].
    pub(crate) fn copy_timeout(&mut self, k: usize, life: u64, req: u64) {
        let m = &self.monitors[k];
        if m.life != life || !m.up || m.copy.as_ref().is_none_or(|c| c.req != req) {
            return;
        }
        self.copy_failed(k, format!("no answer within {COPY_TIMEOUT:?}"));
    }
}

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

use keel_client::wire::codes;
use keel_monitor::machine::{self as monitor, Answer as MonitorAnswer};
use keel_monitor::raft::{COMMIT_TIMEOUT, GRANT_CONFIDENCE};
use keel_monitor::{ClusterState, Monitor, Settings as MonitorSettings};
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
    state: Option<ClusterState>,
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
    rest: Vec<monitor::Output>,
    asker: Asker,
}

/// One monitor process.
pub(crate) struct MonitorActor {
    pub(crate) up: bool,
    /// The decision machine: a lone monitor's while it runs, a group's leader's while it
    /// may decide.
    pub(crate) machine: Option<Monitor>,
    /// What a lone monitor persisted last: what a restart finds.
    persisted: Option<ClusterState>,
    pub(crate) life: u64,
    pub(crate) clock: Clock,
    /// Probes in flight: the probed node.
    probes: BTreeMap<u64, usize>,
    raft: Raft,
    blocked: Option<Blocked>,
    /// Inputs that came while carrying out was blocked.
    queue: VecDeque<(Asker, monitor::Input)>,
    /// A commit failed: decide again only once a majority acknowledges this leader.
    stalled: bool,
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
            let (machine, outputs) = Monitor::new(
                MonitorSettings::default(),
                self.monitors[k].persisted.clone(),
                now,
            );
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
    }

    pub(crate) fn monitor_tick(&mut self, k: usize, life: u64) {
        if life != self.monitors[k].life || !self.monitors[k].up {
            return;
        }
        if self.monitors[k].machine.is_some() && self.monitors[k].blocked.is_none() {
            self.monitor_input(k, None, monitor::Input::Tick);
        }
        self.at(
            self.now + MONITOR_TICK,
            Event::MonitorTick { monitor: k, life },
        );
    }

    // --- the runtime around the machine -----------------------------------------------------

    fn monitor_input(&mut self, k: usize, asker: Asker, input: monitor::Input) {
        if self.monitors[k].blocked.is_some() {
            self.monitors[k].queue.push_back((asker, input));
            return;
        }
        let now = self.monitor_now(k);
        let Some(machine) = self.monitors[k].machine.as_mut() else {
            self.refuse_not_leader(k, asker);
            return;
        };
        let outputs = machine.handle(input, now);
        self.monitor_carry_out(k, outputs, asker);
    }

    /// Carries out the machine's outputs in order; in a group, a `Persist` stops it until
    /// the entry commits.
    fn monitor_carry_out(&mut self, k: usize, outputs: Vec<monitor::Output>, mut asker: Asker) {
        let mut outputs = outputs.into_iter();
        while let Some(output) = outputs.next() {
            match output {
                monitor::Output::Persist(state) => {
                    if !self.group() {
                        self.committed(state.clone());
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
                monitor::Output::Probe { node, probe, .. } => {
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
                monitor::Output::Event(e) => {
                    self.note(
                        Addr::Monitor(k),
                        format!("event {:?}: {}", e.kind, e.message),
                    );
                }
                monitor::Output::Reply(result) => {
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

    /// The cluster state is committed (persisted, alone): epochs and versions only go
    /// forward.
    fn committed(&mut self, state: ClusterState) {
        if state.epoch < self.monitor_epoch {
            self.fail(
                "epochs never go back",
                format!(
                    "the monitors committed epoch {} after epoch {}",
                    state.epoch, self.monitor_epoch
                ),
            );
        }
        self.monitor_epoch = self.monitor_epoch.max(state.epoch);
        self.committed_version = self.committed_version.max(state.version);
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
        let (machine, started) = Monitor::new(MonitorSettings::default(), state, now);
        let term = self.monitors[k].raft.term;
        self.note(
            Addr::Monitor(k),
            format!(
                "leads the group in term {term}: epoch {}, primary {}",
                machine.state().epoch,
                machine.state().primary.as_ref().map_or("-", |p| p.as_str())
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
                self.monitor_input(k, Some((node, req)), input);
            }
            (Addr::Node(_), Msg::ProbeOk { probe }) => self.probe_result(k, probe, true),
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
        self.monitor_input(k, None, monitor::Input::ProbeResult { node, probe, ok });
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
            && let Some(state) = self.monitors[k].raft.state.clone()
        {
            self.committed(state);
        }
        if let Some(b) = self.monitors[k].blocked.take_if(|b| b.index <= commit) {
            self.monitor_carry_out(k, b.rest, b.asker);
            while self.monitors[k].blocked.is_none() && self.monitors[k].machine.is_some() {
                let Some((asker, input)) = self.monitors[k].queue.pop_front() else {
                    break;
                };
                self.monitor_input(k, asker, input);
            }
        }
        self.take_up_machine(k);
    }
}

//! The world: simulated time, the event queue, the network, the clients, the fault
//! schedule and the invariants checked after every step. The data nodes' drivers are in
//! `node`, the monitors' in `group`.

use std::collections::{BTreeMap, BTreeSet};

use keel_core::Epoch;
use keel_core::slots::{GroupId, Slot, SlotTable, format_slots, slot_of};
use keel_monitor::state::GroupsState;
use tokio::time::Instant;

use crate::config::{Config, Flaw};
use crate::group::MonitorActor;
use crate::linear;
use crate::net::{Addr, ClientReply, Msg, Time};
use crate::node::SimNode;
use crate::rng::Rng;

/// µs in a ms.
pub(crate) const MS: Time = 1_000;
/// How long a client waits for an answer before it counts the operation as unknown.
const CLIENT_TIMEOUT: Time = 2_000 * MS;

/// A clock that may run fast or slow: local µs = offset + t·(1 + ppm/10⁶).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    offset: u64,
    ppm: i64,
}

impl Clock {
    pub(crate) fn local(&self, t: Time) -> u64 {
        let skew = (i128::from(t) * i128::from(self.ppm) / 1_000_000) as i64;
        (self.offset as i64 + t as i64 + skew).max(0) as u64
    }

    /// The first true time at which the clock reads at least `local`.
    pub(crate) fn true_time(&self, local: u64) -> Time {
        let since = local.saturating_sub(self.offset) as i128;
        (since * 1_000_000 / (1_000_000 + i128::from(self.ppm))) as Time + 1
    }
}

/// Something due at a simulated instant.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Deliver {
        from: Addr,
        to: Addr,
        msg: Msg,
    },
    NodeTick {
        node: usize,
        life: u64,
    },
    Heartbeat {
        node: usize,
        life: u64,
    },
    CommitDone {
        node: usize,
        life: u64,
        batch: u64,
    },
    SenderTimer {
        node: usize,
        life: u64,
        link: u64,
        conn: u64,
    },
    SenderRetry {
        node: usize,
        life: u64,
        link: u64,
    },
    MonitorTick {
        monitor: usize,
        life: u64,
    },
    ProbeTimeout {
        monitor: usize,
        probe: u64,
    },
    CommitTimeout {
        monitor: usize,
        life: u64,
        index: u64,
    },
    RaftTick {
        monitor: usize,
        life: u64,
    },
    ClientNext {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        op: u64,
    },
    CopyTimeout {
        monitor: usize,
        life: u64,
        req: u64,
    },
    /// The operator asks the monitors to move slots between groups.
    MoveSlots,
    /// The operator asks the monitors to call the move under way off.
    CancelMove,
    Crash(Addr),
    Restart(Addr),
    Cut(Addr, Addr),
    Heal(Addr, Addr),
    /// The group split in two: the monitor leading now and the node that is primary now
    /// on one side, the other monitors and nodes on the other, until `end`.
    Split {
        end: Time,
    },
    Calm,
    FinalReads,
}

/// A replication connection.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) primary: usize,
    pub(crate) standby: usize,
    pub(crate) broken: bool,
    /// When the last message in each direction is due, so that they arrive in order.
    last: [Time; 2],
}

/// A client and the operation it has in flight.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// Per group, the node it believes is that group's primary.
    targets: Vec<usize>,
    /// The slot table it routes by: the first, then the newer ones `421`s bring.
    table: SlotTable,
    pending: Option<Pending>,
    writes: u64,
    done: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    op: u64,
    key: String,
    /// The group it was sent to.
    group: usize,
    write: Option<u64>,
    invoke: Time,
}

/// What a run found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant broken.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// When (ms of simulated time).
    pub at_ms: u64,
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// Every step, one line each.
    pub trace: Vec<String>,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Operations whose outcome stayed unknown.
    pub unknown: u64,
    /// Failovers the monitors completed.
    pub failovers: u64,
    /// Slot moves completed (slots switched to their new group).
    pub moves: u64,
    /// Slot moves called off.
    pub cancelled: u64,
    /// Monitors elected leader of a term (0 with a lone monitor).
    pub elections: u64,
    /// Events handled.
    pub steps: u64,
}

pub(crate) struct World {
    pub(crate) cfg: Config,
    pub(crate) rng: Rng,
    pub(crate) now: Time,
    seq: u64,
    queue: BTreeMap<(Time, u64), Event>,
    pub(crate) base: Instant,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) monitors: Vec<MonitorActor>,
    clients: Vec<Client>,
    pub(crate) conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    cut: BTreeSet<(Addr, Addr)>,
    loss: u64,
    duplicate: u64,
    spikes: bool,
    calm: bool,
    pub(crate) trace: Vec<String>,
    history: BTreeMap<String, Vec<linear::Op>>,
    pub(crate) violation: Option<Violation>,
    next_op: u64,
    pub(crate) next_req: u64,
    epochs_seen: Vec<Epoch>,
    /// The groups, `g1`, `g2`, …
    pub(crate) groups: Vec<GroupId>,
    /// What every monitor starts from: each group empty, the slots split evenly.
    pub(crate) fresh: GroupsState,
    /// The latest epoch of each group the monitors committed (persisted, alone).
    pub(crate) monitor_epochs: BTreeMap<GroupId, Epoch>,
    /// The latest version of the cluster state the monitors committed.
    pub(crate) committed_version: u64,
    /// Every slot table the monitors committed, by version.
    pub(crate) tables: BTreeMap<u64, SlotTable>,
    /// Per slot, the group that last acknowledged a write of it and the newest table
    /// version it did so under.
    slot_acks: BTreeMap<u16, (GroupId, u64)>,
    /// Slot moves completed and called off, as the monitors' events say.
    pub(crate) moves: u64,
    pub(crate) cancelled: u64,
    /// Who led each term (at most one).
    pub(crate) leaders: BTreeMap<u64, usize>,
    /// Failovers completed by machines since dropped.
    pub(crate) failovers: u64,
    writes_ok: u64,
    reads_ok: u64,
    unknown: u64,
    steps: u64,
}

impl World {
    pub(crate) fn new(seed: u64, cfg: Config) -> Self {
        let mut rng = Rng::new(seed);
        let base = Instant::now();
        let faults = cfg.faults;
        let clock = |rng: &mut Rng| Clock {
            offset: rng.range(0, 1_000) * MS,
            ppm: if faults.clock {
                rng.range(0, 100_000) as i64 - 50_000
            } else {
                0
            },
        };
        let monitor_clock = clock(&mut rng);
        let groups: Vec<GroupId> = (0..cfg.groups.max(1))
            .map(|g| GroupId::new(format!("g{}", g + 1)).expect("`g{n}` is a valid group id"))
            .collect();
        let fresh = GroupsState::new(&groups).expect("at least one group");
        let nodes: Vec<SimNode> = (0..cfg.nodes * groups.len())
            .map(|i| {
                let c = clock(&mut rng);
                SimNode::new(groups[i / cfg.nodes].clone(), c, &mut rng)
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                targets: (0..groups.len()).map(|g| g * cfg.nodes).collect(),
                table: fresh.slots.clone(),
                pending: None,
                writes: 0,
                done: false,
            })
            .collect();
        let loss = if faults.loss { rng.range(0, 50) } else { 0 };
        let duplicate = if faults.duplicate {
            rng.range(0, 50)
        } else {
            0
        };
        // A lone monitor draws nothing more, so that its seeds replay as they always did.
        let mut monitors = vec![MonitorActor::new(monitor_clock)];
        for _ in 1..cfg.monitors {
            monitors.push(MonitorActor::new(clock(&mut rng)));
        }
        let nodes_total = nodes.len();
        let mut world = Self {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            base,
            nodes,
            monitors,
            clients,
            conns: BTreeMap::new(),
            next_conn: 0,
            cut: BTreeSet::new(),
            loss,
            duplicate,
            spikes: faults.delay,
            calm: false,
            trace: Vec::new(),
            history: BTreeMap::new(),
            violation: None,
            next_op: 0,
            next_req: 0,
            epochs_seen: vec![Epoch(0); nodes_total],
            monitor_epochs: BTreeMap::new(),
            committed_version: 0,
            tables: BTreeMap::from([(fresh.slots.version(), fresh.slots.clone())]),
            slot_acks: BTreeMap::new(),
            moves: 0,
            cancelled: 0,
            groups,
            fresh,
            leaders: BTreeMap::new(),
            failovers: 0,
            writes_ok: 0,
            reads_ok: 0,
            unknown: 0,
            steps: 0,
            cfg,
        };
        let layout = match world.groups.len() {
            1 => format!("{} nodes", world.cfg.nodes),
            g => format!("{g} groups of {} nodes", world.cfg.nodes),
        };
        world.note(
            Addr::Sim,
            format!(
                "seed {seed}: {layout}, {} monitor(s), faults {}, loss {}‰, duplicates {}‰",
                world.cfg.monitors, world.cfg.faults, loss, duplicate
            ),
        );
        world
    }

    // --- the loop ------------------------------------------------------------------------

    pub(crate) fn run(mut self) -> Outcome {
        for k in 0..self.monitors.len() {
            self.start_monitor(k);
        }
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        for c in 0..self.clients.len() {
            let at = self.rng.range(500, 1_500) * MS;
            self.at(at, Event::ClientNext { client: c });
        }
        self.schedule_faults();
        if self.groups.len() > 1 {
            self.schedule_moves();
        }
        let end = (self.cfg.active_ms + self.cfg.settle_ms) * MS;
        self.at(self.cfg.active_ms * MS, Event::Calm);
        self.at(end, Event::FinalReads);
        let horizon = end + 3 * CLIENT_TIMEOUT;
        while let Some(((t, _), event)) = self.queue.pop_first() {
            if t > horizon || self.violation.is_some() {
                break;
            }
            self.now = t;
            self.steps += 1;
            self.step(event);
            self.check_invariants();
        }
        if self.violation.is_none() {
            self.check_histories();
        }
        let failovers = self.failovers
            + self
                .monitors
                .iter()
                .filter_map(|m| m.machine.as_ref())
                .map(|m| m.stats().failovers_total)
                .sum::<u64>();
        Outcome {
            violation: self.violation,
            trace: self.trace,
            writes_ok: self.writes_ok,
            reads_ok: self.reads_ok,
            unknown: self.unknown,
            failovers,
            moves: self.moves,
            cancelled: self.cancelled,
            elections: self.leaders.len() as u64,
            steps: self.steps,
        }
    }

    pub(crate) fn at(&mut self, t: Time, event: Event) {
        self.seq += 1;
        self.queue.insert((t.max(self.now), self.seq), event);
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::NodeTick { node, life } => self.node_tick(node, life),
            Event::Heartbeat { node, life } => self.node_heartbeat(node, life),
            Event::CommitDone { node, life, batch } => self.commit_done(node, life, batch),
            Event::SenderTimer {
                node,
                life,
                link,
                conn,
            } => self.sender_timer(node, life, link, conn),
            Event::SenderRetry { node, life, link } => self.sender_retry(node, life, link),
            Event::MonitorTick { monitor, life } => self.monitor_tick(monitor, life),
            Event::ProbeTimeout { monitor, probe } => self.probe_result(monitor, probe, false),
            Event::CommitTimeout {
                monitor,
                life,
                index,
            } => self.commit_timeout(monitor, life, index),
            Event::RaftTick { monitor, life } => self.raft_tick(monitor, life),
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientTimeout { client, op } => self.client_timeout(client, op),
            Event::CopyTimeout { monitor, life, req } => self.copy_timeout(monitor, life, req),
            Event::MoveSlots => self.operator_move(),
            Event::CancelMove => self.operator_cancel(),
            Event::Crash(addr) => self.crash(addr),
            Event::Restart(addr) => self.restart(addr),
            Event::Cut(a, b) => {
                self.note(a, format!("partitioned from {b}"));
                self.cut.insert((a.min(b), a.max(b)));
            }
            Event::Heal(a, b) => {
                self.note(a, format!("partition from {b} healed"));
                self.cut.remove(&(a.min(b), a.max(b)));
            }
            Event::Split { end } => self.split(end),
            Event::Calm => self.calm(),
            Event::FinalReads => self.final_reads(),
        }
    }

    pub(crate) fn note(&mut self, who: Addr, what: String) {
        let line = format!("{:>9.3} {who:<8} {what}", self.now as f64 / MS as f64);
        self.trace.push(line);
    }

    pub(crate) fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.note(Addr::Sim, format!("VIOLATION {invariant}: {detail}"));
            self.violation = Some(Violation {
                invariant,
                detail,
                at_ms: self.now / MS,
            });
        }
    }

    // --- the network -----------------------------------------------------------------------

    fn is_up(&self, addr: Addr) -> bool {
        match addr {
            Addr::Sim => false,
            Addr::Monitor(k) => self.monitors[k].up,
            Addr::Node(i) => self.nodes[i].up,
            Addr::Client(_) => true,
        }
    }

    fn is_cut(&self, a: Addr, b: Addr) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    pub(crate) fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        let mut delay = self.rng.range(200, 3_000);
        if self.spikes && !self.calm && self.rng.chance(30) {
            delay += self.rng.range(0, 150) * MS;
        }
        if let Some(conn) = msg.conn() {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.broken {
                return;
            }
            let cut = self.cut.contains(&(from.min(to), from.max(to)));
            if cut {
                // Nothing gets through; both ends find out from their timeouts.
                c.broken = true;
                return;
            }
            let dir = usize::from(matches!(to, Addr::Node(i) if i == c.primary));
            let due = (self.now + delay).max(c.last[dir] + 1);
            c.last[dir] = due;
            self.at(due, Event::Deliver { from, to, msg });
            return;
        }
        if self.is_cut(from, to) || (!self.calm && self.rng.chance(self.loss)) {
            return;
        }
        let duplicate = msg.may_duplicate() && !self.calm && self.rng.chance(self.duplicate);
        if duplicate {
            let again = delay + self.rng.range(0, 20) * MS;
            self.at(
                self.now + again,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.at(self.now + delay, Event::Deliver { from, to, msg });
    }

    /// Opens a replication connection.
    pub(crate) fn open_conn(&mut self, primary: usize, standby: usize) -> u64 {
        self.next_conn += 1;
        self.conns.insert(
            self.next_conn,
            Conn {
                primary,
                standby,
                broken: false,
                last: [0, 0],
            },
        );
        self.next_conn
    }

    /// Closes a connection from `from`'s side: the other end gets a reset, unless a
    /// partition is in the way.
    pub(crate) fn close_conn(&mut self, conn: u64, from: usize) {
        let Some(c) = self.conns.get(&conn).cloned() else {
            return;
        };
        let other = if c.primary == from {
            c.standby
        } else {
            c.primary
        };
        if !c.broken && !self.is_cut(Addr::Node(from), Addr::Node(other)) {
            let delay = self.rng.range(200, 3_000);
            self.at(
                self.now + delay,
                Event::Deliver {
                    from: Addr::Node(from),
                    to: Addr::Node(other),
                    msg: Msg::Closed { conn },
                },
            );
        }
        self.conns.remove(&conn);
    }

    fn deliver(&mut self, from: Addr, to: Addr, msg: Msg) {
        if !self.is_up(to) {
            // A connection to a dead process is reset at once.
            if let (Some(conn), Addr::Node(from_node), false) =
                (msg.conn(), from, matches!(msg, Msg::Closed { .. }))
                && let Addr::Node(dead) = to
                && self.nodes[from_node].up
            {
                self.conns.remove(&conn);
                self.at(
                    self.now + 500,
                    Event::Deliver {
                        from: Addr::Node(dead),
                        to: from,
                        msg: Msg::Closed { conn },
                    },
                );
            }
            return;
        }
        if let Some(conn) = msg.conn()
            && !matches!(msg, Msg::Closed { .. })
            && !self.conns.contains_key(&conn)
        {
            return;
        }
        if self.cfg_trace_messages() {
            let line = format!("<- {from} {}", msg.describe());
            self.note(to, line);
        }
        match to {
            Addr::Monitor(k) => self.monitor_receive(k, from, msg),
            Addr::Node(i) => self.node_receive(i, from, msg),
            Addr::Client(c) => self.client_receive(c, from, msg),
            Addr::Sim => {}
        }
    }

    fn cfg_trace_messages(&self) -> bool {
        true
    }

    // --- faults ----------------------------------------------------------------------------

    fn schedule_faults(&mut self) {
        let faults = self.cfg.faults;
        let active = self.cfg.active_ms * MS;
        let n = self.nodes.len();
        let group = self.monitors.len() > 1;
        let count = self.rng.range(2, 6);
        for _ in 0..count {
            let start = self
                .rng
                .range(1_500 * MS, active.saturating_sub(500 * MS).max(1_600 * MS));
            let length = self.rng.range(200, 2_500) * MS;
            let end = (start + length).min(active);
            // Faults 5 and 6 concern a group of monitors; a lone monitor's seeds draw as
            // they always did.
            let kinds: Vec<u8> = [
                (faults.crash, 0u8),
                (faults.crash, 1),
                (faults.partition, 2),
                (faults.partition, 3),
                (faults.partition, 4),
                (faults.partition && group, 5),
                (faults.partition && group, 6),
                (faults.partition && group, 7),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, k)| k)
            .collect();
            if kinds.is_empty() {
                return;
            }
            match kinds[self.rng.index(kinds.len())] {
                0 => {
                    let node = Addr::Node(self.rng.index(n));
                    self.at(start, Event::Crash(node));
                    self.at(end, Event::Restart(node));
                }
                1 => {
                    let m = Addr::Monitor(self.any_monitor());
                    self.at(start, Event::Crash(m));
                    self.at(end, Event::Restart(m));
                }
                2 => {
                    // One node cut off from every other process but the clients.
                    let i = self.rng.index(n);
                    let others: Vec<Addr> = (0..n)
                        .filter(|j| *j != i)
                        .map(Addr::Node)
                        .chain((0..self.monitors.len()).map(Addr::Monitor))
                        .collect();
                    self.cut_for(Addr::Node(i), &others, start, end);
                }
                3 => {
                    let i = self.rng.index(n);
                    let m = Addr::Monitor(self.any_monitor());
                    self.cut_for(Addr::Node(i), &[m], start, end);
                }
                4 => {
                    let i = self.rng.index(n);
                    let j = (i + 1 + self.rng.index(n - 1)) % n;
                    self.cut_for(Addr::Node(i), &[Addr::Node(j)], start, end);
                }
                7 => {
                    // Long enough for the majority to elect a leader and fail over.
                    let end = (end + 2_500 * MS).min(active);
                    self.at(start, Event::Split { end });
                }
                kind => {
                    // A monitor cut off from the other monitors (5), the nodes still
                    // reaching it: a leader that may go on believing it leads; or from
                    // everyone (6).
                    let k = self.any_monitor();
                    let mut others: Vec<Addr> = (0..self.monitors.len())
                        .filter(|j| *j != k)
                        .map(Addr::Monitor)
                        .collect();
                    if kind == 6 {
                        others.extend((0..n).map(Addr::Node));
                    }
                    self.cut_for(Addr::Monitor(k), &others, start, end);
                }
            }
        }
    }

    /// Splits the group: the leader and the primary of the moment keep each other, the
    /// other monitors and the standbys keep each other, and the nodes still replicate
    /// among themselves. The old leader may go on believing it leads, and the primary
    /// goes on hearing from it: the case the lease must survive.
    fn split(&mut self, end: Time) {
        let Some(leader) = self.leader_now() else {
            return;
        };
        let primary = (0..self.nodes.len())
            .find(|&i| self.nodes[i].up && self.nodes[i].machine.refusal().is_none());
        let Some(primary) = primary else {
            return;
        };
        self.note(
            Addr::Sim,
            format!(
                "split: {} and {} apart from the rest",
                Addr::Monitor(leader),
                Addr::Node(primary)
            ),
        );
        let mut cuts = Vec::new();
        for m in (0..self.monitors.len()).filter(|m| *m != leader) {
            cuts.push((Addr::Monitor(leader), Addr::Monitor(m)));
            cuts.push((Addr::Node(primary), Addr::Monitor(m)));
        }
        for i in (0..self.nodes.len()).filter(|i| *i != primary) {
            cuts.push((Addr::Node(i), Addr::Monitor(leader)));
        }
        for (a, b) in cuts {
            self.step(Event::Cut(a, b));
            self.at(end, Event::Heal(a, b));
        }
    }

    /// A monitor chosen by the seed (the only one, without drawing, when alone).
    fn any_monitor(&mut self) -> usize {
        match self.monitors.len() {
            1 => 0,
            m => self.rng.index(m),
        }
    }

    fn cut_for(&mut self, who: Addr, others: &[Addr], start: Time, end: Time) {
        for &other in others {
            self.at(start, Event::Cut(who, other));
            self.at(end, Event::Heal(who, other));
        }
    }

    fn crash(&mut self, addr: Addr) {
        match addr {
            Addr::Monitor(k) => self.crash_monitor(k),
            Addr::Node(i) => self.crash_node(i),
            Addr::Client(_) | Addr::Sim => {}
        }
    }

    fn restart(&mut self, addr: Addr) {
        match addr {
            Addr::Monitor(k) if !self.monitors[k].up => {
                self.note(addr, "restarted".into());
                self.start_monitor(k);
            }
            Addr::Node(i) if !self.nodes[i].up => self.restart_node(i),
            _ => {}
        }
    }

    /// The faults are over: every partition heals, every process comes back, the network
    /// stops losing and delaying.
    fn calm(&mut self) {
        self.calm = true;
        self.note(Addr::Sim, "faults over: healing everything".into());
        self.cut.clear();
        for k in 0..self.monitors.len() {
            self.restart(Addr::Monitor(k));
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                self.restart_node(i);
            }
        }
    }

    // --- clients -----------------------------------------------------------------------------

    fn client_next(&mut self, c: usize) {
        if self.clients[c].done || self.clients[c].pending.is_some() {
            return;
        }
        let key = format!("k{}", self.rng.index(self.cfg.keys));
        let write = self.rng.chance(500);
        self.next_op += 1;
        let op = self.next_op;
        // Routed by key, as `keel client` and `keel proxy --cluster` route.
        let group = self.group_index(self.clients[c].table.owner_of(key.as_bytes()));
        let target = self.clients[c].targets[group];
        let value = write.then(|| {
            self.clients[c].writes += 1;
            ((c as u64 + 1) << 32) | self.clients[c].writes
        });
        self.clients[c].pending = Some(Pending {
            op,
            key: key.clone(),
            group,
            write: value,
            invoke: self.now,
        });
        let msg = match value {
            Some(value) => Msg::Write { op, key, value },
            None => Msg::Read { op, key },
        };
        self.send(Addr::Client(c), Addr::Node(target), msg);
        self.at(
            self.now + CLIENT_TIMEOUT,
            Event::ClientTimeout { client: c, op },
        );
    }

    fn client_timeout(&mut self, c: usize, op: u64) {
        if self.clients[c].pending.as_ref().is_none_or(|p| p.op != op) {
            return;
        }
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        if let Some(value) = p.write {
            self.record(c, &p, linear::Kind::Write(value), None);
            self.unknown += 1;
        }
        // No answer: try another node of the group next time.
        self.clients[c].targets[p.group] = self.any_node_of(p.group);
        self.client_again(c);
    }

    fn client_receive(&mut self, c: usize, _from: Addr, msg: Msg) {
        let (op, reply) = match msg {
            Msg::Reply { op, reply } => (op, reply),
            Msg::Table(table) => return self.learn_table(c, *table),
            _ => return,
        };
        let Some(p) = self.clients[c].pending.clone() else {
            return;
        };
        if p.op != op {
            return;
        }
        self.clients[c].pending = None;
        match (reply, p.write) {
            (ClientReply::Written, Some(v)) => {
                self.writes_ok += 1;
                self.record(c, &p, linear::Kind::Write(v), Some(self.now));
            }
            (ClientReply::Unknown(_), Some(v)) => {
                self.unknown += 1;
                self.record(c, &p, linear::Kind::Write(v), None);
            }
            (ClientReply::Value(v), None) => {
                self.reads_ok += 1;
                self.record(c, &p, linear::Kind::Read(v), Some(self.now));
            }
            (ClientReply::NotWritten { primary, .. } | ClientReply::NoRead { primary, .. }, _) => {
                self.clients[c].targets[p.group] =
                    primary.unwrap_or_else(|| self.any_node_of(p.group));
            }
            // Nothing was written; the client takes the newer table and routes again.
            (ClientReply::Misdirected { table, .. }, _) => self.learn_table(c, *table),
            _ => {}
        }
        self.client_again(c);
    }

    /// Client `c` routes by `table` from now on, if it is newer than the one it has.
    fn learn_table(&mut self, c: usize, table: SlotTable) {
        if table.version() > self.clients[c].table.version() {
            self.clients[c].table = table;
        }
    }

    fn client_again(&mut self, c: usize) {
        if self.clients[c].done {
            return;
        }
        let think = self.rng.range(2, 25) * MS;
        if self.now + think < self.cfg.active_ms * MS {
            self.at(self.now + think, Event::ClientNext { client: c });
        }
    }

    fn record(&mut self, client: usize, p: &Pending, kind: linear::Kind, complete: Option<Time>) {
        self.history
            .entry(p.key.clone())
            .or_default()
            .push(linear::Op {
                client,
                kind,
                invoke: p.invoke,
                complete,
            });
    }

    /// After the faults have healed and the cluster has settled: one read of every key
    /// from the primary, which must see every acknowledged write.
    fn final_reads(&mut self) {
        let mut primaries = Vec::new();
        for g in 0..self.groups.len() {
            let primary = self.group_nodes(g).find(|&i| {
                let n = &self.nodes[i];
                n.up && n.machine.refusal().is_none() && n.machine.lease_valid(self.node_now(i))
            });
            let Some(primary) = primary else {
                let which = match self.groups.len() {
                    1 => "no node".to_owned(),
                    _ => format!("no node of {}", self.groups[g]),
                };
                self.fail(
                    "a primary after the faults heal",
                    format!(
                        "{which} takes writes {} ms after every fault healed",
                        self.cfg.settle_ms
                    ),
                );
                return;
            };
            self.note(Addr::Node(primary), "final reads from this primary".into());
            primaries.push(primary);
        }
        for c in &mut self.clients {
            c.done = true;
        }
        // Each key from its owner in the newest table the monitors committed.
        let table = self.newest_table();
        let keys: Vec<String> = (0..self.cfg.keys).map(|k| format!("k{k}")).collect();
        for (i, key) in keys.into_iter().enumerate() {
            let group = table
                .as_ref()
                .map_or(0, |t| self.group_index(t.owner_of(key.as_bytes())));
            let primary = primaries[group];
            let c = i % self.clients.len();
            // Each client reads one key after another; a client still waiting for an
            // answer keeps it (its timeout records it).
            self.next_op += 1;
            let op = self.next_op;
            let pending = Pending {
                op,
                key: key.clone(),
                group,
                write: None,
                invoke: self.now,
            };
            if self.clients[c].pending.is_some() {
                continue;
            }
            self.clients[c].pending = Some(pending);
            self.send(Addr::Client(c), Addr::Node(primary), Msg::Read { op, key });
            self.at(
                self.now + CLIENT_TIMEOUT,
                Event::ClientTimeout { client: c, op },
            );
        }
    }

    // --- invariants --------------------------------------------------------------------------

    fn check_invariants(&mut self) {
        if self.violation.is_some() {
            return;
        }
        // At most one node of a group may acknowledge writes at any instant.
        for g in 0..self.groups.len() {
            let holders: Vec<usize> = self
                .group_nodes(g)
                .filter(|&i| {
                    let n = &self.nodes[i];
                    n.up && n.machine.refusal().is_none() && n.machine.lease_valid(self.node_now(i))
                })
                .collect();
            if holders.len() > 1 {
                let names: Vec<String> = holders.iter().map(|i| node_name(*i)).collect();
                self.fail(
                    "at most one node acknowledges writes",
                    format!("{} all hold a lease and take writes", names.join(" and ")),
                );
                return;
            }
        }
        // Epochs never go back, across crashes.
        for i in 0..self.nodes.len() {
            let durable = self.nodes[i].store.durable_status().epoch;
            if durable < self.epochs_seen[i] {
                let was = self.epochs_seen[i];
                self.fail(
                    "epochs never go back",
                    format!(
                        "{} has epoch {durable} durably after epoch {was}",
                        node_name(i)
                    ),
                );
                return;
            }
            self.epochs_seen[i] = durable;
        }
    }

    /// Called when node `primary` acknowledges a batch ending at `last`: it must be
    /// durable on the primary and on every standby it counts in its sync set.
    pub(crate) fn check_acknowledged(&mut self, primary: usize, last: keel_core::Lsn) {
        let own = self.nodes[primary].store.durable_status().last.lsn;
        if own < last {
            self.fail(
                "every acknowledged write is durable on the sync set",
                format!(
                    "{} acknowledged lsn {last} while its own log is durable only to {own}",
                    node_name(primary)
                ),
            );
            return;
        }
        let sync: Vec<usize> = self.nodes[primary]
            .machine
            .links()
            .iter()
            .filter(|l| l.sync)
            .filter_map(|l| node_of_url(&l.url))
            .collect();
        for s in sync {
            let theirs = self.nodes[s].store.durable_status().last.lsn;
            if theirs < last {
                self.fail(
                    "every acknowledged write is durable on the sync set",
                    format!(
                        "{} acknowledged lsn {last}, but sync standby {} has only {theirs} durably",
                        node_name(primary),
                        node_name(s)
                    ),
                );
                return;
            }
        }
    }

    /// Called when node `i` acknowledges a write of `key` that its slot gate granted
    /// under table `version`: the monitors committed that table, in it the node's group
    /// owns the key's slot and no move freezes it, and no other group acknowledged a
    /// write of the slot under that version or a newer one (so two groups never take a
    /// slot's writes at once, however their answers cross).
    pub(crate) fn check_slot_ack(&mut self, i: usize, key: &str, version: u64) {
        let group = self.nodes[i].group.clone();
        let slot = slot_of(key.as_bytes());
        let owned = self
            .tables
            .get(&version)
            .map(|t| (t.owner(slot).clone(), t.frozen(slot)));
        let wrong = match &owned {
            None => Some("which the monitors never committed".to_owned()),
            Some((owner, _)) if *owner != group => Some(format!("in which it is {owner}'s")),
            Some((_, true)) => Some("in which a move freezes it".to_owned()),
            Some(_) => None,
        };
        if let Some(wrong) = wrong {
            self.fail(
                "a node acknowledges writes only of slots its group owns",
                format!(
                    "{} ({group}) acknowledged a write of {key} (slot {}) under table version {version}, {wrong}",
                    node_name(i),
                    slot.0
                ),
            );
            return;
        }
        match self.slot_acks.get(&slot.0) {
            Some((other, seen)) if *other != group && version <= *seen => {
                let detail = format!(
                    "{} ({group}) acknowledged a write of {key} (slot {}) under table version {version}, after {other} acknowledged one under version {seen}",
                    node_name(i),
                    slot.0
                );
                self.fail("one group at a time acknowledges a slot's writes", detail);
            }
            Some((other, seen)) if *other == group && *seen >= version => {}
            _ => {
                self.slot_acks.insert(slot.0, (group, version));
            }
        }
    }

    fn check_histories(&mut self) {
        let keys: Vec<String> = self.history.keys().cloned().collect();
        for key in keys {
            let ops = self.history.get(&key).cloned().unwrap_or_default();
            if let Err(e) = linear::check(&ops) {
                let stuck: Vec<String> = e.stuck.iter().take(4).map(describe_op).collect();
                let before: Vec<String> = e
                    .longest
                    .iter()
                    .rev()
                    .take(3)
                    .rev()
                    .map(describe_op)
                    .collect();
                self.fail(
                    "every key's history is linearizable",
                    format!(
                        "key {key}: after [{}] none of [{}] can come next",
                        before.join(", "),
                        stuck.join(", ")
                    ),
                );
                return;
            }
        }
    }

    pub(crate) fn flaw(&self) -> Flaw {
        self.cfg.flaw
    }

    // --- groups and the operator's moves ---------------------------------------------------------

    /// The newest slot table the monitors committed.
    fn newest_table(&self) -> Option<SlotTable> {
        self.tables.values().next_back().cloned()
    }

    /// The index of `group` among the groups.
    fn group_index(&self, group: &GroupId) -> usize {
        self.groups.iter().position(|g| g == group).unwrap_or(0)
    }

    /// The nodes of group `g`.
    fn group_nodes(&self, g: usize) -> std::ops::Range<usize> {
        g * self.cfg.nodes..(g + 1) * self.cfg.nodes
    }

    /// A node of group `g`, chosen by the seed.
    fn any_node_of(&mut self, g: usize) -> usize {
        g * self.cfg.nodes + self.rng.index(self.cfg.nodes)
    }

    /// The operator's moves, at times drawn from the seed while the clients work; some
    /// are called off soon after they begin.
    fn schedule_moves(&mut self) {
        let active = self.cfg.active_ms * MS;
        let count = self.rng.range(2, 6);
        for _ in 0..count {
            let at = self
                .rng
                .range(800 * MS, active.saturating_sub(200 * MS).max(900 * MS));
            self.at(at, Event::MoveSlots);
            if self.rng.chance(250) {
                let later = self.rng.range(1, 400) * MS;
                self.at(at + later, Event::CancelMove);
            }
        }
    }

    /// The monitor the operator asks: the one leading, or any when none is known.
    fn operator_monitor(&mut self) -> usize {
        match self.leader_now() {
            Some(k) => k,
            None if self.monitors.len() == 1 => 0,
            None => self.rng.index(self.monitors.len()),
        }
    }

    /// `keel client slots move`: the slot of one of the clients' keys, with those of
    /// some other keys of the same owner, to another group, by the newest table the
    /// monitors committed.
    fn operator_move(&mut self) {
        let Some(table) = self.newest_table() else {
            return;
        };
        let key = format!("k{}", self.rng.index(self.cfg.keys));
        let from = table.owner_of(key.as_bytes()).clone();
        let others: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|g| **g != from)
            .cloned()
            .collect();
        if others.is_empty() {
            return;
        }
        let to = others[self.rng.index(others.len())].clone();
        let mut slots = BTreeSet::from([slot_of(key.as_bytes())]);
        for k in 0..self.cfg.keys {
            let other = format!("k{k}");
            if table.owner_of(other.as_bytes()) == &from && self.rng.chance(500) {
                slots.insert(slot_of(other.as_bytes()));
            }
        }
        let slots: Vec<Slot> = slots.into_iter().collect();
        let m = self.operator_monitor();
        self.note(
            Addr::Sim,
            format!(
                "operator: move slots {} from {from} to {to}, asking {}",
                format_slots(&slots),
                Addr::Monitor(m)
            ),
        );
        self.send(Addr::Sim, Addr::Monitor(m), Msg::MoveSlots { slots, to });
    }

    /// `keel client slots cancel`.
    fn operator_cancel(&mut self) {
        let m = self.operator_monitor();
        self.note(
            Addr::Sim,
            format!("operator: cancel the move, asking {}", Addr::Monitor(m)),
        );
        self.send(Addr::Sim, Addr::Monitor(m), Msg::CancelMove);
    }
}

fn describe_op(op: &linear::Op) -> String {
    let what = match op.kind {
        linear::Kind::Write(v) => format!("write {v:#x}"),
        linear::Kind::Read(Some(v)) => format!("read {v:#x}"),
        linear::Kind::Read(None) => "read nothing".into(),
    };
    let end = op
        .complete
        .map_or("?".into(), |c| format!("{:.3}", c as f64 / MS as f64));
    format!(
        "client{} {what} {:.3}–{end} ms",
        op.client + 1,
        op.invoke as f64 / MS as f64
    )
}

/// `node{i+1}`.
pub(crate) fn node_name(i: usize) -> String {
    format!("node{}", i + 1)
}

/// `http://node{i+1}:8081`.
pub(crate) fn node_url(i: usize) -> String {
    format!("http://node{}:8081", i + 1)
}

/// The index of `node{n}`.
pub(crate) fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The index of the node at `http://node{n}:8081`.
pub(crate) fn node_of_url(url: &str) -> Option<usize> {
    let host = url.strip_prefix("http://")?.split(':').next()?;
    node_index(host)
}

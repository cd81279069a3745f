//! The world: simulated time, the event queue, the network, the monitor, the clients,
//! the fault schedule and the invariants checked after every step. The data nodes'
//! drivers are in `node`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel_core::Epoch;
use keel_monitor::machine::{self as monitor, Answer as MonitorAnswer};
use keel_monitor::{ClusterState, Monitor, Settings as MonitorSettings};
use tokio::time::Instant;

use crate::config::{Config, Flaw};
use crate::linear;
use crate::net::{Addr, ClientReply, MonitorRequest, Msg, Refused, Time};
use crate::node::SimNode;
use crate::rng::Rng;

/// µs in a ms.
pub(crate) const MS: Time = 1_000;
/// How long a client waits for an answer before it counts the operation as unknown.
const CLIENT_TIMEOUT: Time = 2_000 * MS;
/// How long the monitor waits for a probe's answer (one heartbeat interval).
const PROBE_TIMEOUT: Time = 100 * MS;
/// How often the monitor's runtime ticks its machine (half a heartbeat interval).
const MONITOR_TICK: Time = 50 * MS;

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
        life: u64,
    },
    ProbeTimeout {
        probe: u64,
    },
    ClientNext {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        op: u64,
    },
    Crash(Addr),
    Restart(Addr),
    Cut(Addr, Addr),
    Heal(Addr, Addr),
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

/// The monitor process.
pub(crate) struct MonitorActor {
    pub(crate) machine: Option<Monitor>,
    /// What it persisted last: what a restart finds.
    pub(crate) persisted: Option<ClusterState>,
    pub(crate) life: u64,
    pub(crate) clock: Clock,
    /// Probes in flight: the probed node.
    probes: BTreeMap<u64, usize>,
}

/// A client and the operation it has in flight.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    target: usize,
    pending: Option<Pending>,
    writes: u64,
    done: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    op: u64,
    key: String,
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
    /// Failovers the monitor completed.
    pub failovers: u64,
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
    pub(crate) monitor: MonitorActor,
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
    monitor_epoch: Epoch,
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
        let nodes: Vec<SimNode> = (0..cfg.nodes)
            .map(|i| {
                let c = clock(&mut rng);
                SimNode::new(i, c, &mut rng)
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                target: 0,
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
        let mut world = Self {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            base,
            nodes,
            monitor: MonitorActor {
                machine: None,
                persisted: None,
                life: 0,
                clock: monitor_clock,
                probes: BTreeMap::new(),
            },
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
            epochs_seen: vec![Epoch(0); cfg.nodes],
            monitor_epoch: Epoch(0),
            writes_ok: 0,
            reads_ok: 0,
            unknown: 0,
            steps: 0,
            cfg,
        };
        world.note(
            Addr::Monitor,
            format!(
                "seed {seed}: {} nodes, faults {}, loss {}‰, duplicates {}‰",
                world.cfg.nodes, world.cfg.faults, loss, duplicate
            ),
        );
        world
    }

    // --- the loop ------------------------------------------------------------------------

    pub(crate) fn run(mut self) -> Outcome {
        self.start_monitor();
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        for c in 0..self.clients.len() {
            let at = self.rng.range(500, 1_500) * MS;
            self.at(at, Event::ClientNext { client: c });
        }
        self.schedule_faults();
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
        let failovers = self
            .monitor
            .machine
            .as_ref()
            .map_or(0, |m| m.stats().failovers_total);
        Outcome {
            violation: self.violation,
            trace: self.trace,
            writes_ok: self.writes_ok,
            reads_ok: self.reads_ok,
            unknown: self.unknown,
            failovers,
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
            Event::MonitorTick { life } => self.monitor_tick(life),
            Event::ProbeTimeout { probe } => self.probe_result(probe, false),
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientTimeout { client, op } => self.client_timeout(client, op),
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
            self.note(Addr::Monitor, format!("VIOLATION {invariant}: {detail}"));
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
            Addr::Monitor => self.monitor.machine.is_some(),
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
            Addr::Monitor => self.monitor_receive(from, msg),
            Addr::Node(i) => self.node_receive(i, from, msg),
            Addr::Client(c) => self.client_receive(c, from, msg),
        }
    }

    fn cfg_trace_messages(&self) -> bool {
        true
    }

    // --- the monitor -----------------------------------------------------------------------

    fn monitor_settings() -> MonitorSettings {
        MonitorSettings::default()
    }

    pub(crate) fn monitor_now(&self) -> Instant {
        self.base + Duration::from_micros(self.monitor.clock.local(self.now))
    }

    fn start_monitor(&mut self) {
        let now = self.monitor_now();
        let (machine, outputs) = Monitor::new(
            Self::monitor_settings(),
            self.monitor.persisted.clone(),
            now,
        );
        self.monitor.machine = Some(machine);
        self.monitor.life += 1;
        self.monitor.probes.clear();
        self.monitor_outputs(None, outputs);
        let life = self.monitor.life;
        self.at(self.now + MONITOR_TICK, Event::MonitorTick { life });
    }

    fn monitor_tick(&mut self, life: u64) {
        if life != self.monitor.life || self.monitor.machine.is_none() {
            return;
        }
        self.monitor_input(None, monitor::Input::Tick);
        self.at(self.now + MONITOR_TICK, Event::MonitorTick { life });
    }

    fn monitor_input(&mut self, from: Option<(usize, u64)>, input: monitor::Input) {
        let now = self.monitor_now();
        let Some(machine) = self.monitor.machine.as_mut() else {
            return;
        };
        let outputs = machine.handle(input, now);
        self.monitor_outputs(from, outputs);
    }

    fn monitor_outputs(&mut self, from: Option<(usize, u64)>, outputs: Vec<monitor::Output>) {
        for output in outputs {
            match output {
                monitor::Output::Persist(state) => {
                    if state.epoch < self.monitor_epoch {
                        self.fail(
                            "epochs never go back",
                            format!(
                                "the monitor persisted epoch {} after epoch {}",
                                state.epoch, self.monitor_epoch
                            ),
                        );
                    }
                    self.monitor_epoch = state.epoch;
                    self.monitor.persisted = Some(state);
                }
                monitor::Output::Probe { node, probe, .. } => {
                    let Some(i) = node_index(node.as_str()) else {
                        continue;
                    };
                    self.monitor.probes.insert(probe, i);
                    self.send(Addr::Monitor, Addr::Node(i), Msg::Probe { probe });
                    self.at(self.now + PROBE_TIMEOUT, Event::ProbeTimeout { probe });
                }
                monitor::Output::Event(e) => {
                    self.note(Addr::Monitor, format!("event {:?}: {}", e.kind, e.message));
                }
                monitor::Output::Reply(result) => {
                    let Some((node, req)) = from else {
                        continue;
                    };
                    let answer = match result {
                        Ok(MonitorAnswer::View(view)) => Ok(Box::new(view)),
                        Ok(MonitorAnswer::Cluster(_)) => continue,
                        Err(refusal) => Err(Refused {
                            error: refusal.error,
                            view: refusal.view,
                        }),
                    };
                    self.send(
                        Addr::Monitor,
                        Addr::Node(node),
                        Msg::FromMonitor { req, answer },
                    );
                }
            }
        }
    }

    fn monitor_receive(&mut self, from: Addr, msg: Msg) {
        let Addr::Node(node) = from else {
            return;
        };
        match msg {
            Msg::ToMonitor { req, body } => {
                let input = match body {
                    MonitorRequest::Register(r) => monitor::Input::Register(r),
                    MonitorRequest::Heartbeat(h) => monitor::Input::Heartbeat(h),
                    MonitorRequest::SyncDrop(d) => monitor::Input::SyncDrop(d),
                };
                self.monitor_input(Some((node, req)), input);
            }
            Msg::ProbeOk { probe } => self.probe_result(probe, true),
            _ => {}
        }
    }

    fn probe_result(&mut self, probe: u64, ok: bool) {
        let Some(node) = self.monitor.probes.remove(&probe) else {
            return;
        };
        let Some(node) = keel_core::NodeId::new(node_name(node)).ok() else {
            return;
        };
        self.monitor_input(None, monitor::Input::ProbeResult { node, probe, ok });
    }

    // --- faults ----------------------------------------------------------------------------

    fn schedule_faults(&mut self) {
        let faults = self.cfg.faults;
        let active = self.cfg.active_ms * MS;
        let n = self.nodes.len();
        let count = self.rng.range(2, 6);
        for _ in 0..count {
            let start = self
                .rng
                .range(1_500 * MS, active.saturating_sub(500 * MS).max(1_600 * MS));
            let length = self.rng.range(200, 2_500) * MS;
            let end = (start + length).min(active);
            let kinds: Vec<u8> = [
                (faults.crash, 0u8),
                (faults.crash, 1),
                (faults.partition, 2),
                (faults.partition, 3),
                (faults.partition, 4),
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
                    self.at(start, Event::Crash(Addr::Monitor));
                    self.at(end, Event::Restart(Addr::Monitor));
                }
                2 => {
                    // One node cut off from every other process but the clients.
                    let i = self.rng.index(n);
                    let others: Vec<Addr> = (0..n)
                        .filter(|j| *j != i)
                        .map(Addr::Node)
                        .chain([Addr::Monitor])
                        .collect();
                    for other in others {
                        self.at(start, Event::Cut(Addr::Node(i), other));
                        self.at(end, Event::Heal(Addr::Node(i), other));
                    }
                }
                3 => {
                    let i = self.rng.index(n);
                    self.at(start, Event::Cut(Addr::Node(i), Addr::Monitor));
                    self.at(end, Event::Heal(Addr::Node(i), Addr::Monitor));
                }
                _ => {
                    let i = self.rng.index(n);
                    let j = (i + 1 + self.rng.index(n - 1)) % n;
                    self.at(start, Event::Cut(Addr::Node(i), Addr::Node(j)));
                    self.at(end, Event::Heal(Addr::Node(i), Addr::Node(j)));
                }
            }
        }
    }

    fn crash(&mut self, addr: Addr) {
        match addr {
            Addr::Monitor => {
                if self.monitor.machine.take().is_some() {
                    self.note(addr, "crashed".into());
                }
            }
            Addr::Node(i) => self.crash_node(i),
            Addr::Client(_) => {}
        }
    }

    fn restart(&mut self, addr: Addr) {
        match addr {
            Addr::Monitor if self.monitor.machine.is_none() => {
                self.note(addr, "restarted".into());
                self.start_monitor();
            }
            Addr::Node(i) if !self.nodes[i].up => self.restart_node(i),
            _ => {}
        }
    }

    /// The faults are over: every partition heals, every process comes back, the network
    /// stops losing and delaying.
    fn calm(&mut self) {
        self.calm = true;
        self.note(Addr::Monitor, "faults over: healing everything".into());
        self.cut.clear();
        if self.monitor.machine.is_none() {
            self.restart(Addr::Monitor);
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
        let target = self.clients[c].target;
        let value = write.then(|| {
            self.clients[c].writes += 1;
            ((c as u64 + 1) << 32) | self.clients[c].writes
        });
        self.clients[c].pending = Some(Pending {
            op,
            key: key.clone(),
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
        // No answer: try another node next time.
        self.clients[c].target = self.rng.index(self.nodes.len());
        self.client_again(c);
    }

    fn client_receive(&mut self, c: usize, _from: Addr, msg: Msg) {
        let Msg::Reply { op, reply } = msg else {
            return;
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
                self.clients[c].target =
                    primary.unwrap_or_else(|| self.rng.index(self.nodes.len()));
            }
            _ => {}
        }
        self.client_again(c);
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
        let primary = (0..self.nodes.len()).find(|&i| {
            let n = &self.nodes[i];
            n.up && n.machine.refusal().is_none() && n.machine.lease_valid(self.node_now(i))
        });
        let Some(primary) = primary else {
            self.fail(
                "a primary after the faults heal",
                format!(
                    "no node takes writes {} ms after every fault healed",
                    self.cfg.settle_ms
                ),
            );
            return;
        };
        self.note(Addr::Node(primary), "final reads from this primary".into());
        for c in &mut self.clients {
            c.done = true;
        }
        let keys: Vec<String> = (0..self.cfg.keys).map(|k| format!("k{k}")).collect();
        for (i, key) in keys.into_iter().enumerate() {
            let c = i % self.clients.len();
            // Each client reads one key after another; a client still waiting for an
            // answer keeps it (its timeout records it).
            self.next_op += 1;
            let op = self.next_op;
            let pending = Pending {
                op,
                key: key.clone(),
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
        // At most one node may acknowledge writes at any instant.
        let holders: Vec<usize> = (0..self.nodes.len())
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

//! The data nodes' drivers in the simulation: what `keel-node`'s writer, senders,
//! receiver and heartbeat task do, over the simulated network and an in-memory store
//! that can crash mid-commit. Every decision is the real [`Machine`]'s; these drivers
//! only carry its outputs out, as `keel_node::shared::Shared::input` does.
//!
//! Under several groups, each node keeps the real [`SlotGate`]: a write is taken only
//! when the gate grants its key's slot, a read of a slot in a move is refused, and a key
//! of another group's slot is answered `421` with the node's table. The source primary
//! of a move exports its frozen slots with the node's own `read_piece`, once the gate
//! says no write granted before the freeze is under way; the target imports with the
//! node's own `import_plan`, its writes going through the writer and its standbys as any
//! write does. Where `keel node` holds a write or an export for a moment (until a move
//! ends, or until the writes drain), the drivers refuse at once and the client or the
//! monitor tries again: the same outcomes, sooner.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use keel_client::node::SlotData;
use keel_client::wire::{HeartbeatRequest, RegisterRequest, SyncDropRequest, View, codes};
use keel_core::slots::GroupId;
use keel_core::{Epoch, Lsn, NodeId, Role};
use keel_node::gate::{Granted, SlotGate, Unclaimed};
use keel_node::machine::{Input, Machine, Output, Settings, WriteError};
use keel_node::moves::{import_plan, read_piece};
use keel_store::{Applied, Command, Expect, MemStore, Storage, StoreError, SyncMode, agreement};
use tokio::time::Instant;

use crate::config::Flaw;
use crate::net::{Addr, Answer, ClientReply, Frame, MonitorRequest, Msg, Time};
use crate::rng::Rng;
use crate::world::{Clock, Event, World, node_index, node_name, node_of_url, node_url};

/// How long a write waits for the sync standbys (the node's `--sync-timeout`).
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle stream is pinged (`keel_node::config::PING_INTERVAL`).
const PING: Duration = Duration::from_millis(250);
/// How long an upgrade may take (`keel_node::config::CONNECT_TIMEOUT`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Entries per frame (`keel_node::config::FRAME_ENTRIES`).
const FRAME_ENTRIES: usize = 512;
/// Log entries a store keeps after its snapshot point: small, so that snapshots happen.
const LOG_RETAIN: u64 = 64;
/// The node's record of the epoch it was last primary in.
const PRIMARY_EPOCH: &str = "primary_epoch";

/// Whom a write in a node answers.
#[derive(Debug, Clone)]
enum Origin {
    /// A client's write of `key`.
    Client { client: usize, op: u64, key: String },
    /// One write of the import the monitor asked for with request `req`.
    Import { req: u64 },
}

/// A write waiting in a node.
#[derive(Debug, Clone)]
struct Write {
    origin: Origin,
    command: Command,
    /// What the slot gate granted a client's write, given back when it is answered.
    granted: Option<Granted>,
}

/// An import under way: its writes, each answered by the writer, and the gate's hold on
/// the move's slots.
#[derive(Debug)]
struct ImportRun {
    monitor: usize,
    writes: usize,
    left: usize,
    failed: Option<String>,
    granted: Granted,
}

/// A client's read, its value taken, waiting until everything it may show is on the
/// sync set (`Machine::replicated`), as the node's API waits.
#[derive(Debug, Clone)]
struct Read {
    client: usize,
    op: u64,
    key: String,
    value: Option<u64>,
    index: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Offering,
    Aligning,
    Streaming,
}

/// The primary's sender to one standby.
#[derive(Debug, Clone)]
struct Sender {
    to: usize,
    conn: Option<u64>,
    phase: Phase,
    since: Instant,
    sent: Lsn,
    frames: u64,
    times: VecDeque<(u64, Instant)>,
    last_heard: Instant,
    backoff_ms: u64,
}

/// One simulated node process and its disk.
pub(crate) struct SimNode {
    pub(crate) up: bool,
    /// The group it is a node of.
    pub(crate) group: GroupId,
    /// Its slot decisions (in memory: a restarted node learns the table again).
    pub(crate) gate: SlotGate,
    /// Imports under way, by the monitor's request.
    imports: BTreeMap<u64, ImportRun>,
    pub(crate) life: u64,
    incarnation: u64,
    pub(crate) clock: Clock,
    pub(crate) store: MemStore,
    pub(crate) machine: Machine,
    registered: bool,
    evicted: bool,
    heartbeat: Option<(u64, Instant)>,
    /// The monitor it talks to: the one it takes for the leader.
    monitor: usize,
    sync_drops: BTreeMap<u64, String>,
    queue: VecDeque<Write>,
    reads: Vec<Read>,
    batches: BTreeMap<u64, Vec<Write>>,
    results: BTreeMap<u64, Vec<Applied>>,
    next_batch: u64,
    /// A commit is in flight (for [`Flaw::DirtyRead`], which waits only for it).
    committing: bool,
    senders: BTreeMap<u64, Sender>,
    /// Streams accepted as a standby: connection → (stream number, frames handled).
    inbound: BTreeMap<u64, (u64, u64)>,
    tick_at: Option<Time>,
}

impl SimNode {
    pub(crate) fn new(group: GroupId, clock: Clock, rng: &mut Rng) -> Self {
        let store = MemStore::with_sync_mode(LOG_RETAIN, SyncMode::Explicit);
        let machine = Machine::new(settings(&store, 0), Instant::now());
        Self {
            up: false,
            group,
            gate: SlotGate::default(),
            imports: BTreeMap::new(),
            life: 0,
            incarnation: rng.next_u64() >> 11,
            clock,
            store,
            machine,
            registered: false,
            evicted: false,
            heartbeat: None,
            monitor: 0,
            sync_drops: BTreeMap::new(),
            queue: VecDeque::new(),
            reads: Vec::new(),
            batches: BTreeMap::new(),
            results: BTreeMap::new(),
            next_batch: 0,
            committing: false,
            senders: BTreeMap::new(),
            inbound: BTreeMap::new(),
            tick_at: None,
        }
    }
}

fn settings(store: &MemStore, node: usize) -> Settings {
    let status = store.status();
    Settings {
        advertise: node_url(node),
        monitored: true,
        role: Role::Standby,
        standbys: Vec::new(),
        sync: true,
        sync_timeout: SYNC_TIMEOUT,
        writing_epoch: Epoch(0),
        seen: status.epoch,
        log_end: status.last.lsn,
    }
}

impl World {
    pub(crate) fn node_now(&self, i: usize) -> Instant {
        self.base + Duration::from_micros(self.nodes[i].clock.local(self.now))
    }

    /// The true time at which node `i`'s clock reaches `at`.
    fn node_true_time(&self, i: usize, at: Instant) -> Time {
        let local = at.saturating_duration_since(self.base).as_micros() as u64;
        self.nodes[i].clock.true_time(local).max(self.now)
    }

    /// The true time `d` of node `i`'s clock from now.
    fn node_after(&self, i: usize, d: Duration) -> Time {
        self.node_true_time(i, self.node_now(i) + d)
    }

    // --- life and death ----------------------------------------------------------------------

    pub(crate) fn start_node(&mut self, i: usize) {
        let now = self.node_now(i);
        let n = &mut self.nodes[i];
        n.up = true;
        n.life += 1;
        n.machine = Machine::new(settings(&n.store, i), now);
        n.registered = false;
        n.evicted = false;
        n.heartbeat = None;
        n.tick_at = None;
        let life = n.life;
        self.note(Addr::Node(i), format!("started (life {life})"));
        self.at(self.now, Event::Heartbeat { node: i, life });
        self.node_input(i, Input::Started);
    }

    pub(crate) fn crash_node(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let keep = self.rng.chance(500);
        let unsynced = self.nodes[i].store.unsynced();
        self.note(
            Addr::Node(i),
            format!(
                "crashed; {unsynced} unsynced mutation(s) {}",
                if keep { "reached the disk" } else { "lost" }
            ),
        );
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.primary == i || c.standby == i)
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close_conn(conn, i);
        }
        let n = &mut self.nodes[i];
        n.up = false;
        n.life += 1;
        n.store.crash(keep);
        n.queue.clear();
        n.reads.clear();
        n.batches.clear();
        n.results.clear();
        n.committing = false;
        n.senders.clear();
        n.inbound.clear();
        n.sync_drops.clear();
        n.gate = SlotGate::default();
        n.imports.clear();
    }

    pub(crate) fn restart_node(&mut self, i: usize) {
        self.nodes[i].incarnation = self.rng.next_u64() >> 11;
        self.start_node(i);
    }

    // --- the machine -------------------------------------------------------------------------

    /// Hands `input` to node `i`'s machine and carries out what it asks; returns its
    /// answer to an offer or a frame.
    fn node_input(&mut self, i: usize, input: Input) -> Option<Output> {
        let mut answer = None;
        let mut next = Some(input);
        while let Some(input) = next.take() {
            let now = self.node_now(i);
            let outputs = self.nodes[i].machine.handle(input, now);
            for output in outputs {
                if let Some(follow_up) = self.carry_out(i, output, &mut answer) {
                    next = Some(follow_up);
                }
            }
        }
        self.pump_writer(i);
        self.schedule_tick(i);
        if !self.nodes[i].reads.is_empty() && self.flaw() != Flaw::DirtyRead {
            self.answer_reads(i);
        }
        answer
    }

    fn schedule_tick(&mut self, i: usize) {
        let Some(deadline) = self.nodes[i].machine.next_deadline() else {
            return;
        };
        let t = self.node_true_time(i, deadline);
        if self.nodes[i].tick_at.is_none_or(|at| t < at) {
            self.nodes[i].tick_at = Some(t);
            let life = self.nodes[i].life;
            self.at(t, Event::NodeTick { node: i, life });
        }
    }

    pub(crate) fn node_tick(&mut self, i: usize, life: u64) {
        if self.nodes[i].life != life || !self.nodes[i].up {
            return;
        }
        if self.nodes[i].tick_at.is_some_and(|at| at > self.now) {
            return;
        }
        self.nodes[i].tick_at = None;
        self.node_input(i, Input::Tick);
    }

    fn carry_out(
        &mut self,
        i: usize,
        output: Output,
        answer: &mut Option<Output>,
    ) -> Option<Input> {
        match output {
            Output::Commit { batch, epoch } => return self.commit(i, batch, epoch),
            Output::Reply { batch, result } => self.reply(i, batch, result),
            Output::PersistEpoch(epoch) => {
                let recorded = self.nodes[i].store.observe_epoch(epoch);
                self.nodes[i].store.sync();
                if let Err(e) = recorded {
                    self.note(Addr::Node(i), format!("cannot record epoch {epoch}: {e}"));
                }
            }
            Output::PersistPromotion(epoch) => {
                let store = &self.nodes[i].store;
                let recorded = store
                    .observe_epoch(epoch)
                    .and_then(|_| store.set_node_meta(PRIMARY_EPOCH, epoch.0));
                store.sync();
                return Some(Input::PromotionRecorded {
                    epoch,
                    log_end: store.status().last.lsn,
                    error: recorded.err().map(|e| e.to_string()),
                });
            }
            Output::Role(role) => {
                self.note(
                    Addr::Node(i),
                    format!(
                        "role {}{}",
                        role.role,
                        role.fenced_by
                            .map(|e| format!(" (fenced by {e})"))
                            .unwrap_or_default()
                    ),
                );
                if role.role != Role::Primary {
                    let links: Vec<u64> = self.nodes[i].senders.keys().copied().collect();
                    for link in links {
                        self.stop_sender(i, link);
                    }
                }
            }
            Output::ResetLogEnd => {}
            Output::StartSender { link, url } => {
                let to = node_of_url(&url)?;
                let now = self.node_now(i);
                self.nodes[i].senders.insert(
                    link,
                    Sender {
                        to,
                        conn: None,
                        phase: Phase::Idle,
                        since: now,
                        sent: Lsn(0),
                        frames: 0,
                        times: VecDeque::new(),
                        last_heard: now,
                        backoff_ms: 20,
                    },
                );
                let life = self.nodes[i].life;
                self.at(
                    self.now,
                    Event::SenderRetry {
                        node: i,
                        life,
                        link,
                    },
                );
            }
            Output::StopSender { link } => self.stop_sender(i, link),
            a @ (Output::Accept { .. }
            | Output::Refuse { .. }
            | Output::FrameOk
            | Output::FrameStale { .. }
            | Output::Replaced) => *answer = Some(a),
            Output::Note(note) => self.note(Addr::Node(i), note.to_string()),
        }
        None
    }

    // --- the writer --------------------------------------------------------------------------

    fn pump_writer(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.up || n.machine.busy() || n.queue.is_empty() {
            return;
        }
        n.next_batch += 1;
        let batch = n.next_batch;
        let writes: Vec<Write> = n.queue.drain(..).collect();
        let count = writes.len();
        n.batches.insert(batch, writes);
        self.node_input(
            i,
            Input::Queued {
                batch,
                writes: count,
            },
        );
    }

    fn commit(&mut self, i: usize, batch: u64, epoch: Epoch) -> Option<Input> {
        let commands: Vec<Command> = self.nodes[i]
            .batches
            .get(&batch)
            .map(|ws| ws.iter().map(|w| w.command.clone()).collect())
            .unwrap_or_default();
        let mut shipped = false;
        let result = self.nodes[i]
            .store
            .execute_with(epoch, &commands, &mut |_| shipped = true);
        match result {
            Ok(results) => {
                let last = self.nodes[i].store.status().last.lsn;
                self.nodes[i].results.insert(batch, results);
                self.nodes[i].committing = true;
                let now = self.node_now(i);
                self.nodes[i].machine.handle(Input::Decided { last }, now);
                let links: Vec<u64> = self.nodes[i].senders.keys().copied().collect();
                for link in links {
                    self.ship(i, link);
                }
                let fsync = self.rng.range(300, 3_000);
                let life = self.nodes[i].life;
                self.at(
                    self.now + fsync,
                    Event::CommitDone {
                        node: i,
                        life,
                        batch,
                    },
                );
                None
            }
            Err(StoreError::StaleEpoch { current, .. }) if !shipped => Some(Input::Committed {
                batch,
                result: Err(keel_node::machine::CommitFailure::StaleEpoch { current }),
            }),
            Err(e) => Some(Input::Committed {
                batch,
                result: Err(keel_node::machine::CommitFailure::Store(e.to_string())),
            }),
        }
    }

    pub(crate) fn commit_done(&mut self, i: usize, life: u64, batch: u64) {
        if self.nodes[i].life != life || !self.nodes[i].up {
            return;
        }
        self.nodes[i].store.sync();
        self.nodes[i].committing = false;
        let last = self.nodes[i].store.status().last.lsn;
        if self.flaw() == Flaw::AckBeforeReplication {
            // The planted mistake: answer as soon as the primary's own fsync is done.
            self.reply(i, batch, Ok(()));
        }
        self.node_input(
            i,
            Input::Committed {
                batch,
                result: Ok(last),
            },
        );
        self.answer_reads(i);
    }

    fn reply(&mut self, i: usize, batch: u64, result: Result<(), WriteError>) {
        let Some(writes) = self.nodes[i].batches.remove(&batch) else {
            return;
        };
        let results = self.nodes[i].results.remove(&batch).unwrap_or_default();
        let last = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|(l, _)| *l)
            .max();
        if let (Ok(()), Some(last)) = (&result, last) {
            self.check_acknowledged(i, last);
        }
        for w in writes {
            if let Some(granted) = &w.granted {
                self.nodes[i].gate.release(granted);
            }
            match (w.origin, &result) {
                (Origin::Client { client, op, key }, Ok(())) => {
                    let version = w.granted.as_ref().map_or(0, |g| g.version);
                    self.check_slot_ack(i, &key, version);
                    self.answer_client(i, client, op, ClientReply::Written);
                }
                (Origin::Client { client, op, .. }, Err(err)) => {
                    self.answer_client(i, client, op, classify(err));
                }
                (Origin::Import { req }, _) => {
                    let failed = result.as_ref().err().map(ToString::to_string);
                    self.import_written(i, req, failed);
                }
            }
        }
    }

    fn answer_client(&mut self, i: usize, client: usize, op: u64, reply: ClientReply) {
        self.send(
            Addr::Node(i),
            Addr::Client(client),
            Msg::Reply { op, reply },
        );
    }

    fn client_write(&mut self, i: usize, client: usize, op: u64, key: String, value: u64) {
        // As the node's API: the gate first (421, or a slot frozen by a move), then the
        // machine.
        let granted = match self.nodes[i].gate.claim(key.as_bytes()) {
            Ok(granted) => granted,
            Err(Unclaimed::Misdirected(m)) => {
                let reply = self.misdirected(i, m.owner);
                self.answer_client(i, client, op, reply);
                return;
            }
            Err(Unclaimed::Frozen { slot, to })
                if self.flaw() == Flaw::WriteFrozenSlots
                    && to.as_ref() != Some(&self.nodes[i].group) =>
            {
                Granted {
                    slots: vec![slot],
                    import: false,
                    version: self.nodes[i].gate.version(),
                }
            }
            Err(Unclaimed::Frozen { slot, .. }) => {
                let reply = match self.nodes[i].machine.refusal() {
                    Some(err) => classify(&err),
                    None => ClientReply::NotWritten {
                        why: format!("slot_moving: slot {slot} is in a move"),
                        primary: Some(i),
                    },
                };
                self.answer_client(i, client, op, reply);
                return;
            }
        };
        if let Some(err) = self.nodes[i].machine.refusal() {
            self.nodes[i].gate.release(&granted);
            self.answer_client(i, client, op, classify(&err));
            return;
        }
        self.nodes[i].queue.push_back(Write {
            command: Command::Put {
                key: key.clone(),
                value: value.to_string().into_bytes(),
                expect: Expect::Any,
            },
            origin: Origin::Client { client, op, key },
            granted: Some(granted),
        });
        self.pump_writer(i);
    }

    /// `421`: `owner` owns the key's slot, in the table this node holds.
    fn misdirected(&self, i: usize, owner: GroupId) -> ClientReply {
        let table = self.nodes[i]
            .gate
            .held()
            .map(|(_, table)| Box::new(table.clone()));
        match table {
            Some(table) => ClientReply::Misdirected { owner, table },
            None => ClientReply::NoRead {
                why: "no slot table".into(),
                primary: None,
            },
        }
    }

    fn client_read(&mut self, i: usize, client: usize, op: u64, key: String) {
        // As the node's API: a slot in a move is read nowhere until it ends, a slot of
        // another group's gets 421.
        let moving = self.nodes[i].gate.in_move(key.as_bytes());
        if let Some((slot, _)) = moving.filter(|_| self.flaw() != Flaw::ReadMovingSlots) {
            let reply = ClientReply::NoRead {
                why: format!("slot_moving: slot {slot} is in a move"),
                primary: Some(i),
            };
            self.answer_client(i, client, op, reply);
            return;
        }
        if let Err(m) = self.nodes[i].gate.owns(key.as_bytes()) {
            let reply = self.misdirected(i, m.owner);
            self.answer_client(i, client, op, reply);
            return;
        }
        let n = &self.nodes[i];
        // As the node's API: a primary being replaced, or without its lease, refuses.
        let lease =
            n.machine.lease_valid(self.node_now(i)) || self.flaw() == Flaw::ReadWithoutLease;
        let refused = if !n.machine.is_primary() {
            Some(n.machine.role().primary.clone())
        } else if n.machine.failover().is_some() || !lease {
            Some(None)
        } else {
            None
        };
        if let Some(primary) = refused {
            let reply = ClientReply::NoRead {
                why: "not a primary holding its lease".into(),
                primary: primary.as_deref().and_then(node_of_url),
            };
            self.answer_client(i, client, op, reply);
            return;
        }
        if self.flaw() == Flaw::DirtyRead {
            // As keel did: the read waits only for a commit in flight here.
            self.nodes[i].reads.push(Read {
                client,
                op,
                key,
                value: None,
                index: Lsn(0),
            });
            if !self.nodes[i].committing {
                self.answer_reads_dirty(i);
            }
            return;
        }
        let Ok(value) = self.nodes[i].store.kv_get(&key) else {
            return;
        };
        let value = parse_value(value);
        // Everything the read may show was decided by now.
        let index = self.nodes[i].machine.log_end();
        self.nodes[i].reads.push(Read {
            client,
            op,
            key,
            value,
            index,
        });
        self.answer_reads(i);
    }

    /// [`Flaw::DirtyRead`]: answers every waiting read with what the store holds now.
    fn answer_reads_dirty(&mut self, i: usize) {
        let reads = std::mem::take(&mut self.nodes[i].reads);
        for r in reads {
            let Ok(value) = self.nodes[i].store.kv_get(&r.key) else {
                continue;
            };
            self.answer_client(i, r.client, r.op, ClientReply::Value(parse_value(value)));
        }
    }

    /// Answers the reads whose values are on the sync set; drops them all if this node
    /// is no longer primary (their clients time out: a read changes nothing).
    fn answer_reads(&mut self, i: usize) {
        if !self.nodes[i].machine.is_primary() {
            self.nodes[i].reads.clear();
            return;
        }
        let replicated = self.nodes[i].machine.replicated();
        let (ready, waiting): (Vec<Read>, Vec<Read>) = std::mem::take(&mut self.nodes[i].reads)
            .into_iter()
            .partition(|r| r.index <= replicated);
        self.nodes[i].reads = waiting;
        for r in ready {
            self.answer_client(i, r.client, r.op, ClientReply::Value(r.value));
        }
    }

    // --- the heartbeat -------------------------------------------------------------------

    pub(crate) fn node_heartbeat(&mut self, i: usize, life: u64) {
        if self.nodes[i].life != life || !self.nodes[i].up || self.nodes[i].evicted {
            return;
        }
        let now = self.node_now(i);
        let timing = self.nodes[i].machine.timing();
        let waiting = self.nodes[i]
            .heartbeat
            .is_some_and(|(_, sent)| now < sent + timing.heartbeat_timeout);
        if !waiting {
            if self.nodes[i].heartbeat.is_some() {
                // No answer in time: ask the next monitor (as `keel node` does).
                self.nodes[i].monitor = (self.nodes[i].monitor + 1) % self.monitors.len();
            }
            self.send_heartbeat(i);
        }
        let next = self.node_after(i, timing.heartbeat_interval);
        self.at(next, Event::Heartbeat { node: i, life });
    }

    fn send_heartbeat(&mut self, i: usize) {
        let now = self.node_now(i);
        self.next_req += 1;
        let req = self.next_req;
        let body = self.heartbeat_request(i);
        self.nodes[i].heartbeat = Some((req, now));
        let monitor = Addr::Monitor(self.nodes[i].monitor);
        self.send(Addr::Node(i), monitor, Msg::ToMonitor { req, body });
    }

    fn heartbeat_request(&self, i: usize) -> MonitorRequest {
        let n = &self.nodes[i];
        let status = n.store.durable_status();
        let node = node_id(i);
        if !n.registered {
            return MonitorRequest::Register(RegisterRequest {
                group: (self.cfg.groups > 1).then(|| n.group.clone()),
                node,
                url: node_url(i),
                incarnation: n.incarnation,
                epoch: status.epoch,
                lsn: status.last.lsn,
            });
        }
        let (standbys, drained) = n.machine.report();
        let draining = drained
            && n.machine.failover().is_some_and(|f| {
                f.from.as_str() == node.as_str()
                    && f.phase == keel_client::wire::FailoverPhase::Draining
            });
        MonitorRequest::Heartbeat(HeartbeatRequest {
            slots_version: n.gate.version(),
            node,
            incarnation: n.incarnation,
            role: n.machine.role().role,
            epoch: status.epoch,
            lsn: status.last.lsn,
            standbys,
            draining,
        })
    }

    fn monitor_answered(
        &mut self,
        i: usize,
        req: u64,
        answer: Result<Box<keel_client::wire::View>, crate::net::Refused>,
    ) {
        if let Some(url) = self.nodes[i].sync_drops.remove(&req) {
            if answer.is_ok() {
                self.node_input(i, Input::SyncDropped { url });
            }
            return;
        }
        let Some((expected, sent_at)) = self.nodes[i].heartbeat else {
            return;
        };
        if expected != req {
            return;
        }
        self.nodes[i].heartbeat = None;
        match answer {
            Ok(view) => {
                self.nodes[i].registered = true;
                self.learn_slots(i, &view);
                self.node_input(
                    i,
                    Input::View {
                        view,
                        sent_at: Some(sent_at),
                    },
                );
                self.drop_silent_standbys(i);
            }
            Err(refused) if refused.error == codes::STALE_INCARNATION => {
                self.nodes[i].evicted = true;
                self.node_input(i, Input::Evicted);
            }
            Err(refused) if refused.error == codes::NOT_LEADER => match refused.leader {
                // Another monitor leads: ask it at once.
                Some(leader) if leader != self.nodes[i].monitor => {
                    self.nodes[i].monitor = leader;
                    self.note(
                        Addr::Node(i),
                        format!("following the monitors' leader {}", Addr::Monitor(leader)),
                    );
                    self.send_heartbeat(i);
                }
                // None known: the next one, at the next heartbeat.
                _ => self.nodes[i].monitor = (self.nodes[i].monitor + 1) % self.monitors.len(),
            },
            Err(refused) if refused.error == codes::UNKNOWN_NODE => {
                self.nodes[i].registered = false;
            }
            Err(refused) => {
                if let Some(view) = refused.view {
                    self.learn_slots(i, &view);
                    self.node_input(
                        i,
                        Input::View {
                            view,
                            sent_at: None,
                        },
                    );
                }
            }
        }
    }

    /// Keeps what a view says of the key space before the view goes to the machine, as
    /// `Shared::learn_slots` does.
    fn learn_slots(&mut self, i: usize, view: &View) {
        let Some(group) = &view.group else {
            return;
        };
        if let Some(version) = self.nodes[i].gate.learn(group, view.slots.as_ref()) {
            self.note(Addr::Node(i), format!("holds slot table version {version}"));
        }
    }

    fn drop_silent_standbys(&mut self, i: usize) {
        let now = self.node_now(i);
        let silent = self.nodes[i].machine.silent_sync_standbys(now);
        for (url, standby) in silent {
            if self.nodes[i].sync_drops.values().any(|u| *u == url) {
                continue;
            }
            self.next_req += 1;
            let req = self.next_req;
            self.nodes[i].sync_drops.insert(req, url);
            let body = MonitorRequest::SyncDrop(SyncDropRequest {
                node: node_id(i),
                epoch: self.nodes[i].store.status().epoch,
                standby,
            });
            let monitor = Addr::Monitor(self.nodes[i].monitor);
            self.send(Addr::Node(i), monitor, Msg::ToMonitor { req, body });
        }
    }

    // --- the senders -------------------------------------------------------------------------

    fn stop_sender(&mut self, i: usize, link: u64) {
        if let Some(s) = self.nodes[i].senders.remove(&link)
            && let Some(conn) = s.conn
        {
            self.close_conn(conn, i);
        }
    }

    pub(crate) fn sender_retry(&mut self, i: usize, life: u64, link: u64) {
        if self.nodes[i].life != life || !self.nodes[i].up || !self.nodes[i].machine.is_primary() {
            return;
        }
        let Some(s) = self.nodes[i].senders.get(&link) else {
            return;
        };
        if s.phase != Phase::Idle {
            return;
        }
        let to = s.to;
        self.node_input(i, Input::LinkConnecting { link });
        let conn = self.open_conn(i, to);
        let now = self.node_now(i);
        let epoch = self.nodes[i].machine.writing_epoch();
        if let Some(s) = self.nodes[i].senders.get_mut(&link) {
            s.conn = Some(conn);
            s.phase = Phase::Offering;
            s.since = now;
            s.frames = 0;
            s.times.clear();
            s.last_heard = now;
        }
        self.send(
            Addr::Node(i),
            Addr::Node(to),
            Msg::Offer {
                conn,
                epoch,
                from: node_name(i),
            },
        );
        let at = self.node_after(i, PING);
        self.at(
            at,
            Event::SenderTimer {
                node: i,
                life,
                link,
                conn,
            },
        );
    }

    pub(crate) fn sender_timer(&mut self, i: usize, life: u64, link: u64, conn: u64) {
        if self.nodes[i].life != life || !self.nodes[i].up {
            return;
        }
        let Some(s) = self.nodes[i].senders.get(&link).cloned() else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        let now = self.node_now(i);
        let wait = self.stream_wait(i);
        let stalled = match s.phase {
            Phase::Idle => return,
            Phase::Offering => now >= s.since + CONNECT_TIMEOUT,
            Phase::Aligning => now >= s.since + wait * 10,
            Phase::Streaming => now > s.last_heard + wait,
        };
        if stalled {
            self.sender_fail(i, link, "no answer");
            return;
        }
        if s.phase == Phase::Streaming {
            let epoch = self.nodes[i].machine.writing_epoch();
            self.send_frame(i, link, Frame::Ping { epoch });
        }
        let at = self.node_after(i, PING);
        self.at(
            at,
            Event::SenderTimer {
                node: i,
                life,
                link,
                conn,
            },
        );
    }

    fn stream_wait(&self, i: usize) -> Duration {
        self.nodes[i]
            .machine
            .timing()
            .heartbeat_timeout
            .max(2 * PING)
    }

    fn sender_fail(&mut self, i: usize, link: u64, why: &str) {
        let Some(s) = self.nodes[i].senders.get_mut(&link) else {
            return;
        };
        let conn = s.conn.take();
        s.phase = Phase::Idle;
        let backoff = s.backoff_ms;
        s.backoff_ms = (backoff * 2).min(500);
        let to = s.to;
        if let Some(conn) = conn {
            self.close_conn(conn, i);
        }
        self.note(
            Addr::Node(i),
            format!("stream to {} down: {why}", node_name(to)),
        );
        self.node_input(i, Input::LinkDown { link });
        let life = self.nodes[i].life;
        let at = self.node_after(i, Duration::from_millis(backoff));
        self.at(
            at,
            Event::SenderRetry {
                node: i,
                life,
                link,
            },
        );
    }

    fn send_frame(&mut self, i: usize, link: u64, frame: Frame) {
        let now = self.node_now(i);
        let Some(s) = self.nodes[i].senders.get_mut(&link) else {
            return;
        };
        let Some(conn) = s.conn else {
            return;
        };
        s.frames += 1;
        s.times.push_back((s.frames, now));
        let to = s.to;
        self.send(Addr::Node(i), Addr::Node(to), Msg::Frame { conn, frame });
    }

    fn link_of_conn(&self, i: usize, conn: u64) -> Option<u64> {
        self.nodes[i]
            .senders
            .iter()
            .find(|(_, s)| s.conn == Some(conn))
            .map(|(l, _)| *l)
    }

    fn offer_answered(
        &mut self,
        i: usize,
        conn: u64,
        result: Result<(keel_core::LogPos, Vec<(Epoch, Lsn)>), Epoch>,
    ) {
        let Some(link) = self.link_of_conn(i, conn) else {
            return;
        };
        let (their_last, theirs) = match result {
            Ok(hello) => hello,
            Err(seen) => {
                if seen > self.nodes[i].machine.writing_epoch() {
                    self.node_input(i, Input::Deposed { epoch: seen });
                } else {
                    self.sender_fail(i, link, "refused");
                }
                return;
            }
        };
        let Some(to) = self.nodes[i].senders.get(&link).map(|s| s.to) else {
            return;
        };
        self.node_input(
            i,
            Input::LinkHello {
                link,
                node: node_name(to),
            },
        );
        let store = &self.nodes[i].store;
        let status = store.status();
        let Ok(ours) = store.epoch_boundaries() else {
            return;
        };
        let common = agreement(&ours, status.last, &theirs, their_last);
        let epoch = self.nodes[i].machine.writing_epoch();
        let now = self.node_now(i);
        if let Some(s) = self.nodes[i].senders.get_mut(&link) {
            s.phase = Phase::Aligning;
            s.since = now;
            s.last_heard = now;
        }
        if common < status.snapshot.lsn {
            self.send_snapshot(i, link);
        } else if their_last.lsn > common {
            self.send_frame(i, link, Frame::Truncate { epoch, to: common });
        } else {
            self.aligned(i, link, common);
        }
    }

    fn send_snapshot(&mut self, i: usize, link: u64) {
        let Ok(snapshot) = self.nodes[i].store.snapshot() else {
            self.sender_fail(i, link, "no snapshot");
            return;
        };
        let epoch = self.nodes[i].machine.writing_epoch();
        self.send_frame(
            i,
            link,
            Frame::Snapshot {
                epoch,
                snapshot: Box::new(snapshot),
            },
        );
    }

    fn aligned(&mut self, i: usize, link: u64, at: Lsn) {
        if let Some(s) = self.nodes[i].senders.get_mut(&link) {
            s.sent = at;
            s.phase = Phase::Streaming;
            s.backoff_ms = 20;
        }
        self.node_input(i, Input::LinkAligned { link, acked: at });
        self.ship(i, link);
    }

    /// Sends what the standby lacks.
    fn ship(&mut self, i: usize, link: u64) {
        loop {
            let Some(s) = self.nodes[i].senders.get(&link) else {
                return;
            };
            if s.phase != Phase::Streaming || s.sent >= self.nodes[i].store.status().last.lsn {
                return;
            }
            let entries = match self.nodes[i].store.entries_after(s.sent, FRAME_ENTRIES) {
                Ok(e) if !e.is_empty() => e,
                _ => {
                    self.sender_fail(i, link, "the log no longer reaches");
                    return;
                }
            };
            let last = entries.last().map_or(s.sent, |e| e.pos.lsn);
            let epoch = self.nodes[i].machine.writing_epoch();
            if let Some(s) = self.nodes[i].senders.get_mut(&link) {
                s.sent = last;
            }
            self.send_frame(i, link, Frame::Append { epoch, entries });
        }
    }

    fn answer_received(&mut self, i: usize, conn: u64, answer: Answer) {
        let Some(link) = self.link_of_conn(i, conn) else {
            return;
        };
        let now = self.node_now(i);
        let Some(s) = self.nodes[i].senders.get_mut(&link) else {
            return;
        };
        s.last_heard = now;
        let phase = s.phase;
        match answer {
            Answer::Ack { last, frames } => {
                let mut sent_at = None;
                while let Some(&(n, t)) = s.times.front() {
                    if n > frames {
                        break;
                    }
                    sent_at = Some(t);
                    s.times.pop_front();
                }
                if phase == Phase::Aligning {
                    self.aligned(i, link, last.lsn);
                } else {
                    self.node_input(
                        i,
                        Input::Ack {
                            link,
                            lsn: last.lsn,
                            sent_at,
                        },
                    );
                }
            }
            Answer::NeedSnapshot => self.send_snapshot(i, link),
            Answer::Stale { epoch } => {
                self.node_input(i, Input::Deposed { epoch });
            }
        }
    }

    // --- the receiver --------------------------------------------------------------------------

    fn offered(&mut self, i: usize, from: usize, conn: u64, epoch: Epoch, name: String) {
        let answer = self.node_input(
            i,
            Input::Offer {
                from: name,
                epoch,
                primary: Some(node_url(from)),
            },
        );
        match answer {
            Some(Output::Accept { stream }) => {
                self.nodes[i].inbound.insert(conn, (stream, 0));
                let Ok((last, epochs)) = self.nodes[i].store.summary() else {
                    return;
                };
                self.send(
                    Addr::Node(i),
                    Addr::Node(from),
                    Msg::OfferAnswer {
                        conn,
                        result: Ok((last, epochs)),
                    },
                );
            }
            Some(Output::Refuse { seen, .. }) => {
                self.send(
                    Addr::Node(i),
                    Addr::Node(from),
                    Msg::OfferAnswer {
                        conn,
                        result: Err(seen),
                    },
                );
            }
            _ => {}
        }
    }

    fn frame_received(&mut self, i: usize, from: usize, conn: u64, frame: Frame) {
        let Some((stream, frames)) = self.nodes[i].inbound.get(&conn).copied() else {
            return;
        };
        let frames = frames + 1;
        self.nodes[i].inbound.insert(conn, (stream, frames));
        let decision = self.node_input(
            i,
            Input::Frame {
                stream,
                epoch: frame.epoch(),
            },
        );
        match decision {
            Some(Output::FrameOk) => {}
            Some(Output::FrameStale { seen }) => {
                let msg = Msg::Answer {
                    conn,
                    answer: Answer::Stale { epoch: seen },
                };
                self.send(Addr::Node(i), Addr::Node(from), msg);
                self.nodes[i].inbound.remove(&conn);
                self.close_conn(conn, i);
                return;
            }
            _ => {
                self.nodes[i].inbound.remove(&conn);
                self.close_conn(conn, i);
                return;
            }
        }
        let store = &self.nodes[i].store;
        let applied = match frame {
            Frame::Append { entries, .. } => store.append(&entries).map(Some),
            Frame::Truncate { to, .. } => match store.rollback_to(to) {
                Err(StoreError::Compacted { .. }) => Ok(None),
                other => other.map(Some),
            },
            Frame::Snapshot { snapshot, .. } => store.install(&snapshot).map(Some),
            Frame::Ping { .. } => Ok(Some(store.status().last)),
        };
        store.sync();
        let answer = match applied {
            Ok(Some(last)) => Answer::Ack { last, frames },
            Ok(None) => Answer::NeedSnapshot,
            Err(e) => {
                self.note(Addr::Node(i), format!("stream ended: {e}"));
                self.nodes[i].inbound.remove(&conn);
                self.close_conn(conn, i);
                return;
            }
        };
        let grants = matches!(answer, Answer::Ack { .. });
        self.send(
            Addr::Node(i),
            Addr::Node(from),
            Msg::Answer { conn, answer },
        );
        if grants {
            self.node_input(i, Input::Granted);
        }
    }

    // --- the network ---------------------------------------------------------------------------

    pub(crate) fn node_receive(&mut self, i: usize, from: Addr, msg: Msg) {
        match (msg, from) {
            (Msg::FromMonitor { req, answer }, _) => self.monitor_answered(i, req, answer),
            (Msg::Probe { probe }, monitor) => {
                self.send(Addr::Node(i), monitor, Msg::ProbeOk { probe });
            }
            (
                Msg::Offer {
                    conn,
                    epoch,
                    from: name,
                },
                Addr::Node(f),
            ) => self.offered(i, f, conn, epoch, name),
            (Msg::OfferAnswer { conn, result }, _) => self.offer_answered(i, conn, result),
            (Msg::Frame { conn, frame }, Addr::Node(f)) => self.frame_received(i, f, conn, frame),
            (Msg::Answer { conn, answer }, _) => self.answer_received(i, conn, answer),
            (Msg::Closed { conn }, _) => {
                self.nodes[i].inbound.remove(&conn);
                if let Some(link) = self.link_of_conn(i, conn) {
                    if let Some(s) = self.nodes[i].senders.get_mut(&link) {
                        s.conn = None;
                    }
                    self.sender_fail(i, link, "connection reset");
                }
            }
            (Msg::Write { op, key, value }, Addr::Client(c)) => {
                self.client_write(i, c, op, key, value)
            }
            (Msg::Read { op, key }, Addr::Client(c)) => self.client_read(i, c, op, key),
            (Msg::Export { req, since, after }, Addr::Monitor(k)) => {
                let piece = self.export(i, since, after);
                self.send(Addr::Node(i), Addr::Monitor(k), Msg::Piece { req, piece });
            }
            (Msg::Import { req, data }, Addr::Monitor(k)) => self.import(i, k, req, *data),
            _ => {}
        }
    }

    // --- slot moves ----------------------------------------------------------------------------

    /// Why this node may not export or import now, if it may not: only a primary that
    /// holds its lease and is not being replaced does (`keel_node::moves`).
    fn not_mover(&self, i: usize) -> Option<String> {
        let m = &self.nodes[i].machine;
        if !m.is_primary() || m.failover().is_some() {
            return Some("only a group's primary exports or imports slots".into());
        }
        if !m.lease_valid(self.node_now(i)) {
            return Some("this primary's lease has lapsed".into());
        }
        None
    }

    /// `GET /v1/slots/export`: the piece after `after` of the move frozen at `since`.
    fn export(
        &self,
        i: usize,
        since: u64,
        after: Option<keel_client::node::Mark>,
    ) -> Result<Box<SlotData>, String> {
        if let Some(why) = self.not_mover(i) {
            return Err(why);
        }
        let n = &self.nodes[i];
        let Some(moving) = n.gate.frozen_move(since)? else {
            return Err("writes granted before the freeze are still under way".into());
        };
        read_piece(&n.store, &moving, after)
            .map(Box::new)
            .map_err(|e| format!("cannot read the store: {e}"))
    }

    /// `POST /v1/slots/import`: the piece's writes, through the writer; the monitor hears
    /// once every one of them is answered.
    fn import(&mut self, i: usize, k: usize, req: u64, data: SlotData) {
        let refuse = |world: &mut World, why: String| {
            let msg = Msg::Imported {
                req,
                result: Err(why),
            };
            world.send(Addr::Node(i), Addr::Monitor(k), msg);
        };
        if let Some(why) = self.not_mover(i) {
            return refuse(self, why);
        }
        let (granted, moving) = match self.nodes[i].gate.claim_import(data.since) {
            Ok(claimed) => claimed,
            Err(why) => {
                return refuse(
                    self,
                    format!("{why}; it may not have heard of the move yet"),
                );
            }
        };
        let commands = match import_plan(&self.nodes[i].store, &moving, data) {
            Ok(commands) => commands,
            Err(e) => {
                self.nodes[i].gate.release(&granted);
                return refuse(self, format!("cannot read the store: {e}"));
            }
        };
        let writes = commands.len();
        self.nodes[i].imports.insert(
            req,
            ImportRun {
                monitor: k,
                writes,
                left: writes,
                failed: None,
                granted,
            },
        );
        if writes == 0 {
            self.import_written(i, req, None);
            return;
        }
        for command in commands {
            self.nodes[i].queue.push_back(Write {
                origin: Origin::Import { req },
                command,
                granted: None,
            });
        }
        self.pump_writer(i);
    }

    /// One write of import `req` was answered (`failed`: why not): once all are, the
    /// gate's hold ends and the monitor hears.
    fn import_written(&mut self, i: usize, req: u64, failed: Option<String>) {
        let Some(run) = self.nodes[i].imports.get_mut(&req) else {
            return;
        };
        run.left = run.left.saturating_sub(1);
        if let Some(why) = failed {
            run.failed.get_or_insert(why);
        }
        if run.left > 0 {
            return;
        }
        let Some(run) = self.nodes[i].imports.remove(&req) else {
            return;
        };
        self.nodes[i].gate.release(&run.granted);
        let result = match run.failed {
            Some(why) => Err(format!("an imported write failed: {why}")),
            None => Ok(run.writes),
        };
        self.send(
            Addr::Node(i),
            Addr::Monitor(run.monitor),
            Msg::Imported { req, result },
        );
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(node_name(i)).expect("`node{n}` is a valid node id")
}

/// A stored value as the clients wrote it (a decimal number).
fn parse_value(stored: Option<(u64, Vec<u8>)>) -> Option<u64> {
    stored.and_then(|(_, bytes)| String::from_utf8(bytes).ok()?.parse().ok())
}

/// What a client learns from a refused or failed write.
fn classify(err: &WriteError) -> ClientReply {
    match err {
        WriteError::NotPrimary { primary } => ClientReply::NotWritten {
            why: err.to_string(),
            primary: primary.as_deref().and_then(node_of_url),
        },
        WriteError::FailoverInProgress { to } => ClientReply::NotWritten {
            why: err.to_string(),
            primary: to.as_deref().and_then(node_index),
        },
        WriteError::NoLease
        | WriteError::SyncUnavailable { .. }
        | WriteError::Unreplicated { .. } => ClientReply::NotWritten {
            why: err.to_string(),
            primary: None,
        },
        WriteError::Fenced {
            committed: None, ..
        } => ClientReply::NotWritten {
            why: err.to_string(),
            primary: None,
        },
        WriteError::Fenced { .. }
        | WriteError::ReplicationTimeout { .. }
        | WriteError::LeaseLapsed { .. }
        | WriteError::Store(_)
        | WriteError::ShuttingDown => ClientReply::Unknown(err.to_string()),
    }
}

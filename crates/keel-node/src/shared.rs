//! What the node's tasks share: handles, and the one place where the machine's outputs are
//! carried out.
//!
//! Every decision is the [`Machine`]'s. A driver (the writer, a sender, the receiver, the
//! heartbeat task, the ticker) reports what happened with [`Shared::input`], which hands
//! it to the machine under a lock, releases the lock and does what the machine asked, in
//! order: a durable epoch before anything after it, the writers' answers, the role that
//! the API and the senders read, the senders to start or stop (through the supervisor's
//! queue, so this module needs no sender), the commit for the writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_core::faults::Faults;
use keel_core::slots::{GroupId, Misdirected, SlotTable};
use keel_core::{Epoch, Lsn, Role};
use keel_store::{Applied, Command, Storage, StoreError};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::NodeConfig;
pub use crate::gate::Unclaimed;
use crate::gate::{Granted, SlotGate};
use crate::machine::{
    BatchId, Input, LinkInfo, Machine, Output, RoleState, Settings, Timing, WriteError,
};

pub use crate::machine::LinkState;

/// A write waiting for its answer.
pub struct WriteRequest {
    /// What to do.
    pub command: Command,
    /// Where the answer goes.
    pub reply: Reply,
}

/// Where a write's answer goes.
pub type Reply = oneshot::Sender<Result<Applied, WriteError>>;

/// What the sender supervisor is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderCommand {
    /// Start a sender for link `link` to `url`.
    Start {
        /// The link's number.
        link: u64,
        /// The standby's URL.
        url: String,
    },
    /// Stop the sender of link `link`.
    Stop {
        /// The link's number.
        link: u64,
    },
    /// Stop every sender (shutdown).
    StopAll,
}

/// A batch's writers, waiting for the machine's answer.
struct Pending {
    replies: Vec<Reply>,
    /// Each write's own result, once committed.
    results: Option<Vec<Applied>>,
}

/// Locks a mutex that only guards plain data: a panic elsewhere cannot leave it half
/// written, so a poisoned lock is still good.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters for `/metrics`, bumped from the hot paths.
#[derive(Default)]
pub struct Stats {
    /// Writes acknowledged.
    pub writes_ok: AtomicU64,
    /// Writes refused by a precondition (412, 404, overflow).
    pub writes_rejected: AtomicU64,
    /// Writes answered 503 because a sync standby was missing or silent.
    pub writes_unavailable: AtomicU64,
    /// Group commits on this node (as primary or standby).
    pub commits: AtomicU64,
    /// Operations in those commits.
    pub committed_ops: AtomicU64,
    /// Time spent in those commits, in microseconds.
    pub commit_micros: AtomicU64,
    /// Heartbeats the monitor answered.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats that failed or were refused.
    pub heartbeats_failed: AtomicU64,
}

impl Stats {
    /// Adds to a counter.
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// What [`Shared::input`] came back with.
#[derive(Debug, Default)]
pub struct Decision {
    /// The machine's answer to an offer or a frame ([`Output::Accept`],
    /// [`Output::Refuse`], [`Output::FrameOk`], [`Output::FrameStale`],
    /// [`Output::Replaced`]).
    pub answer: Option<Output>,
    /// An epoch that could not be recorded.
    pub failed: Option<String>,
}

/// Everything the parts of a node share.
pub struct Shared {
    /// What the node was started with.
    pub config: NodeConfig,
    /// The log and state machine (redb in `keel node`; anything that keeps
    /// [`Storage`]'s contract).
    pub store: Arc<dyn Storage>,
    machine: Mutex<Machine>,
    /// The node's role, as the machine last published it (read on every answer).
    pub role: watch::Sender<RoleState>,
    /// While this node is primary, the end of the log durable here and on every sync
    /// standby ([`Machine::replicated`]); `None` otherwise. Reads wait on it.
    replicated: watch::Sender<Option<Lsn>>,
    /// The end of the primary's log: the last lsn the senders may ship (decided, and being
    /// or already made durable). They follow it.
    pub log_end: watch::Sender<Lsn>,
    /// The newest entries, for the senders.
    pub outbox: Mutex<crate::outbox::Outbox>,
    /// The queue into the writer.
    pub writes: mpsc::Sender<WriteRequest>,
    pending: Mutex<HashMap<BatchId, Pending>>,
    /// The commit the machine asked for, for the writer.
    commit: Mutex<Option<(BatchId, Epoch)>>,
    /// Wakes the writer: a commit to run, or its batch answered.
    pub writer_wake: Notify,
    /// Wakes the ticker: a deadline earlier than the one it sleeps to.
    pub ticker_wake: Notify,
    senders: mpsc::UnboundedSender<SenderCommand>,
    /// Counters.
    pub stats: Stats,
    /// A random number for this process's life, so the monitor can tell a restart.
    pub incarnation: u64,
    /// The peers this node must not connect to (`keel chaos partition`); inert unless
    /// `KEEL_FAULTS_FILE` is set.
    pub faults: Faults,
    /// Checks the credentials of requests (members for replication, operators for
    /// admin actions) and signs answers to members.
    pub guard: Arc<keel_http::Guard>,
    /// Signs this node's requests to the monitor and its standbys, and checks their
    /// answers; `None` without the cluster secret.
    pub signer: Option<keel_auth::Signer>,
    /// This node's group, the slot table and the work under way on slots, under a
    /// monitor that runs several groups (docs/shards.md); with no table the node owns
    /// every key. Its rules are pure ([`SlotGate`]); the waiting is done here.
    slots: Mutex<SlotGate>,
    /// The version of the table held, bumped when a new one is learned, and whenever a
    /// slot's writes or imports end: what a held write or an export waits on.
    slots_changed: watch::Sender<u64>,
    /// Exports waiting for writes to end.
    pub exporting: AtomicU64,
}

/// A write under way to one slot, or an import to a move's: while it lives, an export
/// of the slot (or a write to the imported slots) waits.
pub struct SlotClaim {
    shared: Arc<Shared>,
    granted: Granted,
}

impl SlotClaim {
    /// Names, in `Keel-Table-Version`, the table version the write was taken under: the
    /// table may have changed while it was replicated (the export waits for it).
    pub fn stamp(&self, mut response: axum::response::Response) -> axum::response::Response {
        if self.granted.version > 0 {
            response.headers_mut().insert(
                keel_core::headers::KEEL_TABLE_VERSION,
                http::HeaderValue::from(self.granted.version),
            );
        }
        response
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        if self.granted.slots.is_empty() {
            return;
        }
        let emptied = lock(&self.shared.slots).release(&self.granted);
        // Wakes whoever waits on the slots' work: writes held by an import, an export
        // waiting for the writes to end (the hot path of every write skips this unless
        // an export waits).
        if emptied && (self.granted.import || self.shared.exporting.load(Ordering::Relaxed) > 0) {
            self.shared.slots_changed.send_modify(|_| {});
        }
    }
}

/// The receiving ends of [`Shared`]'s queues.
pub struct Queues {
    /// Into the writer.
    pub writes: mpsc::Receiver<WriteRequest>,
    /// Into the sender supervisor.
    pub senders: mpsc::UnboundedReceiver<SenderCommand>,
}

impl Shared {
    /// Builds the shared state, the node writing in `writing_epoch` if it starts as
    /// primary; the queues' receiving ends are returned beside it.
    pub fn new(
        config: NodeConfig,
        store: Arc<dyn Storage>,
        faults: Faults,
        writing_epoch: Epoch,
    ) -> (Arc<Self>, Queues) {
        let (tx, rx) = mpsc::channel(4 * crate::config::MAX_BATCH);
        let (senders, senders_rx) = mpsc::unbounded_channel();
        let status = store.status();
        let machine = Machine::new(
            Settings {
                advertise: config.advertise.clone(),
                monitored: config.monitor.is_some(),
                role: config.role,
                standbys: config.standbys.clone(),
                sync: config.sync,
                sync_timeout: config.sync_timeout,
                writing_epoch,
                seen: status.epoch,
                log_end: status.last.lsn,
            },
            Instant::now(),
        );
        let guard = Arc::new(keel_http::Guard::new(
            "node",
            config.id.as_str(),
            config.secret.as_ref(),
            config.token.as_ref(),
            keel_auth::Hosts::of(config.listen, &[config.advertise.as_str()]),
        ));
        let signer = config
            .secret
            .as_ref()
            .map(|s| keel_auth::Signer::new(s.key(), config.id.as_str()));
        let shared = Self {
            guard,
            signer,
            config,
            store,
            role: watch::Sender::new(machine.role().clone()),
            replicated: watch::Sender::new(machine.is_primary().then(|| machine.replicated())),
            log_end: watch::Sender::new(status.last.lsn),
            machine: Mutex::new(machine),
            outbox: Mutex::default(),
            writes: tx,
            pending: Mutex::default(),
            commit: Mutex::default(),
            slots: Mutex::default(),
            slots_changed: watch::Sender::new(0),
            exporting: AtomicU64::new(0),
            writer_wake: Notify::new(),
            ticker_wake: Notify::new(),
            senders,
            stats: Stats::default(),
            incarnation: incarnation(),
            faults,
        };
        let queues = Queues {
            writes: rx,
            senders: senders_rx,
        };
        (Arc::new(shared), queues)
    }

    /// The machine, locked (never across an await).
    /// Keeps the node's group and the slot table a view of the monitor brings; a table
    /// older than the one held is ignored (views may cross on their way).
    pub fn learn_slots(&self, view: &keel_client::wire::View) {
        let Some(group) = &view.group else {
            return;
        };
        let learned = lock(&self.slots).learn(group, view.slots.as_ref());
        if let Some(version) = learned {
            self.slots_changed.send_replace(version);
        }
    }

    /// Starts a write to `key` ([`SlotGate::claim`]); the claim lives until the write is
    /// answered.
    pub fn claim(self: &Arc<Self>, key: &str) -> Result<SlotClaim, Unclaimed> {
        let granted = lock(&self.slots).claim(key.as_bytes())?;
        Ok(SlotClaim {
            shared: Arc::clone(self),
            granted,
        })
    }

    /// Starts an import of the move frozen at version `since`
    /// ([`SlotGate::claim_import`]); writes to the slots wait while it lives.
    pub fn claim_import(
        self: &Arc<Self>,
        since: u64,
    ) -> Result<(SlotClaim, keel_core::slots::Moving), String> {
        let (granted, moving) = lock(&self.slots).claim_import(since)?;
        let claim = SlotClaim {
            shared: Arc::clone(self),
            granted,
        };
        Ok((claim, moving))
    }

    /// The move frozen at `since`, once no write to its slots is under way here
    /// ([`SlotGate::frozen_move`]).
    pub fn frozen_move(&self, since: u64) -> Result<Option<keel_core::slots::Moving>, String> {
        lock(&self.slots).frozen_move(since)
    }

    /// When `key`'s slot is in the move under way out of this node's group or into it
    /// ([`SlotGate::in_move`]): the slot and the group it goes to.
    pub fn in_move(&self, key: &str) -> Option<(u16, GroupId)> {
        lock(&self.slots).in_move(key.as_bytes())
    }

    /// Changes whenever the table or the work under way on slots does.
    pub fn slots_watch(&self) -> watch::Receiver<u64> {
        self.slots_changed.subscribe()
    }

    /// The version of the slot table held (0: none).
    pub fn slots_version(&self) -> u64 {
        lock(&self.slots).version()
    }

    /// The node's group and the table it holds, if it belongs to a group.
    pub fn held_slots(&self) -> Option<(GroupId, SlotTable)> {
        lock(&self.slots).held().cloned()
    }

    /// `Err` with the owner when `key`'s slot is another group's, in the table held; a
    /// node that holds no table owns every key.
    pub fn owns(&self, key: &str) -> Result<(), Misdirected> {
        lock(&self.slots).owns(key.as_bytes())
    }

    pub fn machine(&self) -> MutexGuard<'_, Machine> {
        lock(&self.machine)
    }

    /// Hands `input` to the machine and carries out what it asks, in order.
    pub async fn input(&self, input: Input) -> Decision {
        let mut decision = Decision::default();
        let mut next = Some(input);
        while let Some(input) = next.take() {
            let outputs = {
                let mut machine = self.machine();
                let before = machine.next_deadline();
                let outputs = machine.handle(input, Instant::now());
                let after = machine.next_deadline();
                if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
                    self.ticker_wake.notify_one();
                }
                let replicated = machine.is_primary().then(|| machine.replicated());
                self.replicated
                    .send_if_modified(|r| std::mem::replace(r, replicated) != replicated);
                outputs
            };
            for output in outputs {
                if let Some(follow_up) = self.carry_out(output, &mut decision).await {
                    next = Some(follow_up);
                }
            }
        }
        decision
    }

    /// Does one thing the machine asked for; returns what came of it, if the machine
    /// must hear it.
    async fn carry_out(&self, output: Output, decision: &mut Decision) -> Option<Input> {
        match output {
            Output::Commit { batch, epoch } => {
                *lock(&self.commit) = Some((batch, epoch));
                self.writer_wake.notify_one();
            }
            Output::Reply { batch, result } => {
                // A batch answered before it committed is the one the writer holds.
                if !self.answer(batch, result) {
                    self.writer_wake.notify_one();
                }
            }
            Output::PersistEpoch(epoch) => {
                let store = self.store.clone();
                if let Err(e) = blocking(move || store.observe_epoch(epoch).map(drop)).await {
                    tracing::warn!(error = %e, %epoch, "cannot record an epoch");
                    decision.failed = Some(e);
                }
            }
            Output::PersistPromotion(epoch) => {
                let store = self.store.clone();
                let recorded = blocking(move || {
                    store.observe_epoch(epoch)?;
                    store.set_node_meta(crate::config::PRIMARY_EPOCH, epoch.0)
                })
                .await;
                return Some(Input::PromotionRecorded {
                    epoch,
                    log_end: self.store.status().last.lsn,
                    error: recorded.err(),
                });
            }
            Output::Role(role) => {
                self.role.send_replace(role);
            }
            Output::ResetLogEnd => self.reset_log_end(),
            Output::StartSender { link, url } => {
                // The supervisor is gone only at shutdown, when no sender is wanted.
                let _ = self.senders.send(SenderCommand::Start { link, url });
            }
            Output::StopSender { link } => {
                let _ = self.senders.send(SenderCommand::Stop { link });
            }
            answer @ (Output::Accept { .. }
            | Output::Refuse { .. }
            | Output::FrameOk
            | Output::FrameStale { .. }
            | Output::Replaced) => decision.answer = Some(answer),
            Output::Note(note) if note.is_warning() => tracing::warn!("{note}"),
            Output::Note(note) => tracing::info!("{note}"),
        }
        None
    }

    /// Waits up to `timeout` until everything up to `index` is durable here and on every
    /// sync standby; false if it was not, or this node stopped being primary meanwhile.
    pub async fn wait_replicated(&self, index: Lsn, timeout: std::time::Duration) -> bool {
        let mut rx = self.replicated.subscribe();
        let reached =
            tokio::time::timeout(timeout, rx.wait_for(|r| r.is_none_or(|r| r >= index))).await;
        matches!(reached, Ok(Ok(r)) if r.is_some())
    }

    /// Keeps a batch's writers until the machine answers them.
    pub fn hold(&self, batch: BatchId, replies: Vec<Reply>) {
        lock(&self.pending).insert(
            batch,
            Pending {
                replies,
                results: None,
            },
        );
    }

    /// Keeps a committed batch's results until the machine releases them.
    pub fn committed(&self, batch: BatchId, results: Vec<Applied>) {
        if let Some(p) = lock(&self.pending).get_mut(&batch) {
            p.results = Some(results);
        }
    }

    /// The commit the machine asked for, if any (taken once).
    pub fn take_commit(&self) -> Option<(BatchId, Epoch)> {
        lock(&self.commit).take()
    }

    /// Answers a batch's writers; returns whether the batch had committed.
    fn answer(&self, batch: BatchId, result: Result<(), WriteError>) -> bool {
        let Some(pending) = lock(&self.pending).remove(&batch) else {
            return false;
        };
        let committed = pending.results.is_some();
        match (result, pending.results) {
            (Ok(()), Some(results)) => {
                for (reply, result) in pending.replies.into_iter().zip(results) {
                    let counter = if result.is_ok() {
                        &self.stats.writes_ok
                    } else {
                        &self.stats.writes_rejected
                    };
                    Stats::bump(counter, 1);
                    // The client may have gone away; its write stands all the same.
                    let _ = reply.send(Ok(result));
                }
            }
            (Ok(()), None) => {
                let err = WriteError::Store("the commit's results went missing".into());
                answer_all(pending.replies, &err);
            }
            (Err(err), _) => {
                if matches!(
                    err,
                    WriteError::SyncUnavailable { .. }
                        | WriteError::NoLease
                        | WriteError::ReplicationTimeout { .. }
                        | WriteError::LeaseLapsed { .. }
                ) {
                    Stats::bump(&self.stats.writes_unavailable, pending.replies.len() as u64);
                }
                answer_all(pending.replies, &err);
            }
        }
        committed
    }

    /// Answers every write still held (shutdown).
    pub fn answer_all_pending(&self, err: &WriteError) {
        let pending: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in pending {
            answer_all(p.replies, err);
        }
    }

    /// Asks the sender supervisor to stop every sender (shutdown).
    pub fn stop_senders(&self) {
        let _ = self.senders.send(SenderCommand::StopAll);
    }

    /// The standbys, as the primary sees them.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.machine().links()
    }

    /// The node's role right now.
    pub fn role(&self) -> RoleState {
        self.role.borrow().clone()
    }

    /// Whether this node takes writes.
    pub fn is_primary(&self) -> bool {
        self.role.borrow().role == Role::Primary
    }

    /// The epoch this node writes in (and stamps its replication frames with).
    pub fn writing_epoch(&self) -> Epoch {
        self.machine().writing_epoch()
    }

    /// Whether a monitor assigns this node's role.
    pub fn monitored(&self) -> bool {
        self.config.monitor.is_some()
    }

    /// The monitor's settings (defaults when not monitored).
    pub fn timing(&self) -> Timing {
        self.machine().timing()
    }

    /// The failover in progress, if the monitor announced one.
    pub fn failover(&self) -> Option<keel_client::wire::Failover> {
        self.machine().failover().cloned()
    }

    /// Whether this primary holds its write lease at `now` ([`Machine::lease_valid`]).
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.machine().lease_valid(now)
    }

    /// Forgets what the senders were following: a node that becomes (or stops being)
    /// primary starts from its own log as it is now. Without this, a promoted node's
    /// senders would compare against a log end from another life, and could mark a
    /// lagging standby up to date, or serve it entries rolled back since.
    fn reset_log_end(&self) {
        let mut outbox = lock(&self.outbox);
        *outbox = crate::outbox::Outbox::default();
        self.log_end.send_replace(self.store.status().last.lsn);
    }

    /// Hands a batch to the senders (called while the store makes it durable).
    pub fn publish(&self, batch: &[keel_store::LogEntry]) {
        let Some(last) = batch.last().map(|e| e.pos.lsn) else {
            return;
        };
        lock(&self.outbox).push(batch);
        self.machine()
            .handle(Input::Decided { last }, Instant::now());
        self.log_end.send_replace(last);
    }

    /// Up to `max` entries after `after` from the outbox, or `None` if they must come from
    /// the store.
    pub fn outbox_after(&self, after: Lsn, max: usize) -> Option<Vec<keel_store::LogEntry>> {
        lock(&self.outbox).after(after, max)
    }
}

fn answer_all(replies: impl IntoIterator<Item = Reply>, err: &WriteError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Runs a store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("store task failed: {e}")),
    }
}

/// A random number for this process's life (from the OS's random source, falling back to
/// the time and pid, which are unique enough to tell two starts apart).
fn incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    match random {
        Ok(()) => u64::from_le_bytes(bytes) >> 11,
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            (nanos ^ u64::from(std::process::id()) << 32) >> 11
        }
    }
}

//! The state that the API, the writer and replication share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_core::{Epoch, Lsn, Role};
use keel_store::Store;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::NodeConfig;
use crate::writer::WriteRequest;

/// Who this node is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    /// Primary or standby.
    pub role: Role,
    /// The primary's base URL, when known (a standby learns it from the stream).
    pub primary: Option<String>,
    /// Set when a standby reported a newer epoch and this primary stepped down.
    pub fenced_by: Option<Epoch>,
}

/// Where a standby's stream stands, as the primary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Opening the connection and the handshake.
    Connecting,
    /// Connected, sending what the standby misses.
    CatchingUp,
    /// Connected and up to date: writes can be acknowledged.
    Streaming,
    /// No connection; retrying.
    Disconnected,
}

/// The primary's view of one standby.
pub struct StandbyLink {
    /// The standby's base URL, as given with `--standby`.
    pub url: String,
    /// The standby's id, learned from its hello.
    pub node: std::sync::Mutex<Option<String>>,
    /// The stream's state.
    pub state: watch::Sender<LinkState>,
    /// The last lsn the standby has confirmed durable.
    pub acked: watch::Sender<Lsn>,
}

impl StandbyLink {
    fn new(url: String) -> Self {
        Self {
            url,
            node: std::sync::Mutex::new(None),
            state: watch::Sender::new(LinkState::Connecting),
            acked: watch::Sender::new(Lsn(0)),
        }
    }

    /// The standby's id, if it has said hello.
    pub fn node_id(&self) -> Option<String> {
        self.node.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
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
    /// Group commits on this node.
    pub commits: AtomicU64,
    /// Operations in those commits.
    pub committed_ops: AtomicU64,
    /// Time spent in those commits, in microseconds.
    pub commit_micros: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// Everything the parts of a node share.
pub struct Shared {
    /// What the node was started with.
    pub config: NodeConfig,
    /// The log and state machine.
    pub store: Arc<Store>,
    /// The node's role; changes when it steps down or is taken over by a newer epoch.
    pub role: watch::Sender<RoleState>,
    /// The end of the primary's log: the last lsn the senders may ship (decided, and being
    /// or already made durable). They follow it.
    pub log_end: watch::Sender<Lsn>,
    /// The newest entries, for the senders.
    pub outbox: std::sync::Mutex<crate::outbox::Outbox>,
    /// The primary's standbys, one link each.
    pub links: Vec<Arc<StandbyLink>>,
    /// The queue into the writer.
    pub writes: mpsc::Sender<WriteRequest>,
    /// Counters.
    pub stats: Stats,
    /// On a standby: the number of the replication stream allowed to write; a newer
    /// stream from a (re)connecting primary replaces an older one.
    pub stream_generation: AtomicU64,
}

impl Shared {
    /// Builds the shared state; the writer's receiving end is returned beside it.
    pub fn new(config: NodeConfig, store: Arc<Store>) -> (Arc<Self>, mpsc::Receiver<WriteRequest>) {
        let (tx, rx) = mpsc::channel(4 * crate::config::MAX_BATCH);
        let links = if config.role == Role::Primary {
            config
                .standbys
                .iter()
                .map(|u| Arc::new(StandbyLink::new(u.clone())))
                .collect()
        } else {
            Vec::new()
        };
        let role = RoleState {
            role: config.role,
            primary: (config.role == Role::Primary).then(|| config.advertise.clone()),
            fenced_by: None,
        };
        let log_end = watch::Sender::new(store.status().last.lsn);
        let shared = Self {
            config,
            store,
            role: watch::Sender::new(role),
            log_end,
            outbox: std::sync::Mutex::default(),
            links,
            writes: tx,
            stats: Stats::default(),
            stream_generation: AtomicU64::new(0),
        };
        (Arc::new(shared), rx)
    }

    /// The node's role right now.
    pub fn role(&self) -> RoleState {
        self.role.borrow().clone()
    }

    /// Hands a batch to the senders.
    pub fn publish(&self, batch: &[keel_store::LogEntry]) {
        let Some(last) = batch.last().map(|e| e.pos.lsn) else {
            return;
        };
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(batch);
        self.log_end.send_replace(last);
    }

    /// Up to `max` entries after `after` from the outbox, or `None` if they must come from
    /// the store.
    pub fn outbox_after(&self, after: Lsn, max: usize) -> Option<Vec<keel_store::LogEntry>> {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .after(after, max)
    }

    /// Whether this node takes writes.
    pub fn is_primary(&self) -> bool {
        self.role.borrow().role == Role::Primary
    }

    /// A standby has seen `epoch`, newer than ours: stop taking writes for good. The
    /// epoch is not adopted here; the node may only write again when restarted with a
    /// newer epoch of its own or as a standby of the new primary.
    pub fn step_down(&self, epoch: Epoch) {
        self.role.send_if_modified(|r| {
            if r.fenced_by.is_some() {
                return false;
            }
            tracing::warn!(%epoch, "a standby has seen a newer epoch; stepping down");
            r.role = Role::Standby;
            r.primary = None;
            r.fenced_by = Some(epoch);
            true
        });
    }

    /// Becomes the standby of the primary at `url`.
    pub fn follow(&self, url: Option<String>) {
        self.role.send_if_modified(|r| {
            let next = RoleState { role: Role::Standby, primary: url.clone(), fenced_by: r.fenced_by };
            if *r == next {
                return false;
            }
            if r.role == Role::Primary {
                tracing::warn!(primary = ?url, "a primary of a newer epoch connected; now a standby");
            }
            *r = next;
            true
        });
    }
}

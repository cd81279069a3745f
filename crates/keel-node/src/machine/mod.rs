//! The node's decisions, as a pure state machine: inputs in, outputs out.
//!
//! [`Machine::handle`] takes one [`Input`] and the current instant and returns what the
//! drivers must do, in order. It owns everything a node decides: its role and epochs, the
//! lease, the standbys as the primary sees them (their streams' states, acks and the sync
//! set), the write batches waiting to commit and those waiting for their acks, and — on a
//! standby — which replication stream may write and when it last renewed a primary's
//! lease. Nothing here reads a clock, touches the store or the network, or spawns a task,
//! so tests drive every transition with constructed instants and assert the outputs
//! exactly, and the simulator (`keel-sim`) runs many machines in one thread.
//!
//! The drivers do the I/O and feed back what came of it: the writer commits
//! ([`Output::Commit`] → [`Input::Committed`]), the senders report their streams and acks,
//! the receiver asks before it accepts a stream or a frame, the heartbeat task brings the
//! monitor's views. An [`Output::PersistEpoch`] or [`Output::PersistPromotion`] must be
//! durable before the outputs after it are carried out.
//!
//! The code is split along the node's seams: this file holds the types and the queries,
//! `writes` the primary's write path, `links` its standbys, `follower` the standby's side
//! and promotion, `view` what the monitor's answers change.

mod error;
mod follower;
mod links;
mod view;
mod writes;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use keel_client::wire::{Failover, StandbyReport, View};
use keel_core::{Epoch, Lsn, NodeId, Role};
use serde::Serialize;
use tokio::time::Instant;

pub use error::WriteError;

/// A batch of writes, as the writer numbers them.
pub type BatchId = u64;

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

/// The monitor's timing settings, which a monitored node follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a missing heartbeat (or a silent standby) is tolerated.
    pub heartbeat_timeout: Duration,
    /// How long a renewal keeps a primary's lease.
    pub lease: Duration,
    /// Allowance for clocks that run at slightly different rates.
    pub drift: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_millis(300),
            lease: Duration::from_millis(500),
            drift: Duration::from_millis(100),
        }
    }
}

/// What a node starts with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's base URL, as others reach it.
    pub advertise: String,
    /// Whether a monitor assigns the role (and renews the lease).
    pub monitored: bool,
    /// The role to start in.
    pub role: Role,
    /// Standbys fixed on the command line (a primary without a monitor), with whether
    /// the primary waits for them.
    pub standbys: Vec<String>,
    /// Whether the fixed standbys are in the sync set.
    pub sync: bool,
    /// How long a write waits for the sync standbys (to stream, then to ack).
    pub sync_timeout: Duration,
    /// The epoch to write in, if this node starts as primary.
    pub writing_epoch: Epoch,
    /// The highest epoch the store has recorded.
    pub seen: Epoch,
    /// The end of the store's log.
    pub log_end: Lsn,
}

/// Something that happened to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The node has started: start the senders of the standbys fixed by hand.
    Started,
    /// Time passed: check the deadlines ([`Machine::next_deadline`]).
    Tick,

    // --- from the monitor ---
    /// The monitor's answer. `sent_at` is when the request that brought it was sent (the
    /// lease runs from then); `None` for a view that came with a refusal, which renews
    /// nothing.
    View {
        /// The view.
        view: Box<View>,
        /// When its request was sent.
        sent_at: Option<Instant>,
    },
    /// Another process has registered under this node's id: this one steps down for good.
    Evicted,
    /// The monitor agreed to drop this standby from the sync set.
    SyncDropped {
        /// The standby's URL.
        url: String,
    },

    // --- the write path (primary) ---
    /// The writer has taken a batch of writes from its queue.
    Queued {
        /// Its number.
        batch: BatchId,
        /// How many writes it holds (for messages).
        writes: usize,
    },
    /// The store has decided a batch's entries (they are shipped, and being made durable).
    Decided {
        /// Its last lsn.
        last: Lsn,
    },
    /// A commit asked for by [`Output::Commit`] is done.
    Committed {
        /// The batch.
        batch: BatchId,
        /// Its last lsn, or why it failed (nothing was shipped then).
        result: Result<Lsn, CommitFailure>,
    },

    // --- the standbys, as the primary's senders see them ---
    /// A sender is connecting to its standby.
    LinkConnecting {
        /// The link, from [`Output::StartSender`].
        link: u64,
    },
    /// The standby answered the handshake with its id.
    LinkHello {
        /// The link.
        link: u64,
        /// Its id.
        node: String,
    },
    /// The standby's log is in line with the primary's up to `acked` (after a rollback or
    /// a snapshot); the position may move back.
    LinkAligned {
        /// The link.
        link: u64,
        /// Where its log stands.
        acked: Lsn,
    },
    /// The standby confirmed everything up to `lsn` durable, answering a frame sent at
    /// `sent_at` (which renews the lease from then).
    Ack {
        /// The link.
        link: u64,
        /// Its durable end.
        lsn: Lsn,
        /// When the frame it answers was sent.
        sent_at: Option<Instant>,
    },
    /// The stream to the standby is down.
    LinkDown {
        /// The link.
        link: u64,
    },
    /// A standby has seen a newer epoch: this primary is deposed.
    Deposed {
        /// That epoch.
        epoch: Epoch,
    },

    // --- the standby's side ---
    /// A primary offers a replication stream.
    Offer {
        /// Its id, for messages.
        from: String,
        /// Its epoch.
        epoch: Epoch,
        /// Its base URL.
        primary: Option<String>,
    },
    /// A frame arrived on stream number `stream`.
    Frame {
        /// The stream's number, from [`Output::Accept`].
        stream: u64,
        /// The frame's epoch.
        epoch: Epoch,
    },
    /// This standby acknowledged a frame now, which renews its primary's lease.
    Granted,
    /// The epoch asked for by [`Output::PersistPromotion`] is recorded (or not).
    PromotionRecorded {
        /// The epoch.
        epoch: Epoch,
        /// The end of the store's log now.
        log_end: Lsn,
        /// Why it could not be recorded.
        error: Option<String>,
    },
}

/// Why a commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitFailure {
    /// The store has seen a newer epoch than the one written in: another primary exists.
    StaleEpoch {
        /// The store's epoch.
        current: Epoch,
    },
    /// The store failed.
    Store(String),
}

/// What the drivers must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Commit this batch in `epoch` (one at a time), then report [`Input::Committed`].
    Commit {
        /// The batch.
        batch: BatchId,
        /// The epoch to stamp its entries with.
        epoch: Epoch,
    },
    /// Answer this batch's writers.
    Reply {
        /// The batch.
        batch: BatchId,
        /// `Ok`: each gets its own result from the commit.
        result: Result<(), WriteError>,
    },
    /// Record this epoch durably (the store never goes back) before what follows.
    PersistEpoch(Epoch),
    /// Record this epoch and that this node is primary in it, then report
    /// [`Input::PromotionRecorded`].
    PersistPromotion(Epoch),
    /// The role changed: publish it.
    Role(RoleState),
    /// Forget what the senders were following (the outbox and the log end): the node
    /// became or stopped being primary, and starts from its own log as it is now.
    ResetLogEnd,
    /// Start a sender to this standby. Its reports carry `link`: a report from the
    /// sender of a link since replaced (the same URL, stopped and listed again) is
    /// ignored.
    StartSender {
        /// The link's number.
        link: u64,
        /// The standby's URL.
        url: String,
    },
    /// Stop the sender of this link.
    StopSender {
        /// The link's number.
        link: u64,
    },
    /// Accept the offered stream; it is stream number `stream`.
    Accept {
        /// Its number, for [`Input::Frame`].
        stream: u64,
    },
    /// Refuse the offered stream (`409`, with the newer epoch).
    Refuse {
        /// The epoch this node has seen.
        seen: Epoch,
        /// Why, for the sender's log.
        message: String,
    },
    /// The frame may be applied.
    FrameOk,
    /// The frame is from an older epoch: tell the sender, end the stream.
    FrameStale {
        /// The epoch this node has seen.
        seen: Epoch,
    },
    /// A newer stream has replaced this one: end it.
    Replaced,
    /// Something a person should read in the log.
    Note(Note),
}

/// What the drivers log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A standby has seen a newer epoch; this primary stepped down.
    SteppedDown(Epoch),
    /// This primary follows another node now.
    Following(Option<String>),
    /// A standby caught up.
    Streaming {
        /// Its URL.
        url: String,
        /// Where.
        at: Lsn,
    },
    /// Waiting out the lease this node granted before taking over.
    WaitingOutLease(Duration),
    /// Primary in this epoch now.
    Promoted(Epoch),
    /// The promotion could not be recorded.
    PromotionFailed(String),
    /// A silent standby left the sync set.
    SyncDropped(String),
}

impl Note {
    /// Whether the note is a warning rather than news.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Note::SteppedDown(_)
                | Note::Following(_)
                | Note::PromotionFailed(_)
                | Note::SyncDropped(_)
        )
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::SteppedDown(e) => {
                write!(
                    f,
                    "a standby has seen epoch {e}, newer than ours; stepping down"
                )
            }
            Note::Following(Some(p)) => {
                write!(
                    f,
                    "another node is primary now ({p}); following it as a standby"
                )
            }
            Note::Following(None) => write!(f, "another node is primary now; standing by"),
            Note::Streaming { url, at } => write!(f, "standby {url} caught up at {at}; streaming"),
            Note::WaitingOutLease(d) => write!(
                f,
                "waiting out the lease this node last granted ({} ms)",
                d.as_millis()
            ),
            Note::Promoted(e) => write!(f, "this node is now the primary, in epoch {e}"),
            Note::PromotionFailed(why) => {
                write!(f, "cannot record the new epoch; not taking over: {why}")
            }
            Note::SyncDropped(url) => write!(
                f,
                "standby {url} dropped from the sync set on the monitor's record; writes go on without it"
            ),
        }
    }
}

/// One standby, as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    id: u64,
    url: String,
    node: Option<String>,
    state: LinkState,
    acked: Lsn,
    sync: bool,
    /// The end of the log when the primary began waiting for this standby: until the
    /// standby has acknowledged up to here it may lack writes acknowledged without it.
    sync_from: Lsn,
    /// Since when the stream has not been streaming, if it is not.
    down_since: Option<Instant>,
    /// Until when the standby's last ack renews the primary's lease.
    lease_until: Option<Instant>,
}

impl Link {
    fn in_sync(&self) -> bool {
        self.sync && self.acked >= self.sync_from
    }
}

/// A standby as the drivers show it (`/health`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link's number.
    pub id: u64,
    /// Its URL.
    pub url: String,
    /// Its id, once known.
    pub node: Option<String>,
    /// Its stream's state.
    pub state: LinkState,
    /// The last lsn it confirmed.
    pub acked: Lsn,
    /// Whether the primary waits for it.
    pub sync: bool,
}

/// A batch waiting to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    batch: BatchId,
    since: Instant,
}

/// A committed batch waiting for its acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inflight {
    batch: BatchId,
    last: Lsn,
    deadline: Instant,
}

/// A promotion under way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promotion {
    epoch: Epoch,
    standbys: Vec<(String, String, bool)>,
    /// When the leases this node granted have run out.
    until: Instant,
    /// The epoch is being recorded.
    recording: bool,
}

/// The node's state machine.
#[derive(Debug, Clone)]
pub struct Machine {
    advertise: String,
    monitored: bool,
    sync_timeout: Duration,
    role: RoleState,
    /// The epoch this node writes in as primary: the one it started or was promoted in,
    /// never simply the highest epoch seen, which may be a rival's.
    writing_epoch: Epoch,
    /// The highest epoch recorded (or being recorded) in the store.
    seen: Epoch,
    /// The last lsn decided: shipped, and being or already made durable.
    log_end: Lsn,
    /// The last lsn durable in this node's own log (as primary: the last commit done).
    committed: Lsn,
    timing: Timing,
    monitor_lease_until: Option<Instant>,
    failover: Option<Failover>,
    links: Vec<Link>,
    /// The number of the last link made.
    last_link: u64,
    waiting: VecDeque<Waiting>,
    committing: Option<BatchId>,
    inflight: VecDeque<Inflight>,
    /// On a standby: the number of the stream allowed to write.
    stream: u64,
    /// On a standby: when it last renewed a primary's lease.
    last_grant: Option<Instant>,
    promotion: Option<Promotion>,
}

impl Machine {
    /// A machine at `now`. A monitored node may have granted a lease in an earlier life
    /// (an ack just before a crash) that it cannot remember: it assumes one at its start,
    /// as the monitor does after a restart.
    pub fn new(settings: Settings, now: Instant) -> Self {
        let primary = settings.role == Role::Primary;
        let links: Vec<Link> = if primary {
            (1..)
                .zip(&settings.standbys)
                .map(|(id, url)| {
                    let mut link = Link::new(id, url.clone(), None, now);
                    link.set_sync(settings.sync, settings.log_end);
                    link
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            role: RoleState {
                role: settings.role,
                primary: primary.then(|| settings.advertise.clone()),
                fenced_by: None,
            },
            advertise: settings.advertise,
            monitored: settings.monitored,
            sync_timeout: settings.sync_timeout,
            writing_epoch: settings.writing_epoch,
            seen: settings.seen.max(settings.writing_epoch),
            log_end: settings.log_end,
            committed: settings.log_end,
            timing: Timing::default(),
            monitor_lease_until: None,
            failover: None,
            last_link: links.len() as u64,
            links,
            waiting: VecDeque::new(),
            committing: None,
            inflight: VecDeque::new(),
            stream: 0,
            last_grant: settings.monitored.then_some(now),
            promotion: None,
        }
    }

    /// Handles one input at `now` and returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Started => {
                for link in &self.links {
                    out.push(Output::StartSender {
                        link: link.id,
                        url: link.url.clone(),
                    });
                }
            }
            Input::Tick => self.tick(now, &mut out),
            Input::View { view, sent_at } => self.apply_view(&view, sent_at, now, &mut out),
            Input::Evicted => {
                let epoch = self.seen.max(self.writing_epoch);
                self.step_down(epoch, now, &mut out);
            }
            Input::SyncDropped { url } => self.sync_dropped(&url, now, &mut out),
            Input::Queued { batch, writes: _ } => self.queued(batch, now, &mut out),
            Input::Decided { last } => self.log_end = self.log_end.max(last),
            Input::Committed { batch, result } => self.committed(batch, result, now, &mut out),
            Input::LinkConnecting { link } => self.set_link_state(link, LinkState::Connecting, now),
            Input::LinkHello { link, node } => {
                if let Some(l) = self.link_mut(link) {
                    l.node = Some(node);
                }
                self.set_link_state(link, LinkState::CatchingUp, now);
            }
            Input::LinkAligned { link, acked } => self.aligned(link, acked, now, &mut out),
            Input::Ack { link, lsn, sent_at } => self.ack(link, lsn, sent_at, now, &mut out),
            Input::LinkDown { link } => {
                self.set_link_state(link, LinkState::Disconnected, now);
                self.advance(now, &mut out);
            }
            Input::Deposed { epoch } => self.step_down(epoch, now, &mut out),
            Input::Offer {
                from,
                epoch,
                primary,
            } => self.offer(&from, epoch, primary, now, &mut out),
            Input::Frame { stream, epoch } => self.frame(stream, epoch, &mut out),
            Input::Granted => self.last_grant = Some(now),
            Input::PromotionRecorded {
                epoch,
                log_end,
                error,
            } => self.promotion_recorded(epoch, log_end, error, now, &mut out),
        }
        out
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.tick_promotion(now, out);
        self.settle(now, out);
        self.advance(now, out);
    }

    /// The earliest instant at which a [`Input::Tick`] would change something.
    pub fn next_deadline(&self) -> Option<Instant> {
        // The batch at the head waits for the standbys only while nothing commits.
        let waiting = self
            .waiting
            .front()
            .filter(|_| self.committing.is_none())
            .map(|w| w.since + self.sync_timeout);
        let inflight = self.inflight.front().map(|i| i.deadline);
        let promotion = self
            .promotion
            .as_ref()
            .filter(|p| !p.recording)
            .map(|p| p.until);
        [waiting, inflight, promotion].into_iter().flatten().min()
    }

    /// The node's role.
    pub fn role(&self) -> &RoleState {
        &self.role
    }

    /// Whether this node takes writes.
    pub fn is_primary(&self) -> bool {
        self.role.role == Role::Primary
    }

    /// The epoch this node writes in (and stamps its replication frames with).
    pub fn writing_epoch(&self) -> Epoch {
        self.writing_epoch
    }

    /// The highest epoch this node has recorded or is recording.
    pub fn seen(&self) -> Epoch {
        self.seen
    }

    /// The last lsn decided.
    pub fn log_end(&self) -> Lsn {
        self.log_end
    }

    /// The end of the log that is durable here and on every standby of the sync set:
    /// what a read may show. An entry beyond it may still vanish — this primary may be
    /// cut off and replaced by a standby that never got it — so a read that would show it
    /// waits until it is here. (Reading it sooner is how a client could see a write that
    /// a failover then undoes: `keel sim` found this, seed 206.)
    pub fn replicated(&self) -> Lsn {
        self.links
            .iter()
            .filter(|l| l.sync)
            .map(|l| l.acked)
            .fold(self.committed, Lsn::min)
    }

    /// The monitor's settings (defaults when not monitored).
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The failover in progress, if the monitor announced one.
    pub fn failover(&self) -> Option<&Failover> {
        self.failover.as_ref()
    }

    /// Whether a monitor assigns this node's role.
    pub fn monitored(&self) -> bool {
        self.monitored
    }

    /// The standbys, for `/health` and `/metrics`.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.links
            .iter()
            .map(|l| LinkInfo {
                id: l.id,
                url: l.url.clone(),
                node: l.node.clone(),
                state: l.state,
                acked: l.acked,
                sync: l.sync,
            })
            .collect()
    }

    /// Whether the writer holds a batch here (waiting to commit, or committing): it takes
    /// the next one from its queue only once this is false, so that writes arriving
    /// meanwhile go into one larger batch.
    pub fn busy(&self) -> bool {
        !self.waiting.is_empty() || self.committing.is_some()
    }

    /// Whether `batch` is still waiting to commit.
    pub fn is_waiting(&self, batch: BatchId) -> bool {
        self.waiting.iter().any(|w| w.batch == batch)
    }

    /// Why this node must refuse writes right now, if it must.
    pub fn refusal(&self) -> Option<WriteError> {
        if let Some(epoch) = self.role.fenced_by {
            return Some(WriteError::Fenced {
                epoch,
                committed: None,
            });
        }
        if let Some(f) = &self.failover {
            return Some(WriteError::FailoverInProgress {
                to: Some(f.to.to_string()),
            });
        }
        match self.role.role {
            Role::Standby => Some(WriteError::NotPrimary {
                primary: self.role.primary.clone(),
            }),
            Role::Primary => None,
        }
    }

    /// Whether this primary holds its write lease at `now`: the monitor renewed it within
    /// the lease, or every standby of the sync set (at least one) did. Nodes without a
    /// monitor have no lease to hold: their roles are fixed by hand.
    ///
    /// A promotion needs the monitor and the candidate — a sync standby — to stop renewing
    /// and wait out what they granted, which makes both conditions false for the old
    /// primary, however many standbys there are. (A plain majority of {primary, monitor,
    /// standbys} would not: with three sync standbys, the old primary and two of them are
    /// a majority without the monitor and the candidate.) Standbys out of the sync set can
    /// never be promoted, so they do not count, and a dead one cannot stop a healthy
    /// primary.
    pub fn lease_valid(&self, now: Instant) -> bool {
        !self.monitored || self.lease_until().is_some_and(|t| t > now)
    }

    /// When this monitored primary's lease runs out unless it is renewed first: the later
    /// of the monitor's renewal and the earliest renewal among the sync standbys (when
    /// there is at least one and each has renewed it). `None` when nothing holds it, and
    /// for a node without a monitor, which has no lease. A driver whose writes this
    /// machine does not gate (a keeper's PostgreSQL) stops them before this instant.
    pub fn lease_until(&self) -> Option<Instant> {
        if !self.monitored {
            return None;
        }
        let mut sync = self.links.iter().filter(|l| l.sync).peekable();
        let by_standbys = if sync.peek().is_some() {
            sync.map(|l| l.lease_until).min().flatten()
        } else {
            None
        };
        self.monitor_lease_until.max(by_standbys)
    }

    /// What a heartbeat reports: each standby with a known id, and whether this primary,
    /// asked to drain, has no write left that is not in its log for good.
    pub fn report(&self) -> (Vec<StandbyReport>, bool) {
        if !self.is_primary() {
            return (Vec::new(), false);
        }
        let standbys = self
            .links
            .iter()
            .filter_map(|l| {
                let node = NodeId::new(l.node.as_deref()?).ok()?;
                Some(StandbyReport {
                    node,
                    streaming: l.state == LinkState::Streaming,
                    acked_lsn: l.acked,
                    sync: l.in_sync(),
                })
            })
            .collect();
        // A batch being committed counts: its entries may reach the log after the report.
        let drained = !self.busy() && self.inflight.is_empty();
        (standbys, drained)
    }

    /// The sync standbys silent for at least `heartbeat_timeout` at `now`, with their ids:
    /// the primary asks the monitor to drop them from the sync set.
    pub fn silent_sync_standbys(&self, now: Instant) -> Vec<(String, NodeId)> {
        if !self.is_primary() {
            return Vec::new();
        }
        self.links
            .iter()
            .filter(|l| l.sync)
            .filter(|l| {
                l.down_since.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.timing.heartbeat_timeout
                })
            })
            .filter_map(|l| Some((l.url.clone(), NodeId::new(l.node.as_deref()?).ok()?)))
            .collect()
    }

    /// Moves the role, publishing it if it changed.
    fn set_role(&mut self, next: RoleState, out: &mut Vec<Output>) {
        if self.role != next {
            self.role = next.clone();
            out.push(Output::Role(next));
        }
    }

    /// A standby has seen `epoch`, newer than ours: stop taking writes for good. The
    /// epoch is not adopted here; the node may only write again when restarted with a
    /// newer epoch of its own or as a standby of the new primary.
    fn step_down(&mut self, epoch: Epoch, now: Instant, out: &mut Vec<Output>) {
        if self.role.fenced_by.is_some() {
            return;
        }
        self.promotion = None;
        out.push(Output::ResetLogEnd);
        out.push(Output::Note(Note::SteppedDown(epoch)));
        self.set_standbys(&[], now, out);
        self.set_role(
            RoleState {
                role: Role::Standby,
                primary: None,
                fenced_by: Some(epoch),
            },
            out,
        );
        self.settle(now, out);
        self.advance(now, out);
    }

    /// Becomes the standby of the primary at `url`.
    fn follow(&mut self, url: Option<String>, now: Instant, out: &mut Vec<Output>) {
        if self.is_primary() {
            out.push(Output::ResetLogEnd);
            out.push(Output::Note(Note::Following(url.clone())));
            self.set_standbys(&[], now, out);
        }
        let fenced_by = if self.monitored {
            None
        } else {
            self.role.fenced_by
        };
        self.set_role(
            RoleState {
                role: Role::Standby,
                primary: url,
                fenced_by,
            },
            out,
        );
        self.settle(now, out);
        self.advance(now, out);
    }
}

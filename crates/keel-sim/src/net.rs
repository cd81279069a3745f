//! What travels between the simulated processes, and how the network treats it.
//!
//! Two kinds of traffic, as in keel: requests (heartbeats, probes, client calls), each its
//! own HTTP exchange, which the network may lose, delay, reorder or — the monitor's —
//! duplicate; and replication streams, one TCP connection each, which deliver in order or
//! not at all: a partition or a crash breaks the connection for good, and the ends learn
//! it from a reset (a crash) or from their own timeouts (a partition).

use keel_client::node::{Mark, SlotData};
use keel_client::wire::{HeartbeatRequest, RegisterRequest, SyncDropRequest, View};
use keel_core::slots::{GroupId, Slot, SlotTable, format_slots};
use keel_core::{Epoch, LogPos, Lsn};
use keel_store::{LogEntry, Snapshot};

/// Simulated time, in microseconds since the run began.
pub type Time = u64;

/// A process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addr {
    /// The simulation itself (in the trace).
    Sim,
    /// Monitor `k` (its id is `m{k+1}`).
    Monitor(usize),
    /// Data node `i` (its id is `node{i+1}`).
    Node(usize),
    /// Client `i`.
    Client(usize),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Sim => write!(f, "sim"),
            Addr::Monitor(k) => write!(f, "m{}", k + 1),
            Addr::Node(i) => write!(f, "node{}", i + 1),
            Addr::Client(i) => write!(f, "client{}", i + 1),
        }
    }
}

/// A request to the monitor.
#[derive(Debug, Clone)]
pub enum MonitorRequest {
    /// `POST /v1/register`.
    Register(RegisterRequest),
    /// `POST /v1/heartbeat`.
    Heartbeat(HeartbeatRequest),
    /// `POST /v1/sync/drop`.
    SyncDrop(SyncDropRequest),
}

/// The monitor's refusal, as a node reads it.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The stable code.
    pub error: &'static str,
    /// The node's view, on a `409`.
    pub view: Option<Box<View>>,
    /// On `not_leader`: the monitor that leads, when the one asked knows it.
    pub leader: Option<usize>,
}

/// A Raft log position: (term, index). The simulated log keeps whole cluster states, so
/// a log is its last entry, and of two logs the one with the greater position is the more
/// up to date (Raft's election rule).
pub type LogId = (u64, u64);

/// Between monitors: Raft, reduced to what keel relies on (see `group`).
#[derive(Debug, Clone)]
pub enum RaftMsg {
    /// Leader → follower: its last entry (the whole state), how far it is committed, and
    /// when the leader sent it (its clock): a heartbeat and a replication at once.
    Append {
        /// The leader's term.
        term: u64,
        /// Its last entry's position.
        last: LogId,
        /// Its last entry's state (`None`: nothing yet).
        state: Option<Box<keel_monitor::state::GroupsState>>,
        /// The index committed.
        commit: u64,
        /// The leader's local µs at sending.
        sent: u64,
    },
    /// Follower → leader.
    AppendAnswer {
        /// The follower's term.
        term: u64,
        /// Whether it took the leader's entry (false: a newer term).
        ok: bool,
        /// Its last entry's position.
        last: LogId,
        /// The `sent` it answers.
        sent: u64,
    },
    /// Candidate → monitor.
    Vote {
        /// The candidate's term.
        term: u64,
        /// The candidate's last entry's position.
        last: LogId,
    },
    /// Monitor → candidate.
    VoteAnswer {
        /// The voter's term.
        term: u64,
        /// Whether it voted for the candidate.
        granted: bool,
        /// The voter's last entry's position.
        last: LogId,
    },
}

/// A replication frame, primary to standby.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Entries that continue the standby's log.
    Append {
        /// The primary's epoch.
        epoch: Epoch,
        /// The entries.
        entries: Vec<LogEntry>,
    },
    /// Roll back everything after `to`.
    Truncate {
        /// The primary's epoch.
        epoch: Epoch,
        /// The last lsn to keep.
        to: Lsn,
    },
    /// The whole state.
    Snapshot {
        /// The primary's epoch.
        epoch: Epoch,
        /// The snapshot.
        snapshot: Box<Snapshot>,
    },
    /// Nothing new; renews the lease.
    Ping {
        /// The primary's epoch.
        epoch: Epoch,
    },
}

impl Frame {
    /// The epoch the frame was sent in.
    pub fn epoch(&self) -> Epoch {
        match self {
            Frame::Append { epoch, .. }
            | Frame::Truncate { epoch, .. }
            | Frame::Snapshot { epoch, .. }
            | Frame::Ping { epoch } => *epoch,
        }
    }
}

/// A standby's answer on the stream.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Everything up to `last` is durable; answers the first `frames` frames.
    Ack {
        /// The standby's last position.
        last: LogPos,
        /// How many frames it has handled.
        frames: u64,
    },
    /// The log no longer reaches: send a snapshot.
    NeedSnapshot,
    /// The standby has seen a newer epoch.
    Stale {
        /// That epoch.
        epoch: Epoch,
    },
}

/// What a node tells a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// The write is acknowledged.
    Written,
    /// Nothing was written; `primary` is a hint where to go.
    NotWritten {
        /// Why.
        why: String,
        /// The node that is primary, if known.
        primary: Option<usize>,
    },
    /// The write may or may not have taken effect.
    Unknown(String),
    /// The value read.
    Value(Option<u64>),
    /// The read was refused.
    NoRead {
        /// Why.
        why: String,
        /// The node that is primary, if known.
        primary: Option<usize>,
    },
    /// `421`: another group owns the key's slot (nothing was written). The node's table
    /// comes with it, as keel's clients fetch the table the `421` names.
    Misdirected {
        /// The owner, in the node's table.
        owner: GroupId,
        /// The node's table.
        table: Box<SlotTable>,
    },
}

/// Something on the wire.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Node → monitor.
    ToMonitor {
        /// The request's number (the node's).
        req: u64,
        /// The request.
        body: MonitorRequest,
    },
    /// Monitor → node.
    FromMonitor {
        /// The request answered.
        req: u64,
        /// The view, or the refusal.
        answer: Result<Box<View>, Refused>,
    },
    /// Monitor → node: `GET /health`.
    Probe {
        /// The probe's id.
        probe: u64,
    },
    /// Node → monitor: the probe's answer.
    ProbeOk {
        /// The probe's id.
        probe: u64,
    },
    /// Monitor → monitor.
    Raft(RaftMsg),
    /// Primary → standby: the replication upgrade.
    Offer {
        /// The connection.
        conn: u64,
        /// The primary's epoch.
        epoch: Epoch,
        /// The primary's id.
        from: String,
    },
    /// Standby → primary: `101` with the hello, or `409` with the newer epoch.
    OfferAnswer {
        /// The connection.
        conn: u64,
        /// The standby's last position and epoch boundaries, or the epoch it has seen.
        result: Result<(LogPos, Vec<(Epoch, Lsn)>), Epoch>,
    },
    /// Primary → standby.
    Frame {
        /// The connection.
        conn: u64,
        /// The frame.
        frame: Frame,
    },
    /// Standby → primary.
    Answer {
        /// The connection.
        conn: u64,
        /// The answer.
        answer: Answer,
    },
    /// The connection was reset.
    Closed {
        /// The connection.
        conn: u64,
    },
    /// Client → node: write `value` to `key`.
    Write {
        /// The operation's number.
        op: u64,
        /// The key.
        key: String,
        /// The value, unique in the run.
        value: u64,
    },
    /// Client → node: read `key`.
    Read {
        /// The operation's number.
        op: u64,
        /// The key.
        key: String,
    },
    /// Node → client.
    Reply {
        /// The operation answered.
        op: u64,
        /// The answer.
        reply: ClientReply,
    },
    /// Monitor → client: a slot event on `/v1/events`, after which the client (a `keel
    /// proxy --cluster`, a `keel client`) holds the monitor's table.
    Table(Box<SlotTable>),
    /// Operator → monitor: `POST /v1/slots/move`.
    MoveSlots {
        /// The slots.
        slots: Vec<Slot>,
        /// The group they go to.
        to: GroupId,
    },
    /// Operator → monitor: `POST /v1/slots/cancel`.
    CancelMove,
    /// Monitor → source primary: `GET /v1/slots/export`.
    Export {
        /// The copy's request number (the monitor's).
        req: u64,
        /// The table version that froze the slots.
        since: u64,
        /// Where the previous piece ended.
        after: Option<Mark>,
    },
    /// Source primary → monitor: the piece, or why not.
    Piece {
        /// The request answered.
        req: u64,
        /// The piece.
        piece: Result<Box<SlotData>, String>,
    },
    /// Monitor → target primary: `POST /v1/slots/import`.
    Import {
        /// The copy's request number (the monitor's).
        req: u64,
        /// The piece.
        data: Box<SlotData>,
    },
    /// Target primary → monitor: the piece is durable on its sync set, or why not.
    Imported {
        /// The request answered.
        req: u64,
        /// The writes it took, or why not.
        result: Result<usize, String>,
    },
}

impl Msg {
    /// The replication connection it travels on, if any.
    pub fn conn(&self) -> Option<u64> {
        match self {
            Msg::Offer { conn, .. }
            | Msg::OfferAnswer { conn, .. }
            | Msg::Frame { conn, .. }
            | Msg::Answer { conn, .. }
            | Msg::Closed { conn } => Some(*conn),
            _ => None,
        }
    }

    /// Whether the network may deliver it twice (a request to or from the monitor).
    pub fn may_duplicate(&self) -> bool {
        matches!(
            self,
            Msg::ToMonitor { .. } | Msg::FromMonitor { .. } | Msg::Probe { .. }
        )
    }

    /// A line for the trace.
    pub fn describe(&self) -> String {
        match self {
            Msg::ToMonitor { req, body } => match body {
                MonitorRequest::Register(r) => {
                    format!("register#{req} epoch {} lsn {}", r.epoch, r.lsn)
                }
                MonitorRequest::Heartbeat(h) => format!(
                    "heartbeat#{req} {} epoch {} lsn {}{}",
                    h.role,
                    h.epoch,
                    h.lsn,
                    if h.draining { " drained" } else { "" }
                ),
                MonitorRequest::SyncDrop(d) => format!("sync-drop#{req} {}", d.standby),
            },
            Msg::FromMonitor { req, answer } => match answer {
                Ok(v) => format!(
                    "view#{req} {} epoch {}{}{}",
                    v.role,
                    v.epoch,
                    if v.lease_ms.is_some() { " lease" } else { "" },
                    v.failover
                        .as_ref()
                        .map(|f| format!(" failover {:?}->{}", f.phase, f.to))
                        .unwrap_or_default()
                ),
                Err(r) => format!("refused#{req} {}", r.error),
            },
            Msg::Raft(RaftMsg::Append {
                term, last, commit, ..
            }) => format!("append t{term} at {}:{} commit {commit}", last.0, last.1),
            Msg::Raft(RaftMsg::AppendAnswer { term, ok, last, .. }) => {
                format!(
                    "append-{} t{term} at {}:{}",
                    if *ok { "ok" } else { "no" },
                    last.0,
                    last.1
                )
            }
            Msg::Raft(RaftMsg::Vote { term, last }) => {
                format!("vote? t{term} at {}:{}", last.0, last.1)
            }
            Msg::Raft(RaftMsg::VoteAnswer { term, granted, .. }) => {
                format!("vote-{} t{term}", if *granted { "yes" } else { "no" })
            }
            Msg::Probe { probe } => format!("probe#{probe}"),
            Msg::ProbeOk { probe } => format!("probe-ok#{probe}"),
            Msg::Offer { conn, epoch, .. } => format!("offer c{conn} epoch {epoch}"),
            Msg::OfferAnswer { conn, result } => match result {
                Ok((last, _)) => format!("accept c{conn} at {}:{}", last.epoch, last.lsn),
                Err(seen) => format!("refuse c{conn} seen {seen}"),
            },
            Msg::Frame { conn, frame } => match frame {
                Frame::Append { epoch, entries } => format!(
                    "append c{conn} e{epoch} {}..{}",
                    entries.first().map_or(0, |e| e.pos.lsn.0),
                    entries.last().map_or(0, |e| e.pos.lsn.0)
                ),
                Frame::Truncate { to, .. } => format!("truncate c{conn} to {to}"),
                Frame::Snapshot { snapshot, .. } => {
                    format!("snapshot c{conn} at {}", snapshot.last.lsn)
                }
                Frame::Ping { .. } => format!("ping c{conn}"),
            },
            Msg::Answer { conn, answer } => match answer {
                Answer::Ack { last, frames } => {
                    format!("ack c{conn} {} (frames {frames})", last.lsn)
                }
                Answer::NeedSnapshot => format!("need-snapshot c{conn}"),
                Answer::Stale { epoch } => format!("stale c{conn} seen {epoch}"),
            },
            Msg::Closed { conn } => format!("reset c{conn}"),
            Msg::Write { op, key, value } => format!("write#{op} {key}={value}"),
            Msg::Read { op, key } => format!("read#{op} {key}"),
            Msg::Reply {
                op,
                reply: ClientReply::Misdirected { owner, table },
            } => format!(
                "reply#{op} misdirected: {owner}'s in table {}",
                table.version()
            ),
            Msg::Reply { op, reply } => format!("reply#{op} {reply:?}"),
            Msg::MoveSlots { slots, to } => format!("move slots {} to {to}", format_slots(slots)),
            Msg::CancelMove => "cancel the move".into(),
            Msg::Table(table) => format!("slot table version {}", table.version()),
            Msg::Export { req, since, after } => format!(
                "export#{req} since {since}{}",
                after
                    .as_ref()
                    .map(|a| format!(" after {a:?}"))
                    .unwrap_or_default()
            ),
            Msg::Piece { req, piece } => match piece {
                Ok(p) => format!(
                    "piece#{req} {} key(s){}",
                    p.kv.len(),
                    if p.upto.is_none() { ", the last" } else { "" }
                ),
                Err(why) => format!("no-piece#{req} {why}"),
            },
            Msg::Import { req, data } => format!("import#{req} {} key(s)", data.kv.len()),
            Msg::Imported { req, result } => match result {
                Ok(writes) => format!("imported#{req} {writes} write(s)"),
                Err(why) => format!("not-imported#{req} {why}"),
            },
        }
    }
}

//! What a node is told when it starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keel_auth::ClusterSecret;
use keel_core::token::Token;
use keel_core::{Epoch, NodeId, Role};

/// Everything `keel node` takes from its command line.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name.
    pub id: NodeId,
    /// Where to serve the API and replication.
    pub listen: SocketAddr,
    /// The base URL others reach this node at (`http://<listen>` by default).
    pub advertise: String,
    /// The store's directory.
    pub data_dir: PathBuf,
    /// The role given on the command line.
    pub role: Role,
    /// Base URLs of the standbys a primary replicates to.
    pub standbys: Vec<String>,
    /// `true` (the default): acknowledge a write only once every standby has it durably.
    pub sync: bool,
    /// Start a new epoch as primary (manual promotion).
    pub epoch: Option<Epoch>,
    /// How long a write waits for the sync standbys.
    pub sync_timeout: Duration,
    /// Log entries kept after the snapshot point.
    pub log_retain: u64,
    /// Which durable store keeps the log and the state (`--store`).
    pub store: StoreKind,
    /// The admin token; without one, admin actions are refused.
    pub token: Option<Token>,
    /// The cluster secret: with it, replication is accepted only from members, and the
    /// node signs what it asks of the monitor and its standbys and trusts only their
    /// signed answers (docs/security.md).
    pub secret: Option<ClusterSecret>,
    /// TLS for the listener, the calls to the monitor and replication (`--tls-*`);
    /// plaintext without it. The advertised URL is then `https://`.
    pub tls: Option<keel_auth::tls::Tls>,
    /// The monitor's base URL: the role then comes from the monitor (`role` is only the
    /// starting point, standby), and so do the standbys and the epoch.
    pub monitor: Option<String>,
    /// The group it joins under a monitor of several groups; `None`: the first.
    pub group: Option<keel_core::slots::GroupId>,
}

/// The durable store a node keeps its log and state in (docs/replication.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// One redb database, `keel.redb` (the default): the state on disk, paged in as
    /// needed.
    #[default]
    Redb,
    /// The state in memory, made durable by one append-only file, `keel.log`: a commit is
    /// one append and one `fdatasync`, and the whole state must fit in memory.
    Log,
}

impl StoreKind {
    /// The file it keeps in the data directory.
    pub fn file(self) -> &'static str {
        match self {
            StoreKind::Redb => keel_store::store::FILE_NAME,
            StoreKind::Log => keel_store::log_store::FILE_NAME,
        }
    }

    /// The other kind.
    pub fn other(self) -> StoreKind {
        match self {
            StoreKind::Redb => StoreKind::Log,
            StoreKind::Log => StoreKind::Redb,
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Redb => "redb",
            StoreKind::Log => "log",
        })
    }
}

/// A store name that is neither `redb` nor `log`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown store {0:?}: expected redb (one database, the default) or log (the state in memory, one append-only file)"
)]
pub struct UnknownStore(pub String);

impl std::str::FromStr for StoreKind {
    type Err = UnknownStore;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "redb" => Ok(StoreKind::Redb),
            "log" => Ok(StoreKind::Log),
            other => Err(UnknownStore(other.to_owned())),
        }
    }
}

/// The node's own record (in the store) of the epoch in which it was last primary.
pub(crate) const PRIMARY_EPOCH: &str = "primary_epoch";
/// Largest request body the API accepts.
pub const MAX_BODY: usize = 1 << 20;
/// Most requests the writer commits together.
pub const MAX_BATCH: usize = 1024;
/// How long the primary waits for a standby's TCP connection and upgrade answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle replication stream is pinged.
pub const PING_INTERVAL: Duration = Duration::from_millis(250);
/// How many log entries go in one replication frame at most.
pub const FRAME_ENTRIES: usize = 512;
/// How many bytes of keys and values go in one replication frame at most (one entry may
/// exceed it alone; a value is at most 1 MiB), well under the frame limit of
/// [`crate::repl::frame::MAX_FRAME`].
pub const FRAME_BYTES: usize = 4 << 20;
/// How many bytes of keys and values go in one part of a snapshot at most.
pub const SNAPSHOT_PART_BYTES: usize = 4 << 20;

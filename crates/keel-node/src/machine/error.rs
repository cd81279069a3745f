//! [`WriteError`]: why the machine did not acknowledge a write.

use std::time::Duration;

use keel_core::{Epoch, Lsn};

/// Why a write was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This node is not the primary.
    #[error("this node is a standby and does not take writes")]
    NotPrimary {
        /// The primary's URL, when known.
        primary: Option<String>,
    },
    /// A newer epoch exists; this node stepped down.
    #[error("this node was primary of an older epoch; epoch {epoch} has begun{}", if .committed.is_some() { " (the write was already durable here: its outcome is unknown)" } else { "" })]
    Fenced {
        /// The newer epoch.
        epoch: Epoch,
        /// Where the write stands in this node's log, if it was committed before the node
        /// stepped down: then it may survive (a standby may hold it), and its outcome is
        /// unknown. `None`: nothing was written.
        committed: Option<Lsn>,
    },
    /// The monitor is replacing the primary.
    #[error("a failover is in progress{}; retry shortly", .to.as_ref().map(|t| format!(" (promoting {t})")).unwrap_or_default())]
    FailoverInProgress {
        /// The node being promoted.
        to: Option<String>,
    },
    /// Neither the monitor nor every sync standby renewed this primary's lease.
    #[error(
        "this primary's lease has lapsed (neither the monitor nor every sync standby renewed it); it takes no writes until it is renewed"
    )]
    NoLease,
    /// A sync standby was not streaming within the wait; nothing was written.
    #[error(
        "sync standby unavailable: {standbys} not connected within {waited:?}; nothing was written"
    )]
    SyncUnavailable {
        /// The standbys missing.
        standbys: String,
        /// How long the write waited.
        waited: Duration,
    },
    /// Written locally, but not confirmed by every sync standby within the wait.
    #[error(
        "the write is durable on the primary at lsn {lsn} but {standbys} did not confirm it within {waited:?}; its outcome is unknown"
    )]
    ReplicationTimeout {
        /// Where the write stands in the primary's log.
        lsn: Lsn,
        /// The standbys that did not confirm.
        standbys: String,
        /// How long the write waited.
        waited: Duration,
    },
    /// Written and replicated, but the lease lapsed before the write could be
    /// acknowledged, so this primary may already have been replaced.
    #[error(
        "the write reached lsn {lsn}, but this primary's lease lapsed before it could be acknowledged; its outcome is unknown"
    )]
    LeaseLapsed {
        /// Where the write stands in the primary's log.
        lsn: Lsn,
    },
    /// A read on the primary would show writes up to `lsn`, and the sync standbys did
    /// not confirm them within the wait (or this node stopped being primary meanwhile):
    /// showing them could show a write that a failover then undoes.
    #[error(
        "the value read includes writes up to lsn {lsn} that the sync standbys did not confirm within {waited:?}; retry shortly"
    )]
    Unreplicated {
        /// The end of what the read would show.
        lsn: Lsn,
        /// How long the read waited.
        waited: Duration,
    },
    /// The store failed.
    #[error("storage failure: {0}")]
    Store(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

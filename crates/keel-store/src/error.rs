//! [`StoreError`]: what a store can refuse or fail with, whichever implementation it is.

use keel_core::{Epoch, LogPos};

/// What went wrong in the store.
///
/// Every variant but [`StoreError::Db`], [`StoreError::Codec`] and [`StoreError::File`] is
/// a refusal decided before anything was written: the store is as it was before the call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, a full disk).
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// A log entry or undo record could not be encoded or decoded.
    #[error("corrupt record in the log: {0}")]
    Codec(#[from] postcard::Error),
    /// The file of a [`LogStore`](crate::LogStore) could not be read or written (I/O, a
    /// full disk), or holds what this keel cannot read.
    #[error("log file {path}: {error}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// A write came with an epoch older than one this node has seen.
    #[error("epoch {given} is older than epoch {current}, which this node has already seen")]
    StaleEpoch {
        /// The epoch of the write.
        given: Epoch,
        /// The newest epoch this node knows.
        current: Epoch,
    },
    /// An epoch at or above [`keel_core::ids::WIRE_LIMIT`]: no monitor hands one out, and
    /// keeping it would leave no room for the epochs after it.
    #[error("epoch {given} is out of range: no cluster reaches it")]
    EpochOutOfRange {
        /// The epoch offered.
        given: Epoch,
    },
    /// Entries did not continue the log where it ends.
    #[error("entries must continue the log: it ends at {last}, the next entry is {next}")]
    Gap {
        /// The log's last position.
        last: LogPos,
        /// The position of the entry offered.
        next: LogPos,
    },
    /// The entries asked for are no longer in the log; a snapshot is needed.
    #[error("log entries up to {snapshot} were truncated into a snapshot")]
    Compacted {
        /// The last position the snapshot covers.
        snapshot: LogPos,
    },
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
db_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

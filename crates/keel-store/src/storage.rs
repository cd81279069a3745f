//! [`Storage`]: the contract between a node and the store under it.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};

use crate::error::StoreError;
use crate::op::{Command, LogEntry, Outcome, Rejection};
use crate::snapshot::Snapshot;

/// Where a node's log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogStatus {
    /// The newest epoch this node has seen (may be ahead of the last entry's).
    pub epoch: Epoch,
    /// The last entry of the log (or of the snapshot when the log is empty).
    pub last: LogPos,
    /// The last position folded into the snapshot; the log holds what comes after it.
    pub snapshot: LogPos,
}

impl LogStatus {
    /// The first lsn still in the log.
    pub fn first_lsn(&self) -> Lsn {
        self.snapshot.lsn.next()
    }
}

/// The result of one command in a group commit: its lsn and outcome, or why it was not
/// applied (then nothing was written for it).
pub type Applied = Result<(Lsn, Outcome), Rejection>;

/// A node's operation log and the state machine it drives.
///
/// Implemented by [`Store`](crate::Store) (redb, on disk) and
/// [`MemStore`](crate::MemStore) (memory, for the simulator), both through one
/// implementation of the rules, so that what the simulator proves is what the node runs.
/// The trait is object safe and `Send + Sync`, so a node can hold an `Arc<dyn Storage>`;
/// every call blocks (run it on a blocking thread).
///
/// # The log
///
/// Entries are stamped `(epoch, lsn)`; lsns run from 1 without gaps, and the epochs of
/// consecutive entries never decrease. Every entry is applied to the state machine in the
/// same atomic step that appends it, so the state is always exactly the effect of the log
/// up to [`LogStatus::last`]. Entries up to [`LogStatus::snapshot`] have been folded into
/// the state (compaction) and can no longer be read or rolled back. The store keeps the
/// newest `log_retain` entries (all of them while there are fewer), and compacts only
/// once an eighth more have piled up, so the cost is paid now and then.
///
/// # Epochs
///
/// [`LogStatus::epoch`] is the newest epoch the node has seen. It never goes back:
/// [`observe_epoch`](Self::observe_epoch) and [`execute_with`](Self::execute_with)
/// refuse an older epoch ([`StoreError::StaleEpoch`]) and one at or above
/// [`keel_core::ids::WIRE_LIMIT`] ([`StoreError::EpochOutOfRange`]); rollbacks keep it;
/// appends and installs only raise it.
///
/// # What survives a crash
///
/// To ensure correctness, an implementation guarantees:
///
/// - **Everything a call returned `Ok` for is durable.** After the process dies and the
///   store is opened again, the log, the state, the epoch seen and the node's meta are
///   exactly as the last successful call left them.
/// - **A mutation is atomic.** A call that was in progress when the process died
///   happened whole or not at all: never half a group commit, half a rollback, or an
///   entry without its effect.
/// - **A call that returns `Err` changed nothing.** Refusals are decided before anything
///   is written, and a failed write is abandoned whole.
/// - **Epochs never go back**, across crashes too (a consequence of the first rule).
///
/// [`MemStore`](crate::MemStore) models the moment between a mutation and its sync
/// explicitly, so a simulator can crash a node there; see its documentation.
pub trait Storage: Send + Sync {
    /// Where the log stands. Never waits for a mutation in progress on a [`Store`](crate::Store).
    fn status(&self) -> LogStatus;

    /// Durably records that this node has seen `epoch`; returns whether it was new.
    /// An older epoch is refused, and so is one out of range.
    fn observe_epoch(&self, epoch: Epoch) -> Result<bool, StoreError>;

    /// The primary's group commit; see [`execute_with`](Self::execute_with).
    fn execute(&self, epoch: Epoch, commands: &[Command]) -> Result<Vec<Applied>, StoreError> {
        self.execute_with(epoch, commands, &mut |_| {})
    }

    /// The primary's group commit: checks each command against the state as left by the
    /// ones before it, appends those that pass as entries of `epoch` with consecutive
    /// lsns, applies them, and makes all of it durable at once. Returns one result per
    /// command, in order; a rejected command wrote nothing. Also records `epoch` as seen.
    ///
    /// `before_commit` receives the new entries (if any) once they are decided and
    /// before they are durable: a primary ships them to its standbys there, so that its
    /// own fsync and theirs overlap. It must not call the store.
    ///
    /// To ensure correctness: if this then fails, entries that were never durable here
    /// may exist elsewhere under positions this store will hand out again; the caller
    /// must not write in this epoch any more (a node aborts and restarts in a new epoch).
    fn execute_with(
        &self,
        epoch: Epoch,
        commands: &[Command],
        before_commit: &mut dyn FnMut(&[LogEntry]),
    ) -> Result<Vec<Applied>, StoreError>;

    /// A standby's append: entries from the primary that continue the log (the next
    /// lsn, an epoch no older than the last entry's), applied and made durable at once.
    /// Returns the new last position. Anything else is refused whole with
    /// [`StoreError::Gap`].
    fn append(&self, entries: &[LogEntry]) -> Result<LogPos, StoreError>;

    /// Up to `max` entries after `after`, oldest first, for a standby that has
    /// everything up to it; [`StoreError::Compacted`] if some of them were folded into
    /// the snapshot.
    fn entries_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError>;

    /// The log's last position and its epoch boundaries, read from one consistent view
    /// (what a standby says in its hello: read apart, a commit in between could pair a new
    /// position with old boundaries).
    fn summary(&self) -> Result<(LogPos, Vec<(Epoch, Lsn)>), StoreError>;

    /// For each epoch that wrote in this log (snapshot included), the lsn of its first
    /// entry, oldest first.
    fn epoch_boundaries(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError> {
        Ok(self.summary()?.1)
    }

    /// Truncates the log after `lsn`: takes back every later entry, newest first, so the
    /// state is exactly what it was at `lsn` (kv versions, entries, counters), and
    /// forgets the epochs that started after it. Atomic; the epoch seen stays.
    /// [`StoreError::Compacted`] if `lsn` is inside the snapshot. Returns the new last
    /// position.
    fn rollback_to(&self, lsn: Lsn) -> Result<LogPos, StoreError>;

    /// The whole state at the last position, read from one consistent view.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Replaces the log and the state with a snapshot, atomically: the log starts empty
    /// after it. The epoch seen only goes up. Returns the new last position.
    fn install(&self, snap: &Snapshot) -> Result<LogPos, StoreError>;

    /// A number the node keeps about itself (e.g. the epoch in which it was primary),
    /// beside the store's own bookkeeping.
    fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// Durably sets a number the node keeps about itself.
    fn set_node_meta(&self, key: &str, value: u64) -> Result<(), StoreError>;

    /// The entries map.
    fn entries(&self) -> Result<BTreeMap<String, String>, StoreError>;

    /// A key's version and value.
    fn kv_get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// Every key with its version, in key order.
    fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Up to `max` keys after `after` (from the first when `None`), in key order: a walk
    /// over every key, a page at a time, that reads each key once.
    fn kv_keys_after(&self, after: Option<&str>, max: usize) -> Result<Vec<String>, StoreError>;

    /// A counter's value (0 if it was never incremented).
    fn counter(&self, name: &str) -> Result<i64, StoreError>;

    /// Every counter ever set, with its value.
    fn counters(&self) -> Result<BTreeMap<String, i64>, StoreError>;
}

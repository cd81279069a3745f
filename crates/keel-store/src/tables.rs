//! The seam between the rules and a place to keep them: [`Tables`], what one mutation
//! may read and write, and [`View`], what a consistent read sees.
//!
//! redb's tables and the in-memory ones implement these, and nothing else: every rule
//! (preconditions, apply and undo, compaction, rollback, snapshots) is written once in
//! [`rules`](crate::rules) against them.

use std::collections::BTreeMap;

use keel_core::{Epoch, Lsn};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::op::LogEntry;
use crate::storage::LogStatus;

/// A key's version (the lsn that last wrote it) and its value.
pub(crate) type KvRecord = (u64, Vec<u8>);

/// What to do to take one entry back, kept next to the entry.
///
/// redb stores it with postcard, so its shape is part of the file format: the kv record
/// stays in [`encode_kv`]'s form, as undo records already on disk hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Undo {
    /// The entries map's previous value of each key merged, in merge order.
    Entries(Vec<(String, Option<String>)>),
    /// A key's previous record, as [`encode_kv`] wrote it.
    Kv {
        key: String,
        before: Option<Vec<u8>>,
    },
    /// A counter's previous value.
    Counter { name: String, before: Option<i64> },
}

/// The tables as one mutation sees them: everything it writes becomes visible and durable
/// together, or not at all (the implementation's transaction sees to that).
///
/// Setters take `None` for "remove" and return the value they replaced, which is what an
/// undo record needs.
pub(crate) trait Tables {
    /// A key's version, if it exists.
    fn kv_version(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// A counter's value, if it was ever set.
    fn counter_value(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// The epoch of the log entry at `lsn`, if the log holds it.
    fn epoch_at(&self, lsn: Lsn) -> Result<Option<Epoch>, StoreError>;

    /// Sets (or removes) a key of the entries map.
    fn set_entry(&mut self, key: &str, value: Option<&str>) -> Result<Option<String>, StoreError>;
    /// Sets (or removes) a key of the key/value space.
    fn set_kv(
        &mut self,
        key: &str,
        record: Option<(u64, &[u8])>,
    ) -> Result<Option<KvRecord>, StoreError>;
    /// Sets (or removes) a counter.
    fn set_counter(&mut self, name: &str, value: Option<i64>) -> Result<Option<i64>, StoreError>;

    /// Adds an entry to the log with the record that takes it back.
    fn push_log(&mut self, entry: &LogEntry, undo: Undo) -> Result<(), StoreError>;
    /// Removes the entry at `lsn` from the log, returning its undo record.
    fn pop_log(&mut self, lsn: Lsn) -> Result<Option<Undo>, StoreError>;
    /// Removes every entry up to `lsn` and its undo record (compaction).
    fn truncate_log_through(&mut self, lsn: Lsn) -> Result<(), StoreError>;
    /// Records that `epoch` first wrote at `first`, unless it is already known.
    fn add_epoch(&mut self, epoch: Epoch, first: Lsn) -> Result<(), StoreError>;
    /// Forgets the epochs whose first entry comes after `lsn`.
    fn forget_epochs_after(&mut self, lsn: Lsn) -> Result<(), StoreError>;
    /// Empties the log, its undo records, the epochs and the state machine (not the
    /// status, nor the node's meta).
    fn clear(&mut self) -> Result<(), StoreError>;

    /// Keeps where the log stands.
    fn save_status(&mut self, status: &LogStatus) -> Result<(), StoreError>;
    /// Sets a number the node keeps about itself.
    fn set_node_meta(&mut self, key: &str, value: u64) -> Result<(), StoreError>;
}

/// A consistent read: every call on one view sees the same moment.
pub(crate) trait View {
    /// Where the log stands.
    fn status(&self) -> Result<LogStatus, StoreError>;
    /// For each epoch that wrote, the lsn of its first entry, oldest first.
    fn epochs(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError>;
    /// Up to `max` log entries after `after`, oldest first.
    fn log_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError>;
    /// The entries map.
    fn entries(&self) -> Result<BTreeMap<String, String>, StoreError>;
    /// A key's version and value.
    fn kv_get(&self, key: &str) -> Result<Option<KvRecord>, StoreError>;
    /// Every key with its version, in key order.
    fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Up to `max` keys after `after` (from the first when `None`), in key order.
    fn kv_keys_after(&self, after: Option<&str>, max: usize) -> Result<Vec<String>, StoreError>;
    /// Every key with its version and value, in key order.
    fn kv_all(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError>;
    /// A counter's value, if it was ever set.
    fn counter(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// Every counter.
    fn counters(&self) -> Result<BTreeMap<String, i64>, StoreError>;
    /// A number the node keeps about itself.
    fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError>;
}

/// A kv record as redb keeps it and undo records carry it: the version, little-endian,
/// then the value.
pub(crate) fn encode_kv(version: u64, value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + value.len());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(value);
    buf
}

/// The version and value of an [`encode_kv`] record.
pub(crate) fn decode_kv(raw: &[u8]) -> (u64, &[u8]) {
    // Every record is written by `encode_kv`; a shorter one can only come from a
    // corrupted file, which redb's checksums would have caught first.
    let (head, value) = raw.split_at(raw.len().min(8));
    let mut v = [0u8; 8];
    v[..head.len()].copy_from_slice(head);
    (u64::from_le_bytes(v), value)
}

//! [`MemTables`]: the tables in BTreeMaps, with a journal of what each change replaced,
//! so that the changes not yet synced can be taken back when a crash drops them.
//!
//! BTreeMaps, not HashMaps: every read returns keys in order, so a simulated run never
//! depends on a hasher's seed.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use keel_core::{Epoch, Lsn};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::op::LogEntry;
use crate::storage::LogStatus;
use crate::tables::{KvRecord, Tables, Undo, View};

/// A log entry beside the record that takes it back.
type Logged = (LogEntry, Undo);

/// What an install replaces whole.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Data {
    log: BTreeMap<u64, Logged>,
    epochs: BTreeMap<u64, u64>,
    entries: BTreeMap<String, String>,
    kv: BTreeMap<String, KvRecord>,
    counters: BTreeMap<String, i64>,
}

/// What one change replaced: applying it puts the tables back as they were before it.
#[derive(Debug)]
enum Change {
    Log(u64, Option<Logged>),
    LogPrefix(BTreeMap<u64, Logged>),
    Epoch(u64, Option<u64>),
    Entry(String, Option<String>),
    Kv(String, Option<KvRecord>),
    Counter(String, Option<i64>),
    Status(LogStatus),
    NodeMeta(String, Option<u64>),
    Data(Box<Data>),
}

/// Every table of a store, in memory, and the journal of changes since the last point
/// the owner declared safe ([`MemTables::forget_journal`]).
#[derive(Debug, Default)]
pub(crate) struct MemTables {
    data: Data,
    status: LogStatus,
    node_meta: BTreeMap<String, u64>,
    journal: Vec<Change>,
    /// Where the journal stood when the mutation now running began: only `Some` while
    /// one runs, so if it panics, [`MemTables::recover`] takes it back and a mutation is
    /// whole or absent even then.
    running: Option<usize>,
}

/// Sets `key` to `value` (`None` removes it); what it replaced.
fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) -> Option<V> {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    }
}

/// Every table of a [`MemTables`], as [`crate::log_store`] writes it whole to its file.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Image {
    data: Data,
    status: LogStatus,
    node_meta: BTreeMap<String, u64>,
}

impl MemTables {
    /// Where the log stands.
    pub(crate) fn status(&self) -> LogStatus {
        self.status
    }

    /// A copy of every table (the journal aside).
    pub(crate) fn image(&self) -> Image {
        Image {
            data: self.data.clone(),
            status: self.status,
            node_meta: self.node_meta.clone(),
        }
    }

    /// Tables holding `image`, with an empty journal.
    pub(crate) fn from_image(image: Image) -> Self {
        Self {
            data: image.data,
            status: image.status,
            node_meta: image.node_meta,
            journal: Vec::new(),
            running: None,
        }
    }

    /// Starts a mutation: where the journal stands, to take it back to.
    pub(crate) fn begin(&mut self) -> usize {
        let start = self.mark();
        self.running = Some(start);
        start
    }

    /// The mutation begun last ended (returned, with or without an error).
    pub(crate) fn end(&mut self) {
        self.running = None;
    }

    /// Takes back a mutation that never ended (it panicked).
    pub(crate) fn recover(&mut self) {
        if let Some(start) = self.running.take() {
            self.revert_to(start);
        }
    }

    /// A point in the journal to revert to.
    pub(crate) fn mark(&self) -> usize {
        self.journal.len()
    }

    /// Takes back every change made since `mark`, newest first.
    pub(crate) fn revert_to(&mut self, mark: usize) {
        while self.journal.len() > mark {
            if let Some(change) = self.journal.pop() {
                self.undo(change);
            }
        }
    }

    /// Makes every change so far permanent: none can be taken back any more.
    pub(crate) fn forget_journal(&mut self) {
        self.journal.clear();
    }

    fn undo(&mut self, change: Change) {
        let d = &mut self.data;
        match change {
            Change::Log(lsn, before) => drop(put(&mut d.log, lsn, before)),
            // Entry by entry: `append` would rebuild the whole log (O(n)); a prefix
            // taken back is a commit's few entries.
            Change::LogPrefix(dropped) => d.log.extend(dropped),
            Change::Epoch(epoch, before) => drop(put(&mut d.epochs, epoch, before)),
            Change::Entry(key, before) => drop(put(&mut d.entries, key, before)),
            Change::Kv(key, before) => drop(put(&mut d.kv, key, before)),
            Change::Counter(name, before) => drop(put(&mut d.counters, name, before)),
            Change::Status(before) => self.status = before,
            Change::NodeMeta(key, before) => drop(put(&mut self.node_meta, key, before)),
            Change::Data(before) => self.data = *before,
        }
    }
}

impl Tables for MemTables {
    fn kv_version(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.data.kv.get(key).map(|(version, _)| *version))
    }

    fn counter_value(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.data.counters.get(name).copied())
    }

    fn epoch_at(&self, lsn: Lsn) -> Result<Option<Epoch>, StoreError> {
        Ok(self.data.log.get(&lsn.0).map(|(e, _)| e.pos.epoch))
    }

    fn set_entry(&mut self, key: &str, value: Option<&str>) -> Result<Option<String>, StoreError> {
        let old = put(
            &mut self.data.entries,
            key.to_owned(),
            value.map(str::to_owned),
        );
        self.journal
            .push(Change::Entry(key.to_owned(), old.clone()));
        Ok(old)
    }

    fn set_kv(
        &mut self,
        key: &str,
        record: Option<(u64, &[u8])>,
    ) -> Result<Option<KvRecord>, StoreError> {
        let record = record.map(|(version, value)| (version, value.to_vec()));
        let old = put(&mut self.data.kv, key.to_owned(), record);
        self.journal.push(Change::Kv(key.to_owned(), old.clone()));
        Ok(old)
    }

    fn set_counter(&mut self, name: &str, value: Option<i64>) -> Result<Option<i64>, StoreError> {
        let old = put(&mut self.data.counters, name.to_owned(), value);
        self.journal.push(Change::Counter(name.to_owned(), old));
        Ok(old)
    }

    fn push_log(&mut self, entry: &LogEntry, undo: Undo) -> Result<(), StoreError> {
        let lsn = entry.pos.lsn.0;
        let old = self.data.log.insert(lsn, (entry.clone(), undo));
        self.journal.push(Change::Log(lsn, old));
        Ok(())
    }

    fn pop_log(&mut self, lsn: Lsn) -> Result<Option<Undo>, StoreError> {
        let old = self.data.log.remove(&lsn.0);
        let undo = old.as_ref().map(|(_, undo)| undo.clone());
        self.journal.push(Change::Log(lsn.0, old));
        Ok(undo)
    }

    fn truncate_log_through(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        let kept = self.data.log.split_off(&lsn.0.saturating_add(1));
        let dropped = std::mem::replace(&mut self.data.log, kept);
        self.journal.push(Change::LogPrefix(dropped));
        Ok(())
    }

    fn add_epoch(&mut self, epoch: Epoch, first: Lsn) -> Result<(), StoreError> {
        if let Entry::Vacant(slot) = self.data.epochs.entry(epoch.0) {
            slot.insert(first.0);
            self.journal.push(Change::Epoch(epoch.0, None));
        }
        Ok(())
    }

    fn forget_epochs_after(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        let later: Vec<(u64, u64)> = (self.data.epochs.iter())
            .filter(|(_, first)| **first > lsn.0)
            .map(|(e, first)| (*e, *first))
            .collect();
        for (epoch, first) in later {
            self.data.epochs.remove(&epoch);
            self.journal.push(Change::Epoch(epoch, Some(first)));
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let before = std::mem::take(&mut self.data);
        self.journal.push(Change::Data(Box::new(before)));
        Ok(())
    }

    fn save_status(&mut self, status: &LogStatus) -> Result<(), StoreError> {
        let before = std::mem::replace(&mut self.status, *status);
        self.journal.push(Change::Status(before));
        Ok(())
    }

    fn set_node_meta(&mut self, key: &str, value: u64) -> Result<(), StoreError> {
        let old = self.node_meta.insert(key.to_owned(), value);
        self.journal.push(Change::NodeMeta(key.to_owned(), old));
        Ok(())
    }
}

impl View for MemTables {
    fn status(&self) -> Result<LogStatus, StoreError> {
        Ok(self.status)
    }

    fn epochs(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError> {
        Ok((self.data.epochs.iter())
            .map(|(e, first)| (Epoch(*e), Lsn(*first)))
            .collect())
    }

    fn log_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        Ok((self.data.log.range(after.0.saturating_add(1)..))
            .take(max)
            .map(|(_, (entry, _))| entry.clone())
            .collect())
    }

    fn entries(&self) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self.data.entries.clone())
    }

    fn kv_get(&self, key: &str) -> Result<Option<KvRecord>, StoreError> {
        Ok(self.data.kv.get(key).cloned())
    }

    fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok((self.data.kv.iter())
            .map(|(k, (version, _))| (k.clone(), *version))
            .collect())
    }

    fn kv_keys_after(&self, after: Option<&str>, max: usize) -> Result<Vec<String>, StoreError> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        Ok((self.data.kv.range((start, Bound::Unbounded)))
            .take(max)
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn kv_all(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        Ok((self.data.kv.iter())
            .map(|(k, (version, value))| (k.clone(), *version, value.clone()))
            .collect())
    }

    fn counter(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.data.counters.get(name).copied())
    }

    fn counters(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(self.data.counters.clone())
    }

    fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.node_meta.get(key).copied())
    }
}

//! The layout of `keel.redb`: [`Tables`] over a write transaction, [`View`] over a read
//! transaction.
//!
//! Log entries and undo records are postcard, keyed by lsn; a kv record is its version
//! and value in one byte string ([`encode_kv`]); the log's status and the node's own
//! numbers share the `meta` table, the node's under a `node.` prefix.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};
use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::error::StoreError;
use crate::op::LogEntry;
use crate::storage::LogStatus;
use crate::tables::{KvRecord, Tables, Undo, View, decode_kv, encode_kv};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const UNDO: TableDefinition<u64, &[u8]> = TableDefinition::new("undo");
const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENTRIES: TableDefinition<&str, &str> = TableDefinition::new("entries");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");

const META_EPOCH: &str = "epoch";
const META_LAST_LSN: &str = "last_lsn";
const META_LAST_EPOCH: &str = "last_epoch";
const META_SNAP_LSN: &str = "snapshot_lsn";
const META_SNAP_EPOCH: &str = "snapshot_epoch";

/// The meta key of one of the node's own numbers, apart from the store's.
fn node_meta_key(key: &str) -> String {
    format!("node.{key}")
}

/// Where the log stands, as the meta table keeps it (all zero in a new database).
fn read_status(meta: &impl ReadableTable<&'static str, u64>) -> Result<LogStatus, StoreError> {
    let get =
        |k: &str| -> Result<u64, StoreError> { Ok(meta.get(k)?.map(|g| g.value()).unwrap_or(0)) };
    Ok(LogStatus {
        epoch: Epoch(get(META_EPOCH)?),
        last: LogPos {
            epoch: Epoch(get(META_LAST_EPOCH)?),
            lsn: Lsn(get(META_LAST_LSN)?),
        },
        snapshot: LogPos {
            epoch: Epoch(get(META_SNAP_EPOCH)?),
            lsn: Lsn(get(META_SNAP_LSN)?),
        },
    })
}

/// Every table, opened once per write transaction.
pub(crate) struct RedbTables<'t> {
    log: Table<'t, u64, &'static [u8]>,
    undo: Table<'t, u64, &'static [u8]>,
    epochs: Table<'t, u64, u64>,
    meta: Table<'t, &'static str, u64>,
    entries: Table<'t, &'static str, &'static str>,
    kv: Table<'t, &'static str, &'static [u8]>,
    counters: Table<'t, &'static str, i64>,
}

impl<'t> RedbTables<'t> {
    /// Opens every table, creating those a new database does not have yet.
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            log: txn.open_table(LOG)?,
            undo: txn.open_table(UNDO)?,
            epochs: txn.open_table(EPOCHS)?,
            meta: txn.open_table(META)?,
            entries: txn.open_table(ENTRIES)?,
            kv: txn.open_table(KV)?,
            counters: txn.open_table(COUNTERS)?,
        })
    }

    /// Where the log stands, as this transaction sees it.
    pub(crate) fn status(&self) -> Result<LogStatus, StoreError> {
        read_status(&self.meta)
    }
}

impl Tables for RedbTables<'_> {
    fn kv_version(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.kv.get(key)?.map(|g| decode_kv(g.value()).0))
    }

    fn counter_value(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.counters.get(name)?.map(|g| g.value()))
    }

    fn epoch_at(&self, lsn: Lsn) -> Result<Option<Epoch>, StoreError> {
        match self.log.get(lsn.0)? {
            Some(g) => Ok(Some(postcard::from_bytes::<LogEntry>(g.value())?.pos.epoch)),
            None => Ok(None),
        }
    }

    fn set_entry(&mut self, key: &str, value: Option<&str>) -> Result<Option<String>, StoreError> {
        let old = match value {
            Some(v) => self.entries.insert(key, v)?,
            None => self.entries.remove(key)?,
        };
        Ok(old.map(|g| g.value().to_owned()))
    }

    fn set_kv(
        &mut self,
        key: &str,
        record: Option<(u64, &[u8])>,
    ) -> Result<Option<KvRecord>, StoreError> {
        let old = match record {
            Some((version, value)) => self.kv.insert(key, encode_kv(version, value).as_slice())?,
            None => self.kv.remove(key)?,
        };
        Ok(old.map(|g| {
            let (version, value) = decode_kv(g.value());
            (version, value.to_vec())
        }))
    }

    fn set_counter(&mut self, name: &str, value: Option<i64>) -> Result<Option<i64>, StoreError> {
        let old = match value {
            Some(v) => self.counters.insert(name, v)?,
            None => self.counters.remove(name)?,
        };
        Ok(old.map(|g| g.value()))
    }

    fn push_log(&mut self, entry: &LogEntry, undo: Undo) -> Result<(), StoreError> {
        let lsn = entry.pos.lsn.0;
        self.log
            .insert(lsn, postcard::to_stdvec(entry)?.as_slice())?;
        self.undo
            .insert(lsn, postcard::to_stdvec(&undo)?.as_slice())?;
        Ok(())
    }

    fn pop_log(&mut self, lsn: Lsn) -> Result<Option<Undo>, StoreError> {
        let undo = match self.undo.remove(lsn.0)? {
            Some(raw) => Some(postcard::from_bytes::<Undo>(raw.value())?),
            None => None,
        };
        self.log.remove(lsn.0)?;
        Ok(undo)
    }

    fn truncate_log_through(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.log.retain_in(..=lsn.0, |_, _| false)?;
        self.undo.retain_in(..=lsn.0, |_, _| false)?;
        Ok(())
    }

    fn add_epoch(&mut self, epoch: Epoch, first: Lsn) -> Result<(), StoreError> {
        if self.epochs.get(epoch.0)?.is_none() {
            self.epochs.insert(epoch.0, first.0)?;
        }
        Ok(())
    }

    fn forget_epochs_after(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        self.epochs.retain(|_, first| first <= lsn.0)?;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.log.retain(|_, _| false)?;
        self.undo.retain(|_, _| false)?;
        self.epochs.retain(|_, _| false)?;
        self.entries.retain(|_, _| false)?;
        self.kv.retain(|_, _| false)?;
        self.counters.retain(|_, _| false)?;
        Ok(())
    }

    fn save_status(&mut self, s: &LogStatus) -> Result<(), StoreError> {
        self.meta.insert(META_EPOCH, s.epoch.0)?;
        self.meta.insert(META_LAST_LSN, s.last.lsn.0)?;
        self.meta.insert(META_LAST_EPOCH, s.last.epoch.0)?;
        self.meta.insert(META_SNAP_LSN, s.snapshot.lsn.0)?;
        self.meta.insert(META_SNAP_EPOCH, s.snapshot.epoch.0)?;
        Ok(())
    }

    fn set_node_meta(&mut self, key: &str, value: u64) -> Result<(), StoreError> {
        self.meta.insert(node_meta_key(key).as_str(), value)?;
        Ok(())
    }
}

/// One read transaction: every table it opens shows the same commit.
pub(crate) struct RedbView {
    txn: ReadTransaction,
}

impl RedbView {
    pub(crate) fn new(txn: ReadTransaction) -> Self {
        Self { txn }
    }
}

impl View for RedbView {
    fn status(&self) -> Result<LogStatus, StoreError> {
        read_status(&self.txn.open_table(META)?)
    }

    fn epochs(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError> {
        let mut out = Vec::new();
        for item in self.txn.open_table(EPOCHS)?.iter()? {
            let (e, l) = item?;
            out.push((Epoch(e.value()), Lsn(l.value())));
        }
        Ok(out)
    }

    fn log_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let log = self.txn.open_table(LOG)?;
        let mut out = Vec::new();
        for item in log.range(after.0.saturating_add(1)..)?.take(max) {
            let (_, v) = item?;
            out.push(postcard::from_bytes(v.value())?);
        }
        Ok(out)
    }

    fn entries(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.txn.open_table(ENTRIES)?.iter()? {
            let (k, v) = item?;
            out.insert(k.value().to_owned(), v.value().to_owned());
        }
        Ok(out)
    }

    fn kv_get(&self, key: &str) -> Result<Option<KvRecord>, StoreError> {
        Ok(self.txn.open_table(KV)?.get(key)?.map(|g| {
            let (version, value) = decode_kv(g.value());
            (version, value.to_vec())
        }))
    }

    fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.txn.open_table(KV)?.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode_kv(v.value()).0));
        }
        Ok(out)
    }

    fn kv_keys_after(&self, after: Option<&str>, max: usize) -> Result<Vec<String>, StoreError> {
        use std::ops::Bound;
        let table = self.txn.open_table(KV)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        for item in table.range::<&str>((start, Bound::Unbounded))?.take(max) {
            out.push(item?.0.value().to_owned());
        }
        Ok(out)
    }

    fn kv_all(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.txn.open_table(KV)?.iter()? {
            let (k, v) = item?;
            let (version, value) = decode_kv(v.value());
            out.push((k.value().to_owned(), version, value.to_vec()));
        }
        Ok(out)
    }

    fn counter(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.txn.open_table(COUNTERS)?.get(name)?.map(|g| g.value()))
    }

    fn counters(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut out = BTreeMap::new();
        for item in self.txn.open_table(COUNTERS)?.iter()? {
            let (k, v) = item?;
            out.insert(k.value().to_owned(), v.value());
        }
        Ok(out)
    }

    fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let meta = self.txn.open_table(META)?;
        Ok(meta.get(node_meta_key(key).as_str())?.map(|g| g.value()))
    }
}

//! [`Store`]: the log and the state machine in one redb database.
//!
//! Every method that changes anything does it in one redb write transaction, committed
//! with redb's default durability (fsync'd before `commit` returns), so a crash leaves the
//! log and the state exactly as of the last successful call. Calls block: run them on a
//! blocking thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use keel_core::{Epoch, LogPos, Lsn};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::op::{Command, Expect, LogEntry, Op, Outcome, Rejection};
use crate::snapshot::Snapshot;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const UNDO: TableDefinition<u64, &[u8]> = TableDefinition::new("undo");
const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENTRIES: TableDefinition<&str, &str> = TableDefinition::new("entries");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");

/// redb's page cache. Its default (1 GiB) lets a node's memory grow with every page it
/// ever touched; the log window and a teaching-sized state fit in far less, and the OS's
/// page cache still holds the file.
const CACHE_BYTES: usize = 16 << 20;

const META_EPOCH: &str = "epoch";
const META_LAST_LSN: &str = "last_lsn";
const META_LAST_EPOCH: &str = "last_epoch";
const META_SNAP_LSN: &str = "snapshot_lsn";
const META_SNAP_EPOCH: &str = "snapshot_epoch";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, a full disk).
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// A log entry or undo record could not be encoded or decoded.
    #[error("corrupt record in the log: {0}")]
    Codec(#[from] postcard::Error),
    /// A write came with an epoch older than one this node has seen.
    #[error("epoch {given} is older than epoch {current}, which this node has already seen")]
    StaleEpoch {
        /// The epoch of the write.
        given: Epoch,
        /// The newest epoch this node knows.
        current: Epoch,
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

/// Where a node's log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// What to do to take one entry back, kept next to the entry.
#[derive(Debug, Serialize, Deserialize)]
enum Undo {
    Entries(Vec<(String, Option<String>)>),
    Kv {
        key: String,
        before: Option<Vec<u8>>,
    },
    Counter {
        name: String,
        before: Option<i64>,
    },
}

/// The log and state machine of one node.
pub struct Store {
    db: Database,
    /// Serialises writes: held for the whole of each write transaction, fsync included.
    writer: Mutex<()>,
    /// A copy of the meta table, replaced right after each commit. Only ever held for a
    /// copy, so a reader on an async thread (every answer's headers, every frame's epoch)
    /// never waits for a commit.
    status: Mutex<LogStatus>,
    log_retain: u64,
}

/// All tables, opened once per write transaction.
struct Tables<'t> {
    log: Table<'t, u64, &'static [u8]>,
    undo: Table<'t, u64, &'static [u8]>,
    epochs: Table<'t, u64, u64>,
    meta: Table<'t, &'static str, u64>,
    entries: Table<'t, &'static str, &'static str>,
    kv: Table<'t, &'static str, &'static [u8]>,
    counters: Table<'t, &'static str, i64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
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

    fn kv_version(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.kv.get(key)?.map(|v| decode_kv(v.value()).0))
    }

    fn save_status(&mut self, s: &LogStatus) -> Result<(), StoreError> {
        self.meta.insert(META_EPOCH, s.epoch.0)?;
        self.meta.insert(META_LAST_LSN, s.last.lsn.0)?;
        self.meta.insert(META_LAST_EPOCH, s.last.epoch.0)?;
        self.meta.insert(META_SNAP_LSN, s.snapshot.lsn.0)?;
        self.meta.insert(META_SNAP_EPOCH, s.snapshot.epoch.0)?;
        Ok(())
    }

    /// Applies an operation written at `lsn` and returns how to take it back.
    fn apply(&mut self, lsn: Lsn, op: &Op) -> Result<Undo, StoreError> {
        Ok(match op {
            Op::Merge(pairs) => {
                let mut before = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let old = self.entries.insert(k.as_str(), v.as_str())?;
                    before.push((k.clone(), old.map(|g| g.value().to_owned())));
                }
                Undo::Entries(before)
            }
            Op::Put { key, value } => {
                let old = self
                    .kv
                    .insert(key.as_str(), encode_kv(lsn.0, value).as_slice())?;
                Undo::Kv {
                    key: key.clone(),
                    before: old.map(|g| g.value().to_vec()),
                }
            }
            Op::Delete { key } => {
                let old = self.kv.remove(key.as_str())?;
                Undo::Kv {
                    key: key.clone(),
                    before: old.map(|g| g.value().to_vec()),
                }
            }
            Op::SetCounter { name, value } => {
                let old = self.counters.insert(name.as_str(), *value)?;
                Undo::Counter {
                    name: name.clone(),
                    before: old.map(|g| g.value()),
                }
            }
        })
    }

    fn unapply(&mut self, undo: Undo) -> Result<(), StoreError> {
        match undo {
            Undo::Entries(before) => {
                for (k, old) in before.into_iter().rev() {
                    match old {
                        Some(v) => drop(self.entries.insert(k.as_str(), v.as_str())?),
                        None => drop(self.entries.remove(k.as_str())?),
                    }
                }
            }
            Undo::Kv { key, before } => match before {
                Some(v) => drop(self.kv.insert(key.as_str(), v.as_slice())?),
                None => drop(self.kv.remove(key.as_str())?),
            },
            Undo::Counter { name, before } => match before {
                Some(v) => drop(self.counters.insert(name.as_str(), v)?),
                None => drop(self.counters.remove(name.as_str())?),
            },
        }
        Ok(())
    }

    /// Appends an entry that directly follows `status.last`, applies it, and moves
    /// `status` on.
    fn push(&mut self, status: &mut LogStatus, entry: &LogEntry) -> Result<(), StoreError> {
        let LogPos { epoch, lsn } = entry.pos;
        let undo = self.apply(lsn, &entry.op)?;
        self.log
            .insert(lsn.0, postcard::to_stdvec(entry)?.as_slice())?;
        self.undo
            .insert(lsn.0, postcard::to_stdvec(&undo)?.as_slice())?;
        if self.epochs.get(epoch.0)?.is_none() {
            self.epochs.insert(epoch.0, lsn.0)?;
        }
        status.last = entry.pos;
        status.epoch = status.epoch.max(epoch);
        Ok(())
    }

    /// Folds the oldest entries into the snapshot so that at most `retain` stay in the log.
    /// The state tables already hold their effect; only the entries and their undo records
    /// go.
    fn compact(&mut self, status: &mut LogStatus, retain: u64) -> Result<(), StoreError> {
        let held = status.last.lsn.0 - status.snapshot.lsn.0;
        // Compact in steps of an eighth of the window, so the cost is paid now and then
        // rather than on every write.
        if held <= retain + retain / 8 {
            return Ok(());
        }
        let cut = status.last.lsn.0 - retain;
        let cut_epoch = match self.log.get(cut)? {
            Some(g) => postcard::from_bytes::<LogEntry>(g.value())?.pos.epoch,
            None => status.snapshot.epoch,
        };
        self.log.retain_in(..=cut, |_, _| false)?;
        self.undo.retain_in(..=cut, |_, _| false)?;
        status.snapshot = LogPos {
            epoch: cut_epoch,
            lsn: Lsn(cut),
        };
        Ok(())
    }
}

fn encode_kv(version: u64, value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + value.len());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(value);
    buf
}

fn decode_kv(raw: &[u8]) -> (u64, &[u8]) {
    // Every record is written by `encode_kv`; a shorter one can only come from a
    // corrupted file, which redb's checksums would have caught first.
    let (head, value) = raw.split_at(raw.len().min(8));
    let mut v = [0u8; 8];
    v[..head.len()].copy_from_slice(head);
    (u64::from_le_bytes(v), value)
}

impl Store {
    /// Opens (or creates) the store in `dir`, keeping at most `log_retain` log entries
    /// after the snapshot point.
    pub fn open(dir: &Path, log_retain: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(redb::StorageError::Io(e).into()))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("keel.redb"))?;
        let txn = db.begin_write()?;
        let status = {
            let tables = Tables::open(&txn)?;
            let get = |k: &str| -> Result<u64, StoreError> {
                Ok(tables.meta.get(k)?.map(|g| g.value()).unwrap_or(0))
            };
            LogStatus {
                epoch: Epoch(get(META_EPOCH)?),
                last: LogPos {
                    epoch: Epoch(get(META_LAST_EPOCH)?),
                    lsn: Lsn(get(META_LAST_LSN)?),
                },
                snapshot: LogPos {
                    epoch: Epoch(get(META_SNAP_EPOCH)?),
                    lsn: Lsn(get(META_SNAP_LSN)?),
                },
            }
        };
        txn.commit()?;
        Ok(Self {
            db,
            writer: Mutex::new(()),
            status: Mutex::new(status),
            log_retain: log_retain.max(1),
        })
    }

    fn write_guard(&self) -> MutexGuard<'_, ()> {
        // A panic in a write leaves the database as of its last commit and the copy of
        // the status as well (it is only replaced after a commit): a poisoned lock is
        // still good.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_status(&self, next: LogStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Where the log stands.
    pub fn status(&self) -> LogStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that this node has seen `epoch`; returns whether it was new. An epoch
    /// never goes back: an older one is refused.
    pub fn observe_epoch(&self, epoch: Epoch) -> Result<bool, StoreError> {
        let _writer = self.write_guard();
        let status = self.status();
        if epoch < status.epoch {
            return Err(StoreError::StaleEpoch {
                given: epoch,
                current: status.epoch,
            });
        }
        if epoch == status.epoch {
            return Ok(false);
        }
        let mut next = status;
        next.epoch = epoch;
        let txn = self.db.begin_write()?;
        Tables::open(&txn)?.save_status(&next)?;
        txn.commit()?;
        self.set_status(next);
        Ok(true)
    }

    /// The primary's group commit: checks each command against the state as left by the
    /// ones before it, appends those that pass as entries of `epoch`, applies them, and
    /// makes all of it durable with one commit.
    pub fn execute(&self, epoch: Epoch, commands: &[Command]) -> Result<Vec<Applied>, StoreError> {
        self.execute_with(epoch, commands, |_| {})
    }

    /// [`Store::execute`], calling `before_commit` with the new entries once they are
    /// decided and before they are made durable. A primary ships them to its standbys
    /// there, so that its own fsync and theirs overlap.
    ///
    /// To ensure correctness: if this then fails, entries that were never durable here
    /// may exist elsewhere under positions this store will hand out again; the caller
    /// must not write in this epoch any more (a node aborts and restarts in a new epoch).
    pub fn execute_with(
        &self,
        epoch: Epoch,
        commands: &[Command],
        before_commit: impl FnOnce(&[LogEntry]),
    ) -> Result<Vec<Applied>, StoreError> {
        let _writer = self.write_guard();
        let status = self.status();
        if epoch < status.epoch {
            return Err(StoreError::StaleEpoch {
                given: epoch,
                current: status.epoch,
            });
        }
        let mut next = status;
        next.epoch = epoch;
        let txn = self.db.begin_write()?;
        let mut results = Vec::with_capacity(commands.len());
        let mut entries = Vec::with_capacity(commands.len());
        {
            let mut t = Tables::open(&txn)?;
            for command in commands {
                let op = match check(&t, command)? {
                    Ok(op) => op,
                    Err(rejection) => {
                        results.push(Err(rejection));
                        continue;
                    }
                };
                let lsn = next.last.lsn.next();
                let entry = LogEntry {
                    pos: LogPos { epoch, lsn },
                    op,
                };
                t.push(&mut next, &entry)?;
                results.push(Ok((lsn, outcome(lsn, &entry.op))));
                entries.push(entry);
            }
            t.compact(&mut next, self.log_retain)?;
            t.save_status(&next)?;
        }
        if !entries.is_empty() {
            before_commit(&entries);
        }
        txn.commit()?;
        self.set_status(next);
        Ok(results)
    }

    /// A standby's append: entries from the primary that continue the log, applied and
    /// made durable with one commit. Returns the new last position.
    pub fn append(&self, entries: &[LogEntry]) -> Result<LogPos, StoreError> {
        let _writer = self.write_guard();
        let status = self.status();
        let mut next = status;
        if entries.is_empty() {
            return Ok(next.last);
        }
        for entry in entries {
            let in_range = entry.pos.lsn.in_range() && entry.pos.epoch.in_range();
            if !in_range
                || entry.pos.lsn != next.last.lsn.next()
                || entry.pos.epoch < next.last.epoch
            {
                return Err(StoreError::Gap {
                    last: next.last,
                    next: entry.pos,
                });
            }
            next.last = entry.pos;
        }
        next = status;
        let txn = self.db.begin_write()?;
        {
            let mut t = Tables::open(&txn)?;
            for entry in entries {
                t.push(&mut next, entry)?;
            }
            t.compact(&mut next, self.log_retain)?;
            t.save_status(&next)?;
        }
        txn.commit()?;
        self.set_status(next);
        Ok(next.last)
    }

    /// Up to `max` entries after `after`, for a standby that has everything up to it.
    pub fn entries_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let snapshot = self.status().snapshot;
        if after < snapshot.lsn {
            return Err(StoreError::Compacted { snapshot });
        }
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for item in log.range(after.0 + 1..)?.take(max) {
            let (_, v) = item?;
            out.push(postcard::from_bytes(v.value())?);
        }
        // A compaction may have run between reading the status and opening the
        // transaction; entries must start right after `after` or not at all.
        if let Some(first) = out.first().map(|e: &LogEntry| e.pos.lsn)
            && first != after.next()
        {
            return Err(StoreError::Compacted {
                snapshot: self.status().snapshot,
            });
        }
        Ok(out)
    }

    /// The log's last position and its epoch boundaries, read from one consistent view
    /// (what a standby says in its hello: read apart, a commit in between could pair a new
    /// position with old boundaries).
    pub fn summary(&self) -> Result<(LogPos, Vec<(Epoch, Lsn)>), StoreError> {
        summary_in(&self.db.begin_read()?)
    }

    /// For each epoch that wrote in this log (snapshot included), the lsn of its first
    /// entry, oldest first.
    pub fn epoch_boundaries(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError> {
        let txn = self.db.begin_read()?;
        let epochs = txn.open_table(EPOCHS)?;
        let mut out = Vec::new();
        for item in epochs.iter()? {
            let (e, l) = item?;
            out.push((Epoch(e.value()), Lsn(l.value())));
        }
        Ok(out)
    }

    /// Takes back every entry after `lsn`, newest first, with their undo records, in one
    /// commit. Fails with [`StoreError::Compacted`] if `lsn` is inside the snapshot.
    pub fn rollback_to(&self, lsn: Lsn) -> Result<LogPos, StoreError> {
        let _writer = self.write_guard();
        let status = self.status();
        if lsn >= status.last.lsn {
            return Ok(status.last);
        }
        if lsn < status.snapshot.lsn {
            return Err(StoreError::Compacted {
                snapshot: status.snapshot,
            });
        }
        let mut next = status;
        let txn = self.db.begin_write()?;
        {
            let mut t = Tables::open(&txn)?;
            for l in (lsn.0 + 1..=status.last.lsn.0).rev() {
                let undo = match t.undo.remove(l)? {
                    Some(raw) => Some(postcard::from_bytes::<Undo>(raw.value())?),
                    None => None,
                };
                if let Some(undo) = undo {
                    t.unapply(undo)?;
                }
                t.log.remove(l)?;
            }
            t.epochs.retain(|_, first| first <= lsn.0)?;
            let epoch = if lsn == next.snapshot.lsn {
                next.snapshot.epoch
            } else {
                match t.log.get(lsn.0)? {
                    Some(g) => postcard::from_bytes::<LogEntry>(g.value())?.pos.epoch,
                    None => Epoch(0),
                }
            };
            next.last = LogPos { epoch, lsn };
            t.save_status(&next)?;
        }
        txn.commit()?;
        self.set_status(next);
        Ok(next.last)
    }

    /// The whole state at the last position, read from one consistent view.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read()?;
        let (last, epochs) = summary_in(&txn)?;
        let mut snap = Snapshot {
            last,
            epochs,
            ..Snapshot::default()
        };
        for item in txn.open_table(ENTRIES)?.iter()? {
            let (k, v) = item?;
            snap.entries
                .insert(k.value().to_owned(), v.value().to_owned());
        }
        for item in txn.open_table(KV)?.iter()? {
            let (k, v) = item?;
            let (version, value) = decode_kv(v.value());
            snap.kv
                .push((k.value().to_owned(), version, value.to_vec()));
        }
        for item in txn.open_table(COUNTERS)?.iter()? {
            let (k, v) = item?;
            snap.counters.insert(k.value().to_owned(), v.value());
        }
        Ok(snap)
    }

    /// Replaces everything with a snapshot, in one commit: the log starts empty after it.
    pub fn install(&self, snap: &Snapshot) -> Result<LogPos, StoreError> {
        let _writer = self.write_guard();
        let status = self.status();
        let next = LogStatus {
            epoch: status.epoch.max(snap.last.epoch),
            last: snap.last,
            snapshot: snap.last,
        };
        let txn = self.db.begin_write()?;
        {
            let mut t = Tables::open(&txn)?;
            t.log.retain(|_, _| false)?;
            t.undo.retain(|_, _| false)?;
            t.epochs.retain(|_, _| false)?;
            t.entries.retain(|_, _| false)?;
            t.kv.retain(|_, _| false)?;
            t.counters.retain(|_, _| false)?;
            for (e, l) in &snap.epochs {
                t.epochs.insert(e.0, l.0)?;
            }
            for (k, v) in &snap.entries {
                t.entries.insert(k.as_str(), v.as_str())?;
            }
            for (k, version, value) in &snap.kv {
                t.kv.insert(k.as_str(), encode_kv(*version, value).as_slice())?;
            }
            for (k, v) in &snap.counters {
                t.counters.insert(k.as_str(), *v)?;
            }
            t.save_status(&next)?;
        }
        txn.commit()?;
        self.set_status(next);
        Ok(next.last)
    }

    /// A number the node keeps about itself (e.g. the epoch in which it was primary),
    /// beside the store's own bookkeeping.
    pub fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(format!("node.{key}").as_str())?.map(|g| g.value()))
    }

    /// Durably sets a number the node keeps about itself.
    pub fn set_node_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        let _writer = self.write_guard();
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(format!("node.{key}").as_str(), value)?;
        txn.commit()?;
        Ok(())
    }

    /// The entries map.
    pub fn entries(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = BTreeMap::new();
        for item in txn.open_table(ENTRIES)?.iter()? {
            let (k, v) = item?;
            out.insert(k.value().to_owned(), v.value().to_owned());
        }
        Ok(out)
    }

    /// A key's version and value.
    pub fn kv_get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        Ok(kv.get(key)?.map(|g| {
            let (version, value) = decode_kv(g.value());
            (version, value.to_vec())
        }))
    }

    /// Every key with its version, in key order.
    pub fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(KV)?.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode_kv(v.value()).0));
        }
        Ok(out)
    }

    /// A counter's value (0 if it was never incremented).
    pub fn counter(&self, name: &str) -> Result<i64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(COUNTERS)?
            .get(name)?
            .map(|g| g.value())
            .unwrap_or(0))
    }
}

/// The log's last position and epoch boundaries, as one read transaction sees them.
fn summary_in(txn: &redb::ReadTransaction) -> Result<(LogPos, Vec<(Epoch, Lsn)>), StoreError> {
    let meta = txn.open_table(META)?;
    let get =
        |k: &str| -> Result<u64, StoreError> { Ok(meta.get(k)?.map(|g| g.value()).unwrap_or(0)) };
    let last = LogPos {
        epoch: Epoch(get(META_LAST_EPOCH)?),
        lsn: Lsn(get(META_LAST_LSN)?),
    };
    let mut epochs = Vec::new();
    for item in txn.open_table(EPOCHS)?.iter()? {
        let (e, l) = item?;
        epochs.push((Epoch(e.value()), Lsn(l.value())));
    }
    Ok((last, epochs))
}

/// Turns a command into the operation to log, or says why it cannot be applied.
fn check(t: &Tables<'_>, command: &Command) -> Result<Result<Op, Rejection>, StoreError> {
    let expect_ok = |expect: Expect, current: Option<u64>| match expect {
        Expect::Any => true,
        Expect::Version(v) => current == Some(v),
        Expect::Absent => current.is_none(),
    };
    Ok(match command {
        Command::Merge(pairs) => Ok(Op::Merge(pairs.clone())),
        Command::Put { key, value, expect } => {
            let current = t.kv_version(key)?;
            if expect_ok(*expect, current) {
                Ok(Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                })
            } else {
                Err(Rejection::VersionMismatch { current })
            }
        }
        Command::Delete { key, expect } => match t.kv_version(key)? {
            None => Err(Rejection::NotFound),
            Some(v) if expect_ok(*expect, Some(v)) => Ok(Op::Delete { key: key.clone() }),
            current => Err(Rejection::VersionMismatch { current }),
        },
        Command::Incr { name, by } => {
            let value = t
                .counters
                .get(name.as_str())?
                .map(|g| g.value())
                .unwrap_or(0);
            match value.checked_add(*by) {
                Some(value) => Ok(Op::SetCounter {
                    name: name.clone(),
                    value,
                }),
                None => Err(Rejection::Overflow {
                    name: name.clone(),
                    value,
                    by: *by,
                }),
            }
        }
    })
}

fn outcome(lsn: Lsn, op: &Op) -> Outcome {
    match op {
        Op::Merge(_) => Outcome::Merged,
        Op::Put { .. } => Outcome::Put { version: lsn.0 },
        Op::Delete { .. } => Outcome::Deleted { version: lsn.0 },
        Op::SetCounter { value, .. } => Outcome::Counter { value: *value },
    }
}

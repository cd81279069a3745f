//! [`Store`]: the log and the state machine in one redb database.
//!
//! Every method that changes anything does it in one redb write transaction, committed
//! with redb's default durability (fsync'd before `commit` returns), so a crash leaves the
//! log and the state exactly as of the last successful call — the [`Storage`] contract,
//! which `Store` implements. Calls block: run them on a blocking thread.
//!
//! The inherent methods are the [`Storage`] ones, so that a holder of an `Arc<Store>`
//! needs no trait in scope.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use keel_core::{Epoch, LogPos, Lsn};
use redb::{Database, ReadableDatabase};

use crate::backend::{Backend, run_mutation};
use crate::error::StoreError;
use crate::op::{Command, LogEntry};
use crate::redb_tables::{RedbTables, RedbView};
use crate::rules::Written;
use crate::snapshot::Snapshot;
use crate::storage::{Applied, LogStatus, Storage};
use crate::tables::{Tables, View};

/// redb's page cache. Its default (1 GiB) lets a node's memory grow with every page it
/// ever touched; the log window and a teaching-sized state fit in far less, and the OS's
/// page cache still holds the file.
const CACHE_BYTES: usize = 16 << 20;

/// The database's name in the node's data directory.
pub const FILE_NAME: &str = "keel.redb";

/// The log and state machine of one node, on disk.
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

impl Store {
    /// Opens (or creates) the store in `dir`, keeping at most `log_retain` log entries
    /// after the snapshot point.
    pub fn open(dir: &Path, log_retain: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(redb::StorageError::Io(e).into()))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(FILE_NAME))?;
        // A write transaction, so that a new database gets every table before its first
        // read transaction looks for them.
        let txn = db.begin_write()?;
        let status = RedbTables::open(&txn)?.status()?;
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

    /// Where the log stands ([`Storage::status`]).
    pub fn status(&self) -> LogStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that this node has seen `epoch` ([`Storage::observe_epoch`]).
    pub fn observe_epoch(&self, epoch: Epoch) -> Result<bool, StoreError> {
        Storage::observe_epoch(self, epoch)
    }

    /// The primary's group commit ([`Storage::execute`]).
    pub fn execute(&self, epoch: Epoch, commands: &[Command]) -> Result<Vec<Applied>, StoreError> {
        Storage::execute(self, epoch, commands)
    }

    /// The primary's group commit, shipping the decided entries before they are durable
    /// ([`Storage::execute_with`], whose warning applies).
    pub fn execute_with(
        &self,
        epoch: Epoch,
        commands: &[Command],
        before_commit: impl FnOnce(&[LogEntry]),
    ) -> Result<Vec<Applied>, StoreError> {
        // The rules call it at most once; the trait takes an `FnMut` to stay usable as
        // `dyn Storage`.
        let mut before_commit = Some(before_commit);
        Storage::execute_with(self, epoch, commands, &mut |entries| {
            if let Some(f) = before_commit.take() {
                f(entries);
            }
        })
    }

    /// A standby's append ([`Storage::append`]).
    pub fn append(&self, entries: &[LogEntry]) -> Result<LogPos, StoreError> {
        Storage::append(self, entries)
    }

    /// Up to `max` entries after `after` ([`Storage::entries_after`]).
    pub fn entries_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        Storage::entries_after(self, after, max)
    }

    /// The last position and the epoch boundaries, in one view ([`Storage::summary`]).
    pub fn summary(&self) -> Result<(LogPos, Vec<(Epoch, Lsn)>), StoreError> {
        Storage::summary(self)
    }

    /// The epoch boundaries ([`Storage::epoch_boundaries`]).
    pub fn epoch_boundaries(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError> {
        Storage::epoch_boundaries(self)
    }

    /// Takes back every entry after `lsn` ([`Storage::rollback_to`]).
    pub fn rollback_to(&self, lsn: Lsn) -> Result<LogPos, StoreError> {
        Storage::rollback_to(self, lsn)
    }

    /// The whole state at the last position ([`Storage::snapshot`]).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Storage::snapshot(self)
    }

    /// Replaces everything with a snapshot ([`Storage::install`]).
    pub fn install(&self, snap: &Snapshot) -> Result<LogPos, StoreError> {
        Storage::install(self, snap)
    }

    /// A number the node keeps about itself ([`Storage::node_meta`]).
    pub fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Storage::node_meta(self, key)
    }

    /// Durably sets a number the node keeps about itself ([`Storage::set_node_meta`]).
    pub fn set_node_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        Storage::set_node_meta(self, key, value)
    }

    /// The entries map ([`Storage::entries`]).
    pub fn entries(&self) -> Result<BTreeMap<String, String>, StoreError> {
        Storage::entries(self)
    }

    /// A key's version and value ([`Storage::kv_get`]).
    pub fn kv_get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Storage::kv_get(self, key)
    }

    /// Every key with its version, in key order ([`Storage::kv_keys`]).
    pub fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Storage::kv_keys(self)
    }

    /// Up to `max` keys after `after`, in key order ([`Storage::kv_keys_after`]).
    pub fn kv_keys_after(
        &self,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        Storage::kv_keys_after(self, after, max)
    }

    /// A counter's value, 0 if it was never incremented ([`Storage::counter`]).
    pub fn counter(&self, name: &str) -> Result<i64, StoreError> {
        Storage::counter(self, name)
    }
}

impl Backend for Store {
    fn log_retain(&self) -> u64 {
        self.log_retain
    }

    fn current_status(&self) -> LogStatus {
        self.status()
    }

    fn mutate<R>(
        &self,
        f: impl FnOnce(&mut dyn Tables, LogStatus) -> Result<Written<R>, StoreError>,
    ) -> Result<R, StoreError> {
        let _writer = self.write_guard();
        let status = self.status();
        let txn = self.db.begin_write()?;
        let written = run_mutation(&mut RedbTables::open(&txn)?, status, f)?;
        // An error above dropped the transaction, which aborts it: nothing of it remains.
        match written {
            Written::Nothing(value) => {
                txn.abort()?;
                Ok(value)
            }
            Written::Changed(next, value) => {
                txn.commit()?;
                self.set_status(next);
                Ok(value)
            }
        }
    }

    fn read<R>(&self, f: impl FnOnce(&dyn View) -> Result<R, StoreError>) -> Result<R, StoreError> {
        f(&RedbView::new(self.db.begin_read()?))
    }
}

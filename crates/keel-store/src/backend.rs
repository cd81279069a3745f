//! [`Backend`]: what a store must provide so that the rules make it a [`Storage`] — a
//! way to run one mutation atomically and a way to read one consistent view.
//!
//! [`Storage`] is implemented here once, for every backend, so that redb and memory
//! differ only in how they keep tables and make them durable, never in what a call does.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};

use crate::error::StoreError;
use crate::op::{Command, LogEntry};
use crate::rules::{self, Written};
use crate::snapshot::Snapshot;
use crate::storage::{Applied, LogStatus, Storage};
use crate::tables::{Tables, View};

/// Runs mutation `f` on `t` with the status before it, and saves the status it leaves
/// when that changed: what every store does inside its own transaction.
pub(crate) fn run_mutation<R>(
    t: &mut dyn Tables,
    status: LogStatus,
    f: impl FnOnce(&mut dyn Tables, LogStatus) -> Result<Written<R>, StoreError>,
) -> Result<Written<R>, StoreError> {
    let written = f(t, status)?;
    if let Written::Changed(next, _) = &written
        && *next != status
    {
        t.save_status(next)?;
    }
    Ok(written)
}

/// A place to keep the tables.
pub(crate) trait Backend: Send + Sync {
    /// How many entries the log keeps after its snapshot point.
    fn log_retain(&self) -> u64;

    /// Where the log stands, as of the last finished mutation.
    fn current_status(&self) -> LogStatus;

    /// Runs one mutation, serialised with every other: `f` gets the tables and the status
    /// before it. If `f` fails, nothing it wrote remains; if it wrote nothing, nothing is
    /// committed; otherwise the status it returns is saved and all of it is made durable
    /// (as the backend understands durable) before this returns.
    fn mutate<R>(
        &self,
        f: impl FnOnce(&mut dyn Tables, LogStatus) -> Result<Written<R>, StoreError>,
    ) -> Result<R, StoreError>;

    /// Runs `f` on one consistent view of everything the mutations so far have left.
    fn read<R>(&self, f: impl FnOnce(&dyn View) -> Result<R, StoreError>) -> Result<R, StoreError>;
}

impl<B: Backend> Storage for B {
    fn status(&self) -> LogStatus {
        self.current_status()
    }

    fn observe_epoch(&self, epoch: Epoch) -> Result<bool, StoreError> {
        self.mutate(|_, status| rules::observe_epoch(status, epoch))
    }

    fn execute_with(
        &self,
        epoch: Epoch,
        commands: &[Command],
        before_commit: &mut dyn FnMut(&[LogEntry]),
    ) -> Result<Vec<Applied>, StoreError> {
        let retain = self.log_retain();
        self.mutate(|t, status| rules::execute(t, status, epoch, commands, retain, before_commit))
    }

    fn append(&self, entries: &[LogEntry]) -> Result<LogPos, StoreError> {
        let retain = self.log_retain();
        self.mutate(|t, status| rules::append(t, status, entries, retain))
    }

    fn entries_after(&self, after: Lsn, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.read(|v| rules::entries_after(v, after, max))
    }

    fn summary(&self) -> Result<(LogPos, Vec<(Epoch, Lsn)>), StoreError> {
        self.read(rules::summary)
    }

    fn epoch_boundaries(&self) -> Result<Vec<(Epoch, Lsn)>, StoreError> {
        self.read(|v| v.epochs())
    }

    fn rollback_to(&self, lsn: Lsn) -> Result<LogPos, StoreError> {
        self.mutate(|t, status| rules::rollback_to(t, status, lsn))
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read(rules::snapshot)
    }

    fn install(&self, snap: &Snapshot) -> Result<LogPos, StoreError> {
        self.mutate(|t, status| rules::install(t, status, snap))
    }

    fn node_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.read(|v| v.node_meta(key))
    }

    fn set_node_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.mutate(|t, status| rules::set_node_meta(t, status, key, value))
    }

    fn entries(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.read(|v| v.entries())
    }

    fn kv_get(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(|v| v.kv_get(key))
    }

    fn kv_keys(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|v| v.kv_keys())
    }

    fn kv_keys_after(&self, after: Option<&str>, max: usize) -> Result<Vec<String>, StoreError> {
        self.read(|v| v.kv_keys_after(after, max))
    }

    fn counters(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        self.read(|v| v.counters())
    }

    fn counter(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self.read(|v| v.counter(name))?.unwrap_or(0))
    }
}

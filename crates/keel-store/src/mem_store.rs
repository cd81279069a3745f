//! [`MemStore`]: the log and the state machine in memory, for the simulator, with the
//! moment between a mutation and its sync made explicit so that a crash can fall there.
//!
//! # Crashes
//!
//! Each mutating call of [`Storage`](crate::Storage) is *applied* when it returns: every later call,
//! reads included, sees it. Whether it is also *synced* (would survive the process
//! dying) depends on the [`SyncMode`]:
//!
//! - [`SyncMode::OnReturn`] (the default, like [`Store`](crate::Store)): synced before
//!   it returns. A crash loses nothing that returned `Ok`.
//! - [`SyncMode::Explicit`]: applied but not synced until [`MemStore::sync`]. This is how
//!   a simulator models a group commit in flight: it calls
//!   [`execute_with`](crate::Storage::execute_with) when the commit starts at `t` (the callback
//!   ships the entries), and [`sync`](MemStore::sync) when it finishes at `t + d` — only
//!   then may it answer the writers. A crash in between is
//!   [`crash(keep_unsynced)`](MemStore::crash), the seed's choice of whether the commit
//!   reached the disk.
//!
//! A crash leaves the store exactly as a restart would find it: every synced mutation,
//! then, of the unsynced ones, all, none, or (with [`MemStore::crash_keeping`]) the oldest
//! few — always whole mutations in their order, never a part of one, as redb's
//! transactions guarantee. Afterwards nothing is unsynced. The node's volatile state is
//! the simulator's to drop; the store has none beyond this.
//!
//! Everything is deterministic: no clocks, no randomness, no hash order; the same calls
//! give the same store.

use std::sync::{Mutex, MutexGuard};

use crate::backend::{Backend, run_mutation};
use crate::error::StoreError;
use crate::mem_tables::MemTables;
use crate::rules::Written;
use crate::storage::LogStatus;
use crate::tables::{Tables, View};

/// When a mutation of a [`MemStore`] becomes durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// When the call returns, as with redb's immediate durability.
    #[default]
    OnReturn,
    /// When [`MemStore::sync`] is called; until then a crash may drop it.
    Explicit,
}

/// The log and state machine of one node, in memory; implements [`Storage`](crate::Storage).
///
/// See the [module documentation](self) for what survives [`MemStore::crash`].
#[derive(Debug)]
pub struct MemStore {
    inner: Mutex<Inner>,
    mode: SyncMode,
    log_retain: u64,
}

#[derive(Debug)]
struct Inner {
    tables: MemTables,
    /// For each applied mutation not yet synced, oldest first: where its changes start in
    /// the journal, and the status before it.
    unsynced: Vec<(usize, LogStatus)>,
}

impl MemStore {
    /// An empty store whose mutations are synced when they return, keeping at most
    /// `log_retain` log entries after the snapshot point.
    pub fn new(log_retain: u64) -> Self {
        Self::with_sync_mode(log_retain, SyncMode::OnReturn)
    }

    /// An empty store whose mutations become durable as `mode` says.
    pub fn with_sync_mode(log_retain: u64, mode: SyncMode) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tables: MemTables::default(),
                unsynced: Vec::new(),
            }),
            mode,
            log_retain: log_retain.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A mutation that panicked is taken back: whole or absent even then.
        inner.tables.recover();
        inner
    }

    /// How many applied mutations a crash could still drop.
    pub fn unsynced(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Where the log would stand after a crash that dropped everything unsynced (the
    /// simulator's check that an acknowledged write is durable).
    pub fn durable_status(&self) -> LogStatus {
        let inner = self.lock();
        match inner.unsynced.first() {
            Some((_, before)) => *before,
            None => inner.tables.status(),
        }
    }

    /// Makes every applied mutation durable.
    pub fn sync(&self) {
        let mut inner = self.lock();
        inner.unsynced.clear();
        inner.tables.forget_journal();
    }

    /// The process dies and restarts: the unsynced mutations all survive
    /// (`keep_unsynced`) or all vanish.
    pub fn crash(&self, keep_unsynced: bool) {
        self.crash_keeping(if keep_unsynced { usize::MAX } else { 0 });
    }

    /// The process dies and restarts with the oldest `n` unsynced mutations on disk and
    /// the rest lost (an fsync that made it part of the way through a queue of commits).
    pub fn crash_keeping(&self, n: usize) {
        let mut inner = self.lock();
        if let Some(&(start, _)) = inner.unsynced.get(n) {
            inner.tables.revert_to(start);
        }
        inner.unsynced.clear();
        inner.tables.forget_journal();
    }
}

impl Backend for MemStore {
    fn log_retain(&self) -> u64 {
        self.log_retain
    }

    fn current_status(&self) -> LogStatus {
        self.lock().tables.status()
    }

    fn mutate<R>(
        &self,
        f: impl FnOnce(&mut dyn Tables, LogStatus) -> Result<Written<R>, StoreError>,
    ) -> Result<R, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let status = inner.tables.status();
        let start = inner.tables.begin();
        let result = run_mutation(&mut inner.tables, status, f);
        inner.tables.end();
        match result {
            Err(e) => {
                inner.tables.revert_to(start);
                Err(e)
            }
            Ok(Written::Nothing(value)) => Ok(value),
            Ok(Written::Changed(_, value)) => {
                match self.mode {
                    SyncMode::OnReturn => inner.tables.forget_journal(),
                    SyncMode::Explicit => inner.unsynced.push((start, status)),
                }
                Ok(value)
            }
        }
    }

    fn read<R>(&self, f: impl FnOnce(&dyn View) -> Result<R, StoreError>) -> Result<R, StoreError> {
        f(&self.lock().tables)
    }
}

//! The Raft log, the vote and the commit point, durable in redb (`raft.redb` in the
//! monitor's data directory). Every append, truncation, purge and vote is committed with
//! redb's immediate durability before it is reported done: a vote or an entry a monitor
//! acknowledged survives its crash, which is what Raft's safety rests on.

// openraft's traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{MonitorNum, TypeConfig};

/// Log entries by index (JSON).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The vote, the commit point, the last purged log id, the state machine (JSON).
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

type Error = StorageError<MonitorNum>;

/// Opens (or creates) the monitor's Raft database.
pub fn open(dir: &Path) -> Result<Arc<Database>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    let path = dir.join("raft.redb");
    let db = Database::create(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let txn = db
        .begin_write()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    txn.open_table(LOG)
        .and_then(|_| txn.open_table(META))
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    txn.commit()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Arc::new(db))
}

/// Reads a JSON value from the meta table.
pub(super) fn read_meta<T: DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(META).map_err(|e| e.to_string())?;
    match table.get(key).map_err(|e| e.to_string())? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Writes a JSON value to the meta table, durably.
pub(super) fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(META).map_err(|e| e.to_string())?;
        table
            .insert(key, bytes.as_slice())
            .map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

fn io(e: String) -> std::io::Error {
    std::io::Error::other(e)
}

/// The log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// The log in `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<TypeConfig>>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for row in table.range(range).map_err(|e| e.to_string())? {
            let (_, v) = row.map_err(|e| e.to_string())?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
        match table.last().map_err(|e| e.to_string())? {
            Some((_, v)) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// Removes the entries with indexes in `range`, and records `purged` if given.
    fn remove(
        &self,
        from: u64,
        to: Option<u64>,
        purged: Option<&LogId<MonitorNum>>,
    ) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            match to {
                Some(to) => table.retain_in(from..=to, |_, _| false),
                None => table.retain_in(from.., |_, _| false),
            }
            .map_err(|e| e.to_string())?;
            if let Some(p) = purged {
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                let bytes = serde_json::to_vec(p).map_err(|e| e.to_string())?;
                meta.insert(PURGED, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        self.entries(range)
            .map_err(|e| StorageIOError::read_logs(&io(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let purged: Option<LogId<MonitorNum>> =
            read_meta(&self.db, PURGED).map_err(|e| StorageIOError::read_logs(&io(e)))?;
        let last = self
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(&io(e)))?
            .map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MonitorNum>) -> Result<(), Error> {
        write_meta(&self.db, VOTE, vote).map_err(|e| StorageIOError::write_vote(&io(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<MonitorNum>>, Error> {
        read_meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(&io(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<MonitorNum>>) -> Result<(), Error> {
        write_meta(&self.db, COMMITTED, &committed)
            .map_err(|e| StorageIOError::write_logs(&io(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<MonitorNum>>, Error> {
        read_meta::<Option<LogId<MonitorNum>>>(&self.db, COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read_logs(&io(e)).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
    {
        let written = (|| -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
                    table
                        .insert(entry.get_log_id().index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io(e.clone())));
                Err(StorageIOError::write_logs(&io(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<MonitorNum>) -> Result<(), Error> {
        self.remove(log_id.index, None, None)
            .map_err(|e| StorageIOError::write_logs(&io(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<MonitorNum>) -> Result<(), Error> {
        self.remove(0, Some(log_id.index), Some(&log_id))
            .map_err(|e| StorageIOError::write_logs(&io(e)).into())
    }
}

//! The Raft state machine: the cluster state and the group's membership, made durable in
//! the monitor's Raft database as each entry is applied, and published to the runtime.

// openraft's traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log::{read_meta, write_meta};
use super::{Applied, Command, MonitorNum, TypeConfig};
use crate::state::{ClusterState, GroupsState};

const SM: &str = "state_machine";
const SNAPSHOT: &str = "snapshot";

type Error = StorageError<MonitorNum>;

/// What the state machine holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmData {
    /// The last entry applied.
    pub last_applied: Option<LogId<MonitorNum>>,
    /// The group's membership as of it.
    pub membership: StoredMembership<MonitorNum, BasicNode>,
    /// The state as applied before groups existed; read as group `g1`'s when `groups`
    /// is not there yet.
    #[serde(default)]
    pub state: ClusterState,
    /// Every group's state and the slot table.
    #[serde(default)]
    pub groups: Option<GroupsState>,
}

impl SmData {
    /// The state applied, in the groups' layout; `None` before anything was.
    pub fn groups_state(&self) -> Option<GroupsState> {
        match &self.groups {
            Some(groups) => Some(groups.clone()),
            None => (self.state.version > 0).then(|| GroupsState::from_single(self.state.clone())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<MonitorNum, BasicNode>,
    data: Vec<u8>,
}

/// The state machine; clones share the database and the published state.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    data: watch::Sender<SmData>,
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl StateMachine {
    /// The state machine in `db`, as last persisted.
    pub fn open(db: Arc<Database>) -> Result<Self, String> {
        let data: SmData = read_meta(&db, SM)?.unwrap_or_default();
        Ok(Self {
            db,
            data: watch::Sender::new(data),
        })
    }

    /// Follows what is applied.
    pub fn subscribe(&self) -> watch::Receiver<SmData> {
        self.data.subscribe()
    }

    /// What is applied now.
    pub fn current(&self) -> SmData {
        self.data.borrow().clone()
    }

    fn save(&self, data: SmData) -> Result<(), Error> {
        write_meta(&self.db, SM, &data).map_err(|e| StorageIOError::write_state_machine(&io(e)))?;
        self.data.send_replace(data);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let data = self.current();
        let bytes =
            serde_json::to_vec(&data).map_err(|e| StorageIOError::read_state_machine(&io(e)))?;
        let id = data.last_applied.map_or_else(
            || "empty".to_owned(),
            |l| format!("{}-{}", l.leader_id, l.index),
        );
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id: id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        };
        write_meta(&self.db, SNAPSHOT, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<MonitorNum>>,
            StoredMembership<MonitorNum, BasicNode>,
        ),
        Error,
    > {
        let data = self.current();
        Ok((data.last_applied, data.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
    {
        let mut data = self.current();
        let mut out = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Command::Set(state)) => {
                    data.groups = Some(GroupsState::from_single(state));
                }
                EntryPayload::Normal(Command::SetGroups(groups)) => data.groups = Some(groups),
                EntryPayload::Membership(m) => {
                    data.membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            out.push(Applied {
                version: data
                    .groups
                    .as_ref()
                    .map_or(data.state.version, |g| g.version),
            });
        }
        self.save(data)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MonitorNum, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let bytes = snapshot.into_inner();
        let mut data: SmData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io(e)))?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        write_meta(&self.db, SNAPSHOT, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io(e)))?;
        self.save(data)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &io(e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

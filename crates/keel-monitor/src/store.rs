//! `monitor.json`: the durable cluster state, replaced atomically.
//!
//! Written to a temporary file, fsync'd, renamed over the old one, and the directory
//! fsync'd, so that after a crash the file is either the old state or the new one, and a
//! state the monitor answered with is never lost.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::state::{GroupsError, GroupsState};

/// The file name inside the data directory.
pub const STATE_FILE: &str = "monitor.json";

/// Why the cluster state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error(
        "{path} is corrupt ({source}); restore it from a backup. Moving it away starts a new cluster in which the first node to register becomes primary: start the node that was primary (the one with the highest epoch and lsn in its /health) before the others, or a standby that is behind may be elected and the others rolled back to it"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The state file parses but contradicts itself.
    #[error("{path} is inconsistent: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: GroupsError,
    },
    /// The new state could not be made durable.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The state file of one monitor.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    file: PathBuf,
}

impl Store {
    /// Opens the data directory (creating it when missing) and loads the state, if any.
    /// A state written before groups existed is read as the state of group `g1`, and
    /// written back in the groups' layout at the next change.
    pub fn open(dir: &Path) -> Result<(Self, Option<GroupsState>), StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join(STATE_FILE);
        let store = Self {
            dir: dir.to_owned(),
            file: file.clone(),
        };
        let text = match fs::read(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((store, None)),
            Err(source) => return Err(StoreError::Read { path: file, source }),
        };
        let state = GroupsState::from_json(&text).map_err(|source| StoreError::Corrupt {
            path: file.clone(),
            source,
        })?;
        state
            .check()
            .map_err(|source| StoreError::Invalid { path: file, source })?;
        Ok((store, Some(state)))
    }

    /// Replaces the state durably. Blocking: call it off the async threads.
    pub fn save(&self, state: &GroupsState) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: self.file.clone(),
            source,
        };
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &self.file).map_err(err)?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::ClusterState;

    #[test]
    fn saved_state_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, none) = Store::open(dir.path()).expect("open");
        assert!(none.is_none());
        let g = |n: &str| keel_core::slots::GroupId::new(n).expect("a group");
        let mut state = GroupsState::new(&[g("g1"), g("g2")]).expect("a state");
        state.version = 3;
        if let Some(g2) = state.groups.get_mut(&g("g2")) {
            g2.epoch = keel_core::Epoch(2);
        }
        store.save(&state).expect("save");
        let (_, loaded) = Store::open(dir.path()).expect("reopen");
        assert_eq!(loaded, Some(state));
    }

    #[test]
    fn a_state_from_before_groups_is_group_g1_owning_every_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = ClusterState {
            version: 7,
            epoch: keel_core::Epoch(3),
            ..ClusterState::default()
        };
        fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&old).expect("json"),
        )
        .expect("write");
        let (_, loaded) = Store::open(dir.path()).expect("open");
        let loaded = loaded.expect("a state");
        assert_eq!(loaded.version, 7);
        let g1 = crate::state::first_group();
        assert_eq!(loaded.groups.get(&g1), Some(&old));
        assert_eq!(loaded.slots.count(&g1), 16_384);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(STATE_FILE), b"{\"version\": 3, trunc").expect("write");
        let e = Store::open(dir.path()).expect_err("corrupt file refused");
        assert!(matches!(e, StoreError::Corrupt { .. }));
        assert!(e.to_string().contains("monitor.json is corrupt"), "{e}");
    }

    #[test]
    fn inconsistent_state_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = ClusterState {
            primary: Some(keel_core::NodeId::new("ghost").expect("id")),
            ..ClusterState::default()
        };
        fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&state).expect("json"),
        )
        .expect("write");
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Invalid { .. })
        ));
    }
}

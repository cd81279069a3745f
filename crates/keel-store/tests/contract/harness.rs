//! The stores under test, made alike: a fresh one, and a restart of the process.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};
use keel_store::{Command, Expect, LogStore, MemStore, Snapshot, Storage, Store};

/// A store to run the contract against.
pub trait Harness {
    /// An empty store keeping `log_retain` entries after its snapshot point.
    fn new(log_retain: u64) -> Self;
    /// The store, as the node holds it.
    fn store(&self) -> &dyn Storage;
    /// The process dies and starts again on the same data: everything acknowledged must
    /// be there.
    fn restart(&mut self);
}

/// A store kept in a directory: what opens it.
pub trait OnDisk: Storage + Sized {
    fn open(dir: &std::path::Path, log_retain: u64) -> Self;
}

impl OnDisk for Store {
    fn open(dir: &std::path::Path, log_retain: u64) -> Self {
        Store::open(dir, log_retain).expect("open the redb store")
    }
}

impl OnDisk for LogStore {
    fn open(dir: &std::path::Path, log_retain: u64) -> Self {
        LogStore::open(dir, log_retain).expect("open the log store")
    }
}

/// A store in a temporary directory; a restart closes it and opens the directory again.
pub struct InDir<S> {
    dir: tempfile::TempDir,
    log_retain: u64,
    store: Option<S>,
}

/// [`Store`] on redb.
pub type Redb = InDir<Store>;
/// [`LogStore`] on its file, replayed at each restart.
pub type Log = InDir<LogStore>;

impl<S: OnDisk> Harness for InDir<S> {
    fn new(log_retain: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = S::open(dir.path(), log_retain);
        Self {
            dir,
            log_retain,
            store: Some(store),
        }
    }

    fn store(&self) -> &dyn Storage {
        self.store
            .as_ref()
            .expect("the store is open between restarts")
    }

    fn restart(&mut self) {
        // Closed before it is opened again: redb locks its file.
        drop(self.store.take());
        self.store = Some(S::open(self.dir.path(), self.log_retain));
    }
}

/// [`MemStore`] syncing every call; a restart is a crash.
pub struct Mem(MemStore);

impl Harness for Mem {
    fn new(log_retain: u64) -> Self {
        Self(MemStore::new(log_retain))
    }

    fn store(&self) -> &dyn Storage {
        &self.0
    }

    fn restart(&mut self) {
        self.0.crash(false);
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expect: Expect::Any,
    }
}

pub fn cas(key: &str, version: u64, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expect: Expect::Version(version),
    }
}

pub fn create(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expect: Expect::Absent,
    }
}

pub fn delete(key: &str, expect: Expect) -> Command {
    Command::Delete {
        key: key.into(),
        expect,
    }
}

pub fn merge(pairs: &[(&str, &str)]) -> Command {
    Command::Merge(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

pub fn incr(name: &str, by: i64) -> Command {
    Command::Incr {
        name: name.into(),
        by,
    }
}

pub fn pos(epoch: u64, lsn: u64) -> LogPos {
    LogPos {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
    }
}

/// Everything a reader can see of a store, to compare two moments.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub status: keel_store::LogStatus,
    pub snapshot: Snapshot,
    pub log: Vec<keel_store::LogEntry>,
    pub meta: BTreeMap<&'static str, Option<u64>>,
}

/// The node meta keys the tests set.
pub const META_KEYS: [&str; 2] = ["primary_epoch", "epoch"];

pub fn seen(s: &dyn Storage) -> Seen {
    let status = s.status();
    Seen {
        status,
        snapshot: s.snapshot().expect("snapshot"),
        log: s
            .entries_after(status.snapshot.lsn, usize::MAX)
            .expect("log"),
        meta: META_KEYS
            .iter()
            .map(|k| (*k, s.node_meta(k).expect("node meta")))
            .collect(),
    }
}

/// What must hold of any store at rest: the log runs without gaps from the snapshot
/// point to the last position with epochs that never go back, every epoch in it has its
/// boundary, the summary agrees with the status, and no key is newer than the log.
pub fn assert_consistent(s: &dyn Storage) {
    let status = s.status();
    assert!(status.snapshot.lsn <= status.last.lsn, "{status:?}");
    assert!(status.last.epoch <= status.epoch, "{status:?}");
    let log = s
        .entries_after(status.snapshot.lsn, usize::MAX)
        .expect("log");
    let mut at = status.snapshot;
    for entry in &log {
        assert_eq!(entry.pos.lsn, at.lsn.next(), "a gap after {at}");
        assert!(entry.pos.epoch >= at.epoch, "epoch back at {}", entry.pos);
        at = entry.pos;
    }
    assert_eq!(at, status.last, "the log ends where the status says");
    let (last, boundaries) = s.summary().expect("summary");
    assert_eq!(last, status.last);
    assert_eq!(boundaries, s.epoch_boundaries().expect("boundaries"));
    assert!(
        boundaries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
    );
    for entry in &log {
        let started = boundaries
            .iter()
            .find(|(e, _)| *e == entry.pos.epoch)
            .map(|(_, first)| *first);
        assert!(
            started.is_some_and(|first| first <= entry.pos.lsn),
            "no boundary for {}",
            entry.pos
        );
    }
    for (key, version) in s.kv_keys().expect("keys") {
        assert!(version <= status.last.lsn.0, "{key} at {version}");
    }
}

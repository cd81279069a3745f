//! The store's contract: what a primary and a standby can rely on.

use std::collections::BTreeMap;

use keel_core::{Epoch, LogPos, Lsn};
use keel_store::{Command, Expect, Outcome, Rejection, Store, StoreError};

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expect: Expect::Any,
    }
}

fn merge(pairs: &[(&str, &str)]) -> Command {
    Command::Merge(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), 1000).expect("open store")
}

#[test]
fn a_group_commit_assigns_consecutive_lsns_and_applies_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let results = store
        .execute(
            Epoch(1),
            &[
                put("a", "1"),
                put("a", "2"),
                merge(&[("id", "7")]),
                Command::Incr {
                    name: "c".into(),
                    by: 5,
                },
            ],
        )
        .expect("execute");
    assert_eq!(results[0], Ok((Lsn(1), Outcome::Put { version: 1 })));
    assert_eq!(results[1], Ok((Lsn(2), Outcome::Put { version: 2 })));
    assert_eq!(results[2], Ok((Lsn(3), Outcome::Merged)));
    assert_eq!(results[3], Ok((Lsn(4), Outcome::Counter { value: 5 })));
    assert_eq!(store.kv_get("a").expect("get"), Some((2, b"2".to_vec())));
    assert_eq!(
        store
            .entries()
            .expect("entries")
            .get("id")
            .map(String::as_str),
        Some("7")
    );
    assert_eq!(
        store.status().last,
        LogPos {
            epoch: Epoch(1),
            lsn: Lsn(4)
        }
    );
}

#[test]
fn compare_and_set_checks_against_the_writes_before_it_in_the_same_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    store
        .execute(Epoch(1), &[put("k", "v1")])
        .expect("first put");
    let cas = |v: u64, value: &str| Command::Put {
        key: "k".into(),
        value: value.as_bytes().to_vec(),
        expect: Expect::Version(v),
    };
    // Two writers both read version 1; only the first compare-and-set may win.
    let results = store
        .execute(Epoch(1), &[cas(1, "a"), cas(1, "b")])
        .expect("execute");
    assert_eq!(results[0], Ok((Lsn(2), Outcome::Put { version: 2 })));
    assert_eq!(
        results[1],
        Err(Rejection::VersionMismatch { current: Some(2) })
    );
    assert_eq!(store.kv_get("k").expect("get"), Some((2, b"a".to_vec())));
    // A rejected command writes nothing: the log did not move.
    assert_eq!(store.status().last.lsn, Lsn(2));

    let create = Command::Put {
        key: "k".into(),
        value: b"x".to_vec(),
        expect: Expect::Absent,
    };
    assert_eq!(
        store.execute(Epoch(1), &[create]).expect("execute")[0],
        Err(Rejection::VersionMismatch { current: Some(2) })
    );
    let del = Command::Delete {
        key: "nope".into(),
        expect: Expect::Any,
    };
    assert_eq!(
        store.execute(Epoch(1), &[del]).expect("execute")[0],
        Err(Rejection::NotFound)
    );
}

#[test]
fn counters_refuse_to_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    store
        .execute(
            Epoch(1),
            &[Command::Incr {
                name: "c".into(),
                by: i64::MAX,
            }],
        )
        .expect("incr");
    let r = store
        .execute(
            Epoch(1),
            &[Command::Incr {
                name: "c".into(),
                by: 1,
            }],
        )
        .expect("incr");
    assert!(matches!(r[0], Err(Rejection::Overflow { .. })));
    assert_eq!(store.counter("c").expect("counter"), i64::MAX);
}

#[test]
fn a_reopened_store_has_exactly_the_committed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(&dir);
        store
            .execute(Epoch(3), &[put("a", "1"), merge(&[("name", "Paola")])])
            .expect("execute");
    }
    let store = open(&dir);
    assert_eq!(store.status().epoch, Epoch(3));
    assert_eq!(
        store.status().last,
        LogPos {
            epoch: Epoch(3),
            lsn: Lsn(2)
        }
    );
    assert_eq!(store.kv_get("a").expect("get"), Some((1, b"1".to_vec())));
    assert_eq!(
        store
            .entries()
            .expect("entries")
            .get("name")
            .map(String::as_str),
        Some("Paola")
    );
}

#[test]
fn writes_from_an_older_epoch_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    store.observe_epoch(Epoch(5)).expect("observe");
    assert!(matches!(
        store.execute(Epoch(4), &[put("a", "1")]),
        Err(StoreError::StaleEpoch {
            given: Epoch(4),
            current: Epoch(5)
        })
    ));
    assert!(store.observe_epoch(Epoch(4)).is_err());
    assert_eq!(store.kv_get("a").expect("get"), None);
}

#[test]
fn a_standby_copies_the_primary_entry_for_entry() {
    let (pdir, sdir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (primary, standby) = (open(&pdir), open(&sdir));
    primary
        .execute(
            Epoch(1),
            &[
                put("a", "1"),
                merge(&[("id", "9")]),
                Command::Incr {
                    name: "v".into(),
                    by: 2,
                },
            ],
        )
        .expect("execute");
    let entries = primary.entries_after(Lsn(0), 100).expect("entries");
    assert_eq!(
        standby.append(&entries).expect("append"),
        primary.status().last
    );
    assert_eq!(
        standby.snapshot().expect("snap"),
        primary.snapshot().expect("snap")
    );
    // An entry that does not continue the log is refused.
    primary
        .execute(Epoch(1), &[put("b", "2"), put("c", "3")])
        .expect("execute");
    let later = primary.entries_after(Lsn(4), 100).expect("entries");
    assert!(matches!(
        standby.append(&later),
        Err(StoreError::Gap { .. })
    ));
}

#[test]
fn rollback_takes_back_a_suffix_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    store
        .execute(
            Epoch(1),
            &[
                put("a", "1"),
                merge(&[("id", "1")]),
                Command::Incr {
                    name: "c".into(),
                    by: 1,
                },
            ],
        )
        .expect("execute");
    let before = store.snapshot().expect("snapshot");
    store
        .execute(
            Epoch(2),
            &[
                put("a", "2"),
                put("new", "x"),
                merge(&[("id", "2"), ("name", "n")]),
                Command::Incr {
                    name: "c".into(),
                    by: 10,
                },
                Command::Delete {
                    key: "a".into(),
                    expect: Expect::Any,
                },
            ],
        )
        .expect("execute");
    assert_eq!(
        store.rollback_to(Lsn(3)).expect("rollback"),
        LogPos {
            epoch: Epoch(1),
            lsn: Lsn(3)
        }
    );
    let after = store.snapshot().expect("snapshot");
    assert_eq!(after, before);
    assert_eq!(
        store.epoch_boundaries().expect("epochs"),
        vec![(Epoch(1), Lsn(1))]
    );
    // The epoch seen is not forgotten by a rollback.
    assert_eq!(store.status().epoch, Epoch(2));
}

#[test]
fn compaction_bounds_the_log_and_a_snapshot_rebuilds_a_standby() {
    let (pdir, sdir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let primary = Store::open(pdir.path(), 10).expect("open");
    for i in 0..50 {
        primary
            .execute(Epoch(1), &[put(&format!("k{i}"), &i.to_string())])
            .expect("execute");
    }
    let status = primary.status();
    assert!(
        status.last.lsn.0 - status.snapshot.lsn.0 <= 10 + 10 / 8,
        "log holds {status:?}"
    );
    assert!(matches!(
        primary.entries_after(Lsn(0), 10),
        Err(StoreError::Compacted { .. })
    ));
    // A rollback into the snapshot is impossible and says so.
    assert!(matches!(
        primary.rollback_to(Lsn(1)),
        Err(StoreError::Compacted { .. })
    ));

    let standby = Store::open(sdir.path(), 10).expect("open");
    standby
        .execute(Epoch(1), &[put("stale", "x")])
        .expect("execute");
    let snap = primary.snapshot().expect("snapshot");
    standby.install(&snap).expect("install");
    assert_eq!(standby.kv_get("stale").expect("get"), None);
    assert_eq!(
        standby.kv_get("k49").expect("get"),
        Some((50, b"49".to_vec()))
    );
    primary
        .execute(Epoch(1), &[put("after", "snap")])
        .expect("execute");
    let tail = primary
        .entries_after(standby.status().last.lsn, 100)
        .expect("entries");
    standby.append(&tail).expect("append");
    drop(standby);
    let reopened = Store::open(sdir.path(), 10).expect("reopen");
    assert_eq!(
        reopened.snapshot().expect("snap"),
        primary.snapshot().expect("snap")
    );
    let map: BTreeMap<String, String> = reopened.entries().expect("entries");
    assert!(map.is_empty());
}

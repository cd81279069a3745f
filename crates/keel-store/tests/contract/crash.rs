//! Crashes in the middle of a mutation, which each store reaches its own way: a real
//! `Store` is killed inside a group commit, a `MemStore` crashes before its sync.

use std::process::Command as Process;

use keel_core::{Epoch, Lsn};
use keel_store::{Expect, MemStore, Outcome, Storage, Store, StoreError, SyncMode};

use crate::harness::*;

fn explicit(log_retain: u64) -> MemStore {
    MemStore::with_sync_mode(log_retain, SyncMode::Explicit)
}

/// A group commit starts, ships its entries and is read back, then the node crashes
/// before the sync: the commit is all there or not there at all.
fn crash_mid_commit(keep_unsynced: bool) {
    let s = explicit(1000);
    s.execute(Epoch(1), &[put("a", "1"), incr("c", 1)])
        .expect("synced write");
    s.sync();
    let before = seen(&s);

    let mut shipped = Vec::new();
    s.execute_with(
        Epoch(2),
        &[
            put("a", "2"),
            merge(&[("m", "x")]),
            incr("c", 5),
            delete("a", Expect::Any),
        ],
        &mut |entries| shipped.extend_from_slice(entries),
    )
    .expect("unsynced write");
    assert_eq!(shipped.len(), 4);
    // Applied: every read sees it. Not synced: a crash may still take it.
    assert_eq!(s.counter("c").expect("counter"), 6);
    assert_eq!(s.unsynced(), 1);
    assert_eq!(s.durable_status(), before.status);
    let after = seen(&s);

    s.crash(keep_unsynced);
    assert_eq!(seen(&s), if keep_unsynced { after } else { before });
    assert_eq!(s.unsynced(), 0);
    assert_eq!(s.durable_status(), s.status());
    assert_consistent(&s);
    // The log goes on from whatever survived.
    let next = s.execute(Epoch(3), &[put("z", "1")]).expect("write");
    let lsn = if keep_unsynced { 7 } else { 3 };
    assert_eq!(next, vec![Ok((Lsn(lsn), Outcome::Put { version: lsn }))]);
}

#[test]
fn an_unsynced_group_commit_that_reached_the_disk_survives_whole() {
    crash_mid_commit(true);
}

#[test]
fn an_unsynced_group_commit_that_did_not_reach_the_disk_vanishes_whole() {
    crash_mid_commit(false);
}

/// Every kind of mutation, each left unsynced after the last, and what a reader sees after
/// each: observe an epoch, a commit that compacts, one that starts an epoch, a rollback
/// that forgets that epoch again, node meta, an install, an append.
fn unsynced_mutations(s: &MemStore) -> Vec<Seen> {
    let mut states = Vec::new();
    s.observe_epoch(Epoch(3)).expect("epoch");
    states.push(seen(s));
    let batch: Vec<_> = (0..12).map(|i| put(&format!("b{i}"), "v")).collect();
    s.execute(Epoch(3), &batch).expect("compacting commit");
    states.push(seen(s));
    s.execute(Epoch(4), &[put("e4", "1"), incr("c", 1)])
        .expect("a new epoch");
    states.push(seen(s));
    s.rollback_to(Lsn(s.status().last.lsn.0 - 2))
        .expect("rollback");
    states.push(seen(s));
    s.set_node_meta("primary_epoch", 3).expect("meta");
    states.push(seen(s));
    let other = MemStore::new(1000);
    other
        .execute(Epoch(4), &[put("elsewhere", "1"), incr("c", 100)])
        .expect("other");
    s.install(&other.snapshot().expect("snapshot"))
        .expect("install");
    states.push(seen(s));
    other.execute(Epoch(4), &[put("tail", "1")]).expect("tail");
    s.append(&other.entries_after(Lsn(2), 10).expect("tail"))
        .expect("append");
    states.push(seen(s));
    states
}

/// A store with a synced history long enough to have compacted.
fn synced_history() -> MemStore {
    let s = explicit(8);
    for i in 0..10 {
        s.execute(
            Epoch(1 + i / 5),
            &[put(&format!("k{i}"), "v"), incr("c", 1)],
        )
        .expect("write");
    }
    s.set_node_meta("primary_epoch", 2).expect("meta");
    s.sync();
    assert!(s.status().snapshot.lsn > Lsn(0), "{:?}", s.status());
    s
}

#[test]
fn a_crash_takes_back_every_kind_of_unsynced_mutation_exactly() {
    let s = synced_history();
    let synced = seen(&s);
    let states = unsynced_mutations(&s);
    assert_eq!(s.unsynced(), states.len());
    s.crash(false);
    assert_eq!(seen(&s), synced);
    assert_consistent(&s);
}

#[test]
fn a_crash_keeps_the_oldest_unsynced_mutations_in_their_order() {
    for keep in 0..=7 {
        let s = synced_history();
        let synced = seen(&s);
        let states = unsynced_mutations(&s);
        assert_eq!(states.len(), 7);
        s.crash_keeping(keep);
        let expected = match keep {
            0 => &synced,
            n => &states[n - 1],
        };
        assert_eq!(&seen(&s), expected, "keeping {keep}");
        assert_consistent(&s);
    }
}

#[test]
fn a_sync_makes_everything_applied_durable() {
    let s = synced_history();
    unsynced_mutations(&s);
    let applied = seen(&s);
    s.sync();
    assert_eq!(s.unsynced(), 0);
    s.crash(false);
    assert_eq!(seen(&s), applied);
}

#[test]
fn a_call_that_writes_nothing_leaves_nothing_to_sync() {
    let s = explicit(1000);
    s.execute(Epoch(2), &[put("k", "1")]).expect("write");
    s.sync();
    let before = seen(&s);
    assert!(matches!(
        s.execute(Epoch(1), &[put("k", "2")]),
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(matches!(
        s.append(&[keel_store::LogEntry {
            pos: pos(2, 5),
            op: keel_store::Op::Delete { key: "k".into() },
        }]),
        Err(StoreError::Gap { .. })
    ));
    assert!(!s.observe_epoch(Epoch(2)).expect("same epoch"));
    assert_eq!(s.rollback_to(Lsn(9)).expect("no-op"), pos(2, 1));
    s.execute(Epoch(2), &[create("k", "again")])
        .expect("refused whole");
    assert_eq!(s.append(&[]).expect("empty"), pos(2, 1));
    assert_eq!(s.unsynced(), 0);
    assert_eq!(seen(&s), before);
}

#[test]
fn the_same_calls_build_the_same_memory_store() {
    let build = || {
        let s = synced_history();
        unsynced_mutations(&s);
        s.crash_keeping(3);
        s
    };
    let (a, b) = (build(), build());
    assert_eq!(seen(&a), seen(&b));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn a_memory_store_is_shared_like_the_node_shares_its_store() {
    let shared: std::sync::Arc<dyn Storage> = std::sync::Arc::new(MemStore::new(100));
    let writer = std::sync::Arc::clone(&shared);
    std::thread::spawn(move || writer.execute(Epoch(1), &[put("a", "1")]))
        .join()
        .expect("thread")
        .expect("write");
    assert_eq!(shared.kv_get("a").expect("get"), Some((1, b"1".to_vec())));
}

/// Set in the child process of the test below: where its store is.
const KILL_DIR: &str = "KEEL_STORE_TEST_KILL_DIR";
/// The child's exit code when it dies inside the commit, as planned.
const KILLED: i32 = 86;

#[test]
fn a_store_killed_mid_commit_reopens_with_every_acknowledged_write_and_nothing_else() {
    if let Some(dir) = std::env::var_os(KILL_DIR) {
        die_mid_commit(std::path::Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Process::new(std::env::current_exe().expect("test binary"))
        .args([
            "crash::a_store_killed_mid_commit_reopens_with_every_acknowledged_write_and_nothing_else",
            "--exact",
            "--nocapture",
        ])
        .env(KILL_DIR, dir.path())
        .status()
        .expect("run the child");
    assert_eq!(
        status.code(),
        Some(KILLED),
        "the child did not die mid-commit"
    );

    let store = Store::open(dir.path(), 1000).expect("reopen");
    assert_eq!(store.status().last, pos(1, 3));
    assert_eq!(store.status().epoch, Epoch(2));
    assert_eq!(store.kv_get("a").expect("get"), Some((1, b"1".to_vec())));
    assert_eq!(store.counter("c").expect("counter"), 2);
    assert_eq!(
        store.kv_get("b").expect("get"),
        None,
        "half a commit survived"
    );
    assert_eq!(store.node_meta("primary_epoch").expect("meta"), Some(1));
    assert_consistent(&store);
    let next = store
        .execute(Epoch(2), &[put("b", "again")])
        .expect("write");
    assert_eq!(next, vec![Ok((Lsn(4), Outcome::Put { version: 4 }))]);
}

/// The child: acknowledged writes, then a process exit (no destructor runs, as in a
/// kill) while a group commit's entries are decided but not yet durable.
fn die_mid_commit(dir: &std::path::Path) -> ! {
    let store = Store::open(dir, 1000).expect("open");
    store
        .execute(
            Epoch(1),
            &[put("a", "1"), incr("c", 2), merge(&[("m", "1")])],
        )
        .expect("acknowledged");
    store.set_node_meta("primary_epoch", 1).expect("meta");
    store.observe_epoch(Epoch(2)).expect("epoch");
    let _ = store.execute_with(Epoch(2), &[put("b", "1"), incr("c", 1)], |_| {
        std::process::exit(KILLED)
    });
    unreachable!("the commit's callback exits")
}

//! Crashes in the middle of a mutation, which each store reaches its own way: a real
//! `Store` or `LogStore` is killed inside a group commit, a `MemStore` crashes before its
//! sync, a `LogStore`'s file ends in half a frame.

use std::process::Command as Process;

use keel_core::{Epoch, Lsn};
use keel_store::log_store::PREALLOCATE;
use keel_store::{Expect, LogStore, MemStore, Outcome, Storage, Store, StoreError, SyncMode};

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
    let dir = killed_mid_commit::<Store>(
        "crash::a_store_killed_mid_commit_reopens_with_every_acknowledged_write_and_nothing_else",
    );
    let store = Store::open(dir.path(), 1000).expect("reopen");
    holds_what_was_acknowledged_before_the_kill(&store);
}

/// In the child process (test `name` run again with [`KILL_DIR`] set): opens a store of
/// kind `S` there and dies inside a group commit. In the test: runs that child and
/// returns its directory.
fn killed_mid_commit<S: OnDisk>(name: &str) -> tempfile::TempDir {
    if let Some(dir) = std::env::var_os(KILL_DIR) {
        die_mid_commit(&S::open(std::path::Path::new(&dir), 1000));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Process::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture"])
        .env(KILL_DIR, dir.path())
        .status()
        .expect("run the child");
    assert_eq!(
        status.code(),
        Some(KILLED),
        "the child did not die mid-commit"
    );
    dir
}

/// The child: acknowledged writes, then a process exit (no destructor runs, as in a
/// kill) while a group commit's entries are decided but not yet durable.
fn die_mid_commit(store: &dyn Storage) -> ! {
    store
        .execute(
            Epoch(1),
            &[put("a", "1"), incr("c", 2), merge(&[("m", "1")])],
        )
        .expect("acknowledged");
    store.set_node_meta("primary_epoch", 1).expect("meta");
    store.observe_epoch(Epoch(2)).expect("epoch");
    let _ = store.execute_with(Epoch(2), &[put("b", "1"), incr("c", 1)], &mut |_| {
        std::process::exit(KILLED)
    });
    unreachable!("the commit's callback exits")
}

/// Checks what a store killed by [`die_mid_commit_of`] holds when it opens again.
fn holds_what_was_acknowledged_before_the_kill(store: &dyn Storage) {
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
    assert_consistent(store);
    let next = store
        .execute(Epoch(2), &[put("b", "again")])
        .expect("write");
    assert_eq!(next, vec![Ok((Lsn(4), Outcome::Put { version: 4 }))]);
}

#[test]
fn a_log_store_killed_mid_commit_reopens_with_every_acknowledged_write_and_nothing_else() {
    let dir = killed_mid_commit::<LogStore>(
        "crash::a_log_store_killed_mid_commit_reopens_with_every_acknowledged_write_and_nothing_else",
    );
    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    holds_what_was_acknowledged_before_the_kill(&store);
}

/// A log store holding three commits; what it showed after the second, and where the
/// second's and the third's frames end (the zeros made ahead of the appends follow).
fn three_commits(dir: &std::path::Path) -> (Seen, u64, u64) {
    let store = LogStore::open(dir, 1000).expect("open");
    store
        .execute(Epoch(1), &[put("a", "1"), incr("c", 2)])
        .expect("first");
    store
        .execute(Epoch(1), &[merge(&[("m", "x")]), put("b", "2")])
        .expect("second");
    let after_two = seen(&store);
    let size = store.file_size();
    store
        .execute(Epoch(1), &[put("a", "3"), delete("b", Expect::Any)])
        .expect("third");
    (after_two, size, store.file_size())
}

/// `store`, reopened after the third of [`three_commits`] was cut off, takes a write
/// where that commit was, and opens again with it after the first two.
fn a_write_after_the_restart_lasts(dir: &std::path::Path, store: LogStore) {
    store
        .execute(Epoch(1), &[put("d", "4")])
        .expect("a write after the restart");
    drop(store);
    let store = LogStore::open(dir, 1000).expect("reopen again");
    assert_eq!(store.kv_get("d").expect("get"), Some((5, b"4".to_vec())));
    assert_eq!(store.kv_get("b").expect("get"), Some((4, b"2".to_vec())));
    assert_consistent(&store);
}

fn log_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(keel_store::log_store::FILE_NAME)
}

/// Changes the bytes of `dir`'s log file as `change` does, as a crash or a failing disk
/// would; returns what the file then holds.
fn change_log(dir: &std::path::Path, change: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let file = log_file(dir);
    let mut bytes = std::fs::read(&file).expect("read the file");
    change(&mut bytes);
    std::fs::write(&file, &bytes).expect("write the file");
    bytes
}

/// Opens the log store in `dir`, which must refuse with an error saying each of
/// `phrases`, and leave its file holding `bytes`.
fn refused(dir: &std::path::Path, bytes: &[u8], phrases: &[&str]) {
    let err = LogStore::open(dir, 1000)
        .err()
        .expect("the store refuses to open");
    let text = err.to_string();
    for phrase in phrases {
        assert!(text.contains(phrase), "{text}");
    }
    assert_eq!(
        std::fs::read(log_file(dir)).expect("read"),
        bytes,
        "the file is left as it was"
    );
}

/// A byte offset in a test's small file, as an index.
fn at(offset: u64) -> usize {
    usize::try_from(offset).expect("a small file")
}

#[test]
fn a_log_file_ending_in_half_a_frame_opens_at_the_last_whole_one_and_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (after_two, size, end) = three_commits(dir.path());
    // The third commit's append was cut short, and the file ends within it (as a file
    // written without zeros ahead of its appends does).
    let file = log_file(dir.path());
    let torn = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open the file");
    torn.set_len(end - 3).expect("cut the file");
    drop(torn);

    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    assert_eq!(
        seen(&store),
        after_two,
        "the store is as after the second commit"
    );
    assert_eq!(store.file_size(), size, "the half frame is cut off");
    assert_consistent(&store);
    a_write_after_the_restart_lasts(dir.path(), store);
}

#[test]
fn a_damaged_frame_ends_the_replay_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (after_two, size, end) = three_commits(dir.path());
    // A byte of the third commit's payload flips: its checksum no longer matches.
    change_log(dir.path(), |bytes| bytes[at(end) - 1] ^= 0x40);

    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    assert_eq!(seen(&store), after_two);
    assert_eq!(store.file_size(), size);
}

#[test]
fn a_log_file_is_rewritten_as_one_image_once_it_grows_and_reads_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LogStore::open_with_checkpoint(dir.path(), 50, 16 << 10).expect("open");
    let value = "v".repeat(100);
    let mut largest = 0;
    for i in 0..2_000 {
        store
            .execute(
                Epoch(1),
                &[put(&format!("k{}", i % 20), &value), incr("n", 1)],
            )
            .expect("write");
        largest = largest.max(store.file_size());
    }
    // 2,000 commits of about 170 bytes each would be 340 KB: the file was rewritten as
    // one image (20 keys and 50 log entries) every time it passed 16 KiB.
    assert!(
        largest < 64 << 10,
        "the file grew to {largest} bytes: it was never rewritten"
    );
    let before = seen(&store);
    drop(store);
    let store = LogStore::open(dir.path(), 50).expect("reopen");
    assert_eq!(seen(&store), before);
    assert_eq!(store.counter("n").expect("counter"), 2_000);
    assert_consistent(&store);
    assert!(
        !dir.path().join("keel.log.new").exists(),
        "the rewrite's file was renamed over the old one"
    );
}

#[test]
fn a_log_file_of_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A first frame naming format 2: postcard's variant 0 (the format), then 2.
    let payload = [0u8, 2];
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(log_file(dir.path()), &bytes).expect("write the file");
    refused(
        dir.path(),
        &bytes,
        &["keel.log", "format 2", "reads format 1"],
    );
}

#[test]
fn a_damaged_frame_with_commits_after_it_is_refused_and_the_file_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, size, _) = three_commits(dir.path());
    // A byte of the second commit's frame (which ends where `size` is) flips; the third
    // commit's frame follows it whole.
    let bytes = change_log(dir.path(), |bytes| bytes[at(size) - 2] ^= 0x40);

    refused(
        dir.path(),
        &bytes,
        &["is damaged", "committed data may be lost"],
    );
}

#[test]
fn a_file_that_is_not_a_keel_log_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = b"2026-12-05 an application's own log, not keel's\n".to_vec();
    std::fs::write(log_file(dir.path()), &foreign).expect("write the file");
    refused(
        dir.path(),
        &foreign,
        &["does not begin with keel's log header"],
    );
}

#[test]
fn a_log_file_cut_short_while_being_made_starts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = LogStore::open(dir.path(), 1000)
        .expect("create")
        .file_size();
    let file = log_file(dir.path());
    let first = std::fs::read(&file).expect("read");
    let first = &first[..at(made)];
    // The crash came while the first frame was being written: part of it reached the disk.
    std::fs::write(&file, &first[..first.len() - 1]).expect("write the file");
    let store = LogStore::open(dir.path(), 1000).expect("a torn first frame is a new file");
    assert_eq!(store.status(), keel_store::LogStatus::default());
    assert_eq!(store.file_size(), made);
}

#[test]
fn a_log_file_whose_last_append_left_only_zeros_opens_at_the_last_whole_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (after_two, size, _) = three_commits(dir.path());
    // The third commit's length reached the disk, its bytes did not.
    change_log(dir.path(), |bytes| bytes[at(size)..].fill(0));

    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    assert_eq!(seen(&store), after_two);
    assert_eq!(store.file_size(), size);
}

#[test]
fn appends_write_over_zeros_made_ahead_so_the_file_keeps_its_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, end) = three_commits(dir.path());
    let file = log_file(dir.path());
    let length = std::fs::metadata(&file).expect("file").len();
    assert_eq!(
        length, PREALLOCATE,
        "the file was made one step of zeros long"
    );
    let bytes = std::fs::read(&file).expect("read the file");
    let end = at(end);
    assert!(
        bytes[end..].iter().all(|b| *b == 0),
        "zeros follow the last frame"
    );

    // A restart keeps the room, and the appends after it write into it.
    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    for i in 0..50 {
        store
            .execute(Epoch(1), &[put(&format!("k{i}"), "v")])
            .expect("write");
    }
    assert!(store.file_size() < PREALLOCATE);
    assert_eq!(std::fs::metadata(&file).expect("file").len(), length);
    let before = seen(&store);
    drop(store);
    let store = LogStore::open(dir.path(), 1000).expect("reopen again");
    assert_eq!(seen(&store), before);
    assert_consistent(&store);
}

#[test]
fn a_log_that_outgrows_its_zeros_is_extended_and_reads_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LogStore::open(dir.path(), 100_000).expect("open");
    // Values of 4 KiB: some 260 commits pass the first step of zeros.
    let value = "v".repeat(4 << 10);
    for i in 0..400 {
        store
            .execute(Epoch(1), &[put(&format!("k{}", i % 7), &value)])
            .expect("write");
    }
    let size = store.file_size();
    assert!(
        size > PREALLOCATE,
        "the log passed the first step: {size} bytes"
    );
    let length = std::fs::metadata(log_file(dir.path())).expect("file").len();
    assert_eq!(
        length % PREALLOCATE,
        0,
        "the file grows a whole step at a time"
    );
    assert!(length > size, "zeros lie ahead of the next append");
    let before = seen(&store);
    drop(store);
    let store = LogStore::open(dir.path(), 100_000).expect("reopen");
    assert_eq!(seen(&store), before);
    assert_eq!(store.file_size(), size);
    assert_consistent(&store);
}

#[test]
fn a_torn_append_over_the_zeros_opens_at_the_last_whole_frame_and_the_next_append_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (after_two, size, end) = three_commits(dir.path());
    // Only the first part of the third commit's frame reached the disk: its last bytes
    // are still the zeros that were there.
    change_log(dir.path(), |bytes| bytes[at(end) - 5..at(end)].fill(0));

    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    assert_eq!(seen(&store), after_two);
    assert_eq!(store.file_size(), size);
    // A shorter frame goes where the torn one was; no part of the torn one is left after it.
    a_write_after_the_restart_lasts(dir.path(), store);
}

#[test]
fn bytes_after_the_zeros_that_follow_a_damaged_frame_are_refused_and_the_file_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, size, end) = three_commits(dir.path());
    // The third frame is damaged, and something was written past it: not what a torn
    // append leaves.
    let bytes = change_log(dir.path(), |bytes| {
        bytes[at(size) + 9] ^= 0x40;
        bytes[at(end) + 100] = 7;
    });

    refused(dir.path(), &bytes, &["is damaged"]);
}

#[test]
fn a_first_frame_whose_last_bytes_never_landed_starts_empty_but_a_log_of_zeros_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = LogStore::open(dir.path(), 1000)
        .expect("create")
        .file_size();
    let file = log_file(dir.path());
    let made = at(made);
    let first = std::fs::read(&file).expect("read")[..made].to_vec();
    // The crash came while the first frame was being written: its length reached the
    // disk, its last bytes did not.
    let mut torn = first.clone();
    torn[3..].iter_mut().for_each(|b| *b = 0);
    std::fs::write(&file, &torn).expect("write the file");
    let store = LogStore::open(dir.path(), 1000).expect("a file being made is a new file");
    assert_eq!(store.status(), keel_store::LogStatus::default());
    store
        .execute(Epoch(1), &[put("a", "1")])
        .expect("a write to the new file");
    drop(store);
    let store = LogStore::open(dir.path(), 1000).expect("reopen");
    assert_eq!(store.kv_get("a").expect("get"), Some((1, b"1".to_vec())));
    drop(store);

    // Zeros are made ahead only after the first frame: a whole file of them is a log
    // that lost what it held, not a new one.
    let zeros = vec![0u8; at(PREALLOCATE)];
    std::fs::write(&file, &zeros).expect("write the file");
    refused(
        dir.path(),
        &zeros,
        &["does not begin with keel's log header"],
    );
}

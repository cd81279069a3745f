//! The contract of `Storage`, one generic function a behaviour; `main.rs` runs each
//! against every store.

use std::panic::{AssertUnwindSafe, catch_unwind};

use keel_core::ids::WIRE_LIMIT;
use keel_core::{Epoch, Lsn};
use keel_store::{Expect, LogEntry, Op, Outcome, Rejection, StoreError};

use crate::harness::*;

pub fn a_group_commit_numbers_its_entries_and_ships_them_before_returning<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    let mut shipped: Vec<LogEntry> = Vec::new();
    let results = s
        .execute_with(
            Epoch(1),
            &[
                put("a", "1"),
                put("a", "2"),
                merge(&[("id", "7")]),
                incr("c", 5),
                delete("missing", Expect::Any),
            ],
            &mut |entries| shipped.extend_from_slice(entries),
        )
        .expect("execute");
    assert_eq!(
        results,
        vec![
            Ok((Lsn(1), Outcome::Put { version: 1 })),
            Ok((Lsn(2), Outcome::Put { version: 2 })),
            Ok((Lsn(3), Outcome::Merged)),
            Ok((Lsn(4), Outcome::Counter { value: 5 })),
            Err(Rejection::NotFound),
        ]
    );
    // The callback saw exactly what the log now holds: the accepted commands, in order.
    assert_eq!(shipped, s.entries_after(Lsn(0), 100).expect("log"));
    assert_eq!(
        shipped.iter().map(|e| e.pos).collect::<Vec<_>>(),
        [pos(1, 1), pos(1, 2), pos(1, 3), pos(1, 4)]
    );
    assert_eq!(s.kv_get("a").expect("get"), Some((2, b"2".to_vec())));
    assert_eq!(
        s.entries().expect("entries").get("id").map(String::as_str),
        Some("7")
    );
    assert_eq!(s.counter("c").expect("counter"), 5);
    assert_eq!(s.counter("never").expect("counter"), 0);
    assert_eq!(s.status().last, pos(1, 4));
    assert_eq!(s.status().epoch, Epoch(1));

    let next = s.execute(Epoch(2), &[put("b", "x")]).expect("next batch");
    assert_eq!(next, vec![Ok((Lsn(5), Outcome::Put { version: 5 }))]);
    assert_eq!(
        s.status().epoch,
        Epoch(2),
        "a commit records its epoch as seen"
    );
    assert_eq!(
        s.epoch_boundaries().expect("boundaries"),
        [(Epoch(1), Lsn(1)), (Epoch(2), Lsn(5))]
    );
    assert_consistent(s);
}

pub fn refused_preconditions_write_nothing<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    s.execute(Epoch(1), &[put("k", "v1"), incr("big", i64::MAX)])
        .expect("setup");
    let before = seen(s);
    let mut shipped = false;
    let results = s
        .execute_with(
            Epoch(1),
            &[
                cas("k", 7, "x"),
                create("k", "x"),
                delete("nope", Expect::Any),
                delete("k", Expect::Version(9)),
                delete("k", Expect::Absent),
                incr("big", 1),
                incr("big", -1 - i64::MAX),
            ],
            &mut |_| shipped = true,
        )
        .expect("execute");
    let mismatch = Err(Rejection::VersionMismatch { current: Some(1) });
    assert_eq!(
        results,
        vec![
            mismatch.clone(),
            mismatch.clone(),
            Err(Rejection::NotFound),
            mismatch.clone(),
            mismatch,
            Err(Rejection::Overflow {
                name: "big".into(),
                value: i64::MAX,
                by: 1
            }),
            Ok((Lsn(3), Outcome::Counter { value: -1 })),
        ]
    );
    assert!(shipped);
    assert_eq!(
        s.status().last,
        pos(1, 3),
        "only the accepted command took an lsn"
    );

    // A batch refused whole writes nothing at all and ships nothing.
    let before_all_refused = seen(s);
    let mut shipped = false;
    let results = s
        .execute_with(Epoch(1), &[create("k", "x")], &mut |_| shipped = true)
        .expect("execute");
    assert_eq!(
        results,
        vec![Err(Rejection::VersionMismatch { current: Some(1) })]
    );
    assert!(!shipped);
    assert_eq!(seen(s), before_all_refused);
    assert_ne!(seen(s), before);
}

pub fn a_precondition_sees_the_writes_before_it_in_the_same_batch<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    s.execute(Epoch(1), &[put("k", "v1")]).expect("first put");
    // Two writers both read version 1; only the first compare-and-set may win, and a
    // delete then a create of the same key both pass.
    let results = s
        .execute(
            Epoch(1),
            &[
                cas("k", 1, "a"),
                cas("k", 1, "b"),
                delete("k", Expect::Version(2)),
                create("k", "again"),
            ],
        )
        .expect("execute");
    assert_eq!(
        results,
        vec![
            Ok((Lsn(2), Outcome::Put { version: 2 })),
            Err(Rejection::VersionMismatch { current: Some(2) }),
            Ok((Lsn(3), Outcome::Deleted { version: 3 })),
            Ok((Lsn(4), Outcome::Put { version: 4 })),
        ]
    );
    assert_eq!(s.kv_get("k").expect("get"), Some((4, b"again".to_vec())));
}

pub fn an_append_must_continue_the_log<H: Harness>() {
    let (p, sb) = (H::new(1000), H::new(1000));
    let (primary, standby) = (p.store(), sb.store());
    primary
        .execute(Epoch(1), &[put("a", "1"), put("b", "2")])
        .expect("epoch 1");
    primary
        .execute(
            Epoch(2),
            &[merge(&[("m", "1")]), incr("c", 3), put("a", "3")],
        )
        .expect("epoch 2");
    let log = primary.entries_after(Lsn(0), 100).expect("log");
    assert_eq!(standby.append(&[]).expect("nothing"), pos(0, 0));
    assert_eq!(standby.append(&log[..2]).expect("append"), pos(1, 2));
    let before = seen(standby);

    let skipping = [log[3].clone()];
    let repeating = [log[1].clone()];
    let mut epoch_back = log[2].clone();
    epoch_back.pos.epoch = Epoch(0);
    let mut out_of_range = log[2].clone();
    out_of_range.pos.epoch = Epoch(WIRE_LIMIT);
    let broken_later = [log[2].clone(), log[4].clone()];
    for bad in [
        &skipping[..],
        &repeating[..],
        &[epoch_back][..],
        &[out_of_range][..],
        &broken_later[..],
    ] {
        let refused = standby.append(bad);
        assert!(
            matches!(refused, Err(StoreError::Gap { .. })),
            "{refused:?}"
        );
        assert_eq!(seen(standby), before, "a refused append wrote something");
    }

    assert_eq!(standby.append(&log[2..]).expect("the rest"), pos(2, 5));
    assert_eq!(
        standby.snapshot().expect("standby"),
        primary.snapshot().expect("primary")
    );
    assert_eq!(standby.status(), primary.status());
    assert_eq!(standby.entries_after(Lsn(0), 100).expect("log"), log);
    assert_consistent(standby);
}

pub fn entries_after_reads_in_order_up_to_max<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    for i in 1..=5 {
        s.execute(Epoch(1), &[put(&format!("k{i}"), "v")])
            .expect("put");
    }
    let lsns = |after: u64, max: usize| -> Vec<u64> {
        (s.entries_after(Lsn(after), max).expect("entries"))
            .iter()
            .map(|e| e.pos.lsn.0)
            .collect()
    };
    assert_eq!(lsns(0, 2), [1, 2]);
    assert_eq!(lsns(3, 100), [4, 5]);
    assert_eq!(lsns(5, 10), Vec::<u64>::new());
    assert_eq!(lsns(9, 10), Vec::<u64>::new());
    assert_eq!(lsns(1, 0), Vec::<u64>::new());
    let third = s.entries_after(Lsn(2), 1).expect("one");
    assert_eq!(
        third[0].op,
        Op::Put {
            key: "k3".into(),
            value: b"v".to_vec()
        }
    );
}

pub fn a_rollback_restores_the_exact_earlier_state<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    s.execute(
        Epoch(1),
        &[
            put("a", "1"),
            put("gone", "soon"),
            merge(&[("id", "1")]),
            incr("c", 1),
        ],
    )
    .expect("epoch 1");
    let before = seen(s);
    s.execute(
        Epoch(2),
        &[
            put("a", "2"),
            put("new", "x"),
            merge(&[("id", "2"), ("name", "n")]),
            incr("c", 10),
            incr("fresh", 4),
            delete("gone", Expect::Any),
            put("a", "3"),
        ],
    )
    .expect("epoch 2");
    s.observe_epoch(Epoch(3)).expect("epoch 3 seen");

    assert_eq!(s.rollback_to(Lsn(4)).expect("rollback"), pos(1, 4));
    let after = seen(s);
    assert_eq!(
        after.snapshot, before.snapshot,
        "kv versions, entries, counters"
    );
    assert_eq!(after.log, before.log);
    assert_eq!(s.kv_get("a").expect("get"), Some((1, b"1".to_vec())));
    assert_eq!(s.kv_get("gone").expect("get"), Some((2, b"soon".to_vec())));
    assert_eq!(s.counter("fresh").expect("counter"), 0);
    assert!(!s.snapshot().expect("snap").counters.contains_key("fresh"));
    assert_eq!(
        s.epoch_boundaries().expect("boundaries"),
        [(Epoch(1), Lsn(1))]
    );
    assert_eq!(s.status().epoch, Epoch(3), "the epoch seen stays");

    // A rollback to the end or beyond changes nothing.
    assert_eq!(s.rollback_to(Lsn(4)).expect("no-op"), pos(1, 4));
    assert_eq!(s.rollback_to(Lsn(40)).expect("no-op"), pos(1, 4));
    assert_eq!(seen(s), after);

    // The log goes on from the rollback point.
    let next = s.execute(Epoch(3), &[put("a", "4")]).expect("write");
    assert_eq!(next, vec![Ok((Lsn(5), Outcome::Put { version: 5 }))]);
    assert_eq!(
        s.epoch_boundaries().expect("boundaries"),
        [(Epoch(1), Lsn(1)), (Epoch(3), Lsn(5))]
    );
    assert_consistent(s);
}

pub fn a_rollback_into_the_snapshot_is_refused<H: Harness>() {
    let h = H::new(4);
    let s = h.store();
    for i in 0..20 {
        s.execute(Epoch(1 + i / 10), &[put(&format!("k{i}"), "v")])
            .expect("put");
    }
    let status = s.status();
    assert!(status.snapshot.lsn > Lsn(1), "{status:?}");
    let before = seen(s);
    let refused = s.rollback_to(Lsn(1));
    assert!(
        matches!(refused, Err(StoreError::Compacted { snapshot }) if snapshot == status.snapshot),
        "{refused:?}"
    );
    assert_eq!(seen(s), before);

    // Exactly to the snapshot point is still possible: the log is then empty.
    assert_eq!(
        s.rollback_to(status.snapshot.lsn).expect("to the snapshot"),
        status.snapshot
    );
    assert_eq!(s.status().last, status.snapshot);
    assert!((s.entries_after(status.snapshot.lsn, 10).expect("log")).is_empty());
    assert_consistent(s);
}

pub fn compaction_keeps_log_retain_entries<H: Harness>() {
    let h = H::new(10);
    let s = h.store();
    for i in 0..50 {
        s.execute(Epoch(1), &[put(&format!("k{i}"), &i.to_string())])
            .expect("put");
    }
    let status = s.status();
    let held = status.last.lsn.0 - status.snapshot.lsn.0;
    assert!((10..=10 + 10 / 8).contains(&held), "{status:?}");
    assert_eq!(status.snapshot.epoch, Epoch(1));
    let log = s.entries_after(status.snapshot.lsn, 100).expect("log");
    assert_eq!(log.len() as u64, held);
    assert!(matches!(
        s.entries_after(Lsn(status.snapshot.lsn.0 - 1), 100),
        Err(StoreError::Compacted { .. })
    ));
    // The state still has every write: compaction only drops log entries.
    assert_eq!(s.kv_keys().expect("keys").len(), 50);
    assert_eq!(s.kv_get("k0").expect("get"), Some((1, b"0".to_vec())));

    // One batch far over the limit is cut back to exactly `log_retain`.
    let batch: Vec<_> = (0..30).map(|i| put(&format!("b{i}"), "v")).collect();
    s.execute(Epoch(2), &batch).expect("batch");
    let status = s.status();
    assert_eq!(status.last.lsn.0 - status.snapshot.lsn.0, 10);
    assert_eq!(status.snapshot.epoch, Epoch(2));
    assert_consistent(s);
}

pub fn keys_are_walked_a_page_at_a_time_in_order<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    let names = ["b", "a", "c/1", "c", "ä", "ab"];
    let puts: Vec<_> = names.iter().map(|k| put(k, "v")).collect();
    s.execute(Epoch(1), &puts).expect("puts");
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.kv_keys_after(after.as_deref(), 4).expect("a page");
        assert!(page.len() <= 4);
        let Some(last) = page.last().cloned() else {
            break;
        };
        walked.extend(page);
        after = Some(last);
    }
    let mut sorted: Vec<String> = names.iter().map(|k| (*k).to_owned()).collect();
    sorted.sort();
    assert_eq!(walked, sorted, "each key once, in key order");
    assert_eq!(
        s.kv_keys_after(Some("b"), 10).expect("after b"),
        ["c", "c/1", "ä"]
    );
    assert_eq!(
        s.kv_keys_after(Some("ä"), 10)
            .expect("past the end (bytes order: ä after z)"),
        Vec::<String>::new()
    );
    assert!(s.kv_keys_after(None, 0).expect("none asked").is_empty());
}

pub fn a_snapshot_installs_whole_and_the_log_goes_on_from_it<H: Harness>() {
    let (p, sb) = (H::new(1000), H::new(1000));
    let (primary, standby) = (p.store(), sb.store());
    primary
        .execute(
            Epoch(1),
            &[put("a", "1"), merge(&[("id", "9")]), incr("c", 2)],
        )
        .expect("epoch 1");
    primary
        .execute(Epoch(2), &[put("b", "2"), delete("a", Expect::Any)])
        .expect("epoch 2");
    standby
        .execute(Epoch(1), &[put("stale", "x"), merge(&[("old", "y")])])
        .expect("standby's own");
    standby.observe_epoch(Epoch(9)).expect("seen");
    standby.set_node_meta("primary_epoch", 1).expect("meta");

    let snap = primary.snapshot().expect("snapshot");
    assert_eq!(snap.last, pos(2, 5));
    assert_eq!(standby.install(&snap).expect("install"), pos(2, 5));
    assert_eq!(standby.snapshot().expect("installed"), snap);
    assert_eq!(standby.kv_get("stale").expect("get"), None);
    assert!(!standby.entries().expect("entries").contains_key("old"));
    let status = standby.status();
    assert_eq!((status.last, status.snapshot), (pos(2, 5), pos(2, 5)));
    assert_eq!(
        status.epoch,
        Epoch(9),
        "an install never lowers the epoch seen"
    );
    assert_eq!(standby.node_meta("primary_epoch").expect("meta"), Some(1));
    assert!(
        standby
            .entries_after(Lsn(5), 10)
            .expect("empty log")
            .is_empty()
    );
    assert!(matches!(
        standby.entries_after(Lsn(4), 10),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        standby.rollback_to(Lsn(4)),
        Err(StoreError::Compacted { .. })
    ));

    primary
        .execute(Epoch(2), &[put("after", "snap")])
        .expect("write");
    let tail = primary.entries_after(Lsn(5), 100).expect("tail");
    assert_eq!(standby.append(&tail).expect("append"), pos(2, 6));
    assert_eq!(
        standby.snapshot().expect("standby"),
        primary.snapshot().expect("primary")
    );
    assert_consistent(standby);

    // Onto an empty store, the epoch seen becomes the snapshot's.
    let fresh = H::new(1000);
    fresh.store().install(&snap).expect("install");
    assert_eq!(fresh.store().status().epoch, Epoch(2));
}

pub fn the_epoch_seen_never_goes_back<H: Harness>() {
    let mut h = H::new(1000);
    let s = h.store();
    assert!(s.observe_epoch(Epoch(5)).expect("new"));
    assert!(!s.observe_epoch(Epoch(5)).expect("known"));
    assert!(matches!(
        s.observe_epoch(Epoch(4)),
        Err(StoreError::StaleEpoch {
            given: Epoch(4),
            current: Epoch(5)
        })
    ));
    assert!(matches!(
        s.observe_epoch(Epoch(WIRE_LIMIT)),
        Err(StoreError::EpochOutOfRange { .. })
    ));
    assert!(matches!(
        s.execute(Epoch(4), &[put("a", "1")]),
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(matches!(
        s.execute(Epoch(u64::MAX), &[put("a", "1")]),
        Err(StoreError::EpochOutOfRange { .. })
    ));
    assert_eq!(s.kv_get("a").expect("get"), None);
    assert_eq!(s.status().epoch, Epoch(5));
    assert_eq!(s.status().last, pos(0, 0));

    s.execute(Epoch(6), &[put("a", "1")]).expect("newer epoch");
    assert_eq!(s.status().epoch, Epoch(6));
    h.restart();
    assert_eq!(h.store().status().epoch, Epoch(6));
    assert!(h.store().observe_epoch(Epoch(5)).is_err());
}

pub fn node_meta_is_kept_apart_from_the_log<H: Harness>() {
    let mut h = H::new(1000);
    let s = h.store();
    assert_eq!(s.node_meta("primary_epoch").expect("meta"), None);
    s.set_node_meta("primary_epoch", 7).expect("set");
    s.set_node_meta("primary_epoch", 8).expect("set again");
    // A node key with the name of the store's own bookkeeping does not touch it.
    s.observe_epoch(Epoch(3)).expect("epoch");
    s.set_node_meta("epoch", 99).expect("set");
    assert_eq!(s.status().epoch, Epoch(3));
    assert_eq!(s.node_meta("primary_epoch").expect("meta"), Some(8));
    assert_eq!(s.node_meta("epoch").expect("meta"), Some(99));
    h.restart();
    let s = h.store();
    assert_eq!(s.node_meta("primary_epoch").expect("meta"), Some(8));
    assert_eq!(s.node_meta("epoch").expect("meta"), Some(99));
    assert_eq!(s.status().epoch, Epoch(3));
}

pub fn everything_acknowledged_survives_a_restart<H: Harness>() {
    let mut h = H::new(8);
    let s = h.store();
    for i in 0..12 {
        s.execute(Epoch(1), &[put(&format!("k{i}"), "v"), incr("n", 1)])
            .expect("write");
    }
    s.execute(Epoch(2), &[merge(&[("m", "1")]), delete("k0", Expect::Any)])
        .expect("epoch 2");
    s.rollback_to(Lsn(25)).expect("rollback");
    s.observe_epoch(Epoch(4)).expect("epoch");
    s.set_node_meta("primary_epoch", 2).expect("meta");
    let before = seen(s);

    h.restart();
    assert_eq!(seen(h.store()), before);
    assert_consistent(h.store());
    // And the log goes on where it was.
    let next = h
        .store()
        .execute(Epoch(4), &[put("after", "restart")])
        .expect("write");
    assert_eq!(next, vec![Ok((Lsn(26), Outcome::Put { version: 26 }))]);
}

pub fn a_mutation_that_panics_half_way_leaves_nothing<H: Harness>() {
    let mut h = H::new(1000);
    h.store()
        .execute(Epoch(1), &[put("a", "1")])
        .expect("write");
    let before = seen(h.store());
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        h.store()
            .execute_with(Epoch(2), &[put("a", "2"), incr("c", 1)], &mut |_| {
                panic!("the shipping code failed")
            })
    }));
    assert!(panicked.is_err());
    assert_eq!(seen(h.store()), before);
    let next = h
        .store()
        .execute(Epoch(1), &[put("b", "1")])
        .expect("the store still works");
    assert_eq!(next, vec![Ok((Lsn(2), Outcome::Put { version: 2 }))]);
    h.restart();
    assert_eq!(
        h.store().kv_get("a").expect("get"),
        Some((1, b"1".to_vec()))
    );
    assert_eq!(h.store().status().last, pos(1, 2));
    assert_consistent(h.store());
}

pub fn concurrent_commits_are_serialised<H: Harness>() {
    let h = H::new(1000);
    let s = h.store();
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for i in 0..10 {
                    s.execute(Epoch(1), &[put(&format!("t{t}-{i}"), "v"), incr("n", 1)])
                        .expect("write");
                }
            });
        }
    });
    assert_eq!(s.status().last, pos(1, 80));
    assert_eq!(s.counter("n").expect("counter"), 40);
    assert_consistent(s);
}

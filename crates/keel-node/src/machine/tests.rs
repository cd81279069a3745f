//! Every transition of the node's machine, with constructed instants.

use std::time::Duration;

use keel_client::wire::{
    Failover, FailoverPhase, FailoverReason, PrimaryRef, StandbyView, Timing as WireTiming, View,
};
use keel_core::{Epoch, Lsn, NodeId, Role};
use tokio::time::Instant;

use super::*;

const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
const ME: &str = "http://node1";
const S2: &str = "http://node2";
const S3: &str = "http://node3";
const S4: &str = "http://node4";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("id")
}

/// A primary started by hand (no monitor) with `standbys` fixed on its command line.
fn by_hand(standbys: &[&str], sync: bool, t0: Instant) -> Machine {
    Machine::new(
        Settings {
            advertise: ME.into(),
            monitored: false,
            role: Role::Primary,
            standbys: standbys.iter().map(|s| s.to_string()).collect(),
            sync,
            sync_timeout: SYNC_TIMEOUT,
            writing_epoch: Epoch(1),
            seen: Epoch(1),
            log_end: Lsn(0),
        },
        t0,
    )
}

/// A node under a monitor, starting as a standby that has seen `seen`.
fn monitored(seen: u64, t0: Instant) -> Machine {
    Machine::new(
        Settings {
            advertise: ME.into(),
            monitored: true,
            role: Role::Standby,
            standbys: Vec::new(),
            sync: true,
            sync_timeout: SYNC_TIMEOUT,
            writing_epoch: Epoch(0),
            seen: Epoch(seen),
            log_end: Lsn(10),
        },
        t0,
    )
}

fn timing() -> WireTiming {
    WireTiming {
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 300,
        lease_ms: 500,
        drift_ms: 100,
    }
}

/// The monitor's view for a primary in `epoch` with these standbys (url, sync), renewing
/// the lease.
fn primary_view(epoch: u64, standbys: &[(&str, bool)]) -> View {
    View {
        slots_version: 0,
        slots: None,
        group: None,
        version: 1,
        epoch: Epoch(epoch),
        role: Role::Primary,
        primary: Some(PrimaryRef {
            node: id("node1"),
            url: ME.into(),
        }),
        standbys: standbys
            .iter()
            .map(|(url, sync)| StandbyView {
                node: id(url.trim_start_matches("http://")),
                url: url.to_string(),
                sync: *sync,
            })
            .collect(),
        lease_ms: Some(500),
        failover: None,
        timing: timing(),
    }
}

fn standby_view(epoch: u64, primary: &str) -> View {
    View {
        slots_version: 0,
        slots: None,
        group: None,
        version: 1,
        epoch: Epoch(epoch),
        role: Role::Standby,
        primary: Some(PrimaryRef {
            node: id(primary.trim_start_matches("http://")),
            url: primary.into(),
        }),
        standbys: Vec::new(),
        lease_ms: None,
        failover: None,
        timing: timing(),
    }
}

fn view(m: &mut Machine, v: View, at: Instant) -> Vec<Output> {
    m.handle(
        Input::View {
            view: Box::new(v),
            sent_at: Some(at),
        },
        at,
    )
}

/// The number of the link to `url`.
fn link(m: &Machine, url: &str) -> u64 {
    m.links()
        .iter()
        .find(|l| l.url == url)
        .map(|l| l.id)
        .expect("a link to that standby")
}

/// Brings a standby's stream to streaming at `lsn`.
fn stream(m: &mut Machine, url: &str, lsn: u64, at: Instant) -> Vec<Output> {
    let link = link(m, url);
    m.handle(
        Input::LinkHello {
            link,
            node: url.trim_start_matches("http://").into(),
        },
        at,
    );
    m.handle(
        Input::LinkAligned {
            link,
            acked: Lsn(lsn),
        },
        at,
    )
}

fn ack(m: &mut Machine, url: &str, lsn: u64, sent_at: Instant, at: Instant) -> Vec<Output> {
    m.handle(
        Input::Ack {
            link: link(m, url),
            lsn: Lsn(lsn),
            sent_at: Some(sent_at),
        },
        at,
    )
}

fn commit(batch: BatchId, epoch: u64) -> Output {
    Output::Commit {
        batch,
        epoch: Epoch(epoch),
    }
}

fn ok(batch: BatchId) -> Output {
    Output::Reply {
        batch,
        result: Ok(()),
    }
}

fn refused(batch: BatchId, err: WriteError) -> Output {
    Output::Reply {
        batch,
        result: Err(err),
    }
}

/// Commits `batch` ending at `last`.
fn committed(m: &mut Machine, batch: BatchId, last: u64, at: Instant) -> Vec<Output> {
    m.handle(Input::Decided { last: Lsn(last) }, at);
    m.handle(
        Input::Committed {
            batch,
            result: Ok(Lsn(last)),
        },
        at,
    )
}

// --- the write path ------------------------------------------------------------------

#[test]
fn a_primary_without_standbys_commits_at_once_and_answers_on_commit() {
    let t0 = Instant::now();
    let mut m = by_hand(&[], true, t0);
    assert_eq!(m.handle(Input::Started, t0), vec![]);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 3
            },
            t0
        ),
        vec![commit(1, 1)]
    );
    assert!(
        m.busy(),
        "the writer takes no more until the commit is done"
    );
    assert_eq!(committed(&mut m, 1, 3, t0), vec![ok(1)]);
    assert!(!m.busy());
    assert_eq!(m.log_end(), Lsn(3));
}

#[test]
fn one_batch_commits_at_a_time_and_the_next_starts_when_it_is_done() {
    let t0 = Instant::now();
    let mut m = by_hand(&[], true, t0);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 1
            },
            t0
        ),
        vec![commit(1, 1)]
    );
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 2,
                writes: 1
            },
            t0
        ),
        vec![],
        "batch 1 is still committing"
    );
    assert!(m.is_waiting(2));
    assert_eq!(committed(&mut m, 1, 1, t0), vec![ok(1), commit(2, 1)]);
}

#[test]
fn a_standby_and_a_fenced_node_refuse_writes_without_committing() {
    let t0 = Instant::now();
    let mut m = monitored(3, t0);
    view(&mut m, standby_view(3, S2), t0);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 1
            },
            t0
        ),
        vec![refused(
            1,
            WriteError::NotPrimary {
                primary: Some(S2.into())
            }
        )]
    );

    let mut p = by_hand(&[], true, t0);
    p.handle(Input::Deposed { epoch: Epoch(2) }, t0);
    assert_eq!(
        p.handle(
            Input::Queued {
                batch: 7,
                writes: 1
            },
            t0
        ),
        vec![refused(
            7,
            WriteError::Fenced {
                epoch: Epoch(2),
                committed: None
            }
        )]
    );
}

#[test]
fn a_batch_waits_for_the_sync_standby_to_stream_and_commits_as_soon_as_it_does() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2], true, t0);
    assert_eq!(
        m.handle(Input::Started, t0),
        vec![Output::StartSender {
            link: 1,
            url: S2.into()
        }]
    );
    m.handle(Input::LinkConnecting { link: link(&m, S2) }, t0);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 1
            },
            t0
        ),
        vec![]
    );
    assert_eq!(m.next_deadline(), Some(t0 + SYNC_TIMEOUT));
    let out = stream(&mut m, S2, 0, t0 + ms(50));
    assert_eq!(
        out,
        vec![
            Output::Note(Note::Streaming {
                url: S2.into(),
                at: Lsn(0)
            }),
            commit(1, 1)
        ]
    );
}

#[test]
fn a_batch_is_refused_exactly_when_the_sync_timeout_runs_out_naming_the_silent_standby() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2, S3], true, t0);
    m.handle(Input::Started, t0);
    stream(&mut m, S3, 0, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 4,
        },
        t0,
    );
    assert_eq!(m.handle(Input::Tick, t0 + SYNC_TIMEOUT - ms(1)), vec![]);
    assert_eq!(
        m.handle(Input::Tick, t0 + SYNC_TIMEOUT),
        vec![refused(
            1,
            WriteError::SyncUnavailable {
                standbys: S2.into(),
                waited: SYNC_TIMEOUT
            }
        )]
    );
    assert!(!m.busy());
}

#[test]
fn a_committed_batch_is_answered_once_every_sync_standby_has_acked_it() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2, S3], true, t0);
    m.handle(Input::Started, t0);
    stream(&mut m, S2, 0, t0);
    stream(&mut m, S3, 0, t0);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 2
            },
            t0
        ),
        vec![commit(1, 1)]
    );
    assert_eq!(committed(&mut m, 1, 2, t0), vec![]);
    assert_eq!(ack(&mut m, S2, 2, t0, t0 + ms(1)), vec![]);
    assert_eq!(ack(&mut m, S3, 1, t0, t0 + ms(1)), vec![], "not far enough");
    assert_eq!(ack(&mut m, S3, 2, t0, t0 + ms(2)), vec![ok(1)]);
}

#[test]
fn a_committed_batch_not_acked_within_the_sync_timeout_has_an_unknown_outcome() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2], true, t0);
    m.handle(Input::Started, t0);
    stream(&mut m, S2, 0, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    committed(&mut m, 1, 1, t0 + ms(5));
    assert_eq!(m.next_deadline(), Some(t0 + ms(5) + SYNC_TIMEOUT));
    assert_eq!(m.handle(Input::Tick, t0 + ms(4) + SYNC_TIMEOUT), vec![]);
    assert_eq!(
        m.handle(Input::Tick, t0 + ms(5) + SYNC_TIMEOUT),
        vec![refused(
            1,
            WriteError::ReplicationTimeout {
                lsn: Lsn(1),
                standbys: "node2 (http://node2)".into(),
                waited: SYNC_TIMEOUT
            }
        )]
    );
}

#[test]
fn batches_are_answered_in_order_however_the_acks_arrive() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2], true, t0);
    m.handle(Input::Started, t0);
    stream(&mut m, S2, 0, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    m.handle(
        Input::Queued {
            batch: 2,
            writes: 1,
        },
        t0,
    );
    assert_eq!(committed(&mut m, 1, 1, t0), vec![commit(2, 1)]);
    assert_eq!(committed(&mut m, 2, 2, t0), vec![]);
    assert_eq!(ack(&mut m, S2, 2, t0, t0), vec![ok(1), ok(2)]);
}

#[test]
fn a_failed_commit_answers_its_batch_and_lets_the_next_one_commit() {
    let t0 = Instant::now();
    let mut m = by_hand(&[], true, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    m.handle(
        Input::Queued {
            batch: 2,
            writes: 1,
        },
        t0,
    );
    let out = m.handle(
        Input::Committed {
            batch: 1,
            result: Err(CommitFailure::Store("disk full".into())),
        },
        t0,
    );
    assert_eq!(
        out,
        vec![
            refused(1, WriteError::Store("disk full".into())),
            commit(2, 1)
        ]
    );
    let out = m.handle(
        Input::Committed {
            batch: 2,
            result: Err(CommitFailure::StaleEpoch { current: Epoch(4) }),
        },
        t0,
    );
    assert_eq!(
        out,
        vec![refused(
            2,
            WriteError::Fenced {
                epoch: Epoch(4),
                committed: None
            }
        )]
    );
}

#[test]
fn asynchronous_standbys_hold_no_write() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2], false, t0);
    m.handle(Input::Started, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    assert_eq!(committed(&mut m, 1, 1, t0), vec![ok(1)]);
}

// --- the lease -------------------------------------------------------------------------

/// A monitored node promoted to primary in epoch 2 with these standbys, its promotion
/// recorded at `at` (its last grant long before).
fn promoted(standbys: &[(&str, bool)], at: Instant) -> Machine {
    let t0 = at.checked_sub(ms(10_000)).unwrap_or(at);
    let mut m = monitored(1, t0);
    let v = primary_view(2, standbys);
    let out = view(&mut m, v, at);
    assert!(out.contains(&Output::PersistPromotion(Epoch(2))), "{out:?}");
    m.handle(
        Input::PromotionRecorded {
            epoch: Epoch(2),
            log_end: Lsn(10),
            error: None,
        },
        at,
    );
    assert!(m.is_primary());
    m
}

#[test]
fn the_lease_holds_with_the_monitor_or_with_every_sync_standby() {
    let now = Instant::now();
    let lease = ms(500);
    let t = now + ms(1);
    let mut m = promoted(&[], now);
    // The promotion's view renewed it from when it was sent, and it ends exactly at its
    // end.
    assert!(m.lease_valid(now + lease - ms(1)));
    assert!(!m.lease_valid(now + lease));

    // Three sync standbys, cut off from the monitor: two of them still renewing is not
    // enough (the third may be the candidate being promoted), all three is.
    let mut v = primary_view(2, &[(S2, true), (S3, true), (S4, true)]);
    v.lease_ms = None;
    view(&mut m, v, now);
    let mut m2 = m.clone();
    m.monitor_lease_until = None;
    m2.monitor_lease_until = None;
    ack(&mut m, S2, 1, now, now);
    ack(&mut m, S3, 1, now, now);
    assert!(
        !m.lease_valid(t),
        "the primary and two of three standbys must not hold it"
    );
    ack(&mut m, S4, 1, now, now);
    assert!(m.lease_valid(t));
    assert!(!m.lease_valid(now + lease));
    assert_eq!(
        m.lease_until(),
        Some(now + lease),
        "when a keeper must stop writing"
    );
    // The standby that renewed last does not extend it: the earliest renewal counts.
    ack(&mut m, S4, 1, t, t);
    assert_eq!(m.lease_until(), Some(now + lease));

    // Standbys out of the sync set do not count, for or against.
    let mut v = primary_view(2, &[(S2, false), (S3, false), (S4, false)]);
    v.lease_ms = None;
    view(&mut m2, v.clone(), now);
    m2.monitor_lease_until = None;
    assert!(
        !m2.lease_valid(t),
        "with no sync standby, only the monitor can renew it"
    );
    v.lease_ms = Some(500);
    view(&mut m2, v, now);
    assert!(
        m2.lease_valid(t),
        "dead standbys out of the sync set cannot stop it"
    );
}

#[test]
fn without_its_lease_a_primary_commits_nothing_and_acknowledges_nothing() {
    let t0 = Instant::now();
    let mut m = promoted(&[], t0);
    // The failover is over (the promotion's view had none): writes go.
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0 + ms(100),
    );
    // Committed before the lease ran out, answered after: its outcome is unknown.
    assert_eq!(
        committed(&mut m, 1, 11, t0 + ms(500)),
        vec![refused(1, WriteError::LeaseLapsed { lsn: Lsn(11) })]
    );
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 2,
                writes: 1
            },
            t0 + ms(600)
        ),
        vec![refused(2, WriteError::NoLease)]
    );
}

// --- the sync set and the standbys -------------------------------------------------------

#[test]
fn a_standby_is_reported_in_sync_only_once_it_has_acked_what_came_before() {
    let t0 = Instant::now();
    let mut m = promoted(&[], t0);
    m.handle(Input::Decided { last: Lsn(100) }, t0);
    view(&mut m, primary_view(2, &[(S2, true)]), t0);
    let report = |m: &Machine| m.report().0;
    assert_eq!(report(&m)[0].node, id("node2"), "the monitor named it");
    m.handle(
        Input::LinkHello {
            link: link(&m, S2),
            node: "node2".into(),
        },
        t0,
    );
    assert!(
        !report(&m)[0].sync,
        "it may lack writes acknowledged before"
    );
    ack(&mut m, S2, 99, t0, t0);
    assert!(!report(&m)[0].sync);
    ack(&mut m, S2, 100, t0, t0);
    assert!(report(&m)[0].sync);
    assert!(report(&m)[0].streaming, "caught up with the log end");
}

#[test]
fn the_monitors_standby_list_starts_and_stops_senders() {
    let t0 = Instant::now();
    let mut m = promoted(&[(S2, true)], t0);
    let out = view(&mut m, primary_view(2, &[(S3, false)]), t0);
    assert_eq!(
        out,
        vec![
            Output::StopSender { link: 1 },
            Output::StartSender {
                link: 2,
                url: S3.into()
            }
        ]
    );
    assert_eq!(view(&mut m, primary_view(2, &[(S3, true)]), t0), vec![]);
    assert!(m.links()[0].sync);
}

#[test]
fn a_sync_standby_silent_for_the_heartbeat_timeout_is_named_for_dropping_and_its_drop_releases_the_writes()
 {
    let t0 = Instant::now();
    let mut m = promoted(&[(S2, true)], t0);
    stream(&mut m, S2, 10, t0);
    m.handle(Input::LinkDown { link: link(&m, S2) }, t0 + ms(10));
    // Reconnecting does not start the count anew.
    m.handle(Input::LinkConnecting { link: link(&m, S2) }, t0 + ms(200));
    m.handle(Input::LinkDown { link: link(&m, S2) }, t0 + ms(250));
    assert!(m.silent_sync_standbys(t0 + ms(309)).is_empty());
    assert_eq!(
        m.silent_sync_standbys(t0 + ms(310)),
        vec![(S2.to_string(), id("node2"))]
    );
    view(&mut m, primary_view(2, &[(S2, true)]), t0 + ms(310));
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 1
            },
            t0 + ms(310)
        ),
        vec![]
    );
    assert_eq!(
        m.handle(Input::SyncDropped { url: S2.into() }, t0 + ms(320)),
        vec![Output::Note(Note::SyncDropped(S2.into())), commit(1, 2)]
    );
}

#[test]
fn a_primary_asked_to_drain_reports_drained_only_with_no_batch_left() {
    let t0 = Instant::now();
    let mut m = promoted(&[(S2, true)], t0);
    stream(&mut m, S2, 10, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    assert!(!m.report().1, "committing");
    committed(&mut m, 1, 11, t0);
    assert!(!m.report().1, "waiting for its ack");
    ack(&mut m, S2, 11, t0, t0);
    assert!(m.report().1);
}

// --- stepping down -----------------------------------------------------------------------

#[test]
fn a_deposed_primary_fences_itself_and_its_writes_have_unknown_outcomes() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2], true, t0);
    m.handle(Input::Started, t0);
    stream(&mut m, S2, 0, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    m.handle(
        Input::Queued {
            batch: 2,
            writes: 1,
        },
        t0,
    );
    committed(&mut m, 1, 1, t0);
    let out = m.handle(Input::Deposed { epoch: Epoch(5) }, t0);
    assert_eq!(
        out,
        vec![
            Output::ResetLogEnd,
            Output::Note(Note::SteppedDown(Epoch(5))),
            Output::StopSender { link: 1 },
            Output::Role(RoleState {
                role: Role::Standby,
                primary: None,
                fenced_by: Some(Epoch(5))
            }),
            refused(
                1,
                WriteError::Fenced {
                    epoch: Epoch(5),
                    committed: Some(Lsn(1))
                }
            ),
        ]
    );
    // Batch 2 was committing: its commit fails against the store's newer epoch, or
    // lands and is refused as fenced.
    assert_eq!(
        committed(&mut m, 2, 2, t0),
        vec![refused(
            2,
            WriteError::Fenced {
                epoch: Epoch(5),
                committed: Some(Lsn(2))
            }
        )]
    );
    assert_eq!(m.handle(Input::Deposed { epoch: Epoch(6) }, t0), vec![]);
}

#[test]
fn a_primary_told_to_stand_by_stops_its_senders_and_acknowledges_nothing_more() {
    let t0 = Instant::now();
    let mut m = promoted(&[(S2, true)], t0);
    stream(&mut m, S2, 10, t0);
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    committed(&mut m, 1, 11, t0);
    let out = view(&mut m, standby_view(3, S3), t0 + ms(1));
    assert_eq!(
        out,
        vec![
            Output::PersistEpoch(Epoch(3)),
            Output::ResetLogEnd,
            Output::Note(Note::Following(Some(S3.into()))),
            Output::StopSender { link: 1 },
            Output::Role(RoleState {
                role: Role::Standby,
                primary: Some(S3.into()),
                fenced_by: None
            }),
            refused(1, WriteError::LeaseLapsed { lsn: Lsn(11) }),
        ]
    );
}

#[test]
fn an_evicted_node_steps_down_for_good_in_the_newest_epoch_it_knows() {
    let t0 = Instant::now();
    let mut m = promoted(&[], t0);
    let out = m.handle(Input::Evicted, t0);
    assert!(out.contains(&Output::Role(RoleState {
        role: Role::Standby,
        primary: None,
        fenced_by: Some(Epoch(2)),
    })));
}

// --- the standby's side ------------------------------------------------------------------

#[test]
fn an_offer_from_an_older_epoch_is_refused_with_the_newer_one() {
    let t0 = Instant::now();
    let mut m = monitored(4, t0);
    assert_eq!(
        m.handle(
            Input::Offer {
                from: "node9".into(),
                epoch: Epoch(3),
                primary: Some(S2.into())
            },
            t0
        ),
        vec![Output::Refuse {
            seen: Epoch(4),
            message: "node9 sent epoch 3, but this node has seen epoch 4; the sender is no longer primary"
                .into()
        }]
    );
    let mut p = by_hand(&[], true, t0);
    assert!(
        matches!(
            p.handle(
                Input::Offer {
                    from: "node9".into(),
                    epoch: Epoch(1),
                    primary: None
                },
                t0
            )[..],
            [Output::Refuse { seen: Epoch(1), .. }]
        ),
        "a primary takes no stream of its own epoch"
    );
}

#[test]
fn an_accepted_offer_records_its_epoch_first_and_replaces_the_older_stream() {
    let t0 = Instant::now();
    let mut m = monitored(4, t0);
    let out = m.handle(
        Input::Offer {
            from: "node2".into(),
            epoch: Epoch(5),
            primary: Some(S2.into()),
        },
        t0,
    );
    assert_eq!(
        out,
        vec![
            Output::PersistEpoch(Epoch(5)),
            Output::Role(RoleState {
                role: Role::Standby,
                primary: Some(S2.into()),
                fenced_by: None
            }),
            Output::Accept { stream: 1 }
        ]
    );
    assert_eq!(
        m.handle(
            Input::Offer {
                from: "node2".into(),
                epoch: Epoch(5),
                primary: Some(S2.into())
            },
            t0
        ),
        vec![Output::Accept { stream: 2 }]
    );
    assert_eq!(
        m.handle(
            Input::Frame {
                stream: 1,
                epoch: Epoch(5)
            },
            t0
        ),
        vec![Output::Replaced]
    );
    assert_eq!(
        m.handle(
            Input::Frame {
                stream: 2,
                epoch: Epoch(5)
            },
            t0
        ),
        vec![Output::FrameOk]
    );
}

#[test]
fn a_frame_from_an_older_epoch_is_stale_and_a_newer_one_is_recorded_before_it_is_applied() {
    let t0 = Instant::now();
    let mut m = monitored(4, t0);
    m.handle(
        Input::Offer {
            from: "node2".into(),
            epoch: Epoch(4),
            primary: None,
        },
        t0,
    );
    view(&mut m, standby_view(6, S3), t0);
    assert_eq!(
        m.handle(
            Input::Frame {
                stream: 1,
                epoch: Epoch(4)
            },
            t0
        ),
        vec![Output::FrameStale { seen: Epoch(6) }]
    );
    assert_eq!(
        m.handle(
            Input::Frame {
                stream: 1,
                epoch: Epoch(7)
            },
            t0
        ),
        vec![Output::PersistEpoch(Epoch(7)), Output::FrameOk]
    );
}

#[test]
fn a_promotion_waits_out_the_last_lease_granted_to_the_millisecond() {
    let t0 = Instant::now();
    let mut m = monitored(1, t0);
    view(&mut m, standby_view(1, S2), t0);
    m.handle(Input::Granted, t0 + ms(1_000));
    let out = view(&mut m, primary_view(2, &[(S2, true)]), t0 + ms(1_100));
    assert_eq!(
        out,
        vec![
            Output::PersistEpoch(Epoch(2)),
            Output::Note(Note::WaitingOutLease(ms(500)))
        ]
    );
    assert_eq!(m.next_deadline(), Some(t0 + ms(1_600)));
    assert_eq!(m.handle(Input::Tick, t0 + ms(1_599)), vec![]);
    assert_eq!(
        m.handle(Input::Tick, t0 + ms(1_600)),
        vec![Output::PersistPromotion(Epoch(2))]
    );
    assert!(!m.is_primary(), "not before the epoch is recorded");
    m.handle(
        Input::Frame {
            stream: 0,
            epoch: Epoch(2),
        },
        t0,
    );
    let out = m.handle(
        Input::PromotionRecorded {
            epoch: Epoch(2),
            log_end: Lsn(40),
            error: None,
        },
        t0 + ms(1_605),
    );
    assert_eq!(
        out,
        vec![
            Output::ResetLogEnd,
            Output::Role(RoleState {
                role: Role::Primary,
                primary: Some(ME.into()),
                fenced_by: None
            }),
            Output::StartSender {
                link: 1,
                url: S2.into()
            },
            Output::Note(Note::Promoted(Epoch(2)))
        ]
    );
    assert_eq!(m.writing_epoch(), Epoch(2));
    assert_eq!(m.log_end(), Lsn(40));
    assert_eq!(
        m.handle(
            Input::Frame {
                stream: 0,
                epoch: Epoch(2)
            },
            t0
        ),
        vec![Output::Replaced],
        "no stream from a former primary appends any more"
    );
}

#[test]
fn a_node_just_started_under_a_monitor_waits_out_a_lease_it_may_have_granted_before() {
    let t0 = Instant::now();
    let mut m = monitored(1, t0);
    let out = view(&mut m, primary_view(2, &[]), t0 + ms(100));
    assert!(out.contains(&Output::Note(Note::WaitingOutLease(ms(500)))));
    assert_eq!(m.next_deadline(), Some(t0 + ms(600)));
}

#[test]
fn a_promotion_is_called_off_by_a_standby_view_and_a_failed_record_takes_nothing_over() {
    let t0 = Instant::now();
    let mut m = monitored(1, t0);
    view(&mut m, primary_view(2, &[]), t0);
    view(&mut m, standby_view(2, S2), t0 + ms(10));
    assert_eq!(m.handle(Input::Tick, t0 + ms(1_000)), vec![]);
    assert_eq!(m.next_deadline(), None);

    let out = view(&mut m, primary_view(3, &[]), t0 + ms(2_000));
    assert_eq!(
        out,
        vec![
            Output::PersistEpoch(Epoch(3)),
            Output::PersistPromotion(Epoch(3))
        ]
    );
    let out = m.handle(
        Input::PromotionRecorded {
            epoch: Epoch(3),
            log_end: Lsn(10),
            error: Some("disk full".into()),
        },
        t0 + ms(2_001),
    );
    assert_eq!(
        out,
        vec![Output::Note(Note::PromotionFailed("disk full".into()))]
    );
    assert!(!m.is_primary());
}

#[test]
fn a_failover_in_progress_refuses_writes_and_the_view_that_ends_it_lets_them_through() {
    let t0 = Instant::now();
    let mut m = promoted(&[], t0);
    let mut v = primary_view(2, &[]);
    v.failover = Some(Failover {
        reason: FailoverReason::Switchover,
        from: id("node1"),
        to: id("node2"),
        epoch: Epoch(3),
        phase: FailoverPhase::Draining,
    });
    view(&mut m, v, t0);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 1,
                writes: 1
            },
            t0
        ),
        vec![refused(
            1,
            WriteError::FailoverInProgress {
                to: Some("node2".into())
            }
        )]
    );
    view(&mut m, primary_view(2, &[]), t0);
    assert_eq!(
        m.handle(
            Input::Queued {
                batch: 2,
                writes: 1
            },
            t0
        ),
        vec![commit(2, 2)]
    );
}

#[test]
fn a_node_without_a_monitor_keeps_its_fence_when_it_follows_a_newer_primary() {
    let t0 = Instant::now();
    let mut m = by_hand(&[], true, t0);
    m.handle(Input::Deposed { epoch: Epoch(2) }, t0);
    let out = m.handle(
        Input::Offer {
            from: "node2".into(),
            epoch: Epoch(2),
            primary: Some(S2.into()),
        },
        t0,
    );
    assert_eq!(
        out,
        vec![
            Output::PersistEpoch(Epoch(2)),
            Output::Role(RoleState {
                role: Role::Standby,
                primary: Some(S2.into()),
                fenced_by: Some(Epoch(2))
            }),
            Output::Accept { stream: 1 }
        ]
    );
}

#[test]
fn a_read_may_show_only_what_the_primary_and_every_sync_standby_hold() {
    let t0 = Instant::now();
    let mut m = by_hand(&[S2, S3], true, t0);
    m.handle(Input::Started, t0);
    stream(&mut m, S2, 0, t0);
    stream(&mut m, S3, 0, t0);
    assert_eq!(m.replicated(), Lsn(0));
    m.handle(
        Input::Queued {
            batch: 1,
            writes: 1,
        },
        t0,
    );
    m.handle(Input::Decided { last: Lsn(5) }, t0);
    ack(&mut m, S2, 5, t0, t0);
    ack(&mut m, S3, 5, t0, t0);
    assert_eq!(
        m.replicated(),
        Lsn(0),
        "not yet durable on the primary itself"
    );
    committed(&mut m, 1, 5, t0);
    assert_eq!(m.replicated(), Lsn(5));
    m.handle(
        Input::Queued {
            batch: 2,
            writes: 1,
        },
        t0,
    );
    committed(&mut m, 2, 9, t0);
    ack(&mut m, S2, 9, t0, t0);
    assert_eq!(m.replicated(), Lsn(5), "node3 lacks 6..9");
    m.handle(Input::SyncDropped { url: S3.into() }, t0);
    assert_eq!(
        m.replicated(),
        Lsn(9),
        "out of the sync set, node3 no longer counts"
    );
}

//! Log matching: how far two logs agree.
//!
//! Only one primary writes in a given epoch, so two logs that hold an entry at the same
//! `(epoch, lsn)` hold the same entry there, and the same entries before it. A log is then
//! summed up by its *epoch boundaries* — for each epoch that wrote in it, the lsn of that
//! epoch's first entry — and its last position. Two such summaries are enough to find the
//! last lsn on which the logs agree, without shipping a single entry.

use keel_core::{Epoch, LogPos, Lsn};

/// The epoch of the entry at `lsn` in a log with these boundaries (sorted by epoch, each
/// with its first lsn) and this last position; `None` if the log does not reach `lsn`.
fn epoch_at(boundaries: &[(Epoch, Lsn)], last: LogPos, lsn: Lsn) -> Option<Epoch> {
    if lsn > last.lsn || lsn == Lsn(0) {
        return None;
    }
    boundaries
        .iter()
        .rev()
        .find(|(_, first)| *first <= lsn)
        .map(|(e, _)| *e)
}

/// The highest lsn at which both logs hold the same entry (`Lsn(0)` if none).
///
/// Everything a log holds after this point must be rolled back before it can follow the
/// other one.
pub fn agreement(
    ours: &[(Epoch, Lsn)],
    our_last: LogPos,
    theirs: &[(Epoch, Lsn)],
    their_last: LogPos,
) -> Lsn {
    let mut best = Lsn(0);
    for &(epoch, first) in theirs {
        // The same epoch must start at the same lsn in both logs (it was written by one
        // primary); then the two agree over the part of that epoch they both hold.
        let Some(&(_, our_first)) = ours.iter().find(|(e, _)| *e == epoch) else {
            continue;
        };
        if our_first != first {
            continue;
        }
        let our_end = end_of(ours, our_last, epoch);
        let their_end = end_of(theirs, their_last, epoch);
        let end = our_end.min(their_end);
        if end >= first && end > best {
            best = end;
        }
    }
    debug_assert!(
        best == Lsn(0) || epoch_at(ours, our_last, best) == epoch_at(theirs, their_last, best)
    );
    best
}

/// The last lsn written in `epoch` in a log (the lsn before the next epoch's first entry,
/// or the log's end).
fn end_of(boundaries: &[(Epoch, Lsn)], last: LogPos, epoch: Epoch) -> Lsn {
    match boundaries.iter().find(|(e, _)| *e > epoch) {
        Some(&(_, next_first)) => Lsn(next_first.0.saturating_sub(1)).min(last.lsn),
        None => last.lsn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: u64, lsn: u64) -> LogPos {
        LogPos {
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
        }
    }

    fn b(pairs: &[(u64, u64)]) -> Vec<(Epoch, Lsn)> {
        pairs.iter().map(|&(e, l)| (Epoch(e), Lsn(l))).collect()
    }

    #[test]
    fn identical_logs_agree_to_the_end() {
        let log = b(&[(1, 1), (2, 10)]);
        assert_eq!(agreement(&log, pos(2, 20), &log, pos(2, 20)), Lsn(20));
    }

    #[test]
    fn a_shorter_log_agrees_up_to_its_end() {
        let ours = b(&[(1, 1), (2, 10)]);
        assert_eq!(
            agreement(&ours, pos(2, 20), &b(&[(1, 1)]), pos(1, 7)),
            Lsn(7)
        );
        assert_eq!(
            agreement(&ours, pos(2, 20), &b(&[(1, 1), (2, 10)]), pos(2, 15)),
            Lsn(15)
        );
    }

    #[test]
    fn a_deposed_primary_suffix_is_cut_at_the_epoch_change() {
        // The old primary wrote 1..=12 in epoch 1, but only 1..=9 reached the standby,
        // which was promoted in epoch 2 and wrote from 10 on.
        let new_primary = b(&[(1, 1), (2, 10)]);
        let old_primary = b(&[(1, 1)]);
        assert_eq!(
            agreement(&new_primary, pos(2, 30), &old_primary, pos(1, 12)),
            Lsn(9)
        );
    }

    #[test]
    fn logs_with_nothing_in_common_agree_on_nothing() {
        assert_eq!(
            agreement(&b(&[(2, 1)]), pos(2, 5), &b(&[(1, 1)]), pos(1, 5)),
            Lsn(0)
        );
        assert_eq!(
            agreement(&b(&[(1, 1)]), pos(1, 5), &[], LogPos::default()),
            Lsn(0)
        );
    }

    #[test]
    fn an_epoch_that_started_elsewhere_is_not_trusted() {
        // Epoch 3 starts at 8 in one log and at 6 in the other: impossible if one
        // primary wrote both, so only epoch 1 (up to 5) counts.
        let ours = b(&[(1, 1), (3, 8)]);
        let theirs = b(&[(1, 1), (3, 6)]);
        assert_eq!(agreement(&ours, pos(3, 9), &theirs, pos(3, 9)), Lsn(5));
    }
}

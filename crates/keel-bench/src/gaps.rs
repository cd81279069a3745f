//! The unavailability windows, from the acknowledgement times of every writer and the
//! script's marks. Pure arithmetic on offsets from the start of the run, so the tests can
//! pin it exactly.
//!
//! For the kill marked at `k`, followed by the "writes are back" mark at `r`: the window
//! is the longest gap between consecutive acknowledgements (all writers together) from
//! the last one at or before `k` to the first one at or after `r`. In practice that is
//! the gap from the last write acknowledged before the kill to the first acknowledged
//! after it. Taking the longest gap of the span, rather than the gap around `k` itself,
//! keeps the figure right when a write the dying primary already answered is read a
//! moment after the mark: that answer only splits off a few milliseconds at the start.

use std::time::Duration;

/// What the script said, and when the writer heard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// `SIGUSR1`: the primary is being killed now.
    Kill,
    /// `SIGUSR2`: writes flow again (the script saw acknowledgements after the kill).
    Recovered,
}

#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub kind: MarkKind,
    pub at: Duration,
}

/// One kill cycle's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cycle {
    /// Writes were unavailable for this long.
    Window(Duration),
    /// No acknowledgement came after the kill (or no "recovered" mark).
    NeverRecovered,
}

/// The windows, one per kill mark, and the longest gap outside them (a stall while a
/// node restarts or rejoins shows up there).
#[derive(Debug, PartialEq, Eq)]
pub struct Windows {
    pub cycles: Vec<Cycle>,
    pub longest_gap_elsewhere: Duration,
}

/// `acks` must be sorted; `marks` in the order they came.
pub fn windows(acks: &[Duration], marks: &[Mark]) -> Windows {
    let mut cycles = Vec::new();
    // Index ranges [from, to] of acks that belong to a window; every gap inside one is
    // the failover's, every other gap is "elsewhere".
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, mark) in marks.iter().enumerate() {
        if mark.kind != MarkKind::Kill {
            continue;
        }
        let recovered = marks[i + 1..]
            .iter()
            .take_while(|m| m.kind != MarkKind::Kill)
            .find(|m| m.kind == MarkKind::Recovered);
        let first_after_recovery = recovered.and_then(|r| {
            let index = acks.partition_point(|&ack| ack < r.at);
            (index < acks.len()).then_some(index)
        });
        let Some(to) = first_after_recovery else {
            cycles.push(Cycle::NeverRecovered);
            continue;
        };
        // The last ack at or before the kill; none at all means the run started dead.
        let from = acks
            .partition_point(|&ack| ack <= mark.at)
            .saturating_sub(1);
        let longest = longest_gap(&acks[from..=to]);
        cycles.push(Cycle::Window(longest));
        spans.push((from, to));
    }
    let mut elsewhere = Duration::ZERO;
    for (i, pair) in acks.windows(2).enumerate() {
        let in_window = spans.iter().any(|&(from, to)| from <= i && i < to);
        if !in_window {
            elsewhere = elsewhere.max(pair[1] - pair[0]);
        }
    }
    Windows {
        cycles,
        longest_gap_elsewhere: elsewhere,
    }
}

/// For each kill mark, how long until the writers' lookups first found a new primary
/// (`changes`, sorted), if they did before the next kill.
pub fn named_after(marks: &[Mark], changes: &[Duration]) -> Vec<Option<Duration>> {
    let kills: Vec<Duration> = marks
        .iter()
        .filter(|m| m.kind == MarkKind::Kill)
        .map(|m| m.at)
        .collect();
    kills
        .iter()
        .enumerate()
        .map(|(i, &kill)| {
            let next_kill = kills.get(i + 1).copied().unwrap_or(Duration::MAX);
            changes
                .iter()
                .find(|&&change| change > kill && change < next_kill)
                .map(|&change| change - kill)
        })
        .collect()
}

fn longest_gap(acks: &[Duration]) -> Duration {
    acks.windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or(Duration::ZERO)
}

/// Nearest-rank quantile (the smallest value with at least `q` of the samples at or
/// below it): with 20 samples the median is the 10th and p99 the 20th, the largest.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn mark(kind: MarkKind, at: u64) -> Mark {
        Mark { kind, at: ms(at) }
    }

    #[test]
    fn window_runs_from_last_ack_before_kill_to_first_ack_after() {
        let acks = [0, 10, 20, 30, 850, 860, 870].map(ms);
        let marks = [mark(MarkKind::Kill, 35), mark(MarkKind::Recovered, 855)];
        let found = windows(&acks, &marks);
        assert_eq!(found.cycles, vec![Cycle::Window(ms(820))]);
        assert_eq!(found.longest_gap_elsewhere, ms(10));
    }

    #[test]
    fn an_answer_read_just_after_the_kill_mark_does_not_shorten_the_window() {
        // The dying primary's last answer is read 2 ms after the mark.
        let acks = [0, 10, 20, 37, 900, 905].map(ms);
        let marks = [mark(MarkKind::Kill, 35), mark(MarkKind::Recovered, 903)];
        assert_eq!(windows(&acks, &marks).cycles, vec![Cycle::Window(ms(863))]);
    }

    #[test]
    fn a_stall_while_the_old_primary_rejoins_is_reported_apart() {
        let acks = [0, 10, 500, 510, 700, 1000].map(ms);
        let marks = [
            mark(MarkKind::Kill, 15),
            mark(MarkKind::Recovered, 505),
            mark(MarkKind::Kill, 990),
            mark(MarkKind::Recovered, 995),
        ];
        let found = windows(&acks, &marks);
        assert_eq!(
            found.cycles,
            vec![Cycle::Window(ms(490)), Cycle::Window(ms(300))]
        );
        assert_eq!(found.longest_gap_elsewhere, ms(190));
    }

    #[test]
    fn a_kill_with_no_ack_after_it_never_recovered() {
        let acks = [0, 10].map(ms);
        let marks = [mark(MarkKind::Kill, 15)];
        assert_eq!(windows(&acks, &marks).cycles, vec![Cycle::NeverRecovered]);
        let marks = [mark(MarkKind::Kill, 15), mark(MarkKind::Recovered, 20)];
        assert_eq!(windows(&acks, &marks).cycles, vec![Cycle::NeverRecovered]);
    }

    #[test]
    fn a_new_primary_is_named_after_each_kill_or_not_at_all() {
        let marks = [
            mark(MarkKind::Kill, 100),
            mark(MarkKind::Recovered, 900),
            mark(MarkKind::Kill, 2000),
            mark(MarkKind::Kill, 3000),
        ];
        let changes = [ms(50), ms(700), ms(2600)];
        assert_eq!(
            named_after(&marks, &changes),
            vec![Some(ms(600)), Some(ms(600)), None]
        );
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let sorted: Vec<_> = (1..=20).map(|n| ms(n * 100)).collect();
        assert_eq!(quantile(&sorted, 0.0), Some(ms(100)));
        assert_eq!(quantile(&sorted, 0.5), Some(ms(1000)));
        assert_eq!(quantile(&sorted, 0.99), Some(ms(2000)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

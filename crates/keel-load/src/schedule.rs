//! Which requests a run sends and when: numbered tickets, their intended send times under
//! `--rate`, the end of the run, and which tickets are writes.
//!
//! Pure arithmetic on [`tokio::time::Instant`]s, so that tests can pin it exactly with
//! paused time.

use std::time::Duration;

use tokio::time::Instant;

use crate::settings::{Bound, Pace};

/// What ticket `n` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Send it; under `--rate`, at the intended instant.
    Send {
        /// When an open-loop run means to send it; `None` in a closed loop (send now).
        intended: Option<Instant>,
    },
    /// The run sends no such request: stop.
    Stop,
}

/// The tickets of one run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    /// Nanoseconds between intended send times, times `per_second`, is a second: kept as
    /// the rate rather than an interval so that ticket `n`'s time carries no rounding
    /// error that grows with `n`.
    per_second: Option<u32>,
    /// The last moment a request may be sent (with `--duration`).
    end: Option<Instant>,
    /// How many requests (with `--requests`).
    limit: Option<u64>,
    write_ratio: f64,
}

impl Schedule {
    /// The schedule of a run that starts at `start`.
    pub fn new(start: Instant, pace: Pace, bound: Bound, write_ratio: f64) -> Schedule {
        let per_second = match pace {
            Pace::Rate { per_second, .. } => Some(per_second),
            Pace::Concurrency(_) => None,
        };
        let (end, limit) = match bound {
            Bound::Duration(d) => (Some(start + d), None),
            Bound::Requests(n) => (None, Some(n)),
        };
        Schedule {
            start,
            per_second,
            end,
            limit,
            write_ratio,
        }
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The moment after which nothing more is sent, with `--duration`.
    pub fn end(&self) -> Option<Instant> {
        self.end
    }

    /// Ticket `n` (from 0).
    pub fn ticket(&self, n: u64) -> Ticket {
        if self.limit.is_some_and(|limit| n >= limit) {
            return Ticket::Stop;
        }
        let Some(per_second) = self.per_second else {
            return Ticket::Send { intended: None };
        };
        let offset = offset(n, per_second);
        let intended = self.start + offset;
        if self.end.is_some_and(|end| intended >= end) {
            return Ticket::Stop;
        }
        Ticket::Send {
            intended: Some(intended),
        }
    }

    /// How many requests an open-loop run means to send (`None` in a closed loop with
    /// `--duration`, where that depends on the answers).
    pub fn planned(&self) -> Option<u64> {
        if let Some(limit) = self.limit {
            return Some(limit);
        }
        self.per_second?;
        self.end.map(|end| self.due_before(end))
    }

    /// Under `--rate`: how many tickets are meant to be sent before `t` (0 in a closed
    /// loop, where nothing is due at a set time).
    pub fn due_before(&self, t: Instant) -> u64 {
        let Some(per_second) = self.per_second else {
            return 0;
        };
        // Tickets n with n / per_second < elapsed, i.e. n < elapsed·per_second.
        let nanos = t.saturating_duration_since(self.start).as_nanos() * u128::from(per_second);
        let due = u64::try_from(nanos.div_ceil(1_000_000_000)).unwrap_or(u64::MAX);
        self.limit.map_or(due, |limit| due.min(limit))
    }

    /// Whether ticket `n` is a write. Writes are spread evenly: ticket `n` is one when
    /// `⌊(n+1)·R⌋ > ⌊n·R⌋`, so the first `N` tickets hold exactly `⌊N·R⌋` writes.
    pub fn is_write(&self, n: u64) -> bool {
        is_write(n, self.write_ratio)
    }
}

/// See [`Schedule::is_write`].
pub fn is_write(n: u64, ratio: f64) -> bool {
    if ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    ((n + 1) as f64 * ratio).floor() > (n as f64 * ratio).floor()
}

/// The intended offset of ticket `n` from the start at `per_second`.
fn offset(n: u64, per_second: u32) -> Duration {
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(per_second.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32) -> Pace {
        Pace::Rate {
            per_second,
            connections: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_tickets_are_evenly_spaced_and_stop_at_the_end() {
        let start = Instant::now();
        let s = Schedule::new(start, rate(4), Bound::Duration(Duration::from_secs(1)), 0.0);
        let times: Vec<Duration> = (0..)
            .map_while(|n| match s.ticket(n) {
                Ticket::Send { intended } => Some(intended.expect("open loop") - start),
                Ticket::Stop => None,
            })
            .collect();
        assert_eq!(
            times,
            [0, 250, 500, 750].map(Duration::from_millis),
            "four tickets in the second, none at its end"
        );
        assert_eq!(s.planned(), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_that_does_not_divide_a_second_does_not_drift() {
        let start = Instant::now();
        let s = Schedule::new(
            start,
            rate(3),
            Bound::Duration(Duration::from_secs(100)),
            0.0,
        );
        let Ticket::Send { intended } = s.ticket(299) else {
            panic!("ticket 299 is inside 100 s");
        };
        assert_eq!(
            intended.expect("open loop") - start,
            Duration::from_nanos(99_666_666_666)
        );
        assert_eq!(s.ticket(300), Ticket::Stop);
        assert_eq!(s.planned(), Some(300));
        let odd = Schedule::new(
            start,
            rate(3),
            Bound::Duration(Duration::from_millis(1001)),
            0.0,
        );
        assert_eq!(odd.planned(), Some(4), "0, 333, 666 and 1000 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_tickets_send_now_until_the_request_limit() {
        let s = Schedule::new(
            Instant::now(),
            Pace::Concurrency(2),
            Bound::Requests(3),
            0.0,
        );
        assert_eq!(s.ticket(2), Ticket::Send { intended: None });
        assert_eq!(s.ticket(3), Ticket::Stop);
        assert_eq!(s.planned(), Some(3));
        let timed = Schedule::new(
            Instant::now(),
            Pace::Concurrency(2),
            Bound::Duration(Duration::from_secs(1)),
            0.0,
        );
        assert_eq!(timed.ticket(1_000_000), Ticket::Send { intended: None });
        assert_eq!(timed.planned(), None);
    }

    #[test]
    fn writes_are_spread_evenly_and_their_count_is_exact() {
        let writes = |n: u64, r: f64| (0..n).filter(|&i| is_write(i, r)).count();
        assert_eq!(writes(1000, 0.0), 0);
        assert_eq!(writes(1000, 1.0), 1000);
        assert_eq!(writes(1000, 0.1), 100);
        assert_eq!(writes(1000, 0.25), 250);
        assert_eq!(writes(7, 0.5), 3);
        let which: Vec<u64> = (0..10).filter(|&i| is_write(i, 0.3)).collect();
        assert_eq!(which, [3, 6, 9]);
    }
}

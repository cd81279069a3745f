//! The sliding windows a breaker computes its rates over: the last `n` calls, or the
//! calls of the last stretch of time.
//!
//! Both keep running totals and are allocated once, when the breaker is built, so
//! recording a call allocates nothing.

use std::time::Duration;

use tokio::time::Instant;

use super::config::Window;

/// How many buckets a time window is kept in.
const BUCKETS: usize = 10;

/// One finished call, as a window counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

/// Calls, failures and slow calls over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u32,
    pub(crate) failed: u32,
    pub(crate) slow: u32,
}

impl Tally {
    pub(crate) fn add(&mut self, call: Call) {
        self.calls += 1;
        self.failed += u32::from(call.failed);
        self.slow += u32::from(call.slow);
    }

    fn remove(&mut self, call: Call) {
        self.calls -= 1;
        self.failed -= u32::from(call.failed);
        self.slow -= u32::from(call.slow);
    }

    /// Failed calls as a percentage of all (0 with no calls).
    pub(crate) fn failure_rate(&self) -> f64 {
        percent(self.failed, self.calls)
    }

    /// Slow calls as a percentage of all (0 with no calls).
    pub(crate) fn slow_call_rate(&self) -> f64 {
        percent(self.slow, self.calls)
    }
}

fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

/// A count or a time window.
#[derive(Debug)]
pub(crate) enum SlidingWindow {
    Count(CountWindow),
    // Boxed: ten buckets make it seven times the size of a count window.
    Time(Box<TimeWindow>),
}

impl SlidingWindow {
    pub(crate) fn new(window: Window, origin: Instant) -> Self {
        match window {
            Window::Count(n) => SlidingWindow::Count(CountWindow::new(n)),
            Window::Time(span) => SlidingWindow::Time(Box::new(TimeWindow::new(span, origin))),
        }
    }

    /// Records a call; `now` is only read by a time window.
    pub(crate) fn record(&mut self, call: Call, now: impl FnOnce() -> Instant) {
        match self {
            SlidingWindow::Count(w) => w.record(call),
            SlidingWindow::Time(w) => w.record(call, now()),
        }
    }

    /// The calls inside the window; `now` is only read by a time window.
    pub(crate) fn tally(&self, now: impl FnOnce() -> Instant) -> Tally {
        match self {
            SlidingWindow::Count(w) => w.tally,
            SlidingWindow::Time(w) => w.tally(now()),
        }
    }

    /// Forgets every call.
    pub(crate) fn clear(&mut self) {
        match self {
            SlidingWindow::Count(w) => w.clear(),
            SlidingWindow::Time(w) => w.clear(),
        }
    }
}

/// The last `n` calls, in a ring.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[Call]>,
    /// Where the next call goes (and, once full, the oldest call).
    next: usize,
    tally: Tally,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        let empty = Call {
            failed: false,
            slow: false,
        };
        CountWindow {
            ring: vec![empty; size.max(1) as usize].into_boxed_slice(),
            next: 0,
            tally: Tally::default(),
        }
    }

    fn record(&mut self, call: Call) {
        if self.tally.calls as usize == self.ring.len() {
            self.tally.remove(self.ring[self.next]);
        }
        self.ring[self.next] = call;
        self.tally.add(call);
        self.next = (self.next + 1) % self.ring.len();
    }

    fn clear(&mut self) {
        self.next = 0;
        self.tally = Tally::default();
    }
}

/// The calls of the last `span`, in ten buckets of `span / 10`.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    origin: Instant,
    bucket_len: Duration,
    buckets: [(u64, Tally); BUCKETS],
}

impl TimeWindow {
    fn new(span: Duration, origin: Instant) -> Self {
        TimeWindow {
            origin,
            bucket_len: (span / BUCKETS as u32).max(Duration::from_nanos(1)),
            buckets: [(0, Tally::default()); BUCKETS],
        }
    }

    fn index_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.bucket_len.as_nanos()) as u64
    }

    fn record(&mut self, call: Call, now: Instant) {
        let index = self.index_of(now);
        let (bucket_index, tally) = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if *bucket_index != index {
            *bucket_index = index;
            *tally = Tally::default();
        }
        tally.add(call);
    }

    fn tally(&self, now: Instant) -> Tally {
        let index = self.index_of(now);
        let live = |i: u64| i <= index && i + BUCKETS as u64 > index;
        self.buckets
            .iter()
            .filter(|(i, _)| live(*i))
            .fold(Tally::default(), |sum, (_, t)| Tally {
                calls: sum.calls + t.calls,
                failed: sum.failed + t.failed,
                slow: sum.slow + t.slow,
            })
    }

    fn clear(&mut self) {
        self.buckets = [(0, Tally::default()); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Call = Call {
        failed: false,
        slow: false,
    };
    const FAIL: Call = Call {
        failed: true,
        slow: false,
    };
    const SLOW: Call = Call {
        failed: false,
        slow: true,
    };

    fn tally(calls: u32, failed: u32, slow: u32) -> Tally {
        Tally {
            calls,
            failed,
            slow,
        }
    }

    #[test]
    fn count_window_forgets_the_oldest_call() {
        let now = Instant::now();
        let mut w = SlidingWindow::new(Window::Count(3), now);
        for call in [FAIL, FAIL, SLOW] {
            w.record(call, || now);
        }
        assert_eq!(w.tally(|| now), tally(3, 2, 1));
        w.record(OK, || now);
        assert_eq!(w.tally(|| now), tally(3, 1, 1));
        w.record(OK, || now);
        w.record(OK, || now);
        assert_eq!(w.tally(|| now), tally(3, 0, 0));
    }

    #[test]
    fn count_window_clear_starts_over() {
        let now = Instant::now();
        let mut w = SlidingWindow::new(Window::Count(2), now);
        w.record(FAIL, || now);
        w.record(FAIL, || now);
        w.clear();
        w.record(OK, || now);
        assert_eq!(w.tally(|| now), tally(1, 0, 0));
    }

    #[test]
    fn time_window_ages_out_a_bucket_at_a_time() {
        let start = Instant::now();
        let mut w = SlidingWindow::new(Window::Time(Duration::from_secs(10)), start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        w.record(FAIL, || at(0));
        w.record(FAIL, || at(999));
        w.record(OK, || at(1_000));
        w.record(SLOW, || at(5_500));
        assert_eq!(w.tally(|| at(9_999)), tally(4, 2, 1));
        assert_eq!(w.tally(|| at(10_000)), tally(2, 0, 1), "second 0 is gone");
        assert_eq!(w.tally(|| at(11_000)), tally(1, 0, 1), "second 1 is gone");
        assert_eq!(w.tally(|| at(16_000)), tally(0, 0, 0));
    }

    #[test]
    fn time_window_reuses_a_stale_bucket() {
        let start = Instant::now();
        let mut w = SlidingWindow::new(Window::Time(Duration::from_secs(1)), start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        w.record(FAIL, || at(50));
        w.record(OK, || at(1_050)); // same slot, ten buckets later
        assert_eq!(w.tally(|| at(1_050)), tally(1, 0, 0));
    }

    #[test]
    fn rates_are_percentages() {
        let t = tally(8, 2, 6);
        assert_eq!((t.failure_rate(), t.slow_call_rate()), (25.0, 75.0));
        assert_eq!(Tally::default().failure_rate(), 0.0);
    }
}

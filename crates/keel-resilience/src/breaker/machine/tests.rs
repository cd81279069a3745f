//! Every transition of the state machine, pinned with explicit instants.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::breaker::config::Window;

use CallOutcome::{Failure as F, Success as S};

const FAST: Duration = Duration::from_millis(10);

struct Machine {
    core: Core,
    now: Instant,
}

impl Machine {
    fn new(config: Config) -> Self {
        config.validate().expect("valid config");
        let start = Instant::now();
        Machine {
            core: Core::new(config, start),
            now: start,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn acquire(&mut self) -> (Result<u64, Rejected>, Option<Change>) {
        self.core.acquire(&mut LazyNow::at(self.now))
    }

    /// Acquires and records one call; the transition it caused, if any.
    fn call(&mut self, outcome: CallOutcome, elapsed: Duration) -> Option<(State, State, Reason)> {
        let (permit, opened) = self.acquire();
        assert!(opened.is_none(), "acquire changed state unexpectedly");
        let epoch = permit.expect("call permitted");
        self.record(epoch, outcome, elapsed)
    }

    fn record(
        &mut self,
        epoch: u64,
        outcome: CallOutcome,
        elapsed: Duration,
    ) -> Option<(State, State, Reason)> {
        self.core
            .record(epoch, outcome, elapsed, &mut LazyNow::at(self.now))
            .map(|c| {
                assert_eq!(c.at, self.now, "transition stamped with the call's time");
                (c.from, c.to, c.reason)
            })
    }

    fn calls(&mut self, outcomes: &[CallOutcome]) -> Vec<Option<(State, State, Reason)>> {
        outcomes.iter().map(|&o| self.call(o, FAST)).collect()
    }

    /// Drives a fresh machine to open with `n` failures (consecutive mode or rate).
    fn open_now(&mut self) {
        while self.core.state() == State::Closed {
            self.call(F, FAST);
        }
        assert_eq!(self.core.state(), State::Open);
    }
}

fn count_config(size: u32, minimum: u32, threshold: f64) -> Config {
    Config {
        window: Window::Count(size),
        minimum_calls: minimum,
        failure_rate_threshold: threshold,
        wait_in_open: Duration::from_secs(5),
        permitted_half_open_calls: 2,
        ..Config::default()
    }
}

fn rate(percent: f64, threshold: f64) -> Reason {
    Reason::FailureRate { percent, threshold }
}

#[test]
fn closed_waits_for_minimum_calls_before_judging() {
    let mut m = Machine::new(count_config(10, 4, 50.0));
    let changes = m.calls(&[F, F, F]);
    assert_eq!(
        changes,
        [None, None, None],
        "3 failures of 3 is below 4 calls"
    );
    assert_eq!(
        m.call(F, FAST),
        Some((State::Closed, State::Open, rate(100.0, 50.0)))
    );
}

#[test]
fn closed_opens_when_failure_rate_reaches_threshold() {
    let mut m = Machine::new(count_config(4, 4, 50.0));
    assert_eq!(m.calls(&[S, S, F]), [None, None, None]);
    assert_eq!(
        m.call(F, FAST),
        Some((State::Closed, State::Open, rate(50.0, 50.0)))
    );
}

#[test]
fn count_window_forgets_old_calls() {
    let mut m = Machine::new(count_config(4, 4, 75.0));
    // windows: [F F S S] 50%, [F S S F] 50%, [S S F F] 50%, [S F F F] 75%
    let changes = m.calls(&[F, F, S, S, F, F]);
    assert!(changes.iter().all(Option::is_none));
    assert_eq!(
        m.call(F, FAST),
        Some((State::Closed, State::Open, rate(75.0, 75.0)))
    );
}

#[test]
fn time_window_forgets_calls_older_than_its_span() {
    let config = Config {
        window: Window::Time(Duration::from_secs(10)),
        minimum_calls: 2,
        ..count_config(1, 2, 50.0)
    };
    let mut m = Machine::new(config);
    assert_eq!(m.call(F, FAST), None);
    m.advance(Duration::from_secs(11));
    assert_eq!(m.call(S, FAST), None, "the failure at 0 s has aged out");
    m.advance(Duration::from_secs(1));
    assert_eq!(
        m.call(F, FAST),
        Some((State::Closed, State::Open, rate(50.0, 50.0)))
    );
}

#[test]
fn slow_calls_open_at_the_slow_call_rate() {
    let config = Config {
        slow_call_duration: Duration::from_secs(1),
        slow_call_rate_threshold: 50.0,
        ..count_config(2, 2, 50.0)
    };
    let mut m = Machine::new(config);
    assert_eq!(m.call(S, Duration::from_secs(2)), None);
    assert_eq!(
        m.call(S, Duration::from_millis(999)),
        Some((
            State::Closed,
            State::Open,
            Reason::SlowCallRate {
                percent: 50.0,
                threshold: 50.0
            }
        ))
    );
}

#[test]
fn consecutive_mode_opens_on_failures_in_a_row_only() {
    let config = Config {
        consecutive_failures: Some(3),
        ..count_config(10, 1, 50.0)
    };
    let mut m = Machine::new(config);
    // 4 failures in 5 calls would trip the 50% rate; the success breaks the run.
    assert!(m.calls(&[F, F, S, F, F]).iter().all(Option::is_none));
    assert_eq!(
        m.call(F, FAST),
        Some((State::Closed, State::Open, Reason::ConsecutiveFailures(3)))
    );
}

#[test]
fn open_rejects_with_the_time_left_until_half_open() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    m.open_now();
    m.advance(Duration::from_millis(1_800));
    let (result, change) = m.acquire();
    assert_eq!(
        result,
        Err(Rejected {
            state: State::Open,
            retry_in: Some(Duration::from_millis(3_200))
        })
    );
    assert_eq!(change, None);
    m.advance(Duration::from_millis(3_199));
    assert!(m.acquire().0.is_err(), "1 ms early");
}

#[test]
fn open_turns_half_open_when_the_wait_is_over_and_a_call_arrives() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    m.open_now();
    m.advance(Duration::from_secs(5));
    let (result, change) = m.acquire();
    assert!(result.is_ok(), "the arriving call is the first trial");
    let change = change.expect("a transition");
    assert_eq!(
        (change.from, change.to, change.reason),
        (State::Open, State::HalfOpen, Reason::OpenWaitElapsed)
    );
}

/// Opens, waits, and returns the epochs of the two trial permits.
fn half_open_with_two_trials(m: &mut Machine) -> (u64, u64) {
    m.open_now();
    m.advance(Duration::from_secs(5));
    let first = m.acquire().0.expect("first trial");
    let second = m.acquire().0.expect("second trial");
    assert_eq!(m.core.state(), State::HalfOpen);
    (first, second)
}

#[test]
fn half_open_permits_only_the_trial_calls() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    half_open_with_two_trials(&mut m);
    assert_eq!(
        m.acquire().0,
        Err(Rejected {
            state: State::HalfOpen,
            retry_in: None
        })
    );
}

#[test]
fn half_open_closes_when_the_trials_succeed() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    let (a, b) = half_open_with_two_trials(&mut m);
    assert_eq!(m.record(a, S, FAST), None, "waits for every trial");
    assert_eq!(
        m.record(b, S, FAST),
        Some((State::HalfOpen, State::Closed, Reason::TrialsSucceeded))
    );
    assert_eq!(
        m.calls(&[S, F]),
        [None, Some((State::Closed, State::Open, rate(50.0, 50.0)))],
        "closed again, with a fresh window"
    );
}

#[test]
fn half_open_reopens_when_the_trials_fail() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    let (a, b) = half_open_with_two_trials(&mut m);
    m.record(a, S, FAST);
    assert_eq!(
        m.record(b, F, FAST),
        Some((State::HalfOpen, State::Open, rate(50.0, 50.0)))
    );
    m.advance(Duration::from_millis(4_999));
    assert!(m.acquire().0.is_err(), "the open wait starts over");
    m.advance(Duration::from_millis(1));
    assert!(m.acquire().0.is_ok());
}

#[test]
fn half_open_in_consecutive_mode_reopens_on_the_first_failed_trial() {
    let config = Config {
        consecutive_failures: Some(2),
        ..count_config(10, 10, 50.0)
    };
    let mut m = Machine::new(config);
    let (a, _) = half_open_with_two_trials(&mut m);
    assert_eq!(
        m.record(a, F, FAST),
        Some((State::HalfOpen, State::Open, Reason::TrialFailed))
    );
}

#[test]
fn an_ignored_trial_gives_its_permit_back() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    let (a, _) = half_open_with_two_trials(&mut m);
    assert!(m.acquire().0.is_err());
    assert_eq!(m.record(a, CallOutcome::Ignored, FAST), None);
    assert!(m.acquire().0.is_ok(), "the freed permit is issued again");
    assert_eq!(m.core.state(), State::HalfOpen);
}

#[test]
fn a_call_from_before_a_transition_does_not_count_after_it() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    let stale = m.acquire().0.expect("closed permits");
    m.open_now();
    m.advance(Duration::from_secs(5));
    let trial = m.acquire().0.expect("trial");
    assert_eq!(
        m.record(stale, F, FAST),
        None,
        "a failure from the closed epoch"
    );
    assert_eq!(
        m.record(trial, S, FAST),
        None,
        "one trial of two: still judging"
    );
    assert_eq!(m.core.state(), State::HalfOpen);
    let metrics = m.core.metrics(&mut LazyNow::at(m.now));
    assert_eq!(metrics.window_calls, 1);
    assert_eq!(metrics.failed, 3, "still counted in the totals");
}

#[test]
fn forced_open_rejects_everything_until_reset() {
    let mut m = Machine::new(count_config(2, 2, 50.0));
    let change = m.core.command(State::ForcedOpen, Reason::Forced, m.now);
    assert_eq!((change.from, change.to), (State::Closed, State::ForcedOpen));
    m.advance(Duration::from_secs(3600));
    assert_eq!(
        m.acquire().0,
        Err(Rejected {
            state: State::ForcedOpen,
            retry_in: None
        })
    );
    let change = m.core.command(State::Closed, Reason::Reset, m.now);
    assert_eq!((change.from, change.to), (State::ForcedOpen, State::Closed));
    assert!(m.acquire().0.is_ok());
}

#[test]
fn forced_closed_never_trips() {
    let mut m = Machine::new(count_config(2, 1, 50.0));
    m.core.command(State::ForcedClosed, Reason::Forced, m.now);
    let changes = m.calls(&[F, F, F, F]);
    assert!(changes.iter().all(Option::is_none));
    assert_eq!(m.core.state(), State::ForcedClosed);
}

#[test]
fn reset_forgets_the_window() {
    let mut m = Machine::new(count_config(4, 4, 50.0));
    m.calls(&[F, F, F]);
    m.core.command(State::Closed, Reason::Reset, m.now);
    assert_eq!(m.calls(&[F, S, S]), [None, None, None]);
    assert_eq!(
        m.call(S, FAST),
        None,
        "1 failure in 4 after the reset, not 4 in 7"
    );
}

#[test]
fn metrics_count_outcomes_rejections_and_transitions() {
    let config = Config {
        slow_call_duration: Duration::from_secs(1),
        ..count_config(4, 4, 50.0)
    };
    let mut m = Machine::new(config);
    m.call(S, Duration::from_secs(2));
    m.call(S, FAST);
    let epoch = m.acquire().0.expect("permit");
    m.record(epoch, CallOutcome::Ignored, FAST);
    let before = m.core.metrics(&mut LazyNow::at(m.now));
    assert_eq!(
        (
            before.window_calls,
            before.failure_rate,
            before.slow_call_rate
        ),
        (2, None, None),
        "no rate below minimum calls"
    );
    m.calls(&[F, F]);
    let _ = m.acquire();
    let _ = m.acquire();
    let after = m.core.metrics(&mut LazyNow::at(m.now));
    assert_eq!(after.state, State::Open);
    assert_eq!(
        (
            after.successful,
            after.failed,
            after.slow,
            after.ignored,
            after.rejected
        ),
        (2, 2, 1, 1, 2)
    );
    assert_eq!(after.transitions.to(State::Open), 1);
    assert_eq!(after.transitions.to(State::HalfOpen), 0);
}

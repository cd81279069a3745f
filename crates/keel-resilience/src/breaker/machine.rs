//! The breaker's decisions with no locks, channels or clock reads: calls and commands in,
//! at most one transition out, time passed in by the caller.

use std::time::Duration;

use tokio::time::Instant;

use super::config::Config;
use super::event::{BreakerMetrics, Reason, Rejected, State, Transitions};
use super::window::{Call, SlidingWindow, Tally};

/// How a finished call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// It worked.
    Success,
    /// It failed in a way that says the dependency is unwell.
    Failure,
    /// Not counted either way (cancelled, or a failure that is the caller's fault).
    Ignored,
}

/// A state change, for the breaker to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Change {
    pub(crate) from: State,
    pub(crate) to: State,
    pub(crate) reason: Reason,
    pub(crate) at: Instant,
}

/// The current instant, read at most once and only if needed: a count window in the
/// closed state never needs it, which keeps a clock read off the common path.
pub(crate) struct LazyNow(Option<Instant>);

impl LazyNow {
    pub(crate) fn new() -> Self {
        LazyNow(None)
    }

    #[cfg(test)]
    pub(crate) fn at(now: Instant) -> Self {
        LazyNow(Some(now))
    }

    pub(crate) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    successful: u64,
    failed: u64,
    slow: u64,
    ignored: u64,
    rejected: u64,
    transitions: Transitions,
}

/// The state machine.
#[derive(Debug)]
pub(crate) struct Core {
    config: Config,
    state: State,
    /// Bumped at every transition; a permit from an earlier epoch does not count.
    epoch: u64,
    window: SlidingWindow,
    consecutive_failures: u32,
    opened_at: Instant,
    trials_issued: u32,
    trials: Tally,
    counters: Counters,
}

impl Core {
    pub(crate) fn new(config: Config, now: Instant) -> Self {
        Core {
            config,
            state: State::Closed,
            epoch: 0,
            window: SlidingWindow::new(config.window, now),
            consecutive_failures: 0,
            opened_at: now,
            trials_issued: 0,
            trials: Tally::default(),
            counters: Counters::default(),
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Lets a call through (returning the epoch its permit belongs to) or refuses it.
    pub(crate) fn acquire(&mut self, now: &mut LazyNow) -> (Result<u64, Rejected>, Option<Change>) {
        match self.state {
            State::Closed | State::ForcedClosed => (Ok(self.epoch), None),
            State::Open => self.acquire_open(now.get()),
            State::HalfOpen => (self.acquire_trial(), None),
            State::ForcedOpen => (Err(self.reject(None)), None),
        }
    }

    fn acquire_open(&mut self, now: Instant) -> (Result<u64, Rejected>, Option<Change>) {
        let waited = now.saturating_duration_since(self.opened_at);
        if waited < self.config.wait_in_open {
            let retry_in = self.config.wait_in_open - waited;
            return (Err(self.reject(Some(retry_in))), None);
        }
        let change = self.transition(State::HalfOpen, Reason::OpenWaitElapsed, now);
        (self.acquire_trial(), Some(change))
    }

    fn acquire_trial(&mut self) -> Result<u64, Rejected> {
        if self.trials_issued < self.config.permitted_half_open_calls {
            self.trials_issued += 1;
            Ok(self.epoch)
        } else {
            Err(self.reject(None))
        }
    }

    fn reject(&mut self, retry_in: Option<Duration>) -> Rejected {
        self.counters.rejected += 1;
        Rejected {
            state: self.state,
            retry_in,
        }
    }

    /// Counts a finished call let through in `epoch`; only a call of the current epoch
    /// moves the state.
    pub(crate) fn record(
        &mut self,
        epoch: u64,
        outcome: CallOutcome,
        elapsed: Duration,
        now: &mut LazyNow,
    ) -> Option<Change> {
        let call = match outcome {
            CallOutcome::Ignored => {
                self.record_ignored(epoch);
                return None;
            }
            CallOutcome::Success | CallOutcome::Failure => Call {
                failed: outcome == CallOutcome::Failure,
                slow: elapsed >= self.config.slow_call_duration,
            },
        };
        self.count(call);
        if epoch != self.epoch {
            return None;
        }
        match self.state {
            State::Closed => self.record_closed(call, now),
            State::HalfOpen => self.record_trial(call, now),
            State::Open | State::ForcedOpen | State::ForcedClosed => None,
        }
    }

    fn record_ignored(&mut self, epoch: u64) {
        self.counters.ignored += 1;
        if epoch == self.epoch && self.state == State::HalfOpen {
            // Give the permit back, or a cancelled trial would leave half-open stuck.
            self.trials_issued = self.trials_issued.saturating_sub(1);
        }
    }

    fn count(&mut self, call: Call) {
        let c = &mut self.counters;
        if call.failed {
            c.failed += 1;
        } else {
            c.successful += 1;
        }
        c.slow += u64::from(call.slow);
    }

    fn record_closed(&mut self, call: Call, now: &mut LazyNow) -> Option<Change> {
        self.window.record(call, || now.get());
        self.consecutive_failures = if call.failed {
            self.consecutive_failures + 1
        } else {
            0
        };
        if let Some(limit) = self.config.consecutive_failures
            && self.consecutive_failures >= limit
        {
            let reason = Reason::ConsecutiveFailures(self.consecutive_failures);
            return Some(self.transition(State::Open, reason, now.get()));
        }
        let tally = self.window.tally(|| now.get());
        if tally.calls < self.config.effective_minimum_calls() {
            return None;
        }
        let reason = self.trip_reason(&tally)?;
        Some(self.transition(State::Open, reason, now.get()))
    }

    fn record_trial(&mut self, call: Call, now: &mut LazyNow) -> Option<Change> {
        self.trials.add(call);
        if call.failed && self.config.consecutive_failures.is_some() {
            return Some(self.transition(State::Open, Reason::TrialFailed, now.get()));
        }
        if self.trials.calls < self.config.permitted_half_open_calls {
            return None;
        }
        let (to, reason) = match self.trip_reason(&self.trials) {
            Some(reason) => (State::Open, reason),
            None => (State::Closed, Reason::TrialsSucceeded),
        };
        Some(self.transition(to, reason, now.get()))
    }

    /// The reason to open over these calls, if any. In consecutive-failures mode the
    /// failure rate does not count.
    fn trip_reason(&self, tally: &Tally) -> Option<Reason> {
        let failure = tally.failure_rate();
        if self.config.consecutive_failures.is_none()
            && failure >= self.config.failure_rate_threshold
        {
            return Some(Reason::FailureRate {
                percent: failure,
                threshold: self.config.failure_rate_threshold,
            });
        }
        let slow = tally.slow_call_rate();
        (slow >= self.config.slow_call_rate_threshold).then_some(Reason::SlowCallRate {
            percent: slow,
            threshold: self.config.slow_call_rate_threshold,
        })
    }

    /// Forces a state (open or closed) or resets to closed, forgetting every call.
    pub(crate) fn command(&mut self, to: State, reason: Reason, now: Instant) -> Change {
        self.transition(to, reason, now)
    }

    fn transition(&mut self, to: State, reason: Reason, at: Instant) -> Change {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        self.window.clear();
        self.consecutive_failures = 0;
        self.trials_issued = 0;
        self.trials = Tally::default();
        if to == State::Open {
            self.opened_at = at;
        }
        self.counters.transitions.count(to);
        Change {
            from,
            to,
            reason,
            at,
        }
    }

    /// Counters and the rates of the calls being judged now.
    pub(crate) fn metrics(&self, now: &mut LazyNow) -> BreakerMetrics {
        let (tally, judged) = match self.state {
            State::Closed => {
                let tally = self.window.tally(|| now.get());
                (tally, tally.calls >= self.config.effective_minimum_calls())
            }
            // The trials are judged once all are in, which ends half-open at once.
            State::HalfOpen => (self.trials, false),
            State::Open | State::ForcedOpen | State::ForcedClosed => (Tally::default(), false),
        };
        let c = self.counters;
        BreakerMetrics {
            state: self.state,
            successful: c.successful,
            failed: c.failed,
            slow: c.slow,
            ignored: c.ignored,
            rejected: c.rejected,
            transitions: c.transitions,
            window_calls: tally.calls,
            failure_rate: judged.then(|| tally.failure_rate()),
            slow_call_rate: judged.then(|| tally.slow_call_rate()),
        }
    }
}

#[cfg(test)]
mod tests;

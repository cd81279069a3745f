//! What a breaker shows the world: its state, its transitions as events, the refusal a
//! caller gets while it is open, and its counters.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

use crate::failure::{Failure, FailureKind};
use crate::retry::Seconds;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through; their results feed the window.
    Closed,
    /// Calls are refused until `wait_in_open` has passed.
    Open,
    /// A few trial calls go through; their results decide between closed and open.
    HalfOpen,
    /// Forced open by an operator: every call is refused until forced otherwise or reset.
    ForcedOpen,
    /// Forced closed by an operator: every call goes through and nothing trips the breaker.
    ForcedClosed,
}

impl State {
    /// Every state, in the order of [`State::index`].
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::ForcedClosed,
    ];

    /// A small number for the state (its place in [`State::ALL`]), for gauges and arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The state's name as metrics and logs spell it: `closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::ForcedClosed => "forced_closed",
        }
    }

    /// Whether every call is let through without asking anything of the breaker's lock.
    pub(crate) fn permits_all(self) -> bool {
        matches!(self, State::Closed | State::ForcedClosed)
    }

    pub(crate) fn from_index(index: u64) -> State {
        State::ALL
            .get(index as usize)
            .copied()
            .unwrap_or(State::Closed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The failure rate (a percentage) reached the threshold.
    FailureRate {
        /// The measured rate.
        percent: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// The slow-call rate (a percentage) reached the threshold.
    SlowCallRate {
        /// The measured rate.
        percent: f64,
        /// The configured threshold.
        threshold: f64,
    },
    /// This many calls failed in a row (consecutive-failures mode).
    ConsecutiveFailures(u32),
    /// A trial call failed in half-open (consecutive-failures mode).
    TrialFailed,
    /// `wait_in_open` passed and a call arrived.
    OpenWaitElapsed,
    /// Every permitted trial call completed within the thresholds.
    TrialsSucceeded,
    /// An operator forced the state.
    Forced,
    /// An operator reset the breaker.
    Reset,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailureRate { percent, threshold } => {
                write!(f, "failure rate {percent:.1}% reached {threshold}%")
            }
            Reason::SlowCallRate { percent, threshold } => {
                write!(f, "slow-call rate {percent:.1}% reached {threshold}%")
            }
            Reason::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Reason::TrialFailed => f.write_str("a trial call failed"),
            Reason::OpenWaitElapsed => f.write_str("open wait elapsed"),
            Reason::TrialsSucceeded => f.write_str("trial calls succeeded"),
            Reason::Forced => f.write_str("forced"),
            Reason::Reset => f.write_str("reset"),
        }
    }
}

/// One transition of one breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerEvent {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state it left.
    pub from: State,
    /// The state it entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// When, on tokio's clock.
    pub at: Instant,
}

impl fmt::Display for BreakerEvent {
    /// `breaker redis: closed -> open (3 consecutive failures)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "breaker {}: {} -> {} ({})",
            self.breaker, self.from, self.to, self.reason
        )
    }
}

/// A call the breaker refused to let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{}", self.describe())]
pub struct Rejected {
    /// The state that refused it: open, half-open (all trial permits taken) or forced open.
    pub state: State,
    /// How long until the breaker lets a trial call through, when known (open only).
    pub retry_in: Option<Duration>,
}

impl Rejected {
    fn describe(&self) -> String {
        match (self.state, self.retry_in) {
            (State::Open, Some(wait)) => format!("circuit open, retry in {}", Seconds(wait)),
            (State::HalfOpen, _) => "circuit half-open, trial calls in flight".to_string(),
            (State::ForcedOpen, _) => "circuit forced open".to_string(),
            (state, _) => format!("circuit {state}"),
        }
    }

    /// The refusal as a retry policy sees it: not transient, with the open wait as its
    /// `Retry-After`.
    pub fn failure(&self) -> Failure {
        Failure::new(FailureKind::CircuitOpen)
            .retry_after(self.retry_in)
            .detail(self.to_string())
    }
}

/// Transitions counted by the state they entered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transitions {
    by_target: [u64; 5],
}

impl Transitions {
    /// How many times the breaker entered `state`.
    pub fn to(&self, state: State) -> u64 {
        self.by_target[state.index()]
    }

    pub(crate) fn count(&mut self, state: State) {
        self.by_target[state.index()] += 1;
    }
}

/// A breaker's counters and current rates, for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerMetrics {
    /// The state now.
    pub state: State,
    /// Calls that succeeded, since the breaker was built.
    pub successful: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Calls (successful or failed) at or over `slow_call_duration`.
    pub slow: u64,
    /// Calls let through whose result was not counted (cancelled, or classified ignored).
    pub ignored: u64,
    /// Calls refused.
    pub rejected: u64,
    /// Transitions by the state entered.
    pub transitions: Transitions,
    /// Calls being judged now: the window when closed, the trial calls when half-open.
    pub window_calls: u32,
    /// Their failure rate in percent, once there are at least `minimum_calls` of them
    /// (never while half-open: the trial calls are judged once all are in).
    pub failure_rate: Option<f64>,
    /// Their slow-call rate in percent, under the same condition.
    pub slow_call_rate: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_says_when_to_come_back() {
        let open = Rejected {
            state: State::Open,
            retry_in: Some(Duration::from_millis(3_200)),
        };
        assert_eq!(open.to_string(), "circuit open, retry in 3.2 s");
        let half = Rejected {
            state: State::HalfOpen,
            retry_in: None,
        };
        assert_eq!(half.to_string(), "circuit half-open, trial calls in flight");
        assert_eq!(
            open.failure().retry_after,
            Some(Duration::from_millis(3_200))
        );
        assert!(!open.failure().kind.is_transient());
    }

    #[test]
    fn state_index_round_trips() {
        for state in State::ALL {
            assert_eq!(State::from_index(state.index() as u64), state);
        }
    }
}

//! Retrying failed calls: how many times, how long to wait, which failures, which
//! requests, and within which budget.
//!
//! A [`RetryPolicy`] holds the rules; [`retry`] runs an async operation under them and
//! reports every failed attempt to an observer, so a CLI can print
//! `Attempt 1 failed: 503 Service Unavailable; retrying in 1.0 s`. The same policy drives
//! [`crate::layer::RetryLayer`].
//!
//! An attempt is retried only if all of these hold, checked in this order (the first that
//! fails is the [`StopReason`]):
//! 1. the retry-on predicate accepts its [`Failure`] (by default: connection failures,
//!    resets, timeouts, 429, 502, 503, 504);
//! 2. the request is idempotent, or the failure is [`FailureKind::Connect`] (nothing was
//!    sent), or the policy was told to retry non-idempotent requests;
//! 3. attempts remain (`max_attempts` counts the first one; 3 by default);
//! 4. the server's `Retry-After`, if any, is at most `max_retry_after` (60 s by default):
//!    a client should not hang for an hour because a server said so;
//! 5. the retry budget, if any, has a retry left.
//!
//! The wait is the backoff with jitter, raised to the server's `Retry-After`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, Jitter};
use crate::budget::RetryBudget;
use crate::failure::{Failure, FailureKind, Idempotency};

type RetryOn = Arc<dyn Fn(&Failure) -> bool + Send + Sync>;
type Draw = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The rules for retrying. Cheap to clone (the predicate, draw and budget are shared).
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    jitter: Jitter,
    max_retry_after: Duration,
    retry_on: RetryOn,
    retry_non_idempotent: bool,
    budget: Option<Arc<RetryBudget>>,
    draw: Draw,
}

impl Default for RetryPolicy {
    /// 3 attempts, exponential backoff from 100 ms capped at 10 s with full jitter,
    /// transient failures only, idempotent requests only, `Retry-After` up to 60 s, no
    /// budget.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::default(),
            jitter: Jitter::default(),
            max_retry_after: Duration::from_secs(60),
            retry_on: Arc::new(|failure: &Failure| failure.kind.is_transient()),
            retry_non_idempotent: false,
            budget: None,
            draw: Arc::new(rand::random::<f64>),
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("max_retry_after", &self.max_retry_after)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// The default policy (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts in all, the first one included. 0 is taken as 1: the call is always made.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The shape of the waits.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How the waits are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The longest `Retry-After` the client will wait out; a server asking for more ends
    /// the retries.
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }

    /// Which failures are worth another attempt (replaces the default rule,
    /// [`FailureKind::is_transient`]).
    pub fn retry_on(
        mut self,
        predicate: impl Fn(&Failure) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_on = Arc::new(predicate);
        self
    }

    /// Retry requests not known to be idempotent too. Only for callers who know better
    /// than the request's method (e.g. a POST carrying an idempotency key).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.retry_non_idempotent = yes;
        self
    }

    /// Spend retries from this budget, shared with every other user of it.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The source of jitter draws, each in `[0, 1]`; `rand::random` by default. Tests
    /// pass a constant to pin every wait.
    pub fn random_draw(mut self, draw: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.draw = Arc::new(draw);
        self
    }

    /// Attempts in all, the first one included.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The budget retries are spent from, if any.
    pub fn retry_budget(&self) -> Option<&Arc<RetryBudget>> {
        self.budget.as_ref()
    }

    /// Records an original request with the budget (a no-op without one). [`retry`] and
    /// the retry layer call this once per call.
    pub fn deposit(&self) {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
    }

    /// What to do after attempt number `attempt` (1-based) failed with `failure`:
    /// every rule of the module docs, the budget last, withdrawing from it on a retry.
    pub fn next(&self, attempt: u32, failure: &Failure, idempotency: Idempotency) -> Next {
        let next = self.verdict(attempt, failure, idempotency);
        if matches!(next, Next::RetryIn(_)) && !self.withdraw() {
            return Next::Stop(StopReason::BudgetExhausted);
        }
        next
    }

    /// Like [`RetryPolicy::next`] but leaves the budget alone.
    pub fn verdict(&self, attempt: u32, failure: &Failure, idempotency: Idempotency) -> Next {
        if !(self.retry_on)(failure) {
            return Next::Stop(StopReason::NotRetryable);
        }
        if !self.may_repeat(failure, idempotency) {
            return Next::Stop(StopReason::NotIdempotent);
        }
        if attempt >= self.max_attempts {
            return Next::Stop(StopReason::AttemptsExhausted);
        }
        if let Some(asked) = failure.retry_after.filter(|&a| a > self.max_retry_after) {
            return Next::Stop(StopReason::RetryAfterTooLong(asked));
        }
        let retry = attempt.saturating_sub(1);
        let unit = (self.draw)();
        Next::RetryIn(
            self.backoff
                .delay(retry, self.jitter, unit, failure.retry_after),
        )
    }

    fn may_repeat(&self, failure: &Failure, idempotency: Idempotency) -> bool {
        idempotency == Idempotency::Idempotent
            || failure.kind == FailureKind::Connect
            || self.retry_non_idempotent
    }

    fn withdraw(&self) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|budget| budget.try_withdraw())
    }
}

/// What happens after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait this long, then make the next attempt.
    RetryIn(Duration),
    /// No more attempts, for this reason.
    Stop(StopReason),
}

/// Why the retries ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The retry-on predicate turned this failure down.
    NotRetryable,
    /// The request is not idempotent and may have reached the server.
    NotIdempotent,
    /// Every attempt of `max_attempts` was made.
    AttemptsExhausted,
    /// The server asked for a longer wait than `max_retry_after`.
    RetryAfterTooLong(Duration),
    /// The retry budget had nothing left.
    BudgetExhausted,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::NotRetryable => f.write_str("not a failure worth retrying"),
            StopReason::NotIdempotent => f.write_str("request not idempotent, not retried"),
            StopReason::AttemptsExhausted => f.write_str("no attempts left"),
            StopReason::RetryAfterTooLong(asked) => write!(
                f,
                "server asked to wait {}, too long to wait",
                Seconds(*asked)
            ),
            StopReason::BudgetExhausted => f.write_str("retry budget exhausted"),
        }
    }
}

/// One failed attempt, as reported to the observer of [`retry`] and the retry layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// Which attempt failed (1-based).
    pub attempt: u32,
    /// How it failed.
    pub failure: Failure,
    /// What happens next.
    pub next: Next,
}

impl fmt::Display for AttemptReport {
    /// `Attempt 1 failed: 503 Service Unavailable; retrying in 1.0 s`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attempt {} failed: {}; ", self.attempt, self.failure)?;
        match self.next {
            Next::RetryIn(wait) => write!(f, "retrying in {}", Seconds(wait)),
            Next::Stop(reason) => write!(f, "giving up: {reason}"),
        }
    }
}

/// A duration printed as seconds with one decimal: `1.0 s`, `0.3 s`.
pub(crate) struct Seconds(pub(crate) Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} s", self.0.as_secs_f64())
    }
}

/// The last error of a call whose retries ended, with how many attempts were made and
/// why no more were.
#[derive(Debug)]
pub struct RetryError<E> {
    /// The error of the last attempt.
    pub error: E,
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// Why no further attempt was made.
    pub reason: StopReason,
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "{} (gave up after {} attempt{plural}: {})",
            self.error, self.attempts, self.reason
        )
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Runs an operation under a policy: start with [`retry`], say whether the request is
/// idempotent and who observes the attempts, then [`Retry::run`].
#[must_use = "a Retry does nothing until run"]
pub struct Retry<'p, O> {
    policy: &'p RetryPolicy,
    idempotency: Idempotency,
    observe: O,
}

/// Starts a retried call under `policy`. The request counts as not idempotent (so is not
/// retried unless nothing was sent) until [`Retry::idempotent`] or
/// [`Retry::idempotency`] says otherwise.
///
/// ```
/// # async fn demo() {
/// use keel_resilience::{Failure, FailureKind, RetryPolicy, retry};
/// let policy = RetryPolicy::new().max_attempts(4);
/// let answer: Result<u32, _> = retry(&policy)
///     .idempotent()
///     .observe(|report| eprintln!("{report}"))
///     .run(
///         |_: &std::io::Error| Failure::new(FailureKind::Connect),
///         |attempt| async move { Ok::<_, std::io::Error>(attempt) },
///     )
///     .await;
/// assert_eq!(answer.ok(), Some(1));
/// # }
/// ```
pub fn retry(policy: &RetryPolicy) -> Retry<'_, fn(&AttemptReport)> {
    Retry {
        policy,
        idempotency: Idempotency::NotIdempotent,
        observe: |_| {},
    }
}

impl<'p, O: FnMut(&AttemptReport)> Retry<'p, O> {
    /// The request is safe to repeat.
    pub fn idempotent(self) -> Self {
        self.idempotency(Idempotency::Idempotent)
    }

    /// Whether the request is safe to repeat.
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// Calls `observe` after every failed attempt, before any wait.
    pub fn observe<O2: FnMut(&AttemptReport)>(self, observe: O2) -> Retry<'p, O2> {
        Retry {
            policy: self.policy,
            idempotency: self.idempotency,
            observe,
        }
    }

    /// Makes attempts of `op` (given the attempt number, from 1) until one succeeds or
    /// the policy stops; `classify` says how each error failed. Waits on tokio's clock.
    pub async fn run<T, E, C, Op, Fut>(
        mut self,
        classify: C,
        mut op: Op,
    ) -> Result<T, RetryError<E>>
    where
        C: Fn(&E) -> Failure,
        Op: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.policy.deposit();
        let mut attempt = 1;
        loop {
            let error = match op(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let failure = classify(&error);
            let next = self.policy.next(attempt, &failure, self.idempotency);
            (self.observe)(&AttemptReport {
                attempt,
                failure,
                next,
            });
            match next {
                Next::RetryIn(wait) => tokio::time::sleep(wait).await,
                Next::Stop(reason) => {
                    return Err(RetryError {
                        error,
                        attempts: attempt,
                        reason,
                    });
                }
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests;

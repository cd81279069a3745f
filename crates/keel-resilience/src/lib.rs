//! Resilience patterns for calls to things that fail: retry, circuit breaker, timeout,
//! fallback — as plain async wrappers and as tower layers.
//!
//! | module | pattern | defaults |
//! |---|---|---|
//! | [`backoff`] | the wait before a retry: constant, or `min(cap, base·2^n)` with full jitter, never shorter than `Retry-After` | exponential from 100 ms, capped at 10 s, full jitter |
//! | [`budget`] | a retry budget shared by a whole client | 20% of requests plus 3/s, over 10 s |
//! | [`retry`](mod@retry) | [`RetryPolicy`] and the [`retry()`] wrapper, reporting every attempt | 3 attempts, transient failures, idempotent requests only, `Retry-After` ≤ 60 s |
//! | [`breaker`] | [`CircuitBreaker`]: closed / open / half-open, count or time window, failure and slow-call rates, consecutive-failures mode, forced states, events, metrics | last 100 calls, 50% failures over ≥ 20 calls, open 5 s, 3 trial calls |
//! | [`timeout`](mod@timeout) | [`timeout()`] with an [`Elapsed`] error a breaker counts as a failure | — |
//! | [`fallback`] | [`FallbackCache`]: the last good answer per key, served stale with its age, optionally kept on disk | in memory |
//! | [`failure`] | [`Failure`], [`FailureKind`] and [`Idempotency`]: how callers describe what went wrong | — |
//! | [`layer`] | [`layer::RetryLayer`], [`layer::BreakerLayer`], [`layer::TimeoutLayer`] for tower 0.5 | — |
//!
//! # How they fit
//!
//! A call to a dependency is bounded by a **timeout**, so a hang becomes a failure. It is
//! guarded by a **circuit breaker**, so a dependency that keeps failing is left alone for a
//! while instead of being hammered, and callers fail at once instead of waiting for
//! timeouts. Transient failures are **retried**, after a jittered backoff so clients do
//! not retry in step, only when repeating the request is safe, and only within a
//! **budget**, so retries cannot multiply the load on a struggling dependency. When
//! nothing works, a **fallback** serves the last good answer, saying how old it is.
//!
//! A budget and a breaker answer different questions. The budget limits the *extra*
//! load retries add, across all calls, and never stops first attempts. The breaker stops
//! *all* calls to a dependency judged unhealthy, and probes it before resuming. A client
//! usually wants both: the budget keeps retries from causing an outage, the breaker keeps
//! callers from queuing behind one.
//!
//! # Why written here
//!
//! Crates exist for each pattern (tower's retry and timeout, `failsafe`, `backoff`), but
//! keel needs what none of them exposes together: the breaker's state, every transition as
//! an event with its reason, counters for metrics, the result of every retry attempt as
//! it happens — and time injected, so that every transition and every backoff sequence is
//! tested exactly on tokio's paused clock (`tokio::time::Instant` throughout, the random
//! draw of jitter passed in) rather than with sleeps. The designs follow resilience4j and
//! Polly (sliding windows, slow calls, half-open permits, events), tower and Finagle
//! (budgets, timeouts as layers) and the AWS Architecture Blog's "Exponential Backoff and
//! Jitter" (full jitter).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
pub mod budget;
mod error;
pub mod failure;
pub mod fallback;
pub mod layer;
pub mod retry;
pub mod timeout;

pub use backoff::{Backoff, Jitter};
pub use breaker::{
    BreakerError, BreakerEvent, BreakerMetrics, CallOutcome, CircuitBreaker, Config, Permit,
    Reason, Rejected, State, Window,
};
pub use budget::{BudgetConfig, BudgetSnapshot, RetryBudget};
pub use error::ConfigError;
pub use failure::{Failure, FailureKind, Idempotency};
pub use fallback::{Answer, FallbackCache, FallbackError, Stale};
pub use retry::{AttemptReport, Next, Retry, RetryError, RetryPolicy, StopReason, retry};
pub use timeout::{Elapsed, TimeoutError, timeout, timeout_try};

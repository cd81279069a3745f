//! Bounding how long a call may take.
//!
//! A thin layer over `tokio::time::timeout` whose error says how long was allowed
//! ("timed out after 2.0 s") and converts to a [`Failure`] of kind
//! [`FailureKind::Timeout`]. Under a [`crate::CircuitBreaker`] a timeout is an `Err`, so it
//! counts as a failure: a dependency that hangs trips the breaker like one that refuses.

use std::future::Future;
use std::time::Duration;
use std::{error, fmt};

use thiserror::Error;

use crate::failure::{Failure, FailureKind};
use crate::retry::Seconds;

/// The call did not finish within its limit and was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("timed out after {}", Seconds(self.limit))]
pub struct Elapsed {
    /// How long the call was allowed.
    pub limit: Duration,
}

impl Elapsed {
    /// The timeout as a retry policy sees it (transient).
    pub fn failure(&self) -> Failure {
        Failure::new(FailureKind::Timeout).detail(self.to_string())
    }
}

/// Runs `call` for at most `limit` (on tokio's clock), dropping it if it takes longer.
pub async fn timeout<F: Future>(limit: Duration, call: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| Elapsed { limit })
}

/// Like [`timeout`] for a call that can fail itself, with one error type for both.
pub async fn timeout_try<T, E, F>(limit: Duration, call: F) -> Result<T, TimeoutError<E>>
where
    F: Future<Output = Result<T, E>>,
{
    match timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(TimeoutError::Inner(error)),
        Err(elapsed) => Err(TimeoutError::Elapsed(elapsed)),
    }
}

/// A call with a time limit that failed: it ran out of time, or failed itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeoutError<E> {
    /// The limit passed first.
    Elapsed(Elapsed),
    /// The call finished in time, with this error.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for TimeoutError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutError::Elapsed(elapsed) => elapsed.fmt(f),
            TimeoutError::Inner(error) => error.fmt(f),
        }
    }
}

impl<E: error::Error + 'static> error::Error for TimeoutError<E> {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            TimeoutError::Elapsed(_) => None,
            TimeoutError::Inner(error) => error.source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, sleep};

    #[tokio::test(start_paused = true)]
    async fn a_call_within_the_limit_returns_its_value() {
        let answer = timeout(Duration::from_secs(2), async {
            sleep(Duration::from_millis(1_999)).await;
            7
        })
        .await;
        assert_eq!(answer, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_over_the_limit_is_dropped_at_the_limit() {
        let start = Instant::now();
        let answer = timeout(Duration::from_secs(2), std::future::pending::<()>()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let elapsed = answer.expect_err("timed out");
        assert_eq!(elapsed.to_string(), "timed out after 2.0 s");
        assert_eq!(elapsed.failure().kind, FailureKind::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_try_keeps_the_calls_own_error() {
        let failed = timeout_try(Duration::from_secs(1), async { Err::<(), _>("refused") }).await;
        assert_eq!(failed, Err(TimeoutError::Inner("refused")));
        let late = timeout_try(Duration::from_secs(1), async {
            sleep(Duration::from_secs(5)).await;
            Ok::<_, &str>(())
        })
        .await;
        assert_eq!(
            late,
            Err(TimeoutError::Elapsed(Elapsed {
                limit: Duration::from_secs(1)
            }))
        );
    }
}

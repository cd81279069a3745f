//! A client that retries, then falls back: when every attempt fails, the last good
//! answer is served, marked stale with its age.

use std::time::Duration;

use keel_resilience::{
    Answer, Backoff, Failure, FailureKind, FallbackCache, Jitter, RetryPolicy, Stale, StopReason,
    retry,
};
use tokio::time::advance;

#[derive(Debug, Clone, PartialEq)]
struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("503 Service Unavailable")
    }
}

fn classify(_: &Unavailable) -> Failure {
    Failure::new(FailureKind::Status(503))
}

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(3)
        .backoff(Backoff::Constant(Duration::from_secs(1)))
        .jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn stale_answer_is_served_when_every_attempt_fails() {
    let cache = FallbackCache::in_memory();
    let key = "http://127.0.0.1:5055/";
    let policy = policy();

    let good = retry(&policy)
        .idempotent()
        .run(classify, |_| async { Ok(vec![1, 2, 3, 4, 5]) })
        .await;
    let fresh = cache.serve(key, good).expect("fresh answer");
    assert_eq!(fresh, Answer::Fresh(vec![1, 2, 3, 4, 5]));

    advance(Duration::from_secs(30)).await;
    let mut reports = Vec::new();
    let mut attempts = 0;
    let bad = retry(&policy)
        .idempotent()
        .observe(|r| reports.push(r.to_string()))
        .run(classify, |_| {
            attempts += 1;
            async { Err::<Vec<i32>, _>(Unavailable) }
        })
        .await;
    let err = bad.as_ref().expect_err("every attempt fails");
    assert_eq!(err.reason, StopReason::AttemptsExhausted);
    assert_eq!(attempts, 3);
    assert_eq!(
        reports,
        [
            "Attempt 1 failed: 503 Service Unavailable; retrying in 1.0 s",
            "Attempt 2 failed: 503 Service Unavailable; retrying in 1.0 s",
            "Attempt 3 failed: 503 Service Unavailable; giving up: no attempts left",
        ]
    );

    let served = cache.serve(key, bad).expect("the stale answer");
    assert_eq!(
        served,
        Answer::Stale(Stale {
            value: vec![1, 2, 3, 4, 5],
            // stored at 0 s; 30 s idle, then two 1 s waits between the three attempts
            age: Duration::from_secs(32),
        })
    );
}

#[tokio::test(start_paused = true)]
async fn with_nothing_cached_the_failure_comes_through() {
    let cache: FallbackCache<Vec<i32>> = FallbackCache::in_memory();
    let policy = policy();
    let bad = retry(&policy)
        .idempotent()
        .run(classify, |_| async { Err::<Vec<i32>, _>(Unavailable) })
        .await;
    let err = cache.serve("k", bad).expect_err("no fallback");
    assert_eq!(
        err.to_string(),
        "503 Service Unavailable (gave up after 3 attempts: no attempts left)"
    );
}

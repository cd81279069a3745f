use std::cell::RefCell;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::budget::BudgetConfig;

#[derive(Debug, Clone, PartialEq)]
struct Http(u16);

impl fmt::Display for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status {}", self.0)
    }
}

fn classify(error: &Http) -> Failure {
    Failure::new(FailureKind::Status(error.0))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Runs `policy` over a server that answers `answers` in turn (200 once they run out),
/// returning the result, the reports and the instants (since start) of every attempt.
async fn run_against(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    answers: &[u16],
) -> (Result<u32, RetryError<Http>>, Vec<String>, Vec<Duration>) {
    let start = Instant::now();
    let calls = RefCell::new(Vec::new());
    let mut reports = Vec::new();
    let result = retry(policy)
        .idempotency(idempotency)
        .observe(|r| reports.push(r.to_string()))
        .run(classify, |attempt| {
            calls.borrow_mut().push(start.elapsed());
            let answer = answers.get(attempt as usize - 1).copied().unwrap_or(200);
            async move {
                if answer == 200 {
                    Ok(attempt)
                } else {
                    Err(Http(answer))
                }
            }
        })
        .await;
    (result, reports, calls.into_inner())
}

fn exponential_no_jitter() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(5)
        .backoff(Backoff::exponential(secs(1.0), secs(5.0)))
        .jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn exponential_waits_double_up_to_the_cap() {
    let policy = exponential_no_jitter();
    let (result, reports, calls) =
        run_against(&policy, Idempotency::Idempotent, &[503, 503, 503, 503]).await;
    assert_eq!(result.expect("fifth attempt succeeds"), 5);
    // waits 1, 2, 4, then capped at 5
    assert_eq!(
        calls,
        [secs(0.0), secs(1.0), secs(3.0), secs(7.0), secs(12.0)]
    );
    assert_eq!(
        reports,
        [
            "Attempt 1 failed: 503 Service Unavailable; retrying in 1.0 s",
            "Attempt 2 failed: 503 Service Unavailable; retrying in 2.0 s",
            "Attempt 3 failed: 503 Service Unavailable; retrying in 4.0 s",
            "Attempt 4 failed: 503 Service Unavailable; retrying in 5.0 s",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn full_jitter_waits_are_the_draw_times_the_ceiling() {
    let draws = std::sync::Mutex::new(vec![0.25, 0.5, 1.0].into_iter());
    let policy = exponential_no_jitter()
        .jitter(Jitter::Full)
        .random_draw(move || {
            draws
                .lock()
                .expect("draws lock")
                .next()
                .expect("one draw per retry")
        });
    let (_, _, calls) = run_against(&policy, Idempotency::Idempotent, &[503, 503, 503]).await;
    // ceilings 1, 2, 4 times draws 0.25, 0.5, 1.0
    assert_eq!(calls, [secs(0.0), secs(0.25), secs(1.25), secs(5.25)]);
}

#[tokio::test(start_paused = true)]
async fn constant_backoff_waits_the_same_every_time() {
    let policy = RetryPolicy::new()
        .max_attempts(4)
        .backoff(Backoff::Constant(secs(1.0)))
        .jitter(Jitter::None);
    let (result, reports, calls) =
        run_against(&policy, Idempotency::Idempotent, &[503, 503, 503, 503]).await;
    assert_eq!(calls, [secs(0.0), secs(1.0), secs(2.0), secs(3.0)]);
    let err = result.expect_err("every attempt fails");
    assert_eq!(
        (err.attempts, err.reason),
        (4, StopReason::AttemptsExhausted)
    );
    assert_eq!(
        err.to_string(),
        "status 503 (gave up after 4 attempts: no attempts left)"
    );
    assert_eq!(
        reports.last().map(String::as_str),
        Some("Attempt 4 failed: 503 Service Unavailable; giving up: no attempts left")
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_stretches_the_wait() {
    let policy = exponential_no_jitter();
    let start = Instant::now();
    let mut times = Vec::new();
    let result = retry(&policy)
        .idempotent()
        .run(
            |_: &Http| {
                Failure::new(FailureKind::Status(503)).retry_after(Some(Duration::from_secs(7)))
            },
            |attempt| {
                times.push(start.elapsed());
                async move { if attempt < 2 { Err(Http(503)) } else { Ok(()) } }
            },
        )
        .await;
    assert!(result.is_ok());
    assert_eq!(times, [secs(0.0), secs(7.0)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_limit_ends_the_retries() {
    let policy = exponential_no_jitter().max_retry_after(Duration::from_secs(30));
    let result = retry(&policy)
        .idempotent()
        .run(
            |_: &Http| {
                Failure::new(FailureKind::Status(503)).retry_after(Some(Duration::from_secs(3600)))
            },
            |_| async { Err::<(), _>(Http(503)) },
        )
        .await;
    let err = result.expect_err("no retry");
    assert_eq!(err.attempts, 1);
    assert_eq!(
        err.reason,
        StopReason::RetryAfterTooLong(Duration::from_secs(3600))
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_request_is_not_retried() {
    let policy = exponential_no_jitter();
    let (result, reports, calls) =
        run_against(&policy, Idempotency::NotIdempotent, &[503, 503]).await;
    assert_eq!(calls.len(), 1, "one attempt only");
    let err = result.expect_err("the 503 is returned");
    assert_eq!(
        (err.error, err.reason),
        (Http(503), StopReason::NotIdempotent)
    );
    assert_eq!(
        reports,
        [
            "Attempt 1 failed: 503 Service Unavailable; giving up: request not idempotent, not retried"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_request_is_retried_when_nothing_was_sent() {
    let policy = exponential_no_jitter();
    let mut attempts = 0;
    let result = retry(&policy)
        .run(
            |_: &Http| Failure::new(FailureKind::Connect),
            |_| {
                attempts += 1;
                let n = attempts;
                async move { if n < 3 { Err(Http(0)) } else { Ok(n) } }
            },
        )
        .await;
    assert_eq!(result.expect("third attempt connects"), 3);
}

#[tokio::test(start_paused = true)]
async fn policy_may_allow_non_idempotent_retries() {
    let policy = exponential_no_jitter().retry_non_idempotent(true);
    let (result, _, calls) = run_against(&policy, Idempotency::NotIdempotent, &[503]).await;
    assert_eq!(result.expect("second attempt succeeds"), 2);
    assert_eq!(calls.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_not_retried() {
    let policy = exponential_no_jitter();
    let (result, _, calls) = run_against(&policy, Idempotency::Idempotent, &[404]).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(
        result.expect_err("404 returned").reason,
        StopReason::NotRetryable
    );
}

#[tokio::test(start_paused = true)]
async fn retry_on_predicate_replaces_the_default() {
    let policy = exponential_no_jitter().retry_on(|f| f.kind == FailureKind::Status(500));
    let (result, _, _) = run_against(&policy, Idempotency::Idempotent, &[500, 500]).await;
    assert_eq!(result.expect("500s retried"), 3);
    let (result, _, _) = run_against(&policy, Idempotency::Idempotent, &[503]).await;
    assert_eq!(
        result.expect_err("503 no longer retried").reason,
        StopReason::NotRetryable
    );
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_budget() {
    let budget = Arc::new(
        RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_sec: 0,
            window: Duration::from_secs(10),
        })
        .expect("valid budget"),
    );
    // 10 earlier requests earn 2 retries (20%), plus this call's own deposit: 11 → 2.
    for _ in 0..10 {
        budget.deposit();
    }
    let policy = exponential_no_jitter()
        .max_attempts(10)
        .backoff(Backoff::Constant(Duration::from_millis(10)))
        .budget(budget.clone());
    let (result, reports, calls) = run_against(&policy, Idempotency::Idempotent, &[503; 10]).await;
    assert_eq!(calls.len(), 3, "the first attempt and two retries");
    let err = result.expect_err("budget ran out first");
    assert_eq!((err.attempts, err.reason), (3, StopReason::BudgetExhausted));
    assert_eq!(
        reports.last().map(String::as_str),
        Some("Attempt 3 failed: 503 Service Unavailable; giving up: retry budget exhausted")
    );
    let snap = budget.snapshot();
    assert_eq!((snap.requests, snap.retries), (11, 2));
}

#[tokio::test(start_paused = true)]
async fn success_spends_no_budget() {
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default()).expect("valid budget"));
    let policy = RetryPolicy::new().budget(budget.clone());
    let (result, reports, _) = run_against(&policy, Idempotency::Idempotent, &[]).await;
    assert_eq!(result.expect("first attempt succeeds"), 1);
    assert!(reports.is_empty());
    assert_eq!(budget.snapshot().retries, 0);
    assert_eq!(budget.snapshot().requests, 1);
}

#[test]
fn zero_attempts_still_makes_the_call() {
    assert_eq!(RetryPolicy::new().max_attempts(0).attempts(), 1);
}

#[test]
fn verdict_checks_the_rules_in_order() {
    let policy = RetryPolicy::new().max_attempts(2).random_draw(|| 0.0);
    let unavailable = Failure::new(FailureKind::Status(503));
    let bad = Failure::new(FailureKind::Status(400));
    let idem = Idempotency::Idempotent;
    assert_eq!(
        policy.verdict(1, &bad, Idempotency::NotIdempotent),
        Next::Stop(StopReason::NotRetryable)
    );
    assert_eq!(
        policy.verdict(2, &unavailable, Idempotency::NotIdempotent),
        Next::Stop(StopReason::NotIdempotent)
    );
    assert_eq!(
        policy.verdict(2, &unavailable, idem),
        Next::Stop(StopReason::AttemptsExhausted)
    );
    assert_eq!(
        policy.verdict(1, &unavailable, idem),
        Next::RetryIn(Duration::ZERO)
    );
}

//! The tower layers around small in-process services, on tokio's paused clock.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use keel_resilience::layer::{BreakerLayer, ByMethod, RetryLayer, TimeoutLayer};
use keel_resilience::{
    Backoff, BreakerError, BudgetConfig, CallOutcome, CircuitBreaker, Config, Failure, Jitter,
    RetryBudget, RetryPolicy, State, TimeoutError,
};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

type HttpResult = Result<Response<()>, Infallible>;

/// A server answering the statuses in turn (200 once they run out), counting calls.
fn server(
    statuses: Vec<u16>,
) -> (
    impl tower::Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let statuses = Arc::new(statuses);
    let svc = service_fn(move |_req: Request<()>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
        let status = statuses.get(n).copied().unwrap_or(200);
        async move {
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
            Ok::<_, Infallible>(response)
        }
    });
    (svc, calls)
}

fn server_errors(result: &HttpResult) -> Option<Failure> {
    let response = result.as_ref().ok()?;
    response
        .status()
        .is_server_error()
        .then(|| Failure::from_response(response.status(), response.headers()))
}

fn one_second_apart() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(4)
        .backoff(Backoff::Constant(Duration::from_secs(1)))
        .jitter(Jitter::None)
}

fn request(method: Method) -> Request<()> {
    Request::builder()
        .method(method)
        .uri("http://127.0.0.1:5055/")
        .body(())
        .expect("valid request")
}

#[tokio::test(start_paused = true)]
async fn retry_layer_repeats_an_idempotent_request_until_it_succeeds() {
    let (svc, calls) = server(vec![503, 502]);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let layer = RetryLayer::new(one_second_apart(), server_errors)
        .idempotency(ByMethod)
        .observe(move |r| seen.lock().expect("reports").push(r.to_string()));
    let start = Instant::now();
    let response = layer
        .layer(svc)
        .oneshot(request(Method::GET))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        *reports.lock().expect("reports"),
        [
            "Attempt 1 failed: 503 Service Unavailable; retrying in 1.0 s",
            "Attempt 2 failed: 502 Bad Gateway; retrying in 1.0 s",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_layer_leaves_a_post_alone() {
    let (svc, calls) = server(vec![503]);
    let layer = RetryLayer::new(one_second_apart(), server_errors).idempotency(ByMethod);
    let response = layer
        .layer(svc)
        .oneshot(request(Method::POST))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_layer_stops_at_the_budget() {
    let budget = Arc::new(
        RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_per_sec: 0,
            window: Duration::from_secs(10),
        })
        .expect("valid budget"),
    );
    let (svc, calls) = server(vec![503; 10]);
    let layer =
        RetryLayer::new(one_second_apart().budget(budget), server_errors).idempotency(ByMethod);
    let response = layer
        .layer(svc)
        .oneshot(request(Method::GET))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an empty budget allows no retry"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_stops_calling_a_failing_service() {
    let breaker = CircuitBreaker::new(
        "flaky",
        Config {
            consecutive_failures: Some(2),
            ..Config::default()
        },
    )
    .expect("valid config");
    let (svc, calls) = server(vec![503; 10]);
    let layer = BreakerLayer::new(breaker.clone()).classify(|r: &HttpResult| match r {
        Ok(resp) if resp.status().is_server_error() => CallOutcome::Failure,
        Ok(_) => CallOutcome::Success,
        Err(_) => CallOutcome::Failure,
    });
    let svc = layer.layer(svc);
    for _ in 0..2 {
        let response = svc.clone().oneshot(request(Method::GET)).await;
        assert_eq!(
            response.expect("answered").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(breaker.state(), State::Open);
    let refused = svc.clone().oneshot(request(Method::GET)).await;
    let err = refused.expect_err("refused");
    assert_eq!(err.to_string(), "circuit open, retry in 5.0 s");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the third call never reached it"
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_layer_fails_a_hung_call_at_the_limit() {
    let hung = service_fn(|_: Request<()>| std::future::pending::<HttpResult>());
    let start = Instant::now();
    let result = TimeoutLayer::new(Duration::from_secs(2))
        .layer(hung)
        .oneshot(request(Method::GET))
        .await;
    assert!(matches!(result, Err(TimeoutError::Elapsed(_))));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// Retry outside the breaker outside the timeout, over a hung service: each attempt
/// times out, the breaker counts the timeouts and opens, and the open circuit ends the
/// retries at once.
#[tokio::test(start_paused = true)]
async fn the_stack_turns_a_hang_into_fast_failure() {
    let breaker = CircuitBreaker::new(
        "hung",
        Config {
            consecutive_failures: Some(2),
            ..Config::default()
        },
    )
    .expect("valid config");
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let hung = service_fn(move |_: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<HttpResult>()
    });
    type StackResult = Result<Response<()>, BreakerError<TimeoutError<Infallible>>>;
    let classify = |r: &StackResult| match r {
        Ok(_) => None,
        Err(BreakerError::Rejected(rejected)) => Some(rejected.failure()),
        Err(BreakerError::Inner(TimeoutError::Elapsed(elapsed))) => Some(elapsed.failure()),
        Err(BreakerError::Inner(TimeoutError::Inner(never))) => match *never {},
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let stack = ServiceBuilder::new()
        .layer(
            RetryLayer::new(one_second_apart(), classify)
                .idempotency(ByMethod)
                .observe(move |r| seen.lock().expect("reports").push(r.to_string())),
        )
        .layer(BreakerLayer::new(breaker.clone()))
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(hung);
    let start = Instant::now();
    let result = stack.oneshot(request(Method::GET)).await;
    assert!(matches!(result, Err(BreakerError::Rejected(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // 2 s timeout, 1 s wait, 2 s timeout, 1 s wait, refused at once
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    assert_eq!(
        *reports.lock().expect("reports"),
        [
            "Attempt 1 failed: timed out after 2.0 s; retrying in 1.0 s",
            "Attempt 2 failed: timed out after 2.0 s; retrying in 1.0 s",
            "Attempt 3 failed: circuit open, retry in 4.0 s; giving up: not a failure worth retrying",
        ]
    );
}

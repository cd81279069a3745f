//! The breaker through its public face, on tokio's paused clock: permits, the call
//! wrapper, events, operator commands.

use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::{Instant, advance, sleep};

use super::*;
use crate::timeout::{Elapsed, timeout};

fn breaker(config: Config) -> CircuitBreaker {
    CircuitBreaker::new("dep", config).expect("valid config")
}

fn three_in_a_row() -> Config {
    Config {
        consecutive_failures: Some(3),
        wait_in_open: Duration::from_secs(5),
        permitted_half_open_calls: 1,
        ..Config::default()
    }
}

fn drain(
    events: &mut broadcast::Receiver<BreakerEvent>,
    start: Instant,
) -> Vec<(State, State, Reason, Duration)> {
    let mut out = Vec::new();
    loop {
        match events.try_recv() {
            Ok(e) => out.push((e.from, e.to, e.reason, e.at - start)),
            Err(TryRecvError::Empty) => return out,
            Err(other) => panic!("event stream broke: {other}"),
        }
    }
}

async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    b.call(async { Err("boom") }).await
}

async fn succeed(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    b.call(async { Ok(()) }).await
}

#[tokio::test(start_paused = true)]
async fn every_transition_is_an_event_stamped_with_its_time() {
    let start = Instant::now();
    let b = breaker(three_in_a_row());
    let mut events = b.subscribe();
    for _ in 0..3 {
        assert_eq!(fail(&b).await, Err(BreakerError::Inner("boom")));
    }
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_secs(5)).await;
    assert_eq!(b.state(), State::Open, "half-open waits for a call");
    succeed(&b).await.expect("the trial goes through");
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        drain(&mut events, start),
        [
            (
                State::Closed,
                State::Open,
                Reason::ConsecutiveFailures(3),
                Duration::ZERO
            ),
            (
                State::Open,
                State::HalfOpen,
                Reason::OpenWaitElapsed,
                Duration::from_secs(5)
            ),
            (
                State::HalfOpen,
                State::Closed,
                Reason::TrialsSucceeded,
                Duration::from_secs(5)
            ),
        ]
    );
    let metrics = b.metrics();
    assert_eq!(
        [State::Open, State::HalfOpen, State::Closed].map(|s| metrics.transitions.to(s)),
        [1, 1, 1]
    );
}

#[tokio::test(start_paused = true)]
async fn open_breaker_fails_fast_with_the_wait_left() {
    let b = breaker(three_in_a_row());
    for _ in 0..3 {
        let _ = fail(&b).await;
    }
    advance(Duration::from_millis(1_800)).await;
    let mut made = false;
    let refused = b
        .call(async {
            made = true;
            Ok::<_, &str>(())
        })
        .await;
    assert!(!made, "the call is not made");
    let err = refused.expect_err("refused");
    assert_eq!(err.to_string(), "circuit open, retry in 3.2 s");
    assert_eq!(b.metrics().rejected, 1);
}

/// The Redis seed's demonstration: the first call waits for its timeout, the next ones
/// fail at once, a call after the open wait probes again, and once the dependency is
/// back the breaker closes.
#[tokio::test(start_paused = true)]
async fn a_hung_dependency_costs_one_timeout_then_fails_fast_then_recovers() {
    let config = Config {
        consecutive_failures: Some(1),
        ..three_in_a_row()
    };
    let b = breaker(config);
    let limit = Duration::from_secs(2);
    let hung = || timeout(limit, std::future::pending::<()>());

    let start = Instant::now();
    let first = b.call(hung()).await;
    assert_eq!(first, Err(BreakerError::Inner(Elapsed { limit })));
    assert_eq!(
        start.elapsed(),
        limit,
        "the first call waits for the timeout"
    );

    let start = Instant::now();
    let second = b.call(hung()).await;
    assert!(matches!(second, Err(BreakerError::Rejected(_))));
    assert_eq!(start.elapsed(), Duration::ZERO, "then calls fail at once");

    advance(Duration::from_secs(5)).await; // the open wait
    let start = Instant::now();
    let probe = b.call(hung()).await;
    assert_eq!(probe, Err(BreakerError::Inner(Elapsed { limit })));
    assert_eq!(
        start.elapsed(),
        limit,
        "the probe waits for the timeout again"
    );
    assert_eq!(b.state(), State::Open);

    advance(Duration::from_secs(5)).await;
    let healthy = b.call(timeout(limit, async { 42 })).await;
    assert_eq!(healthy, Ok(42));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_call_wrapper_times_calls_for_slowness() {
    let config = Config {
        window: Window::Count(2),
        minimum_calls: 2,
        slow_call_duration: Duration::from_secs(1),
        slow_call_rate_threshold: 100.0,
        ..Config::default()
    };
    let b = breaker(config);
    let slow = || async {
        sleep(Duration::from_secs(1)).await;
        Ok::<_, &str>(())
    };
    b.call(slow()).await.expect("slow but fine");
    assert_eq!(b.state(), State::Closed);
    b.call(slow()).await.expect("slow but fine");
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.metrics().slow, 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_counts_as_neither() {
    let b = breaker(three_in_a_row());
    let cancelled = tokio::time::timeout(
        Duration::from_millis(10),
        b.call(std::future::pending::<Result<(), &str>>()),
    )
    .await;
    assert!(cancelled.is_err());
    let metrics = b.metrics();
    assert_eq!(
        (metrics.ignored, metrics.failed, metrics.successful),
        (1, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn classify_decides_how_a_result_counts() {
    let b = breaker(three_in_a_row());
    for _ in 0..3 {
        let answer = b
            .call_classified(async { Ok::<u16, ()>(503) }, |r| match r {
                Ok(503) => CallOutcome::Failure,
                Ok(404) => CallOutcome::Ignored,
                _ => CallOutcome::Success,
            })
            .await;
        assert_eq!(answer, Ok(503), "the answer itself is passed on");
    }
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn operators_can_force_and_reset() {
    let start = Instant::now();
    let b = breaker(three_in_a_row());
    let mut events = b.subscribe();
    b.force_open();
    advance(Duration::from_secs(600)).await;
    assert_eq!(
        succeed(&b).await,
        Err(BreakerError::Rejected(Rejected {
            state: State::ForcedOpen,
            retry_in: None
        }))
    );
    b.force_closed();
    for _ in 0..10 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), State::ForcedClosed, "forced closed never trips");
    b.reset();
    assert_eq!(b.state(), State::Closed);
    let seen: Vec<_> = drain(&mut events, start)
        .into_iter()
        .map(|(from, to, reason, _)| (from, to, reason))
        .collect();
    assert_eq!(
        seen,
        [
            (State::Closed, State::ForcedOpen, Reason::Forced),
            (State::ForcedOpen, State::ForcedClosed, Reason::Forced),
            (State::ForcedClosed, State::Closed, Reason::Reset),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn permits_can_cross_tasks_and_clones_share_state() {
    let b = breaker(three_in_a_row());
    let clone = b.clone();
    let handle = tokio::spawn(async move {
        for _ in 0..3 {
            let permit = clone.try_acquire().expect("closed");
            permit.failure(Duration::from_millis(5));
        }
    });
    handle.await.expect("task finished");
    assert_eq!(b.state(), State::Open);
    assert!(b.try_acquire().is_err());
}

#[test]
fn a_bad_config_is_refused_with_its_field() {
    let err = CircuitBreaker::new(
        "dep",
        Config {
            permitted_half_open_calls: 0,
            ..Config::default()
        },
    )
    .expect_err("refused");
    assert_eq!(err.field, "permitted_half_open_calls");
}

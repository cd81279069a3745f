//! A circuit breaker around a service.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use super::BoxFuture;
use crate::breaker::{BreakerError, CallOutcome, CircuitBreaker};

/// Decides how a service's result counts for the breaker.
pub trait ClassifyCall<R, E> {
    /// Success, failure, or not counted.
    fn classify(&self, result: &Result<R, E>) -> CallOutcome;
}

/// The default classification: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsFail;

impl<R, E> ClassifyCall<R, E> for ErrorsFail {
    fn classify(&self, result: &Result<R, E>) -> CallOutcome {
        match result {
            Ok(_) => CallOutcome::Success,
            Err(_) => CallOutcome::Failure,
        }
    }
}

impl<R, E, F> ClassifyCall<R, E> for F
where
    F: Fn(&Result<R, E>) -> CallOutcome,
{
    fn classify(&self, result: &Result<R, E>) -> CallOutcome {
        self(result)
    }
}

/// Wraps services in a [`BreakerService`] sharing one breaker.
#[derive(Debug, Clone)]
pub struct BreakerLayer<C = ErrorsFail> {
    breaker: CircuitBreaker,
    classify: C,
}

impl BreakerLayer {
    /// Guards services with `breaker`, counting `Err` as failure.
    pub fn new(breaker: CircuitBreaker) -> Self {
        BreakerLayer {
            breaker,
            classify: ErrorsFail,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Counts results as `classify` says (e.g. an `Ok` 503 as a failure).
    pub fn classify<C2>(self, classify: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service whose calls go through a circuit breaker.
#[derive(Debug, Clone)]
pub struct BreakerService<S, C = ErrorsFail> {
    inner: S,
    breaker: CircuitBreaker,
    classify: C,
}

impl<S, C> BreakerService<S, C> {
    /// The breaker, for its state, events and metrics.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C, Req> Service<Req> for BreakerService<S, C>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: ClassifyCall<S::Response, S::Error> + Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = BoxFuture<Result<S::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => return Box::pin(std::future::ready(Err(rejected.into()))),
        };
        let call = self.inner.call(req);
        let classify = self.classify.clone();
        Box::pin(async move {
            let start = Instant::now();
            let result = call.await;
            permit.record(classify.classify(&result), start.elapsed());
            result.map_err(BreakerError::Inner)
        })
    }
}

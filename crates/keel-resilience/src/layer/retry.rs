//! Retries around a service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::BoxFuture;
use crate::failure::{Failure, Idempotency};
use crate::retry::{AttemptReport, Next, RetryPolicy};

/// Says whether a service's result is a failure, and of what kind.
pub trait ClassifyFailure<R, E> {
    /// `None` for a success (no retry), `Some` for a failure the policy judges.
    fn failure(&self, result: &Result<R, E>) -> Option<Failure>;
}

impl<R, E, F> ClassifyFailure<R, E> for F
where
    F: Fn(&Result<R, E>) -> Option<Failure>,
{
    fn failure(&self, result: &Result<R, E>) -> Option<Failure> {
        self(result)
    }
}

/// Says whether a request is safe to repeat.
pub trait RequestIdempotency<Req> {
    /// The request's idempotency.
    fn idempotency(&self, req: &Req) -> Idempotency;
}

/// The default: no request is known to be idempotent, so only failures where nothing was
/// sent are retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverIdempotent;

impl<Req> RequestIdempotency<Req> for NeverIdempotent {
    fn idempotency(&self, _: &Req) -> Idempotency {
        Idempotency::NotIdempotent
    }
}

/// HTTP requests, by their method ([`Idempotency::of_method`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByMethod;

impl<B> RequestIdempotency<http::Request<B>> for ByMethod {
    fn idempotency(&self, req: &http::Request<B>) -> Idempotency {
        Idempotency::of_method(req.method())
    }
}

impl<Req, F> RequestIdempotency<Req> for F
where
    F: Fn(&Req) -> Idempotency,
{
    fn idempotency(&self, req: &Req) -> Idempotency {
        self(req)
    }
}

type Observer = Arc<dyn Fn(&AttemptReport) + Send + Sync>;

/// Wraps services in a [`RetryService`].
#[derive(Clone)]
pub struct RetryLayer<C, I = NeverIdempotent> {
    policy: RetryPolicy,
    classify: C,
    idempotency: I,
    observe: Option<Observer>,
}

impl<C, I: fmt::Debug> fmt::Debug for RetryLayer<C, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .field("idempotency", &self.idempotency)
            .finish_non_exhaustive()
    }
}

impl<C> RetryLayer<C> {
    /// Retries under `policy`, with `classify` telling failures from successes. No
    /// request counts as idempotent until [`RetryLayer::idempotency`] says how to tell.
    pub fn new(policy: RetryPolicy, classify: C) -> Self {
        RetryLayer {
            policy,
            classify,
            idempotency: NeverIdempotent,
            observe: None,
        }
    }
}

impl<C, I> RetryLayer<C, I> {
    /// How to tell whether a request is idempotent (e.g. [`ByMethod`]).
    pub fn idempotency<I2>(self, idempotency: I2) -> RetryLayer<C, I2> {
        RetryLayer {
            policy: self.policy,
            classify: self.classify,
            idempotency,
            observe: self.observe,
        }
    }

    /// Calls `observe` after every failed attempt.
    pub fn observe(mut self, observe: impl Fn(&AttemptReport) + Send + Sync + 'static) -> Self {
        self.observe = Some(Arc::new(observe));
        self
    }
}

impl<S, C: Clone, I: Clone> Layer<S> for RetryLayer<C, I> {
    type Service = RetryService<S, C, I>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            policy: self.policy.clone(),
            classify: self.classify.clone(),
            idempotency: self.idempotency.clone(),
            observe: self.observe.clone(),
        }
    }
}

/// A service whose failed calls are repeated under a retry policy.
#[derive(Clone)]
pub struct RetryService<S, C, I = NeverIdempotent> {
    inner: S,
    policy: RetryPolicy,
    classify: C,
    idempotency: I,
    observe: Option<Observer>,
}

impl<S: fmt::Debug, C, I: fmt::Debug> fmt::Debug for RetryService<S, C, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryService")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("idempotency", &self.idempotency)
            .finish_non_exhaustive()
    }
}

impl<S, C, I, Req> Service<Req> for RetryService<S, C, I>
where
    Req: Clone + Send + 'static,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: ClassifyFailure<S::Response, S::Error> + Clone + Send + 'static,
    I: RequestIdempotency<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The service that was driven ready takes this call; a clone stays behind for the
        // next one (tower's usual swap).
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let attempts = Attempts {
            inner,
            policy: self.policy.clone(),
            classify: self.classify.clone(),
            idempotency: self.idempotency.idempotency(&req),
            observe: self.observe.clone(),
        };
        Box::pin(attempts.run(req))
    }
}

/// One retried call in progress.
struct Attempts<S, C> {
    inner: S,
    policy: RetryPolicy,
    classify: C,
    idempotency: Idempotency,
    observe: Option<Observer>,
}

impl<S, C> Attempts<S, C> {
    async fn run<Req>(mut self, req: Req) -> Result<S::Response, S::Error>
    where
        Req: Clone,
        S: Service<Req>,
        C: ClassifyFailure<S::Response, S::Error>,
    {
        self.policy.deposit();
        let mut attempt = 1;
        let mut result = self.inner.call(req.clone()).await;
        loop {
            let Some(failure) = self.classify.failure(&result) else {
                return result;
            };
            let next = self.policy.next(attempt, &failure, self.idempotency);
            if let Some(observe) = &self.observe {
                observe(&AttemptReport {
                    attempt,
                    failure,
                    next,
                });
            }
            let Next::RetryIn(wait) = next else {
                return result;
            };
            tokio::time::sleep(wait).await;
            attempt += 1;
            std::future::poll_fn(|cx| self.inner.poll_ready(cx)).await?;
            result = self.inner.call(req.clone()).await;
        }
    }
}

//! The same patterns as tower middleware, for servers and clients built from services.
//!
//! - [`BreakerLayer`]: refuses calls while the breaker is open (the error is
//!   [`crate::BreakerError::Rejected`]), reports each result and its duration otherwise;
//! - [`RetryLayer`]: repeats a call under a [`crate::RetryPolicy`] (the request must be
//!   `Clone`, the service too), returning the last result as the inner service gave it;
//! - [`TimeoutLayer`]: bounds each call, failing with [`crate::TimeoutError::Elapsed`].
//!
//! The usual order, outermost first, is retry → breaker → timeout → the service:
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(RetryLayer::new(policy, classify))   // sees rejections and timeouts, may retry them
//!     .layer(BreakerLayer::new(breaker))          // counts each attempt, timeouts included
//!     .layer(TimeoutLayer::new(limit))            // turns a hang into a failure
//!     .service(client)
//! ```
//!
//! A timeout inside the breaker makes a hung dependency trip it; a retry outside the
//! breaker lets an open circuit end the retries at once (an open circuit is not transient
//! by default).
//!
//! The response futures are boxed: one allocation per call, in exchange for plain `async`
//! code instead of hand-written future state machines.

mod breaker;
mod retry;
mod timeout;

use std::future::Future;
use std::pin::Pin;

pub use self::breaker::{BreakerLayer, BreakerService, ClassifyCall, ErrorsFail};
pub use self::retry::{
    ByMethod, ClassifyFailure, NeverIdempotent, RequestIdempotency, RetryLayer, RetryService,
};
pub use self::timeout::{TimeoutLayer, TimeoutService};

/// The response future of every layer here.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

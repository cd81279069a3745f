//! The circuit breaker: stop calling a dependency that keeps failing, give it time, probe
//! it with a few calls, resume when it answers.
//!
//! ```text
//!            failure or slow-call rate ≥ threshold over ≥ minimum calls
//!            (or n failures in a row, in consecutive-failures mode)
//!   CLOSED ──────────────────────────────────────────────────────────► OPEN
//!     ▲                                                                 │ wait_in_open passed,
//!     │ every trial call within the thresholds                          │ a call arrives
//!     └─────────────────────────── HALF_OPEN ◄──────────────────────────┘
//!                                      │ trial calls over a threshold ──► OPEN
//! ```
//!
//! Plus two operator states, FORCED_OPEN (refuse everything) and FORCED_CLOSED (let
//! everything through, never trip), left by [`CircuitBreaker::reset`] or another force.
//!
//! A caller asks [`CircuitBreaker::try_acquire`] for a [`Permit`] and reports on it:
//! [`Permit::success`] or [`Permit::failure`] with the call's duration (so slow calls are
//! seen), or drops it, which counts as neither — a cancelled call says nothing about the
//! dependency. [`CircuitBreaker::call`] does all of that around a future.
//!
//! Every transition is sent as a [`BreakerEvent`] to every [`CircuitBreaker::subscribe`]r,
//! logged, and counted in [`CircuitBreaker::metrics`].
//!
//! # Cost
//!
//! The state and the number of the current epoch live in one atomic word. In the closed
//! state, acquiring reads that word and clones an `Arc`; recording takes one uncontended
//! mutex for the window's running totals (a ring of calls, or ten time buckets), with no
//! allocation and, for a count window, no clock read. The bench `breaker` measures it.

mod config;
mod event;
mod machine;
mod window;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use std::{error, fmt};

use tokio::sync::broadcast;
use tokio::time::Instant;

use self::machine::{Change, Core, LazyNow};
use crate::error::ConfigError;

pub use self::config::{Config, MAX_COUNT_WINDOW, Window};
pub use self::event::{BreakerEvent, BreakerMetrics, Reason, Rejected, State, Transitions};
pub use self::machine::CallOutcome;

/// Events a slow subscriber may fall behind by before it misses some.
const EVENT_BUFFER: usize = 64;

/// A circuit breaker. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    config: Config,
    /// `epoch << 3 | state index`, written under `core`'s lock, read without it.
    gate: AtomicU64,
    core: Mutex<Core>,
    events: broadcast::Sender<BreakerEvent>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .field("config", &self.shared.config)
            .finish()
    }
}

fn gate(state: State, epoch: u64) -> u64 {
    (epoch << 3) | state.index() as u64
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the name is in its events and logs).
    pub fn new(name: impl Into<Arc<str>>, config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(CircuitBreaker {
            shared: Arc::new(Shared {
                name: name.into(),
                config,
                gate: AtomicU64::new(gate(State::Closed, 0)),
                core: Mutex::new(Core::new(config, Instant::now())),
                events,
            }),
        })
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The state now. An open breaker whose wait is over stays [`State::Open`] until the
    /// next call arrives and becomes the first trial.
    pub fn state(&self) -> State {
        State::from_index(self.shared.gate.load(Ordering::Acquire) & 0b111)
    }

    /// Lets a call through, or refuses it while open.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let word = self.shared.gate.load(Ordering::Acquire);
        if State::from_index(word & 0b111).permits_all() {
            return Ok(self.permit(word >> 3));
        }
        let mut now = LazyNow::new();
        let mut core = self.shared.lock();
        let (result, change) = core.acquire(&mut now);
        self.shared.publish(&core, change);
        drop(core);
        result.map(|epoch| self.permit(epoch))
    }

    fn permit(&self, epoch: u64) -> Permit {
        Permit {
            shared: Arc::clone(&self.shared),
            epoch,
            done: false,
        }
    }

    /// Refuses every call until [`CircuitBreaker::reset`] or [`CircuitBreaker::force_closed`].
    pub fn force_open(&self) {
        self.shared.command(State::ForcedOpen, Reason::Forced);
    }

    /// Lets every call through and never trips, until reset or forced open.
    pub fn force_closed(&self) {
        self.shared.command(State::ForcedClosed, Reason::Forced);
    }

    /// Back to closed with an empty window, whatever the state (a transition, even from
    /// closed: the window is forgotten).
    pub fn reset(&self) {
        self.shared.command(State::Closed, Reason::Reset);
    }

    /// Every transition from now on. A receiver that falls more than 64 events behind
    /// gets `RecvError::Lagged` and continues from the oldest kept.
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.shared.events.subscribe()
    }

    /// Counters and rates as of now.
    pub fn metrics(&self) -> BreakerMetrics {
        self.shared.lock().metrics(&mut LazyNow::new())
    }

    /// Runs `call` if the breaker lets it through; `Ok` counts as a success, `Err` as a
    /// failure, and the time it took decides whether it was slow. Dropping the returned
    /// future before it finishes counts as neither.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_classified(call, |result| match result {
            Ok(_) => CallOutcome::Success,
            Err(_) => CallOutcome::Failure,
        })
        .await
    }

    /// Like [`CircuitBreaker::call`], with `classify` deciding how the result counts (an
    /// `Ok` holding a 503 may be a failure; a 404 may be ignored).
    pub async fn call_classified<T, E, F, C>(
        &self,
        call: F,
        classify: C,
    ) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> CallOutcome,
    {
        let permit = self.try_acquire()?;
        let start = Instant::now();
        let result = call.await;
        permit.record(classify(&result), start.elapsed());
        result.map_err(BreakerError::Inner)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // Every method of Core leaves it consistent before it can panic, so a poisoned
        // lock still guards a usable state.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, epoch: u64, outcome: CallOutcome, elapsed: Duration) {
        let mut now = LazyNow::new();
        let mut core = self.lock();
        let change = core.record(epoch, outcome, elapsed, &mut now);
        self.publish(&core, change);
    }

    fn command(&self, to: State, reason: Reason) {
        let mut core = self.lock();
        let change = core.command(to, reason, Instant::now());
        self.publish(&core, Some(change));
    }

    /// Makes a transition visible: the gate first (callers read it without the lock),
    /// then the event and the log line. Called with the lock held, so events go out in
    /// the order the transitions happened.
    fn publish(&self, core: &Core, change: Option<Change>) {
        let Some(change) = change else { return };
        self.gate
            .store(gate(core.state(), core.epoch()), Ordering::Release);
        let event = BreakerEvent {
            breaker: Arc::clone(&self.name),
            from: change.from,
            to: change.to,
            reason: change.reason,
            at: change.at,
        };
        tracing::info!(breaker = %self.name, from = %event.from, to = %event.to, reason = %event.reason, "circuit breaker transition");
        // No subscriber is not an error: nobody asked to hear about it.
        let _ = self.events.send(event);
    }
}

/// Leave to make one call, from [`CircuitBreaker::try_acquire`]. Report how it went with
/// [`Permit::success`] or [`Permit::failure`]; dropping it unreported counts as neither
/// (a cancelled call) and, when half-open, frees the trial slot.
#[must_use = "a permit should be reported with success() or failure()"]
pub struct Permit {
    shared: Arc<Shared>,
    epoch: u64,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.shared.name)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Permit {
    /// The call worked, taking `elapsed`.
    pub fn success(self, elapsed: Duration) {
        self.record(CallOutcome::Success, elapsed);
    }

    /// The call failed, taking `elapsed`.
    pub fn failure(self, elapsed: Duration) {
        self.record(CallOutcome::Failure, elapsed);
    }

    /// The call is not to be counted (same as dropping the permit).
    pub fn ignore(self) {
        self.record(CallOutcome::Ignored, Duration::ZERO);
    }

    /// Reports the call as `outcome`, taking `elapsed`.
    pub fn record(mut self, outcome: CallOutcome, elapsed: Duration) {
        self.done = true;
        self.shared.record(self.epoch, outcome, elapsed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .record(self.epoch, CallOutcome::Ignored, Duration::ZERO);
        }
    }
}

/// The result of a call through a breaker that failed: refused, or failed itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError<E> {
    /// The breaker refused the call; it was not made.
    Rejected(Rejected),
    /// The call was made and failed.
    Inner(E),
}

impl<E> From<Rejected> for BreakerError<E> {
    fn from(rejected: Rejected) -> Self {
        BreakerError::Rejected(rejected)
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerError::Rejected(rejected) => rejected.fmt(f),
            BreakerError::Inner(error) => error.fmt(f),
        }
    }
}

impl<E: error::Error + 'static> error::Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            BreakerError::Rejected(rejected) => rejected.source(),
            BreakerError::Inner(error) => error.source(),
        }
    }
}

#[cfg(test)]
mod tests;

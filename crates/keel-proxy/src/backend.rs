//! One backend: its address, weight and health, its idle keep-alive connections, and its
//! counters.
//!
//! The connection pool is written here rather than taken from hyper-util's client: the
//! proxy must know whether a request reached the backend at all (a refused connection may
//! be retried for any method, a request that went out may not), must hand a connection
//! back only once its answer has been read to the end, and must not pay for a generic
//! client's routing and pool keys on every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::health::{Health, Policy, State, Transition};
use crate::metrics::Histogram;

/// The body of a request on its way to a backend: the client's, streamed, or one held in
/// memory (empty, or buffered so that it can be sent again).
pub type UpBody = Either<Incoming, Full<Bytes>>;

/// Idle connections kept per backend; more are closed when handed back.
const MAX_IDLE: usize = 1024;

/// A backend of a pool, or a data node of the cluster route.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    /// `name` as the value of the `Keel-Backend` header.
    pub name_header: http::HeaderValue,
    pub url: String,
    pub addr: SocketAddr,
    /// The configured weight (the admin API may change it).
    weight: AtomicU32,
    drained: AtomicBool,
    /// Mirrors `health.state() == Up`, read on every pick without the lock.
    up: AtomicBool,
    health: Mutex<Health>,
    /// Requests sent and not yet answered to the end.
    pub in_flight: AtomicU32,
    pub stats: Stats,
    idle: Mutex<Vec<SendRequest<UpBody>>>,
}

/// A backend's counters, exported on `/metrics` and by the admin API.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests sent to it (retries included).
    pub requests: AtomicU64,
    /// Answers by class: 1xx … 5xx.
    pub answers: [AtomicU64; 5],
    /// Connections that could not be made.
    pub connect_failures: AtomicU64,
    /// Requests that went out and got no answer (reset, closed, timed out).
    pub failures: AtomicU64,
    /// Requests retried elsewhere after failing here.
    pub retries: AtomicU64,
    /// Times it was ejected (passively) or taken down by checks.
    pub ejections: AtomicU64,
    pub downs: AtomicU64,
    /// Time to the answer's head.
    pub latency: Histogram,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr} timed out after {after:?}")]
    TimedOut { addr: SocketAddr, after: Duration },
    #[error("cannot connect to {addr}: {source}")]
    Refused {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

impl Backend {
    pub fn new(name: String, url: String, addr: SocketAddr, weight: u32) -> Backend {
        let name_header = http::HeaderValue::from_str(&name)
            .unwrap_or_else(|_| http::HeaderValue::from_static("backend"));
        Backend {
            name_header,
            name,
            url,
            addr,
            weight: AtomicU32::new(weight),
            drained: AtomicBool::new(false),
            up: AtomicBool::new(true),
            health: Mutex::new(Health::new()),
            in_flight: AtomicU32::new(0),
            stats: Stats::default(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The weight a pick uses now: the configured one, scaled by slow start, in
    /// thousandths so that a tenth of weight 1 is still a whole number.
    pub fn effective_weight(&self, now: Instant, policy: &Policy) -> u32 {
        let factor = self.health().weight_factor(now, policy);
        ((f64::from(self.weight()) * 1000.0 * factor).round() as u32).max(1)
    }

    /// Runs `f` on the health state and publishes what it changed.
    pub fn update_health(
        &self,
        f: impl FnOnce(&mut Health) -> Option<Transition>,
    ) -> Option<Transition> {
        let mut health = self.health();
        let change = f(&mut health);
        self.up
            .store(health.state() == State::Up, Ordering::Relaxed);
        drop(health);
        if let Some(change) = &change {
            match change {
                Transition::Down { why, ejected_for } => {
                    if ejected_for.is_some() {
                        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.downs.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(backend = %self.name, ejected_for = ?ejected_for, "backend down: {why}");
                }
                Transition::Up { why } => {
                    tracing::info!(backend = %self.name, "backend up: {why}");
                }
            }
        }
        change
    }

    /// The health state, for reading.
    pub fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection that is still open, if there is one.
    pub fn checkout(&self) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Hands a connection back once its answer has been read to the end.
    pub fn checkin(&self, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Closes the idle connections (the backend left the configuration or went down).
    pub fn close_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A new connection, its HTTP/1.1 machinery running in its own task.
    pub async fn connect(&self, timeout: Duration) -> Result<SendRequest<UpBody>, ConnectError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            Err(_) => {
                return Err(ConnectError::TimedOut {
                    addr,
                    after: timeout,
                });
            }
            Ok(Err(source)) => return Err(ConnectError::Refused { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, error = %e, "backend connection ended");
            }
        });
        Ok(sender)
    }

    /// Counts an answer of this status.
    pub fn count_answer(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.stats.answers[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight on a backend: counted while it lives.
#[derive(Debug)]
pub struct InFlight(pub Arc<Backend>);

impl InFlight {
    pub fn start(backend: Arc<Backend>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

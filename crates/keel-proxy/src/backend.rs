//! One backend: its address, weight and health, its idle keep-alive connections, and its
//! counters.
//!
//! The connection pool is written here rather than taken from hyper-util's client: the
//! proxy must know whether a request reached the backend at all (a refused connection may
//! be retried for any method, a request that went out may not), must hand a connection
//! back only once its answer has been read to the end, and relays bytes on the raw socket
//! in the client connection's own task (see [`crate::wire`]).
//!
//! An `https://` backend is reached over TLS: the proxy checks the backend's certificate
//! against the cluster CA for the URL's host, and shows its own certificate as a client
//! (a member's, as between any two members). Its connections are kept alive in the same
//! pool as plain ones.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Context;
use std::time::Duration;

use bytes::BytesMut;
use keel_auth::tls::Tls;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{BackendAddr, Scheme};
use crate::health::{Health, Policy, State, Transition};
use crate::metrics::Histogram;
use crate::stream::{BackendStream, Stream};

/// A keep-alive connection to a backend: the socket and what has been read from it.
#[derive(Debug)]
pub struct Conn {
    pub stream: BackendStream,
    /// Read from the backend and not yet passed on.
    pub buf: BytesMut,
    /// It served an earlier request (a backend may have closed it since).
    pub reused: bool,
}

impl Conn {
    /// Whether the backend has left the connection open and sent nothing unasked: a read
    /// that would block. A closed connection reads its end (or an error) at once.
    fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match &mut self.stream {
            Stream::Plain(stream) => {
                matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            // Not the socket itself: what is on it is TLS records, and a server may send
            // some unasked that are not data (TLS 1.3 session tickets), which rustls takes
            // in without a byte for the reader. So one read through TLS, polled once, with
            // a waker that is never woken: pending means nothing came but records rustls
            // dealt with; data, an end, a close_notify or an error means the connection
            // cannot carry a request.
            Stream::Tls(stream) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(stream.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

/// The read buffer a connection starts with; it grows for larger heads.
const CONN_BUFFER: usize = 8 * 1024;

/// Idle connections kept per backend; more are closed when handed back.
const MAX_IDLE: usize = 1024;

/// How connections to a backend are opened.
#[derive(Clone)]
enum Transport {
    Plain,
    /// TLS, checking the backend's certificate for `name`.
    Tls {
        connector: tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    },
    /// An `https://` backend, and the proxy has no TLS to reach it with (a data node
    /// of a tier on TLS, seen by a proxy started without it).
    NoTls,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls { name, .. } => write!(f, "Tls({name:?})"),
            Transport::NoTls => f.write_str("NoTls"),
        }
    }
}

/// A backend of a pool, or a data node of the cluster route.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    /// `name` as the value of the `Keel-Backend` header.
    pub name_header: http::HeaderValue,
    pub url: String,
    pub addr: SocketAddr,
    transport: Transport,
    /// The configured weight (the admin API may change it).
    weight: AtomicU32,
    drained: AtomicBool,
    /// Mirrors `health.state() == Up`, read on every pick without the lock.
    up: AtomicBool,
    /// Slow start is over: the pick takes the configured weight without the lock.
    full_weight: AtomicBool,
    /// Mirrors `health.in_error_streak()`: a good answer outside a streak changes nothing
    /// and takes no lock.
    error_streak: AtomicBool,
    health: Mutex<Health>,
    /// Requests sent and not yet answered to the end.
    pub in_flight: AtomicU32,
    pub stats: Stats,
    idle: Mutex<Vec<Conn>>,
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
    /// The connection (TLS handshake included) was not made in time.
    #[error("connecting to {addr} timed out after {after:?}")]
    TimedOut { addr: SocketAddr, after: Duration },
    /// The backend refused the connection, or could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Refused {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS handshake failed: most often a certificate another CA signed, or one
    /// that does not name the URL's host.
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// An `https://` backend, and the proxy has no TLS.
    #[error(
        "{url} is on TLS and this proxy has none: start it with --tls-cert, --tls-key and --tls-ca"
    )]
    NoTls { url: String },
}

impl Backend {
    /// A backend at `addr`; with `tls` (the proxy's), an `https://` one is reached over
    /// TLS.
    pub fn new(
        name: String,
        url: String,
        addr: &BackendAddr,
        weight: u32,
        tls: Option<&Tls>,
    ) -> Backend {
        let name_header = http::HeaderValue::from_str(&name)
            .unwrap_or_else(|_| http::HeaderValue::from_static("backend"));
        let transport = match (addr.scheme, tls) {
            (Scheme::Http, _) => Transport::Plain,
            (Scheme::Https, None) => Transport::NoTls,
            (Scheme::Https, Some(tls)) => Transport::Tls {
                connector: tls.connector(),
                // The host of a parsed URL is an IP address or `localhost`, both names a
                // certificate can carry; were it neither, the address connected to is.
                name: keel_auth::tls::server_name(&addr.host)
                    .unwrap_or_else(|_| ServerName::IpAddress(addr.socket.ip().into())),
            },
        };
        Backend {
            name_header,
            name,
            url,
            addr: addr.socket,
            transport,
            weight: AtomicU32::new(weight),
            drained: AtomicBool::new(false),
            up: AtomicBool::new(true),
            full_weight: AtomicBool::new(false),
            error_streak: AtomicBool::new(false),
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
        if self.full_weight.load(Ordering::Relaxed) {
            return self.weight().saturating_mul(1000);
        }
        let health = self.health();
        let factor = health.weight_factor(now, policy);
        if factor >= 1.0 {
            // Set under the lock, so a recovery (which clears it under the lock) wins.
            self.full_weight.store(true, Ordering::Relaxed);
        }
        drop(health);
        ((f64::from(self.weight()) * 1000.0 * factor).round() as u32).max(1)
    }

    /// Whether a good answer would change nothing in the health state.
    pub fn answers_clean(&self) -> bool {
        !self.error_streak.load(Ordering::Relaxed)
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
        self.error_streak
            .store(health.in_error_streak(), Ordering::Relaxed);
        if matches!(change, Some(Transition::Up { .. })) {
            // Slow start begins again.
            self.full_weight.store(false, Ordering::Relaxed);
        }
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
    pub fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut conn) = idle.pop() {
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Hands a connection back once its answer has been read to the end (and nothing
    /// more: bytes beyond the answer mean the connection cannot be trusted).
    pub fn checkin(&self, mut conn: Conn) {
        if !conn.buf.is_empty() {
            return;
        }
        conn.reused = true;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Closes the idle connections (the backend left the configuration or went down).
    pub fn close_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Whether connections to it are TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self.transport, Transport::Plain)
    }

    /// A new connection, for requests.
    pub async fn connect(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        Ok(Conn {
            stream: self.open(timeout).await?,
            buf: BytesMut::with_capacity(CONN_BUFFER),
            reused: false,
        })
    }

    /// A new connection, TLS handshake done for an `https://` backend, all within
    /// `timeout`: to a client of the proxy, opening a connection is one step, however
    /// many round trips it takes.
    pub async fn open(&self, timeout: Duration) -> Result<BackendStream, ConnectError> {
        let addr = self.addr;
        if let Transport::NoTls = self.transport {
            return Err(ConnectError::NoTls {
                url: self.url.clone(),
            });
        }
        let deadline = Instant::now() + timeout;
        let timed_out = || ConnectError::TimedOut {
            addr,
            after: timeout,
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(source)) => return Err(ConnectError::Refused { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        match &self.transport {
            Transport::Plain | Transport::NoTls => Ok(Stream::Plain(stream)),
            Transport::Tls { connector, name } => {
                let handshake = connector.connect(name.clone(), stream);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Err(_) => Err(timed_out()),
                    Ok(Err(source)) => Err(ConnectError::Tls { addr, source }),
                    Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_backend_url;

    #[tokio::test]
    async fn an_https_backend_without_the_proxys_tls_is_not_connected_and_says_what_to_do() {
        // A data node of a tier on TLS, as a proxy started without TLS sees it.
        let url = "https://127.0.0.1:1";
        let addr = parse_backend_url(url).expect("an https URL");
        let backend = Backend::new("app1".into(), url.into(), &addr, 1, None);
        assert!(backend.is_tls());
        let err = backend
            .connect(Duration::from_secs(1))
            .await
            .expect_err("no TLS to connect with");
        assert!(matches!(err, ConnectError::NoTls { .. }), "{err}");
        let said = err.to_string();
        assert!(said.contains(url) && said.contains("--tls-cert"), "{said}");
    }

    #[tokio::test]
    async fn a_plain_backend_is_reached_without_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let addr = parse_backend_url(&url).expect("an http URL");
        let backend = Backend::new("app".into(), url, &addr, 1, None);
        assert!(!backend.is_tls());
        let conn = backend
            .connect(Duration::from_secs(1))
            .await
            .expect("a connection");
        assert!(matches!(conn.stream, Stream::Plain(_)));
    }
}

//! [`serve_with`]: the server loop of every keel HTTP server (monitor, node, service,
//! the proxy's admin API, `keel up`'s control API), with every wire bounded.
//!
//! Written here rather than taken from `axum::serve`, which bounds nothing. Each limit
//! answers a way one client could hold a server hostage:
//!
//! | limit | default | what happens |
//! |---|---|---|
//! | header read timeout | 30 s | a head not complete in time (or a kept-alive connection idle that long) is closed |
//! | body timeout | 10 s | a body not complete in time is answered `408` and the connection closed |
//! | body size | 1 MiB; 2 MiB with a member's signature (`Keel-Auth`), checked by the guard once it is in | a larger body is answered `413` |
//! | send timeout | 30 s | a connection whose client has not read for that long is closed |
//! | connections | 1,024 | at the cap, the connection waiting longest on its client is closed for the new one ([`crate::conns`]) |
//!
//! Bodies are read whole, within the body timeout, before the router sees the request:
//! every keel handler reads its body whole anyway, and a server that reads it first
//! knows which connections are slow clients and which are working for one.
//!
//! Connections may be upgraded (a node's replication stream is): an upgraded connection
//! leaves the server's count and is not waited for when it stops.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::conns::{Deadlines, Phase, Seen, overstayed, victim};
use crate::error_response;
use keel_core::ApiError;

/// How long a client may take to send a request's head, and how long a kept-alive
/// connection may stay idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request's body may take to arrive once its head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write may make no progress (its client reads nothing) before the
/// connection is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections a server holds at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// The largest request body a server reads.
pub const MAX_BODY: usize = 1 << 20;

/// What one server lets its clients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// [`BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// [`SEND_TIMEOUT`].
    pub send_timeout: Duration,
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// [`MAX_BODY`].
    pub max_body: usize,
    /// The largest body of a request that carries a member's signature (`Keel-Auth`):
    /// [`crate::MAX_SIGNED_BODY`]. The guard checks the signature once the body is in.
    pub max_signed_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_body: MAX_BODY,
            max_signed_body: crate::MAX_SIGNED_BODY,
        }
    }
}

/// Serves `router` on `listener` with the default [`Limits`] until `shutdown` resolves,
/// then lets in-flight requests finish for at most `grace`. `stopping` turns true the
/// moment shutdown begins, so that the server's other tasks (event streams among them)
/// can stop with it. With `tls`, every connection is TLS ([`keel_auth::tls`]).
pub async fn serve_draining(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    stopping: watch::Sender<bool>,
    tls: Option<&keel_auth::tls::Tls>,
) {
    let tls = tls.map(keel_auth::tls::Tls::acceptor);
    serve_with(
        listener,
        router,
        shutdown,
        grace,
        stopping,
        Limits::default(),
        tls,
    )
    .await
}

/// [`serve_draining`] with chosen limits.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    stopping: watch::Sender<bool>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conns = Arc::new(Conns::new());
    let deadlines = Deadlines {
        body: limits.body_timeout,
        send: limits.send_timeout,
    };
    let sweeper = tokio::spawn(sweep(Arc::downgrade(&conns), deadlines));
    let mut shutdown = pin!(shutdown);
    'accepting: loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors: make room as at the cap, so that the next
                    // client is not refused because slow ones hold every descriptor.
                    // Either way, wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    // ENFILE (23) and EMFILE (24) on Linux.
                    let out_of_files = matches!(e.raw_os_error(), Some(23 | 24));
                    if out_of_files && let Some(id) = victim(&conns.seen()) {
                        conns.close(id);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Room for it: close the connection waiting longest on its client, or, when every
        // connection is being served, wait until one leaves.
        while conns.live() >= limits.max_connections {
            match victim(&conns.seen()) {
                Some(id) => {
                    tracing::debug!(
                        conn = id,
                        "server full: closing the connection waiting longest on its client"
                    );
                    conns.close(id);
                }
                None => tokio::select! {
                    biased;
                    () = &mut shutdown => break 'accepting,
                    () = conns.left.notified() => {}
                },
            }
        }
        let conn = conns.add();
        let router = router.clone();
        let io = Tracked {
            io: stream,
            conn: conn.clone(),
            conns: conns.clone(),
        };
        let mut stop = stopping.subscribe();
        let (conns, http, tls) = (conns.clone(), http.clone(), tls.clone());
        tokio::spawn(async move {
            // The handshake is the first thing a client must finish, in the time it has
            // for its head, and in this task: a slow one never holds up accepting.
            let (io, transport) = match tls {
                None => (Io::Plain(io), None),
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let peer = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .map(|cert| cert.clone().into_owned());
                            (Io::Tls(Box::new(tls)), Some(TlsPeer { cert: peer }))
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake refused");
                            conns.remove(conn.id);
                            return;
                        }
                        Err(_) => {
                            conns.remove(conn.id);
                            return;
                        }
                    }
                }
            };
            let service = {
                let conn = conn.clone();
                let conns = conns.clone();
                hyper::service::service_fn(move |mut request: http::Request<_>| {
                    if let Some(peer) = &transport {
                        request.extensions_mut().insert(peer.clone());
                    }
                    let (router, conn, conns) = (router.clone(), conn.clone(), conns.clone());
                    async move {
                        Ok::<_, Infallible>(handle(router, &conn, &conns, limits, request).await)
                    }
                })
            };
            let connection = http
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = conn.close.notified() => {}
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                    // The request in flight is finished, then the connection closed.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = conn.close.notified() => {}
                    }
                }
            }
            conns.remove(conn.id);
        });
    }
    tracing::info!("stopping: draining in-flight requests");
    let _ = stopping.send(true);
    drop(listener);
    tokio::select! {
        () = conns.emptied() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "requests still open after the grace period; stopping anyway");
        }
    }
    sweeper.abort();
}

/// On a request that came over TLS: the certificate the client showed, if any (checked
/// against the cluster CA by the handshake). A member's signature over TLS must come
/// with a certificate that names the member ([`crate::Guard`]).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The client's certificate.
    pub cert: Option<rustls_pki_types::CertificateDer<'static>>,
}

impl TlsPeer {
    /// Whether the client's certificate names `id` (as one of its DNS names).
    pub fn names(&self, id: &str) -> bool {
        let (Some(cert), Ok(name)) = (&self.cert, rustls_pki_types::ServerName::try_from(id))
        else {
            return false;
        };
        webpki::EndEntityCert::try_from(cert)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// One request: its body read whole within the body timeout, then the router.
async fn handle(
    router: axum::Router,
    conn: &Conn,
    conns: &Conns,
    limits: Limits,
    request: http::Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = request.into_parts();
    // A member's signed request may bring more (a piece of a slot move's copy); the
    // guard refuses it once read if the signature is not a member's.
    let max_body = if parts.headers.contains_key(keel_auth::AUTH_HEADER) {
        limits.max_signed_body
    } else {
        limits.max_body
    };
    let bytes = if body.is_end_stream() {
        Bytes::new()
    } else {
        conn.enter(Phase::Body, conns.now_ms());
        let read = tokio::time::timeout(
            limits.body_timeout,
            http_body_util::Limited::new(body, max_body).collect(),
        )
        .await;
        match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                conn.enter(Phase::Idle, conns.now_ms());
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than the limit of {max_body} bytes"),
                );
            }
            Ok(Err(e)) => {
                conn.enter(Phase::Idle, conns.now_ms());
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("the body could not be read: {e}"),
                );
            }
            Err(_) => {
                conn.enter(Phase::Idle, conns.now_ms());
                return refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the body did not arrive within {}",
                        keel_core::duration::format(limits.body_timeout)
                    ),
                );
            }
        }
    };
    conn.enter(Phase::Busy, conns.now_ms());
    let request = http::Request::from_parts(parts, axum::body::Body::from(bytes));
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let streamed = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let phase = if streamed {
        Phase::Streaming
    } else {
        Phase::Idle
    };
    conn.enter(phase, conns.now_ms());
    response
}

/// A refusal that also ends the connection: what is left of the request is unread.
fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = error_response(status, ApiError::new(code, message));
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Closes, about once a second, every connection that has overstayed a deadline. Ends
/// with the server.
async fn sweep(conns: std::sync::Weak<Conns>, deadlines: Deadlines) {
    let period = deadlines
        .body
        .min(deadlines.send)
        .min(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conns) = conns.upgrade() else {
            return;
        };
        let now = Instant::now();
        for seen in conns.seen() {
            if let Some(why) = overstayed(&seen, now, deadlines) {
                tracing::debug!(conn = seen.id, why, "closing a connection");
                conns.close(seen.id);
            }
        }
    }
}

/// One connection, as its task, its requests and the sweeper see it. Times are
/// milliseconds after [`Conns::epoch`], so that they fit atomics.
struct Conn {
    id: u64,
    phase: AtomicU8,
    since: AtomicU64,
    /// When a write stopped making progress, plus one; 0 when none is stuck.
    stalled: AtomicU64,
    /// Told to close (evicted or overstayed): no longer counted.
    closing: AtomicBool,
    close: Notify,
}

impl Conn {
    fn enter(&self, phase: Phase, now_ms: u64) {
        self.since.store(now_ms, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Idle,
            1 => Phase::Body,
            2 => Phase::Busy,
            _ => Phase::Streaming,
        }
    }
}

/// The open connections.
struct Conns {
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Notified whenever a connection leaves.
    left: Notify,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            left: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            phase: AtomicU8::new(Phase::Idle as u8),
            since: AtomicU64::new(self.now_ms()),
            stalled: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        self.open().insert(id, conn.clone());
        conn
    }

    fn remove(&self, id: u64) {
        self.open().remove(&id);
        self.left.notify_waiters();
        self.left.notify_one();
    }

    /// Connections not already told to close.
    fn live(&self) -> usize {
        self.open()
            .values()
            .filter(|c| !c.closing.load(Ordering::Relaxed))
            .count()
    }

    fn seen(&self) -> Vec<Seen> {
        self.open()
            .values()
            .filter(|c| !c.closing.load(Ordering::Relaxed))
            .map(|c| Seen {
                id: c.id,
                phase: c.phase(),
                since: self.at(c.since.load(Ordering::Relaxed)),
                stalled_since: match c.stalled.load(Ordering::Relaxed) {
                    0 => None,
                    t => Some(self.at(t - 1)),
                },
            })
            .collect()
    }

    fn close(&self, id: u64) {
        if let Some(conn) = self.open().get(&id) {
            conn.closing.store(true, Ordering::Relaxed);
            conn.close.notify_one();
        }
    }

    /// Resolves once every connection has left.
    async fn emptied(&self) {
        loop {
            let left = self.left.notified();
            if self.open().is_empty() {
                return;
            }
            left.await;
        }
    }
}

/// A connection's stream: plain, or TLS over it.
enum Io {
    Plain(Tracked),
    Tls(Box<tokio_rustls::server::TlsStream<Tracked>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection's socket, noting when a write stops making progress (the send
/// timeout's clock).
struct Tracked {
    io: TcpStream,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Tracked {
    fn note<T>(&self, polled: &Poll<T>) {
        if polled.is_pending() {
            let now = self.conns.now_ms() + 1;
            let _ =
                self.conn
                    .stalled
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        } else {
            self.conn.stalled.store(0, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;

    /// A server answering `GET /` with "ok", `POST /echo` with its body, `GET /big` with
    /// 64 MiB and `GET /wait` once `release` is notified; and what stops it.
    async fn start(
        max_connections: usize,
        release: Arc<Notify>,
    ) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/echo",
                axum::routing::post(|body: Bytes| async move { body }),
            )
            .route(
                "/big",
                axum::routing::get(|| async { vec![b'x'; 64 << 20] }),
            )
            .route(
                "/wait",
                axum::routing::get(move || {
                    let release = release.clone();
                    async move {
                        release.notified().await;
                        "released"
                    }
                }),
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let (stopping, _) = watch::channel(false);
        let limits = Limits {
            max_connections,
            ..Limits::default()
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve_with(
            listener,
            router,
            shutdown,
            Duration::from_secs(1),
            stopping,
            limits,
            None,
        ));
        (addr, stop, server)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    /// Sends `request` and reads its (short) answer.
    async fn ask(stream: &mut TcpStream, request: &[u8]) -> String {
        stream.write_all(request).await.expect("write");
        let mut answer = vec![0; 4096];
        let n = stream.read(&mut answer).await.expect("read");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// Whether the server closed `stream` (reads to the end, or fails).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest).await {
            Ok(_) => !String::from_utf8_lossy(&rest).contains("200 OK"),
            Err(_) => true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_still_unfinished_after_the_timeout_loses_its_connection() {
        let (addr, stop, server) = start(8, Arc::new(Notify::new())).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        assert!(closed(&mut slow).await);
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited < HEADER_READ_TIMEOUT * 2,
            "closed after {waited:?}"
        );
        // A client that sends its head whole is served.
        let mut quick = TcpStream::connect(addr).await.expect("connect");
        let answer = ask(&mut quick, GET).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        let _ = stop.send(());
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_unfinished_after_the_body_timeout_is_answered_408_and_closed() {
        let (addr, stop, server) = start(8, Arc::new(Notify::new())).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .expect("write");
        let started = Instant::now();
        let mut answer = Vec::new();
        let _ = slow.read_to_end(&mut answer).await;
        let waited = started.elapsed();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
        assert!(
            waited >= BODY_TIMEOUT && waited < BODY_TIMEOUT + Duration::from_secs(1),
            "answered after {waited:?}"
        );
        // A whole body is echoed.
        let mut quick = TcpStream::connect(addr).await.expect("connect");
        let answer = ask(
            &mut quick,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("abc"),
            "{answer}"
        );
        let _ = stop.send(());
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_connection_waiting_longest_on_its_client_makes_room() {
        let (addr, stop, server) = start(2, Arc::new(Notify::new())).await;
        // Two slow clients hold the server: one idle, one halfway through a body.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(ask(&mut idle, GET).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A third client is served at once, and the one idle longest was closed for it.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let answer = tokio::time::timeout(Duration::from_secs(1), ask(&mut third, GET))
            .await
            .expect("served while the server was full");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed(&mut idle).await, "the idle connection stayed open");
        // The next one takes the half-sent body's place.
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        assert!(ask(&mut fourth, GET).await.starts_with("HTTP/1.1 200"));
        assert!(closed(&mut half).await, "the half-sent body stayed open");
        let _ = stop.send(());
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_connection_is_being_served_the_next_client_waits_for_one() {
        let release = Arc::new(Notify::new());
        let (addr, stop, server) = start(1, release.clone()).await;
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut next = TcpStream::connect(addr).await.expect("connect");
        next.write_all(GET).await.expect("write");
        let mut answer = vec![0; 4096];
        let waited = tokio::time::timeout(Duration::from_secs(5), next.read(&mut answer)).await;
        assert!(
            waited.is_err(),
            "served while the only slot was busy: {waited:?}"
        );
        release.notify_one();
        let mut first = vec![0; 4096];
        let n = busy.read(&mut first).await.expect("read");
        assert!(String::from_utf8_lossy(&first[..n]).ends_with("released"));
        drop(busy);
        let n = next.read(&mut answer).await.expect("read");
        assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
        let _ = stop.send(());
        server.await.expect("server");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_its_answer_is_closed_after_the_send_timeout() {
        let (addr, stop, server) = start(8, Arc::new(Notify::new())).await;
        let mut reader = TcpStream::connect(addr).await.expect("connect");
        reader
            .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        // Read a little, then nothing: the socket buffers fill and the server's write
        // sticks.
        let mut some = vec![0; 1024];
        let _ = reader.read(&mut some).await.expect("read");
        let started = Instant::now();
        tokio::time::sleep(SEND_TIMEOUT + Duration::from_secs(2)).await;
        // Now drain: the answer ends well short of its 64 MiB, closed by the server.
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest).await;
        assert!(rest.len() < (64 << 20) - 1024, "the whole answer arrived");
        assert!(started.elapsed() >= SEND_TIMEOUT);
        let _ = stop.send(());
        server.await.expect("server");
    }
}

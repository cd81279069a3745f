//! The request path to a pool's backends: send a client's request to a backend, retry on
//! another one when that is safe, and hand the answer's head (its body still on the
//! backend's connection) to [`crate::front`], which passes it back.
//!
//! **When a request is retried.** At once and on a different backend, and only while the
//! pool's retry budget allows it:
//! - the connection could not be made: always, whatever the method, since nothing reached
//!   the backend;
//! - the request went out and the connection broke, or the answer is 502, 503 or 504: only
//!   for an idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and only when the
//!   request has no body, since a body that has gone out cannot be sent again. A POST
//!   whose body was sent is never retried: the backend may have acted on it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use keel_core::ApiError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use crate::Proxy;
use crate::backend::{Backend, Conn, ConnectError, InFlight};
use crate::config::Config;
use crate::evict::Slot;
use crate::front::write_within;
use crate::metrics::Timeout;
use crate::pool::Pool;
use crate::stream::{ClientStream, Stream};
use crate::wire::{self, Chunked, Framing, ResponseHead};

/// The most of a failed answer kept in memory while another backend is tried.
const MAX_HELD: usize = 64 * 1024;
/// How much is read from a socket at a time.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// What the client is answered with.
#[derive(Debug)]
pub(crate) enum Answer {
    /// An answer the proxy made itself.
    Local(Response<Bytes>),
    /// A backend's answer: its head read into the connection's buffer, its body still
    /// (partly) on the connection.
    Relayed {
        conn: Conn,
        head: ResponseHead,
        in_flight: InFlight,
    },
    /// A backend's whole answer, read into memory (head and body) while another backend
    /// was tried; `bytes` holds the head at its start.
    Held {
        bytes: BytesMut,
        head: ResponseHead,
        backend: Arc<Backend>,
    },
    /// The client went away while its request's body was being sent on.
    ClientGone,
}

/// The body of a request still on the client's connection.
#[derive(Debug)]
pub(crate) struct Inbound<'a> {
    pub stream: &'a mut ClientStream,
    /// Read from the client and not yet used: the body's first bytes, perhaps more.
    pub buf: &'a mut BytesMut,
    pub framing: Framing,
    /// `100 Continue` is owed to the client before its body is read.
    pub send_continue: bool,
    /// The whole body has been read from the client (so its connection can carry the
    /// next request).
    pub consumed: bool,
    /// When the whole body must have arrived (`body_timeout`).
    pub deadline: Instant,
    /// How long one write may wait for the other side to take it (`send_timeout`).
    pub send_timeout: Duration,
    /// The client connection's place: serving, no longer receiving, once the body is in.
    pub slot: &'a Slot,
}

/// A request's body, as a backend is sent it.
#[derive(Debug)]
pub(crate) enum OutBody<'a, 'b> {
    Empty,
    /// Held in memory: it can be sent again.
    Buffered(&'a [u8]),
    /// Streamed from the client: it can be sent once.
    Streamed(&'a mut Inbound<'b>),
}

/// Which side of a relay failed.
enum PipeError {
    /// The client left (or its connection was evicted).
    Client,
    /// The client's body did not arrive whole by its deadline.
    ClientTimedOut,
    /// The client's chunked body broke the rules.
    BadBody(String),
    Backend(String),
    /// The backend took no more of the request for `send_timeout`.
    BackendStalled,
}

impl Inbound<'_> {
    /// Copies the body from the client to `to`, after `head` (sent with the body's first
    /// bytes when they are already here).
    async fn pipe(
        &mut self,
        head: &[u8],
        to: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), PipeError> {
        if self.send_continue {
            self.send_continue = false;
            write_within(self.stream, wire::CONTINUE, self.send_timeout)
                .await
                .map_err(|_| PipeError::Client)?;
        }
        let piped = self.pipe_body(head, to).await;
        if piped.is_ok() {
            self.consumed = true;
            if !self.slot.serving() {
                // Evicted just as the body came in: the connection ends.
                return Err(PipeError::Client);
            }
        }
        piped
    }

    /// Writes to the backend within the send timeout.
    async fn send(
        &self,
        to: &mut (impl AsyncWrite + Unpin),
        bytes: &[u8],
    ) -> Result<(), PipeError> {
        write_within(to, bytes, self.send_timeout)
            .await
            .map_err(PipeError::from)
    }

    async fn pipe_body(
        &mut self,
        head: &[u8],
        to: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), PipeError> {
        match self.framing {
            Framing::Empty | Framing::UntilClose => self.send(to, head).await,
            Framing::Length(n) => {
                let mut left = n;
                let have = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
                // One write for a small request that came whole.
                let mut first = Vec::with_capacity(head.len() + have);
                first.extend_from_slice(head);
                first.extend_from_slice(&self.buf[..have]);
                self.buf.advance(have);
                left -= have as u64;
                self.send(to, &first).await?;
                while left > 0 {
                    self.fill().await?;
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    self.send(to, &self.buf[..take]).await?;
                    self.buf.advance(take);
                    left -= take as u64;
                }
                Ok(())
            }
            Framing::Chunked => {
                self.send(to, head).await?;
                let mut scanner = Chunked::default();
                loop {
                    if !self.buf.is_empty() {
                        let used = scanner
                            .scan(&self.buf[..], |_| {})
                            .map_err(|e| PipeError::BadBody(e.to_string()))?;
                        self.send(to, &self.buf[..used]).await?;
                        self.buf.advance(used);
                    }
                    if scanner.is_done() {
                        return Ok(());
                    }
                    self.fill().await?;
                }
            }
        }
    }

    /// Reads more of the body from the client, by the body's deadline.
    async fn fill(&mut self) -> Result<(), PipeError> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(self.deadline, self.stream.read_buf(self.buf)).await {
            Ok(Ok(0) | Err(_)) => Err(PipeError::Client),
            Ok(Ok(_)) => Ok(()),
            Err(_) => Err(PipeError::ClientTimedOut),
        }
    }
}

/// Whether a method may be sent twice with the effect of once (RFC 9110, 9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request for a pool, ready to go: the head a backend is sent (framing included) and
/// what is known of it.
#[derive(Debug)]
pub(crate) struct Outgoing<'h> {
    pub head: &'h [u8],
    pub method: Method,
    /// Its body, if any, is still to be streamed from the client.
    pub has_body: bool,
}

/// Sends a request to the pool, retrying on another backend where that is safe.
pub(crate) async fn forward(
    proxy: &Proxy,
    config: &Config,
    pool: &Pool,
    request: &Outgoing<'_>,
    inbound: &mut Inbound<'_>,
) -> Answer {
    // One reading of the clock per attempt: the pick, the budget and the health state
    // all take it from here.
    let mut now = Instant::now();
    pool.budget.deposit_at(now);
    let idempotent = is_idempotent(&request.method);
    let to_head = request.method == Method::HEAD;
    // Nothing to stream: the request can be sent again to another backend.
    let replayable = !request.has_body;
    // At most `retry.attempts` (10) backends are tried; kept on the stack.
    let mut tried = [usize::MAX; 10];
    let mut tries = 0;
    let mut failure: Option<Answer> = None;
    loop {
        let Some(pick) = pool.pick(&tried[..tries], now) else {
            return failure.unwrap_or_else(|| no_backend(pool));
        };
        if pick.panic {
            proxy.stats.panic_picks.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = tried.get_mut(tries) {
            *slot = pick.index;
        }
        tries += 1;
        let backend = pick.backend;
        let more = tries < (config.retry.attempts as usize).min(tried.len());
        let in_flight = InFlight::start(Arc::clone(&backend));
        let body = if replayable {
            OutBody::Empty
        } else {
            OutBody::Streamed(&mut *inbound)
        };
        let exchanged = exchange(&backend, request.head, body, to_head, config, now).await;
        now = match &exchanged {
            Exchange::Answered(_, _, took) => now + *took,
            _ => Instant::now(),
        };
        match exchanged {
            Exchange::Answered(conn, head, took) => {
                let status = head.status;
                backend.stats.latency.record(took);
                backend.count_answer(status);
                pool.answered(&backend, status >= 500, now);
                let retryable = matches!(status, 502..=504) && idempotent && replayable;
                if retryable && more && can_hold(&head) {
                    if let Some(held) = hold(conn, head, &backend, config.request_timeout).await {
                        if may_retry(proxy, pool, &backend, now) {
                            failure = Some(held);
                            continue;
                        }
                        return held;
                    }
                    return bad_gateway(&backend, "its error answer broke off", true);
                }
                return Answer::Relayed {
                    conn,
                    head,
                    in_flight,
                };
            }
            Exchange::NotSent(error) => {
                if pool.connect_failed(&backend, now).is_some() {
                    // The ejection's own line says only that no connection was made;
                    // this one says why (a certificate another CA signed, say).
                    tracing::warn!(backend = %backend.name, %error, "no connection to the backend");
                }
                failure = Some(bad_gateway(&backend, &error.to_string(), false));
                if more && may_retry(proxy, pool, &backend, now) {
                    continue;
                }
                return failure.unwrap_or_else(|| no_backend(pool));
            }
            Exchange::ClientGone => return Answer::ClientGone,
            Exchange::ClientTimedOut => {
                // Part of the request went to the backend: no answer can be trusted to
                // say what it did with it, so the connection is closed without one.
                proxy.stats.timed_out(Timeout::Body);
                tracing::debug!(backend = %backend.name, "request body timed out mid-way");
                return Answer::ClientGone;
            }
            Exchange::BadBody(why) => return bad_body(&why),
            Exchange::Failed(error) => {
                backend.stats.failures.fetch_add(1, Ordering::Relaxed);
                pool.answered(&backend, true, now);
                if idempotent && replayable && more && may_retry(proxy, pool, &backend, now) {
                    failure = Some(bad_gateway(&backend, &error, true));
                    continue;
                }
                let why = if idempotent && replayable {
                    "no other backend to try".to_owned()
                } else if !idempotent {
                    format!(
                        "not retried: {} is not idempotent and the request went out",
                        request.method
                    )
                } else {
                    "not retried: the request's body went out and cannot be sent again".to_owned()
                };
                return bad_gateway(&backend, &format!("{error}; {why}"), true);
            }
            Exchange::TimedOut => {
                backend.stats.failures.fetch_add(1, Ordering::Relaxed);
                pool.answered(&backend, true, now);
                return timed_out(&backend, config.request_timeout);
            }
        }
    }
}

/// `504`: the backend took longer than the request timeout.
pub(crate) fn timed_out(backend: &Backend, after: Duration) -> Answer {
    local(
        StatusCode::GATEWAY_TIMEOUT,
        ApiError::new(
            "gateway_timeout",
            format!(
                "backend {} did not answer within {after:?} (request_timeout)",
                backend.name
            ),
        )
        .with("backend", backend.name.as_str()),
    )
}

/// `400`: the client's body broke the rules.
pub(crate) fn bad_body(why: &str) -> Answer {
    local(StatusCode::BAD_REQUEST, ApiError::new("bad_body", why))
}

/// Takes one retry from the budget, counting it.
fn may_retry(proxy: &Proxy, pool: &Pool, from: &Backend, now: Instant) -> bool {
    if pool.budget.try_withdraw_at(now) {
        from.stats.retries.fetch_add(1, Ordering::Relaxed);
        true
    } else {
        proxy.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// Whether an answer is small enough to be read into memory (a chunked one is found out
/// while reading).
fn can_hold(head: &ResponseHead) -> bool {
    match head.framing {
        Some(Framing::Empty | Framing::Chunked) => true,
        Some(Framing::Length(n)) => n <= MAX_HELD as u64,
        Some(Framing::UntilClose) | None => false,
    }
}

/// Reads the rest of an answer into memory (at most [`MAX_HELD`] bytes) and hands its
/// connection back; `None` when the answer is larger, breaks off, or pauses longer than
/// `gap`.
pub(crate) async fn hold(
    mut conn: Conn,
    head: ResponseHead,
    backend: &Arc<Backend>,
    gap: Duration,
) -> Option<Answer> {
    let framing = head.framing.unwrap_or(Framing::UntilClose);
    let mut scanner = Chunked::default();
    // How far the chunked body has been scanned.
    let mut scanned = head.len;
    let end = loop {
        let end = match framing {
            Framing::Empty => Some(head.len),
            Framing::Length(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n <= conn.buf.len() - head.len)
                .map(|n| head.len + n),
            Framing::Chunked => {
                scanned += scanner.scan(&conn.buf[scanned..], |_| {}).ok()?;
                scanner.is_done().then_some(scanned)
            }
            Framing::UntilClose => return None,
        };
        if let Some(end) = end {
            break end;
        }
        if conn.buf.len() > head.len + MAX_HELD {
            return None;
        }
        conn.buf.reserve(READ_CHUNK);
        let read = tokio::time::timeout(gap, conn.stream.read_buf(&mut conn.buf));
        if read.await.ok()?.ok()? == 0 {
            return None;
        }
    };
    let bytes = conn.buf.split_to(end);
    if head.connection.keep_alive {
        backend.checkin(conn);
    }
    Some(Answer::Held {
        bytes,
        head,
        backend: Arc::clone(backend),
    })
}

/// How one exchange with a backend ended.
pub(crate) enum Exchange {
    /// The answer's head (in the connection's buffer), and how long it took.
    Answered(Conn, ResponseHead, Duration),
    /// Nothing reached the backend.
    NotSent(ConnectError),
    /// The request went out (perhaps partly) and no answer came.
    Failed(String),
    /// The client left while its body was being sent on.
    ClientGone,
    /// The client's body did not arrive whole in time (the backend got part of it).
    ClientTimedOut,
    /// The client's body broke the rules on its way (the backend got part of it).
    BadBody(String),
    /// No answer within the request timeout.
    TimedOut,
}

/// Sends a request to `backend` on an idle connection if one is open, else a new one,
/// and reads the answer's head; `started` is when the attempt began.
pub(crate) async fn exchange(
    backend: &Backend,
    head: &[u8],
    mut body: OutBody<'_, '_>,
    to_head: bool,
    config: &Config,
    started: Instant,
) -> Exchange {
    backend.stats.requests.fetch_add(1, Ordering::Relaxed);
    let (mut conn, sent) = loop {
        let mut conn = match backend.checkout() {
            Some(conn) => conn,
            None => match backend.connect(config.connect_timeout).await {
                Ok(conn) => conn,
                Err(error) => return Exchange::NotSent(error),
            },
        };
        let sent = match &mut body {
            OutBody::Empty => write_within(&mut conn.stream, head, config.send_timeout)
                .await
                .map(|()| Sent::All)
                .map_err(PipeError::from),
            OutBody::Buffered(bytes) => {
                let mut whole = Vec::with_capacity(head.len() + bytes.len());
                whole.extend_from_slice(head);
                whole.extend_from_slice(bytes);
                write_within(&mut conn.stream, &whole, config.send_timeout)
                    .await
                    .map(|()| Sent::All)
                    .map_err(PipeError::from)
            }
            OutBody::Streamed(inbound) => send_watching(inbound, head, &mut conn, to_head).await,
        };
        match sent {
            Ok(sent) => break (conn, sent),
            Err(PipeError::Client) => return Exchange::ClientGone,
            Err(PipeError::ClientTimedOut) => return Exchange::ClientTimedOut,
            Err(PipeError::BadBody(why)) => return Exchange::BadBody(why),
            // A backend that reads nothing will hardly answer: waiting for one would hold
            // the client for request_timeout more.
            Err(PipeError::BackendStalled) => {
                return Exchange::Failed(format!(
                    "it stopped taking the request for {:?} (send_timeout)",
                    config.send_timeout
                ));
            }
            // A kept-alive connection the backend had closed: the request did not reach
            // it (nothing of a streamed body is read before the head is written).
            Err(PipeError::Backend(_))
                if conn.reused
                    && !matches!(body, OutBody::Streamed(ref i) if i.framing != Framing::Empty) =>
            {
                continue;
            }
            // The backend may have answered (a 413, say) and closed before it took the
            // whole request: what it sent before closing can still be read.
            Err(PipeError::Backend(e)) => break (conn, Sent::Broken(e)),
        }
    };
    let mut answer = ResponseHead::default();
    let read = tokio::time::timeout(
        config.request_timeout,
        read_head(&mut conn, to_head, &mut answer),
    );
    match (read.await, sent) {
        (Ok(Ok(())), sent) => {
            if !matches!(sent, Sent::All) {
                // The rest of the request was not sent: the connection cannot carry
                // another one.
                answer.connection.keep_alive = false;
            }
            Exchange::Answered(conn, answer, started.elapsed())
        }
        (_, Sent::Broken(error)) => Exchange::Failed(error),
        (Err(_), _) => Exchange::TimedOut,
        (Ok(Err(error)), _) => Exchange::Failed(error),
    }
}

/// How much of a request went to the backend.
enum Sent {
    All,
    /// The backend answered before the whole body was sent, with an error or a word that
    /// it closes: the rest was not sent (RFC 9112, 9.5).
    Early,
    /// Sending broke off with this error; an answer may have come before it did.
    Broken(String),
}

/// Streams the request to the backend while watching for an early answer: a backend
/// that refuses a body (`413`, `401`…) may answer before reading it, and then stop
/// reading, which would leave the proxy waiting to send forever.
async fn send_watching(
    inbound: &mut Inbound<'_>,
    head: &[u8],
    conn: &mut Conn,
    to_head: bool,
) -> Result<Sent, PipeError> {
    let Conn { stream, buf, .. } = conn;
    match stream {
        Stream::Plain(stream) => {
            let (from, to) = stream.split();
            send_reading(inbound, head, from, to, buf, to_head).await
        }
        // A TLS stream has no halves that borrow it: tokio's split shares it behind a
        // lock instead, at one allocation per request with a body, on TLS only.
        Stream::Tls(stream) => {
            let (from, to) = tokio::io::split(stream.as_mut());
            send_reading(inbound, head, from, to, buf, to_head).await
        }
    }
}

/// [`send_watching`] on a connection's two halves.
async fn send_reading(
    inbound: &mut Inbound<'_>,
    head: &[u8],
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    buf: &mut BytesMut,
    to_head: bool,
) -> Result<Sent, PipeError> {
    let piping = inbound.pipe(head, &mut to);
    tokio::pin!(piping);
    let mut early = ResponseHead::default();
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            piped = &mut piping => return piped.map(|()| Sent::All),
            read = async {
                buf.reserve(READ_CHUNK);
                from.read_buf(buf).await
            }, if watching => {
                if !matches!(read, Ok(n) if n > 0) {
                    // Closed or broken: sending will say so.
                    watching = false;
                    continue;
                }
                loop {
                    match wire::parse_response(buf, to_head, &mut early) {
                        Ok(false) => break,
                        // An interim answer: the final one is still to come.
                        Ok(true) if (100..200).contains(&early.status) && early.status != 101 => {
                            buf.advance(early.len);
                        }
                        // A final answer that does not refuse the body: the body goes on,
                        // and the answer waits in `buf`.
                        Ok(true) if early.status < 400 && early.connection.keep_alive => {
                            watching = false;
                            break;
                        }
                        // A refusal, or something that is not HTTP: `read_head` says which.
                        Ok(true) | Err(_) => return Ok(Sent::Early),
                    }
                }
            }
        }
    }
}

impl From<std::io::Error> for PipeError {
    fn from(e: std::io::Error) -> PipeError {
        if e.kind() == std::io::ErrorKind::TimedOut {
            PipeError::BackendStalled
        } else {
            PipeError::Backend(e.to_string())
        }
    }
}

/// Reads an answer's head into the connection's buffer, passing over interim (1xx)
/// answers.
async fn read_head(conn: &mut Conn, to_head: bool, head: &mut ResponseHead) -> Result<(), String> {
    loop {
        if !conn.buf.is_empty() && wire::parse_response(&conn.buf, to_head, head)? {
            match head.status {
                101 => return Err("it switched protocols, which keel proxy does not relay".into()),
                100..=199 => {
                    conn.buf.advance(head.len);
                    continue;
                }
                _ => return Ok(()),
            }
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if conn.buf.is_empty() => {
                return Err("it closed the connection without answering".into());
            }
            Ok(0) => return Err("it closed the connection in the middle of its answer".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// An answer the proxy makes itself: the JSON error body every keel server uses.
pub(crate) fn local(status: StatusCode, error: ApiError) -> Answer {
    local_json(status, &error)
}

/// An answer the proxy makes itself: `body` as JSON.
pub(crate) fn local_json(status: StatusCode, body: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Answer::Local(response)
}

/// Adds a header to a local answer.
pub(crate) fn with_header(
    mut answer: Answer,
    name: header::HeaderName,
    value: HeaderValue,
) -> Answer {
    if let Answer::Local(response) = &mut answer {
        response.headers_mut().insert(name, value);
    }
    answer
}

fn bad_gateway(backend: &Backend, why: &str, sent: bool) -> Answer {
    let answer = local(
        StatusCode::BAD_GATEWAY,
        ApiError::new(
            "bad_gateway",
            format!("backend {} failed: {why}", backend.name),
        )
        .with("backend", backend.name.as_str())
        .with("sent", sent),
    );
    with_header(
        answer,
        header::HeaderName::from_static(keel_core::headers::KEEL_BACKEND),
        backend.name_header.clone(),
    )
}

fn no_backend(pool: &Pool) -> Answer {
    let why = if pool.backends.is_empty() {
        "this proxy has no backends: only its cluster route (the data tier) is configured"
            .to_owned()
    } else {
        format!(
            "no backend can take the request: {} configured, all drained or already tried",
            pool.backends.len()
        )
    };
    with_header(
        local(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::new("no_backend", why),
        ),
        header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_retried_after_sending() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}

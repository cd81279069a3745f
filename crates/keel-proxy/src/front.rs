//! The client side: one task per client connection reads each request's head, checks it,
//! rewrites it for the backend (origin-form target, hop-by-hop headers out,
//! `X-Forwarded-For` and `X-Request-Id` in), sends it down its route and has the answer
//! relayed back ([`crate::relay`]), bodies streamed between the two sockets as they come.
//!
//! When the proxy has TLS, the connection is TLS: its handshake is the first thing done
//! here, within `header_timeout`, and until it is done the connection ranks for eviction
//! as it was accepted — receiving, the slowest sender — so a client that opens TLS and
//! stalls holds its place no longer than one that sends half a head.
//!
//! Every wait on the client is bounded: `idle_timeout` for a request to begin,
//! `header_timeout` for its head, `body_timeout` for its body, `send_timeout` for each
//! write of its answer; and the connection's phase is kept in its [`Slot`] so that a full
//! proxy knows which connection may give way to a new one ([`crate::evict`]).
//!
//! Everything a request needs lives in buffers the connection keeps from one request to
//! the next: on the usual path a request is parsed once, copied once to the backend and its
//! answer copied once to the client, with no allocation and no other task involved.

// Checks return `Result<_, Answer>`: the error side is the finished refusal, taken once
// per refused request.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use keel_core::ApiError;
use keel_core::headers::KEEL_READ;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Proxy;
use crate::cluster::{self, DataRequest, MAX_BODY};
use crate::config::Config;
use crate::evict::{Phase, Slot};
use crate::forward::{self, Answer, Inbound, Outgoing, READ_CHUNK, local};
use crate::forwarded;
use crate::metrics::Timeout;
use crate::relay::{Client, Meta, Names, Source, relay, write_local};
use crate::stream::{ClientStream, Stream};
use crate::wire::{self, Chunked, Framing, HeadError, RequestHead};

/// A connection's timer is moved at most this much later than asked (moving it costs a
/// timer update), so a timeout may run out up to this much early.
const TIMER_SLACK: Duration = Duration::from_secs(1);
/// How long what a client still sends is read and dropped once its connection is being
/// closed with part of its request unread (see [`Front::linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// What a connection's task and its stopper share.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    /// A request is being served: a stop lets it finish.
    pub busy: AtomicBool,
    /// The proxy is stopping: close after the request being served.
    pub stopping: AtomicBool,
}

/// The timeouts of a client connection, from the configuration in force (read again at
/// each request, so a reload applies to the next one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub idle: Duration,
    pub header: Duration,
    pub body: Duration,
    pub send: Duration,
    /// The longest pause in a backend's answer (`request_timeout`).
    pub backend: Duration,
}

impl Limits {
    pub fn of(config: &Config) -> Limits {
        Limits {
            idle: config.idle_timeout,
            header: config.header_timeout,
            body: config.body_timeout,
            send: config.send_timeout,
            backend: config.request_timeout,
        }
    }
}

/// Writes all of `bytes`, or fails with `TimedOut` when the other side has not taken
/// them within `limit` (it does not read).
pub(crate) async fn write_within(
    stream: &mut (impl AsyncWriteExt + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    // The flush is for TLS, which may keep the last records of a write in its buffer when
    // the socket is full; on a plain socket it returns at once.
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(limit, written)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The client's connection: TLS when the proxy has it, once the handshake is done within
/// `limit` (`header_timeout`); `None` when it failed or ran out of time (counted).
async fn handshake(proxy: &Proxy, stream: TcpStream, limit: Duration) -> Option<ClientStream> {
    let Some(tls) = proxy.tls() else {
        return Some(Stream::Plain(stream));
    };
    match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Some(Stream::Tls(Box::new(stream))),
        Ok(Err(e)) => {
            // Plain HTTP on the TLS port, a client certificate another CA signed, a
            // client that does not trust ours and says so.
            proxy
                .stats
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            proxy.stats.timed_out(Timeout::Handshake);
            None
        }
    }
}

/// One client connection.
struct Front<'p> {
    proxy: &'p Proxy,
    flags: &'p Flags,
    /// Its place among the open connections: which phase it is in, for eviction.
    slot: &'p Slot,
    stream: ClientStream,
    /// The client's address, and as written in `X-Forwarded-For`.
    peer: IpAddr,
    peer_ip: Vec<u8>,
    /// Read from the client and not yet used.
    buf: BytesMut,
    /// What is written to the client next.
    out: Vec<u8>,
    head: RequestHead,
    /// The head the backend is sent.
    up: Vec<u8>,
    /// This request's `X-Request-Id`.
    id: Vec<u8>,
    limits: Limits,
    /// The idle and header timer, and when it runs out.
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    /// A request was served: the connection is kept alive between requests.
    kept_alive: bool,
    /// The connection is closed with part of a request unread (a body refused or cut
    /// short): it is closed by [`Front::linger`].
    unread: bool,
    /// The proxy's side of the connection is shut (TLS: its close_notify is sent).
    shut: bool,
}

/// Serves a client connection until it closes, times out, or the proxy stops (which
/// `flags` says); `slot` is its place among the open connections.
pub(crate) async fn serve(
    proxy: &Proxy,
    stream: TcpStream,
    peer: SocketAddr,
    flags: &Flags,
    slot: &Slot,
) {
    let limits = Limits::of(&proxy.table().config);
    let Some(stream) = handshake(proxy, stream, limits.header).await else {
        return;
    };
    // An IPv4 client on an IPv6 socket is written (and trusted) as the IPv4 address.
    let peer = peer.ip().to_canonical();
    let mut peer_ip = Vec::with_capacity(16);
    let _ = write!(peer_ip, "{peer}");
    let now = Instant::now();
    let mut front = Front {
        proxy,
        flags,
        slot,
        stream,
        peer,
        peer_ip,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(READ_CHUNK),
        head: RequestHead::default(),
        up: Vec::with_capacity(1024),
        id: Vec::with_capacity(32),
        limits,
        timer: Box::pin(tokio::time::sleep_until(now + limits.idle)),
        timer_at: now + limits.idle,
        kept_alive: false,
        unread: false,
        shut: false,
    };
    loop {
        match front.next_head().await {
            Ok(true) => {}
            Ok(false) => break,
            Err(refused) => {
                proxy.stats.requests.fetch_add(1, Ordering::Relaxed);
                if let HeadError::TimedOut(_) = refused {
                    proxy.stats.timed_out(Timeout::Header);
                } else {
                    proxy.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                }
                let (status, code) = refused.status_and_code();
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let answer = local(status, ApiError::new(code, refused.to_string()));
                front.id.clear();
                new_request_id(&mut front.id);
                let meta = Meta {
                    minor_version: 1,
                    keep_alive: false,
                    to_head: false,
                };
                let _ = front.answer(answer, &meta).await;
                front.unread = true;
                front.linger().await;
                break;
            }
        }
        flags.busy.store(true, Ordering::Relaxed);
        proxy.stats.requests.fetch_add(1, Ordering::Relaxed);
        let keep = front.serve_one().await;
        flags.busy.store(false, Ordering::Relaxed);
        if !keep {
            front.linger().await;
            break;
        }
        front.kept_alive = true;
        if flags.stopping.load(Ordering::Relaxed) {
            break;
        }
    }
    front.close().await;
}

impl Front<'_> {
    /// Ends a connection the proxy closes. When the client may still be sending (its
    /// body was refused or cut short, or more requests came behind the last one), closing
    /// at once would make the kernel reset the connection, and a reset can throw away the
    /// answer before the client has read it. So the proxy shuts its side, then reads and
    /// drops what still comes for up to [`LINGER`].
    async fn linger(&mut self) {
        if !self.unread && self.buf.is_empty() {
            return;
        }
        // A connection on its way out is the first to make room for a new one.
        let now = Instant::now();
        if !self.slot.enter(Phase::Closing, now) {
            return;
        }
        self.shut = true;
        let until = now + LINGER;
        // Bounded too: over TLS, shutting down writes a close_notify, which a client that
        // reads nothing never takes.
        if !matches!(
            tokio::time::timeout_at(until, self.stream.shutdown()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        loop {
            self.buf.clear();
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(until, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Ends a TLS connection with its close_notify, within `send_timeout`: without one a
    /// client cannot tell an answer that ends with the connection (an HTTP/1.0 client's,
    /// one without a length) from one cut short. A plain socket's end says as much by
    /// itself, and it is just dropped.
    async fn close(&mut self) {
        if self.shut || matches!(self.stream, Stream::Plain(_)) {
            return;
        }
        if !self.slot.enter(Phase::Closing, Instant::now()) {
            return;
        }
        self.shut = true;
        let _ = tokio::time::timeout(self.limits.send, self.stream.shutdown()).await;
    }

    /// Sets the idle and header timer to run out `after` from `now`, or leaves it where it
    /// is when that is at most a little earlier.
    fn arm(&mut self, now: Instant, after: Duration) {
        let at = now + after;
        // A short timeout gets a proportionally short slack, so it never runs out early
        // by more than an eighth of itself.
        let slack = TIMER_SLACK.min(after / 8);
        if self.timer_at > at || at - self.timer_at > slack {
            self.timer.as_mut().reset(at);
            self.timer_at = at;
        }
    }

    /// Waits for a whole request head: its first byte within `idle_timeout`, then the
    /// rest within `header_timeout`. `Ok(false)`: the connection is over (closed by the
    /// client, idle too long, evicted, or the proxy is stopping).
    async fn next_head(&mut self) -> Result<bool, HeadError> {
        let now = Instant::now();
        // Waiting for the first byte of a request (none came behind the last one).
        let mut waiting = self.buf.is_empty();
        if self.kept_alive {
            // A new connection keeps the phase it was registered with: receiving since
            // it was accepted, so that one that never sends ranks as the slowest sender.
            let phase = if waiting {
                Phase::Idle
            } else {
                Phase::Receiving
            };
            if !self.slot.enter(phase, now) {
                return Ok(false);
            }
        }
        let limits = self.limits;
        self.arm(now, if waiting { limits.idle } else { limits.header });
        loop {
            if !waiting && wire::parse_request(&self.buf, &mut self.head)? {
                return Ok(true);
            }
            if self.flags.stopping.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.buf) => read,
                () = self.timer.as_mut() => {
                    if waiting {
                        self.proxy.stats.timed_out(Timeout::Idle);
                        return Ok(false);
                    }
                    return Err(HeadError::TimedOut(limits.header));
                }
            };
            match read {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) => {}
            }
            if waiting {
                waiting = false;
                let now = Instant::now();
                if self.kept_alive && !self.slot.enter(Phase::Receiving, now) {
                    return Ok(false);
                }
                self.arm(now, limits.header);
            }
        }
    }

    /// Serves the request whose head is in the buffer; whether the connection goes on.
    async fn serve_one(&mut self) -> bool {
        let proxy = self.proxy;
        let table = proxy.table();
        self.limits = Limits::of(&table.config);
        let limits = self.limits;
        let Front {
            buf, head, up, id, ..
        } = self;
        let bytes = &buf[..];
        id.clear();
        request_id(head, bytes, id);
        // The parser accepts only token characters in a method, which is what `http`
        // asks; a method it would still refuse is refused here, never taken for another.
        let method = Method::from_bytes(head.method.get(bytes));
        let framing = head.framing.unwrap_or(Framing::Empty);
        let meta = Meta {
            minor_version: head.minor_version,
            keep_alive: head.connection.keep_alive,
            to_head: matches!(method, Ok(Method::HEAD)),
        };
        let mut send_continue =
            head.expect_continue && framing != Framing::Empty && head.minor_version >= 1;
        let checked = match method {
            Ok(method) => check(head, bytes, &method).map(|target| (method, target)),
            Err(_) => Err(local(
                StatusCode::BAD_REQUEST,
                ApiError::new("bad_method", "the request's method is not an HTTP token"),
            )),
        };
        let (method, target) = match checked {
            Ok(target) => target,
            Err(refusal) => {
                proxy.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                let len = head.len;
                buf.advance(len);
                // The body was not read: the connection cannot carry another request.
                self.unread = framing != Framing::Empty;
                let meta = Meta {
                    keep_alive: meta.keep_alive && framing == Framing::Empty,
                    ..meta
                };
                return self.answer(refusal, &meta).await;
            }
        };
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let cluster = table
            .cluster
            .as_ref()
            .filter(|c| std::str::from_utf8(path).is_ok_and(|p| c.routes(p)));
        // The key a data request names, for a data tier of several groups.
        let key = cluster
            .and_then(|_| std::str::from_utf8(path).ok())
            .and_then(keel_client::node::key_of);
        let lists_keys = cluster.is_some() && path == b"/v1/kv";
        // The head the backend is sent, framing to come.
        up.clear();
        up.extend_from_slice(head.method.get(bytes));
        up.push(b' ');
        up.extend_from_slice(&target);
        up.extend_from_slice(b" HTTP/1.1\r\n");
        let mut stale = false;
        for field in &head.fields {
            let name = field.name.get(bytes);
            let value = field.value.get(bytes);
            if forwarded::is_forwarded_for(name) {
                continue;
            }
            if wire::is_hop_by_hop(name, &head.connection, bytes)
                || name.eq_ignore_ascii_case(b"x-request-id")
                || name.eq_ignore_ascii_case(b"expect")
                || (cluster.is_some() && name.eq_ignore_ascii_case(b"content-length"))
            {
                continue;
            }
            if name.eq_ignore_ascii_case(KEEL_READ.as_bytes()) {
                stale = value.trim_ascii().eq_ignore_ascii_case(b"stale");
            }
            wire::push_field(up, name, value);
        }
        let trusted = forwarded::is_trusted(&table.config.trusted_proxies, self.peer);
        forwarded::push_forwarded_for(up, head, bytes, &self.peer_ip, trusted);
        wire::push_field(up, b"X-Request-Id", id);
        let head_len = head.len;
        buf.advance(head_len);
        // The whole body must be in by then. A request without one is served from here
        // on, and reads no clock: its deadline is never looked at.
        let body_deadline = if framing == Framing::Empty {
            if !self.slot.serving() {
                return false;
            }
            self.timer_at
        } else {
            Instant::now() + limits.body
        };
        match cluster {
            None => {
                if framing != Framing::Empty && self.buf.is_empty() {
                    // None of the body came with the head: wait for its first bytes
                    // before a backend is picked, so that a client that sends a head and
                    // stalls holds no backend connection, and gets its 408 — nothing of
                    // its request went anywhere.
                    match self.await_body(send_continue, body_deadline).await {
                        Ok(()) => send_continue = false,
                        Err(Some(refusal)) => {
                            self.unread = true;
                            let meta = Meta {
                                keep_alive: false,
                                ..meta
                            };
                            return self.answer(refusal, &meta).await;
                        }
                        Err(None) => return false,
                    }
                }
                if framing == Framing::Chunked {
                    self.up.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                }
                self.up.extend_from_slice(b"\r\n");
                let outgoing = Outgoing {
                    head: &self.up,
                    method,
                    has_body: framing != Framing::Empty,
                };
                let mut inbound = Inbound {
                    stream: &mut self.stream,
                    buf: &mut self.buf,
                    framing,
                    send_continue,
                    consumed: framing == Framing::Empty,
                    deadline: body_deadline,
                    send_timeout: limits.send,
                    slot: self.slot,
                };
                let answer =
                    forward::forward(proxy, &table.config, &table.pool, &outgoing, &mut inbound)
                        .await;
                let consumed = inbound.consumed;
                self.unread = !consumed;
                let meta = Meta {
                    keep_alive: meta.keep_alive && consumed,
                    ..meta
                };
                self.answer(answer, &meta).await
            }
            Some(cluster) => {
                let body = match read_body(
                    &mut self.stream,
                    &mut self.buf,
                    framing,
                    send_continue,
                    body_deadline,
                    limits.send,
                )
                .await
                {
                    Ok(body) if self.slot.serving() => body,
                    Ok(_) => return false,
                    Err(ReadBody::TimedOut) => {
                        proxy.stats.timed_out(Timeout::Body);
                        self.unread = true;
                        let meta = Meta {
                            keep_alive: false,
                            ..meta
                        };
                        return self.answer(body_timed_out(limits.body), &meta).await;
                    }
                    Err(ReadBody::Refused(refusal)) => {
                        self.unread = true;
                        let meta = Meta {
                            keep_alive: false,
                            ..meta
                        };
                        return self.answer(refusal, &meta).await;
                    }
                    Err(ReadBody::Gone) => return false,
                };
                if !body.is_empty() {
                    up.extend_from_slice(b"Content-Length: ");
                    wire::push_decimal(up, body.len() as u64);
                    up.extend_from_slice(b"\r\n");
                }
                up.extend_from_slice(b"\r\n");
                let request = DataRequest {
                    head: &self.up,
                    body: body.freeze(),
                    method,
                    stale,
                    key: key.as_deref(),
                    list: lists_keys,
                };
                let answer = cluster::forward(&table.config, cluster, &request).await;
                self.answer(answer, &meta).await
            }
        }
    }

    /// Waits for the first bytes of a body (sending `100 Continue` first when the client
    /// waits for it) until `deadline`. `Err(Some(answer))`: none came in time;
    /// `Err(None)`: the client went away.
    async fn await_body(
        &mut self,
        send_continue: bool,
        deadline: Instant,
    ) -> Result<(), Option<Answer>> {
        if send_continue {
            write_within(&mut self.stream, wire::CONTINUE, self.limits.send)
                .await
                .map_err(|_| None)?;
        }
        while self.buf.is_empty() {
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(None),
                Err(_) => {
                    self.proxy.stats.timed_out(Timeout::Body);
                    return Err(Some(body_timed_out(self.limits.body)));
                }
            }
        }
        Ok(())
    }

    /// Writes `answer` to the client; whether the connection goes on.
    async fn answer(&mut self, answer: Answer, meta: &Meta) -> bool {
        let stopping = self.flags.stopping.load(Ordering::Relaxed);
        let keep = meta.keep_alive && !stopping;
        // From here the connection is serving its request (even if its body was cut
        // short): it is not evicted mid-answer.
        if !self.slot.serving() {
            return false;
        }
        let gap = self.limits.backend;
        let mut client = Client {
            stream: &mut self.stream,
            send: self.limits.send,
            stats: &self.proxy.stats,
        };
        match answer {
            Answer::ClientGone => false,
            Answer::Local(response) => {
                self.proxy
                    .stats
                    .local_answers
                    .fetch_add(1, Ordering::Relaxed);
                write_local(&mut self.out, &response, &self.id, meta, keep);
                client.write(&self.out).await.is_ok() && keep
            }
            Answer::Relayed {
                mut conn,
                head,
                in_flight,
            } => {
                let relayed = relay(
                    &mut client,
                    &mut self.out,
                    Source {
                        buf: &mut conn.buf,
                        stream: Some(&mut conn.stream),
                        gap,
                    },
                    &head,
                    &Names {
                        backend: &in_flight.0.name_header,
                        id: &self.id,
                    },
                    meta,
                    keep,
                )
                .await;
                if relayed.backend_reusable && head.connection.keep_alive {
                    conn.buf.clear();
                    in_flight.0.checkin(conn);
                } else if relayed.backend_broke {
                    in_flight.0.stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                relayed.client_keep
            }
            Answer::Held {
                mut bytes,
                head,
                backend,
            } => {
                let relayed = relay(
                    &mut client,
                    &mut self.out,
                    Source {
                        buf: &mut bytes,
                        stream: None,
                        gap,
                    },
                    &head,
                    &Names {
                        backend: &backend.name_header,
                        id: &self.id,
                    },
                    meta,
                    keep,
                )
                .await;
                relayed.client_keep
            }
        }
    }
}

/// Checks a request; its target in origin form (an absolute-form target is sent on as its
/// path), or the answer that refuses it.
fn check<'b>(
    head: &RequestHead,
    bytes: &'b [u8],
    method: &Method,
) -> Result<Cow<'b, [u8]>, Answer> {
    if head.minor_version == 1 && !head.has_host {
        return Err(local(
            StatusCode::BAD_REQUEST,
            ApiError::new("missing_host", "an HTTP/1.1 request needs a Host header"),
        ));
    }
    if *method == Method::CONNECT {
        return Err(local(
            StatusCode::METHOD_NOT_ALLOWED,
            ApiError::new(
                "connect_refused",
                "keel proxy is a reverse proxy: CONNECT tunnels are not offered",
            ),
        ));
    }
    let target = head.target.get(bytes);
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok(Cow::Borrowed(target));
    }
    let bad = || {
        local(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "bad_target",
                format!(
                    "{:?} is not a request target",
                    String::from_utf8_lossy(target)
                ),
            ),
        )
    };
    let uri = http::Uri::try_from(target).map_err(|_| bad())?;
    if uri.scheme().is_none() {
        return Err(bad());
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Ok(Cow::Owned(path.as_bytes().to_vec()))
}

/// The client's `X-Request-Id` when it is a reasonable one, else a new random one.
fn request_id(head: &RequestHead, bytes: &[u8], id: &mut Vec<u8>) {
    let given = head
        .fields
        .iter()
        .find(|f| f.name.get(bytes).eq_ignore_ascii_case(b"x-request-id"))
        .map(|f| f.value.get(bytes));
    if let Some(given) = given {
        let ok = (1..=128).contains(&given.len())
            && given
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            id.extend_from_slice(given);
            return;
        }
    }
    new_request_id(id);
}

fn new_request_id(id: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u64>();
    for shift in (0..16).rev() {
        id.push(HEX[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// `408`: the body did not arrive in time, and nothing of the request went anywhere.
fn body_timed_out(after: Duration) -> Answer {
    local(
        StatusCode::REQUEST_TIMEOUT,
        ApiError::new(
            "body_timeout",
            format!("the request's body did not arrive whole within {after:?} (body_timeout)"),
        ),
    )
}

/// Why a data request's body was not read.
// The large variant is the finished refusal, built once per refused request.
#[allow(clippy::large_enum_variant)]
enum ReadBody {
    /// Refused, with this answer.
    Refused(Answer),
    /// It did not arrive whole by the deadline.
    TimedOut,
    /// The client went away.
    Gone,
}

/// Reads a data request's body whole (at most [`MAX_BODY`] bytes), by `deadline`.
async fn read_body(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    framing: Framing,
    send_continue: bool,
    deadline: Instant,
    send_timeout: Duration,
) -> Result<BytesMut, ReadBody> {
    let too_large = || {
        ReadBody::Refused(local(
            StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::new(
                "body_too_large",
                format!("a data request's body may hold at most {MAX_BODY} bytes"),
            ),
        ))
    };
    if framing == Framing::Empty {
        return Ok(BytesMut::new());
    }
    if matches!(framing, Framing::Length(n) if n > MAX_BODY as u64) {
        return Err(too_large());
    }
    if send_continue {
        write_within(stream, wire::CONTINUE, send_timeout)
            .await
            .map_err(|_| ReadBody::Gone)?;
    }
    let mut body = BytesMut::new();
    let mut scanner = Chunked::default();
    loop {
        match framing {
            Framing::Length(n) => {
                let want = usize::try_from(n).unwrap_or(usize::MAX);
                if buf.len() >= want {
                    body = buf.split_to(want);
                    return Ok(body);
                }
            }
            Framing::Chunked => {
                let mut over = false;
                let used = scanner
                    .scan(&buf[..], |data| {
                        if body.len() + data.len() > MAX_BODY {
                            over = true;
                        } else {
                            body.extend_from_slice(data);
                        }
                    })
                    .map_err(|e| ReadBody::Refused(forward::bad_body(&e.to_string())))?;
                buf.advance(used);
                if over {
                    return Err(too_large());
                }
                if scanner.is_done() {
                    return Ok(body);
                }
            }
            Framing::Empty | Framing::UntilClose => return Ok(body),
        }
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err(ReadBody::TimedOut),
            Ok(Ok(0) | Err(_)) => return Err(ReadBody::Gone),
            Ok(Ok(_)) => {}
        }
    }
}

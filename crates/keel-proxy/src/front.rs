//! The client side: one task per client connection reads each request's head, checks it,
//! rewrites it for the backend (origin-form target, hop-by-hop headers out,
//! `X-Forwarded-For` and `X-Request-Id` in), sends it down its route and relays the answer
//! back, bodies streamed between the two sockets as they come.
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
use http::header::HeaderValue;
use http::{Method, Response, StatusCode};
use keel_core::ApiError;
use keel_core::headers::{KEEL_BACKEND, KEEL_READ};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Proxy;
use crate::cluster::{self, DataRequest, MAX_BODY};
use crate::forward::{self, Answer, Inbound, Outgoing, READ_CHUNK, local};
use crate::forwarded;
use crate::wire::{self, Chunked, Framing, HeadError, RequestHead, ResponseHead};

/// How long a client may take to send a request's head, idle time before it included.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The idle timer is moved forward at most this often (moving it costs a timer update).
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

/// One client connection.
struct Front<'p> {
    proxy: &'p Proxy,
    flags: &'p Flags,
    stream: TcpStream,
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
    idle: Pin<Box<Sleep>>,
    idle_set: Instant,
    /// The connection is closed with part of a request unread (a body refused or cut
    /// short): it is closed by [`Front::linger`].
    unread: bool,
}

/// What the client's request says about its answer.
struct Meta {
    minor_version: u8,
    /// The client wants the connection kept, and nothing forbids it.
    keep_alive: bool,
    to_head: bool,
}

/// Serves a client connection until it closes, times out, or the proxy stops (which
/// `flags` says).
pub(crate) async fn serve(proxy: &Proxy, stream: TcpStream, peer: SocketAddr, flags: &Flags) {
    // An IPv4 client on an IPv6 socket is written (and trusted) as the IPv4 address.
    let peer = peer.ip().to_canonical();
    let mut peer_ip = Vec::with_capacity(16);
    let _ = write!(peer_ip, "{peer}");
    let now = Instant::now();
    let mut front = Front {
        proxy,
        flags,
        stream,
        peer,
        peer_ip,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(READ_CHUNK),
        head: RequestHead::default(),
        up: Vec::with_capacity(1024),
        id: Vec::with_capacity(32),
        idle: Box::pin(tokio::time::sleep_until(now + HEADER_READ_TIMEOUT)),
        idle_set: now,
        unread: false,
    };
    loop {
        match front.next_head().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(refused) => {
                proxy.stats.requests.fetch_add(1, Ordering::Relaxed);
                proxy.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
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
                return;
            }
        }
        flags.busy.store(true, Ordering::Relaxed);
        proxy.stats.requests.fetch_add(1, Ordering::Relaxed);
        let keep = front.serve_one().await;
        flags.busy.store(false, Ordering::Relaxed);
        if !keep {
            front.linger().await;
            return;
        }
        if flags.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
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
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        loop {
            self.buf.clear();
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(until, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Waits for a whole request head. `Ok(false)`: the connection is over (closed by the
    /// client, idle too long, or the proxy is stopping).
    async fn next_head(&mut self) -> Result<bool, HeadError> {
        let now = Instant::now();
        if now.duration_since(self.idle_set) > TIMER_SLACK {
            self.idle.as_mut().reset(now + HEADER_READ_TIMEOUT);
            self.idle_set = now;
        }
        loop {
            if !self.buf.is_empty() && wire::parse_request(&self.buf, &mut self.head)? {
                return Ok(true);
            }
            if self.flags.stopping.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.buf) => read,
                () = self.idle.as_mut() => return Ok(false),
            };
            match read {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) => {}
            }
        }
    }

    /// Serves the request whose head is in the buffer; whether the connection goes on.
    async fn serve_one(&mut self) -> bool {
        let proxy = self.proxy;
        let table = proxy.table();
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
        let send_continue = head.expect_continue && framing != Framing::Empty;
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
        match cluster {
            None => {
                if framing == Framing::Chunked {
                    up.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                }
                up.extend_from_slice(b"\r\n");
                let outgoing = Outgoing {
                    head: &self.up,
                    method,
                    has_body: framing != Framing::Empty,
                };
                let mut inbound = Inbound {
                    stream: &mut self.stream,
                    buf: &mut self.buf,
                    framing,
                    send_continue: send_continue && meta.minor_version >= 1,
                    consumed: framing == Framing::Empty,
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
                    send_continue && meta.minor_version >= 1,
                )
                .await
                {
                    Ok(body) => body,
                    Err(Some(refusal)) => {
                        self.unread = true;
                        let meta = Meta {
                            keep_alive: false,
                            ..meta
                        };
                        return self.answer(refusal, &meta).await;
                    }
                    Err(None) => return false,
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
                };
                let answer = cluster::forward(&table.config, cluster, &request).await;
                self.answer(answer, &meta).await
            }
        }
    }

    /// Writes `answer` to the client; whether the connection goes on.
    async fn answer(&mut self, answer: Answer, meta: &Meta) -> bool {
        let stopping = self.flags.stopping.load(Ordering::Relaxed);
        let keep = meta.keep_alive && !stopping;
        match answer {
            Answer::ClientGone => false,
            Answer::Local(response) => {
                self.proxy
                    .stats
                    .local_answers
                    .fetch_add(1, Ordering::Relaxed);
                write_local(&mut self.out, &response, &self.id, meta, keep);
                self.stream.write_all(&self.out).await.is_ok() && keep
            }
            Answer::Relayed {
                mut conn,
                head,
                in_flight,
            } => {
                let relayed = relay(
                    &mut self.stream,
                    &mut self.out,
                    Source {
                        buf: &mut conn.buf,
                        stream: Some(&mut conn.stream),
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
                    &mut self.stream,
                    &mut self.out,
                    Source {
                        buf: &mut bytes,
                        stream: None,
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

/// Reads a data request's body whole (at most [`MAX_BODY`] bytes). `Err(Some(answer))`:
/// refused; `Err(None)`: the client went away.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
    send_continue: bool,
) -> Result<BytesMut, Option<Answer>> {
    let too_large = || {
        Some(local(
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
        stream.write_all(wire::CONTINUE).await.map_err(|_| None)?;
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
                    .map_err(|e| Some(forward::bad_body(&e.to_string())))?;
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
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// The date for a `Date` header, now.
fn push_date(out: &mut Vec<u8>) {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    wire::push_field(out, b"Date", date.as_bytes());
}

/// The end of an answer's head: how the connection goes on.
fn push_connection(out: &mut Vec<u8>, meta: &Meta, keep: bool) {
    if !keep {
        wire::push_field(out, b"Connection", b"close");
    } else if meta.minor_version == 0 {
        wire::push_field(out, b"Connection", b"keep-alive");
    }
}

/// An answer the proxy made, whole, into `out`.
fn write_local(
    out: &mut Vec<u8>,
    response: &Response<bytes::Bytes>,
    id: &[u8],
    meta: &Meta,
    keep: bool,
) {
    out.clear();
    let status = response.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        wire::push_title_case(out, name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    wire::push_decimal(out, response.body().len() as u64);
    out.extend_from_slice(b"\r\n");
    wire::push_field(out, b"X-Request-Id", id);
    push_date(out);
    push_connection(out, meta, keep);
    out.extend_from_slice(b"\r\n");
    if !meta.to_head {
        out.extend_from_slice(response.body());
    }
}

/// Where a backend's answer is read from: what is in memory, then the connection.
struct Source<'a> {
    buf: &'a mut BytesMut,
    stream: Option<&'a mut TcpStream>,
}

impl Source<'_> {
    /// Reads more into `buf`; false at the end of the connection (or of what was held).
    async fn fill(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        self.buf.reserve(READ_CHUNK);
        matches!(stream.read_buf(self.buf).await, Ok(n) if n > 0)
    }
}

/// The names an answer is given on its way back.
struct Names<'a> {
    backend: &'a HeaderValue,
    id: &'a [u8],
}

/// How relaying an answer went.
struct Relayed {
    /// The backend broke off, or broke the rules, before the end of its answer.
    backend_broke: bool,
    /// The backend's connection ended exactly at the answer's end.
    backend_reusable: bool,
    /// The client has the whole answer and its connection goes on.
    client_keep: bool,
}

/// Passes a backend's answer, whose head is at the start of `source.buf`, to the client.
async fn relay(
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    mut source: Source<'_>,
    head: &ResponseHead,
    names: &Names<'_>,
    meta: &Meta,
    keep: bool,
) -> Relayed {
    let framing = head.framing.unwrap_or(Framing::UntilClose);
    // A chunked body goes to an HTTP/1.0 client without its chunks, ended by closing.
    let dechunk = framing == Framing::Chunked && meta.minor_version == 0;
    let keep = keep && framing != Framing::UntilClose && !dechunk;
    // The client went away: nothing is known of the rest of the answer.
    let failed = Relayed {
        backend_broke: false,
        backend_reusable: false,
        client_keep: false,
    };
    // The head.
    out.clear();
    {
        let bytes = &source.buf[..head.len];
        out.extend_from_slice(b"HTTP/1.1 ");
        wire::push_decimal(out, u64::from(head.status));
        out.push(b' ');
        out.extend_from_slice(head.reason.get(bytes));
        out.extend_from_slice(b"\r\n");
        for field in &head.fields {
            let name = field.name.get(bytes);
            if wire::is_hop_by_hop(name, &head.connection, bytes)
                || name.eq_ignore_ascii_case(KEEL_BACKEND.as_bytes())
                || name.eq_ignore_ascii_case(b"x-request-id")
                // Transfer-Encoding wins: the length would tell the client a different
                // end than the chunks do (RFC 9112, 6.3).
                || (head.transfer_encoding && name.eq_ignore_ascii_case(b"content-length"))
            {
                continue;
            }
            wire::push_field(out, name, field.value.get(bytes));
        }
    }
    wire::push_field(out, b"Keel-Backend", names.backend.as_bytes());
    wire::push_field(out, b"X-Request-Id", names.id);
    if framing == Framing::Chunked && !dechunk {
        wire::push_field(out, b"Transfer-Encoding", b"chunked");
    }
    if !head.has_date {
        push_date(out);
    }
    push_connection(out, meta, keep);
    out.extend_from_slice(b"\r\n");
    source.buf.advance(head.len);
    // The body: what is already here goes out with the head.
    let complete = match framing {
        Framing::Empty => {
            if client.write_all(out).await.is_err() {
                return failed;
            }
            true
        }
        Framing::Length(n) => {
            let mut left = n;
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(source.buf.len());
            out.extend_from_slice(&source.buf[..take]);
            source.buf.advance(take);
            left -= take as u64;
            if client.write_all(out).await.is_err() {
                return failed;
            }
            while left > 0 {
                if !source.fill().await {
                    break;
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(source.buf.len());
                if client.write_all(&source.buf[..take]).await.is_err() {
                    return failed;
                }
                source.buf.advance(take);
                left -= take as u64;
            }
            left == 0
        }
        Framing::Chunked => {
            let mut scanner = Chunked::default();
            loop {
                let used = if dechunk {
                    scanner.scan(&source.buf[..], |data| out.extend_from_slice(data))
                } else {
                    scanner.scan(&source.buf[..], |_| {})
                };
                let Ok(used) = used else {
                    // A broken body: the client gets what came before it, then the end.
                    let _ = client.write_all(out).await;
                    return Relayed {
                        backend_broke: true,
                        ..failed
                    };
                };
                if !dechunk {
                    out.extend_from_slice(&source.buf[..used]);
                }
                source.buf.advance(used);
                if client.write_all(out).await.is_err() {
                    return failed;
                }
                out.clear();
                if scanner.is_done() {
                    break true;
                }
                if !source.fill().await {
                    break false;
                }
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(&source.buf[..]);
            source.buf.clear();
            if client.write_all(out).await.is_err() {
                return failed;
            }
            while source.fill().await {
                if client.write_all(&source.buf[..]).await.is_err() {
                    return failed;
                }
                source.buf.clear();
            }
            true
        }
    };
    Relayed {
        backend_broke: !complete,
        backend_reusable: complete && source.buf.is_empty() && framing != Framing::UntilClose,
        client_keep: complete && keep,
    }
}

//! Answers on their way back to a client: the proxy's own, written whole, and a
//! backend's, relayed as its bytes come — the head rewritten (hop-by-hop fields out,
//! `Keel-Backend`, `X-Request-Id` and `Date` in), the body passed on in its framing or
//! without its chunks for an HTTP/1.0 client — every write bounded by `send_timeout` and
//! every pause of the backend by `request_timeout`.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::Response;
use http::header::HeaderValue;
use keel_core::headers::KEEL_BACKEND;
use tokio::io::AsyncReadExt;

use crate::forward::READ_CHUNK;
use crate::front::write_within;
use crate::metrics::{ProxyStats, Timeout};
use crate::stream::{BackendStream, ClientStream};
use crate::wire::{self, Chunked, Framing, ResponseHead};

/// What the client's request says about its answer.
pub(crate) struct Meta {
    pub minor_version: u8,
    /// The client wants the connection kept, and nothing forbids it.
    pub keep_alive: bool,
    pub to_head: bool,
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
pub(crate) fn write_local(
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
pub(crate) struct Source<'a> {
    pub buf: &'a mut BytesMut,
    pub stream: Option<&'a mut BackendStream>,
    /// The longest the backend may pause in its answer.
    pub gap: Duration,
}

/// What reading more of an answer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    More,
    /// The connection (or what was held) ended.
    End,
    /// The backend sent nothing for `gap`: it is stuck, and the answer is given up.
    Stalled,
}

impl Source<'_> {
    /// Reads more into `buf`.
    async fn fill(&mut self) -> Fill {
        let Some(stream) = self.stream.as_mut() else {
            return Fill::End;
        };
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout(self.gap, stream.read_buf(self.buf)).await {
            Ok(Ok(n)) if n > 0 => Fill::More,
            Ok(_) => Fill::End,
            Err(_) => Fill::Stalled,
        }
    }
}

/// The client an answer goes to: its socket, and how long a write may wait for it.
pub(crate) struct Client<'a> {
    pub stream: &'a mut ClientStream,
    pub send: Duration,
    pub stats: &'a ProxyStats,
}

impl Client<'_> {
    /// Writes to the client within the send timeout, counting a write that ran out of
    /// time.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let written = write_within(self.stream, bytes, self.send).await;
        if matches!(&written, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
            self.stats.timed_out(Timeout::Send);
        }
        written
    }
}

/// The names an answer is given on its way back.
pub(crate) struct Names<'a> {
    pub backend: &'a HeaderValue,
    pub id: &'a [u8],
}

/// How relaying an answer went.
pub(crate) struct Relayed {
    /// The backend broke off, or broke the rules, before the end of its answer.
    pub backend_broke: bool,
    /// The backend's connection ended exactly at the answer's end.
    pub backend_reusable: bool,
    /// The client has the whole answer and its connection goes on.
    pub client_keep: bool,
}

/// Passes a backend's answer, whose head is at the start of `source.buf`, to the client.
pub(crate) async fn relay(
    client: &mut Client<'_>,
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
            if client.write(out).await.is_err() {
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
            if client.write(out).await.is_err() {
                return failed;
            }
            while left > 0 {
                if source.fill().await != Fill::More {
                    break;
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(source.buf.len());
                if client.write(&source.buf[..take]).await.is_err() {
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
                    let _ = client.write(out).await;
                    return Relayed {
                        backend_broke: true,
                        ..failed
                    };
                };
                if !dechunk {
                    out.extend_from_slice(&source.buf[..used]);
                }
                source.buf.advance(used);
                if client.write(out).await.is_err() {
                    return failed;
                }
                out.clear();
                if scanner.is_done() {
                    break true;
                }
                if source.fill().await != Fill::More {
                    break false;
                }
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(&source.buf[..]);
            source.buf.clear();
            if client.write(out).await.is_err() {
                return failed;
            }
            let ended = loop {
                match source.fill().await {
                    Fill::More => {}
                    end => break end,
                }
                if client.write(&source.buf[..]).await.is_err() {
                    return failed;
                }
                source.buf.clear();
            };
            ended == Fill::End
        }
    };
    Relayed {
        backend_broke: !complete,
        backend_reusable: complete && source.buf.is_empty() && framing != Framing::UntilClose,
        client_keep: complete && keep,
    }
}

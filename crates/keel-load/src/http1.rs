//! HTTP/1.1 on the wire, as much of it as a load generator needs: a request encoded into
//! bytes, a response head parsed in place ([`parse_head`]), and the framing of its body
//! ([`BodyDecoder`]).
//!
//! Pure: no I/O, so that every case of the framing is tested on byte strings; the
//! connection in [`crate::conn`] reads and writes. A general client (hyper's) drives each
//! connection from a task of its own and hands every request and answer across a channel,
//! and builds a header map per answer; against a fast server that bookkeeping cost more
//! than the system calls, and made keel load the bottleneck where wrk was not.

use std::mem::MaybeUninit;

use http::Method;

use crate::settings::HeaderLine;

/// The most headers a response may have.
pub const MAX_HEADERS: usize = 100;

/// Why a response cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The head is not HTTP/1.x.
    #[error("the response head is not valid HTTP/1.x")]
    Head,
    /// `Content-Length` is not one whole number.
    #[error("Content-Length is not one whole number")]
    Length,
    /// A chunk of a chunked body has a bad size line or does not end where it should.
    #[error("a chunk of the body is malformed")]
    Chunk,
    /// `101 Switching Protocols`: no longer HTTP, so nothing more can be read.
    #[error("the server switched protocols")]
    Upgrade,
}

/// Appends to `out` a request for `target` (a path and query) on `host`, with `headers`
/// and `body`. A `Host` among `headers` replaces `host`; `Content-Length` and
/// `Transfer-Encoding` among them are left out, because the body is known whole and its
/// length is written here.
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &str,
    headers: &[HeaderLine],
    body: &[u8],
) {
    let framing = |line: &&HeaderLine| {
        line.name != http::header::CONTENT_LENGTH && line.name != http::header::TRANSFER_ENCODING
    };
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.iter().any(|line| line.name == http::header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for line in headers.iter().filter(framing) {
        out.extend_from_slice(line.name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A method that carries a body says so even when it is empty (as curl does), so that
    // the server does not wait for one; the others only when they have one.
    let carries_body = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
    if carries_body || !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How a response's body is delimited (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: an answer to `HEAD`, a 1xx, 204 or 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// How many bytes the head took, its blank line included.
    pub len: usize,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

impl Head {
    /// A 1xx answer, which a final one follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Room for a response's headers, filled by [`parse_head`] without being zeroed first.
pub type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Empty room for a response's headers.
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses the response head at the start of `buf`: `None` while it is incomplete;
/// else the head and its headers. `to_head` says the request was a `HEAD`, whose answer
/// has no body whatever its headers say.
pub fn parse_head<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    to_head: bool,
) -> Result<Option<(Head, &'h [httparse::Header<'b>])>, Malformed> {
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed::Head),
    };
    let (Some(status), Some(minor)) = (response.code, response.version) else {
        return Err(Malformed::Head);
    };
    if status == 101 {
        return Err(Malformed::Upgrade);
    }
    let headers: &'h [httparse::Header<'b>] = response.headers;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = false;
    let mut keep = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(header.value)?;
            if length.is_some_and(|l| l != value) {
                return Err(Malformed::Length);
            }
            length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding decides: chunked must be last when it is there at all.
            chunked = Some(last_token(header.value).eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::UntilClose,
        }
    };
    // HTTP/1.1 keeps the connection unless told not to; HTTP/1.0 closes unless told not to.
    let keep_alive = framing != Framing::UntilClose && !close && (minor >= 1 || keep);
    Ok(Some((
        Head {
            status,
            len,
            framing,
            keep_alive,
        },
        headers,
    )))
}

fn parse_length(value: &[u8]) -> Result<u64, Malformed> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::Length);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(Malformed::Length)
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of content left (a `Content-Length` body).
    Length(u64),
    /// At a chunk's size line.
    ChunkSize,
    /// This many bytes of the chunk left.
    ChunkData(u64),
    /// At the line end after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines, then a blank line.
    Trailers,
    /// Until the connection closes.
    UntilClose,
    /// The body is complete.
    Done,
}

/// Takes a body off the bytes read from a connection, piece by piece as they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    /// A decoder for a body framed by `framing`.
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// Whether the whole body has been taken.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can of the body from the start of `input`, and returns how many bytes
    /// it took: fewer than all when the body ends inside `input`, or when a size or
    /// trailer line is cut at its end (read more and call again with the rest). The
    /// content, without the chunks' framing, goes to `content`.
    pub fn feed(
        &mut self,
        input: &[u8],
        content: &mut impl FnMut(&[u8]),
    ) -> Result<usize, Malformed> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::UntilClose => {
                    content(rest);
                    return Ok(input.len());
                }
                State::Length(left) | State::ChunkData(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    content(&rest[..take]);
                    at += take;
                    let left = left - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), left) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                }
                State::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        at += len;
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => return Ok(at),
                    Err(_) => return Err(Malformed::Chunk),
                },
                State::ChunkEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Malformed::Chunk);
                    }
                    at += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => match rest.windows(2).position(|w| w == b"\r\n") {
                    // The blank line: the end of the body.
                    Some(0) => {
                        at += 2;
                        self.state = State::Done;
                    }
                    // A trailer field, which nothing here needs.
                    Some(line) => at += line + 2,
                    None => return Ok(at),
                },
            }
        }
    }

    /// The connection closed: whether that completed the body (only a body that runs
    /// until the close is completed by it).
    pub fn closed(&mut self) -> bool {
        if self.state == State::UntilClose {
            self.state = State::Done;
        }
        self.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &str, to_head: bool) -> Result<Option<Head>, Malformed> {
        let mut slots = header_slots();
        parse_head(bytes.as_bytes(), &mut slots, to_head).map(|parsed| parsed.map(|(h, _)| h))
    }

    fn framing_of(bytes: &str) -> Framing {
        head(bytes, false)
            .expect("valid")
            .expect("complete")
            .framing
    }

    /// Feeds `input` to a decoder for `framing` in pieces of `piece` bytes, as reads would
    /// bring it: the content, and how many bytes were taken in all.
    fn decode(framing: Framing, input: &[u8], piece: usize) -> (Vec<u8>, usize, bool) {
        let mut decoder = BodyDecoder::new(framing);
        let mut content = Vec::new();
        let mut buf = Vec::new();
        let mut taken = 0;
        for chunk in input.chunks(piece) {
            buf.extend_from_slice(chunk);
            let n = decoder
                .feed(&buf, &mut |c: &[u8]| content.extend_from_slice(c))
                .expect("well formed");
            buf.drain(..n);
            taken += n;
            if decoder.is_done() {
                break;
            }
        }
        (content, taken, decoder.is_done())
    }

    #[test]
    fn a_request_is_its_line_host_headers_length_and_body() {
        let mut out = Vec::new();
        let headers = vec!["X-Test: 1".parse().expect("header")];
        encode_request(
            &mut out,
            &Method::POST,
            "/data?x=1",
            "127.0.0.1:8080",
            &headers,
            b"payload",
        );
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "POST /data?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-test: 1\r\ncontent-length: 7\r\n\r\npayload"
        );
    }

    #[test]
    fn a_get_has_no_length_and_a_given_host_replaces_the_urls() {
        let mut out = Vec::new();
        let headers = vec![
            "Host: example.test".parse().expect("header"),
            "Content-Length: 99".parse().expect("header"),
        ];
        encode_request(&mut out, &Method::GET, "/", "127.0.0.1:8080", &headers, b"");
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "GET / HTTP/1.1\r\nhost: example.test\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(&mut out, &Method::PUT, "/k", "h", &[], b"");
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[test]
    fn a_head_is_incomplete_until_its_blank_line() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n", false),
            Ok(None)
        );
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(
            head(text, false),
            Ok(Some(Head {
                status: 200,
                len: text.len() - 2,
                framing: Framing::Length(2),
                keep_alive: true
            }))
        );
    }

    #[test]
    fn the_body_is_framed_by_encoding_then_length_then_the_close() {
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Framing::Length(12)
        );
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        for empty in ["204 No Content", "304 Not Modified", "100 Continue"] {
            assert_eq!(
                framing_of(&format!("HTTP/1.1 {empty}\r\ncontent-length: 5\r\n\r\n")),
                Framing::Empty
            );
        }
        let to_head = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(
            to_head.map(|h| h.map(|h| h.framing)),
            Ok(Some(Framing::Empty))
        );
    }

    #[test]
    fn the_connection_is_kept_as_the_version_and_connection_header_say() {
        let keep = |text: &str| {
            head(text, false)
                .expect("valid")
                .expect("complete")
                .keep_alive
        };
        assert!(keep("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!keep("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(keep(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(
            !keep("HTTP/1.1 200 OK\r\n\r\n"),
            "a body until the close ends it"
        );
    }

    #[test]
    fn bad_heads_and_lengths_are_malformed() {
        assert_eq!(head("SSH-2.0-OpenSSH\r\n\r\n", false), Err(Malformed::Head));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false),
            Err(Malformed::Length)
        );
        assert_eq!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            ),
            Err(Malformed::Length)
        );
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Err(Malformed::Upgrade)
        );
    }

    #[test]
    fn a_length_body_stops_at_its_length_however_it_arrives() {
        for piece in [1, 3, 100] {
            let (content, taken, done) =
                decode(Framing::Length(5), b"hello, and the next answer", piece);
            assert_eq!(
                (content.as_slice(), taken, done),
                (&b"hello"[..], 5, true),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_chunked_body_loses_its_framing_and_trailers_however_it_arrives() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nHTTP/1.1";
        for piece in [1, 2, 7, 100] {
            let (content, taken, done) = decode(Framing::Chunked, wire, piece);
            assert_eq!(String::from_utf8(content).expect("text"), "hello, world");
            assert_eq!(
                (taken, done),
                (wire.len() - b"HTTP/1.1".len(), true),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_chunk_without_its_line_end_is_malformed() {
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert_eq!(
            decoder.feed(b"2\r\nokXX", &mut |_| {}),
            Err(Malformed::Chunk)
        );
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert_eq!(decoder.feed(b"zz\r\n", &mut |_| {}), Err(Malformed::Chunk));
    }

    #[test]
    fn only_a_body_until_the_close_is_completed_by_the_close() {
        let mut until_close = BodyDecoder::new(Framing::UntilClose);
        assert_eq!(until_close.feed(b"all of it", &mut |_| {}), Ok(9));
        assert!(!until_close.is_done());
        assert!(until_close.closed());
        let mut cut = BodyDecoder::new(Framing::Length(10));
        assert_eq!(cut.feed(b"12345", &mut |_| {}), Ok(5));
        assert!(!cut.closed());
        assert!(BodyDecoder::new(Framing::Empty).is_done());
    }
}

//! HTTP/1.1 on the wire, as the proxy relays it: request and response heads parsed in
//! place (with httparse), how long each body is (RFC 9112, section 6), and a scanner that
//! finds the end of a chunked body while its bytes pass through unchanged.
//!
//! Written here rather than taken from hyper's server and client: a relay that parses each
//! head once, where it lies in the buffer, and copies bytes from one socket to the other in
//! the client connection's own task spends a fraction of the CPU time of decoding every
//! message into a typed request, handing it to a connection task over a channel and encoding
//! it again (docs/benchmarks.md, "Front door", has the figures).

/// The interim answer to `Expect: 100-continue`, which the proxy sends itself.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The largest head accepted, request or response.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a head may have.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with its extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a part of a head lies in the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// The span of `part`, a slice of `base`.
    fn of(base: &[u8], part: &[u8]) -> Span {
        // Both are slices of one buffer: the difference of their addresses is the offset.
        let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        Span {
            start,
            end: start + part.len(),
        }
    }

    /// The bytes of this span in `bytes` (the buffer it was parsed from); empty if the
    /// buffer is not that one.
    pub fn get<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        bytes.get(self.start..self.end).unwrap_or_default()
    }
}

/// One header field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// How the end of a body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the sender closes the connection (responses only).
    UntilClose,
}

/// What the `Connection` header (and the version) say about one message.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The connection stays open after this message.
    pub keep_alive: bool,
    /// The field names the `Connection` header lists (besides `close` and `keep-alive`):
    /// hop-by-hop for this message only.
    pub named: Vec<Span>,
    /// A field of [`NEVER_HOP_BY_HOP`] the `Connection` header named (it is not in
    /// `named`: it stays). A request that does this is refused.
    pub names_protected: Option<&'static str>,
}

/// Fields a `Connection` header may not make hop-by-hop, in lower case and as written in
/// an error. They frame or route the message: a proxy that dropped `Content-Length`
/// because the client listed it would send on a body the next hop cannot delimit — the
/// rest of it read there as a second request (request smuggling) — and one that dropped
/// `Host` would send a request the backend cannot route. `Upgrade` is not among them:
/// RFC 9110, 7.8 asks every sender of `Upgrade` to list it in `Connection`, and the proxy
/// drops it anyway (it relays no protocol switch), so the backend sees a plain request.
const NEVER_HOP_BY_HOP: [(&[u8], &str); 3] = [
    (b"content-length", "Content-Length"),
    (b"transfer-encoding", "Transfer-Encoding"),
    (b"host", "Host"),
];

/// Headers that describe one hop, not the message (RFC 9110, 7.6.1), in lower case.
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// A request head, parsed where it lies in the client's buffer.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// The head's length, final empty line included.
    pub len: usize,
    pub method: Span,
    pub target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub fields: Vec<Field>,
    pub framing: Option<Framing>,
    pub connection: Connection,
    pub expect_continue: bool,
    pub has_host: bool,
}

/// A response head, parsed where it lies in the backend connection's buffer.
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    pub minor_version: u8,
    pub fields: Vec<Field>,
    pub framing: Option<Framing>,
    pub connection: Connection,
    pub has_date: bool,
    /// The answer has a `Transfer-Encoding`, which overrides any `Content-Length` it also
    /// has: that one is dropped on the way (RFC 9112, 6.3).
    pub transfer_encoding: bool,
}

/// Why a request head was refused; the status and code of the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request's head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("the request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the request is not HTTP/1.x: {0}")]
    Malformed(String),
    #[error("{0}")]
    BadFraming(&'static str),
    #[error("the request uses a transfer coding keel proxy does not know: {0}")]
    UnknownCoding(String),
    #[error("the request has more than one Host header; it must have exactly one")]
    DuplicateHost,
    #[error(
        "the Connection header names {0}, which frames or routes the request and cannot be dropped as hop-by-hop"
    )]
    ProtectedField(&'static str),
    #[error("the request's head did not arrive whole within {0:?} (header_timeout)")]
    TimedOut(std::time::Duration),
}

impl HeadError {
    /// The status and error code the client is answered with.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => (431, "head_too_large"),
            HeadError::Malformed(_) => (400, "bad_request"),
            HeadError::BadFraming(_) => (400, "bad_framing"),
            HeadError::UnknownCoding(_) => (501, "unknown_transfer_coding"),
            HeadError::DuplicateHost => (400, "duplicate_host"),
            HeadError::ProtectedField(_) => (400, "bad_connection_option"),
            HeadError::TimedOut(_) => (408, "header_timeout"),
        }
    }
}

fn lower_eq(a: &[u8], lower: &[u8]) -> bool {
    a.eq_ignore_ascii_case(lower)
}

/// The comma-separated elements of a list-valued header field, trimmed, empty ones left out.
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').filter_map(|e| {
        let e = e.trim_ascii();
        (!e.is_empty()).then_some(e)
    })
}

/// What a message's framing headers say, before deciding.
#[derive(Default)]
struct FramingHeaders {
    length: Option<u64>,
    bad_length: bool,
    chunked_last: bool,
    /// How many times `chunked` was listed (more than once is refused in a request).
    chunked: u32,
    transfer_encoding: bool,
    /// A `Transfer-Encoding` field with no coding in it.
    empty_coding: bool,
    unknown_coding: Option<String>,
}

impl FramingHeaders {
    fn see(&mut self, name: &[u8], value: &[u8]) {
        if lower_eq(name, b"content-length") {
            // Several values (in one field or several) must all agree (RFC 9110, 8.6).
            for element in elements(value) {
                let parsed = std::str::from_utf8(element)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match (parsed, self.length) {
                    (None, _) => self.bad_length = true,
                    (Some(n), Some(m)) if n != m => self.bad_length = true,
                    (Some(n), _) => self.length = Some(n),
                }
            }
            if elements(value).next().is_none() {
                self.bad_length = true;
            }
        } else if lower_eq(name, b"transfer-encoding") {
            self.transfer_encoding = true;
            if elements(value).next().is_none() {
                self.empty_coding = true;
            }
            for coding in elements(value) {
                // Only the last coding counts for framing; chunked must come last.
                self.chunked_last = lower_eq(coding, b"chunked");
                self.chunked += u32::from(self.chunked_last);
                if !self.chunked_last && self.unknown_coding.is_none() {
                    self.unknown_coding = Some(String::from_utf8_lossy(coding).into_owned());
                }
            }
        }
    }
}

fn read_connection(fields: &[Field], bytes: &[u8], minor_version: u8) -> Connection {
    let (mut close, mut keep_alive) = (false, false);
    let mut named = Vec::new();
    let mut names_protected = None;
    for field in fields {
        if !lower_eq(field.name.get(bytes), b"connection") {
            continue;
        }
        for token in elements(field.value.get(bytes)) {
            if lower_eq(token, b"close") {
                close = true;
            } else if lower_eq(token, b"keep-alive") {
                keep_alive = true;
            } else if let Some((_, shown)) = NEVER_HOP_BY_HOP
                .iter()
                .find(|(lower, _)| lower_eq(token, lower))
            {
                names_protected = names_protected.or(Some(*shown));
            } else {
                named.push(Span::of(bytes, token));
            }
        }
    }
    // "close" wins wherever it stands; HTTP/1.0 keeps the connection only when asked to.
    Connection {
        keep_alive: !close && (minor_version >= 1 || keep_alive),
        named,
        names_protected,
    }
}

/// Whether a field of a message is hop-by-hop: one of RFC 9110's list, or named by the
/// message's `Connection` header.
pub fn is_hop_by_hop(name: &[u8], connection: &Connection, bytes: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| lower_eq(name, h))
        || connection
            .named
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.get(bytes)))
}

/// Parses a request head at the start of `buf` into `head`. `Ok(false)`: the head is not
/// complete yet.
pub fn parse_request(buf: &[u8], head: &mut RequestHead) -> Result<bool, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(false)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed(
            "the request line is incomplete".into(),
        ));
    };
    head.len = len;
    head.method = Span::of(buf, method.as_bytes());
    head.target = Span::of(buf, target.as_bytes());
    head.minor_version = minor_version;
    head.fields.clear();
    head.expect_continue = false;
    head.has_host = false;
    let mut framing = FramingHeaders::default();
    for h in request.headers.iter() {
        head.fields.push(Field {
            name: Span::of(buf, h.name.as_bytes()),
            value: Span::of(buf, h.value),
        });
        let name = h.name.as_bytes();
        framing.see(name, h.value);
        if lower_eq(name, b"host") {
            // Two hosts: the proxy and the backend might each route by a different one
            // (RFC 9112, 3.2 asks for a 400).
            if head.has_host {
                return Err(HeadError::DuplicateHost);
            }
            head.has_host = true;
        } else if lower_eq(name, b"expect") && lower_eq(h.value.trim_ascii(), b"100-continue") {
            head.expect_continue = true;
        }
    }
    head.connection = read_connection(&head.fields, buf, minor_version);
    if let Some(field) = head.connection.names_protected {
        return Err(HeadError::ProtectedField(field));
    }
    head.framing = Some(if framing.transfer_encoding {
        if framing.empty_coding {
            return Err(HeadError::BadFraming(
                "the request's Transfer-Encoding is empty: it must end with chunked",
            ));
        }
        if framing.chunked > 1 {
            return Err(HeadError::BadFraming(
                "the request's Transfer-Encoding lists chunked more than once",
            ));
        }
        if minor_version == 0 {
            return Err(HeadError::BadFraming(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ));
        }
        if framing.length.is_some() || framing.bad_length {
            return Err(HeadError::BadFraming(
                "the request has both Transfer-Encoding and Content-Length",
            ));
        }
        if let Some(coding) = framing.unknown_coding {
            if !framing.chunked_last {
                return Err(HeadError::BadFraming(
                    "the request's last transfer coding must be chunked",
                ));
            }
            return Err(HeadError::UnknownCoding(coding));
        }
        Framing::Chunked
    } else if framing.bad_length {
        return Err(HeadError::BadFraming(
            "Content-Length must be one whole number (repeated values must agree)",
        ));
    } else {
        match framing.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    });
    Ok(true)
}

/// Parses a response head at the start of `buf` into `head`, for a request whose method
/// was HEAD when `to_head` is true. `Ok(false)`: not complete yet. An error says what was
/// wrong with the backend's answer.
pub fn parse_response(buf: &[u8], to_head: bool, head: &mut ResponseHead) -> Result<bool, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(format!("its head is larger than {MAX_HEAD} bytes"))
            } else {
                Ok(false)
            };
        }
        Err(e) => return Err(format!("its answer is not HTTP/1.x ({e})")),
    };
    let (Some(status), Some(minor_version)) = (response.code, response.version) else {
        return Err("its status line is incomplete".into());
    };
    head.len = len;
    head.status = status;
    head.reason = Span::of(buf, response.reason.unwrap_or_default().as_bytes());
    head.minor_version = minor_version;
    head.fields.clear();
    head.has_date = false;
    let mut framing = FramingHeaders::default();
    for h in response.headers.iter() {
        head.fields.push(Field {
            name: Span::of(buf, h.name.as_bytes()),
            value: Span::of(buf, h.value),
        });
        framing.see(h.name.as_bytes(), h.value);
        if lower_eq(h.name.as_bytes(), b"date") {
            head.has_date = true;
        }
    }
    head.connection = read_connection(&head.fields, buf, minor_version);
    head.transfer_encoding = framing.transfer_encoding;
    if framing.transfer_encoding && (framing.length.is_some() || framing.bad_length) {
        // Both framings: a backend that sends that may be out of step with the proxy on
        // where its answer ends, so its connection is not used again (RFC 9112, 6.3).
        head.connection.keep_alive = false;
    }
    // RFC 9112, 6.3, in its order.
    head.framing = Some(
        if to_head || (100..200).contains(&status) || matches!(status, 204 | 304) {
            Framing::Empty
        } else if framing.transfer_encoding {
            if framing.chunked_last {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if framing.bad_length {
            return Err("its Content-Length is not one whole number".into());
        } else {
            match framing.length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        },
    );
    if head.framing == Some(Framing::UntilClose) {
        head.connection.keep_alive = false;
    }
    Ok(true)
}

/// Finds the end of a chunked body as its bytes go by.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The chunk's size while reading it; then what is left of its data.
    size: u64,
    /// Bytes of the current size line or of the trailer section so far.
    line: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad chunked body: {0}")]
pub struct ChunkError(&'static str);

impl Chunked {
    /// Whether the whole body, trailers included, has been seen.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `input`, which follows what was scanned before; returns how many bytes belong
    /// to the body (all of `input` unless the body ends inside it). `data` is handed the
    /// payload's bytes, without the chunk framing.
    pub fn scan(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => {
                    if let Some(digit) = (b as char).to_digit(16) {
                        if self.size > u64::MAX >> 4 {
                            return Err(ChunkError("a chunk size is too large"));
                        }
                        self.size = (self.size << 4) | u64::from(digit);
                    } else if self.line == 0 {
                        return Err(ChunkError("a chunk size must start with a hex digit"));
                    } else if matches!(b, b';' | b' ' | b'\t') {
                        self.state = ChunkState::Extension;
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else {
                        return Err(ChunkError("a chunk size is not a hex number"));
                    }
                    self.line += 1;
                }
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError("a chunk extension holds a bare LF"));
                    } else if is_control(b) {
                        return Err(ChunkError("a chunk extension holds a control character"));
                    }
                    self.line += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a chunk size line must end with CRLF"));
                    }
                    self.line = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    data(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("a chunk's data must end with CRLF"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a chunk's data must end with CRLF"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::EndLf,
                        b'\n' => return Err(ChunkError("the trailers hold a bare LF")),
                        _ if is_control(b) => {
                            return Err(ChunkError("the trailers hold a control character"));
                        }
                        _ => ChunkState::TrailerLine,
                    };
                    self.line += 1;
                }
                ChunkState::TrailerLine => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b == b'\n' {
                        return Err(ChunkError("the trailers hold a bare LF"));
                    } else if is_control(b) {
                        return Err(ChunkError("the trailers hold a control character"));
                    }
                    self.line += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a trailer line must end with CRLF"));
                    }
                    self.state = ChunkState::TrailerStart;
                    self.line += 1;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a chunked body must end with CRLF"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            if self.line > MAX_TRAILERS {
                return Err(ChunkError("the trailers are too long"));
            }
            if matches!(self.state, ChunkState::Size | ChunkState::Extension)
                && self.line > MAX_CHUNK_LINE
            {
                return Err(ChunkError("a chunk size line is too long"));
            }
            i += 1;
        }
        Ok(i)
    }
}

/// A control character other than HTAB (CR and LF are looked at before this). A bare LF
/// or CR in a chunk extension or a trailer is where two parsers of one body part ways —
/// one ends the line there, the other does not — so a chunk hidden from the proxy could
/// reach the backend: the scanner refuses every line byte a lenient parser might read
/// as an end.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends one header field.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field name as it is usually written (`content-type` as `Content-Type`): the `http`
/// crate keeps names in lower case, and the proxy's own answers match the fields it
/// writes by hand.
pub fn push_title_case(out: &mut Vec<u8>, name: &[u8]) {
    let mut upper = true;
    for &b in name {
        out.push(if upper { b.to_ascii_uppercase() } else { b });
        upper = b == b'-';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_written_in_title_case() {
        let mut out = Vec::new();
        push_title_case(&mut out, b"content-type");
        out.push(b' ');
        push_title_case(&mut out, b"retry-after");
        out.push(b' ');
        push_title_case(&mut out, b"x-request-id");
        assert_eq!(out, b"Content-Type Retry-After X-Request-Id");
    }

    fn request(text: &str) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        assert!(parse_request(text.as_bytes(), &mut head)?, "complete");
        Ok(head)
    }

    #[test]
    fn a_request_head_is_found_in_place() {
        let text = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret\r\n\r\nrest";
        let head = request(text).expect("parses");
        let bytes = text.as_bytes();
        assert_eq!(head.len, text.len() - 4);
        assert_eq!(head.method.get(bytes), b"GET");
        assert_eq!(head.target.get(bytes), b"/a?b=1");
        assert_eq!(head.minor_version, 1);
        assert!(head.has_host);
        assert!(!head.connection.keep_alive);
        assert!(is_hop_by_hop(b"X-Secret", &head.connection, bytes));
        assert!(is_hop_by_hop(b"Keep-Alive", &head.connection, bytes));
        assert!(!is_hop_by_hop(b"Host", &head.connection, bytes));
        assert_eq!(head.framing, Some(Framing::Empty));
    }

    #[test]
    fn a_partial_head_asks_for_more_and_a_huge_one_is_refused() {
        let mut head = RequestHead::default();
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHo", &mut head), Ok(false));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_request(&huge, &mut head), Err(HeadError::TooLarge));
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        assert!(
            request("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("ok")
                .connection
                .keep_alive
        );
        assert!(
            !request("GET / HTTP/1.0\r\n\r\n")
                .expect("ok")
                .connection
                .keep_alive
        );
        let ka = request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").expect("ok");
        assert!(ka.connection.keep_alive);
        let both = request("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
        assert!(!both.expect("ok").connection.keep_alive);
    }

    #[test]
    fn request_bodies_are_framed_by_length_or_chunks_and_ambiguity_is_refused() {
        let len = request("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").expect("ok");
        assert_eq!(len.framing, Some(Framing::Length(5)));
        let same = request("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n").expect("ok");
        assert_eq!(same.framing, Some(Framing::Length(5)));
        let chunked = request("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").expect("ok");
        assert_eq!(chunked.framing, Some(Framing::Chunked));
        // The proxy sends bodies on as they came, with chunked framing only: a coding it
        // would have to keep is refused, not dropped.
        let gzip = request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            gzip.expect_err("refused").status_and_code(),
            (501, "unknown_transfer_coding")
        );
        for (text, code) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 400),
            ("GET\r\n\r\n", 400),
        ] {
            let error = request(text).expect_err(text);
            assert_eq!(error.status_and_code().0, code, "{text}: {error}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let frame = |text: &str, to_head: bool| {
            let mut head = ResponseHead::default();
            parse_response(text.as_bytes(), to_head, &mut head).map(|_| head.framing)
        };
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(frame(ok, false), Ok(Some(Framing::Length(3))));
        assert_eq!(frame(ok, true), Ok(Some(Framing::Empty)));
        assert_eq!(
            frame(
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Ok(Some(Framing::Empty))
        );
        assert_eq!(
            frame(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Ok(Some(Framing::Chunked))
        );
        assert_eq!(
            frame("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Some(Framing::UntilClose))
        );
        assert!(frame("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(frame("SMTP ready\r\n\r\n", false).is_err());
    }

    #[test]
    fn a_connection_header_may_not_drop_a_framing_or_routing_field() {
        // The smuggling request: without Content-Length, the body would go on with no
        // length, and `GET /smuggled` would be a second request to the backend.
        let smuggle = "POST / HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\n\
                       Content-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let refused = request(smuggle).expect_err("refused");
        assert_eq!(refused.status_and_code(), (400, "bad_connection_option"));
        assert!(refused.to_string().contains("Content-Length"), "{refused}");
        for (connection, field) in [
            ("keep-alive, transfer-encoding", "Transfer-Encoding"),
            ("HOST", "Host"),
            ("x-a, content-length", "Content-Length"),
        ] {
            let text = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n");
            let refused = request(&text).expect_err(&text);
            assert_eq!(refused, HeadError::ProtectedField(field), "{text}");
            assert!(refused.to_string().contains(field), "{refused}");
        }
        // Upgrade must be listed by whoever sends it (RFC 9110, 7.8); it is dropped, as
        // it always is, and the request goes on as a plain one.
        let text = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        let head = request(text).expect("an upgrade offer is served as a plain request");
        let bytes = text.as_bytes();
        assert!(is_hop_by_hop(b"Upgrade", &head.connection, bytes));
        assert!(is_hop_by_hop(b"HTTP2-Settings", &head.connection, bytes));
    }

    #[test]
    fn a_backend_cannot_drop_its_own_content_length_through_connection() {
        let text =
            "HTTP/1.1 200 OK\r\nConnection: content-length, x-hop\r\nContent-Length: 3\r\n\r\nabc";
        let mut head = ResponseHead::default();
        assert_eq!(parse_response(text.as_bytes(), false, &mut head), Ok(true));
        let bytes = text.as_bytes();
        assert_eq!(head.framing, Some(Framing::Length(3)));
        assert!(!is_hop_by_hop(b"Content-Length", &head.connection, bytes));
        assert!(is_hop_by_hop(b"X-Hop", &head.connection, bytes));
    }

    #[test]
    fn a_response_with_both_framings_is_chunked_and_its_connection_not_reused() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(parse_response(text.as_bytes(), false, &mut head), Ok(true));
        assert_eq!(head.framing, Some(Framing::Chunked));
        assert!(
            head.transfer_encoding,
            "its Content-Length is dropped on the way"
        );
        assert!(!head.connection.keep_alive);
        let plain = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse_response(plain.as_bytes(), false, &mut head), Ok(true));
        assert!(!head.transfer_encoding && head.connection.keep_alive);
    }

    #[test]
    fn an_empty_or_repeated_chunked_transfer_encoding_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            let refused = request(text).expect_err(text);
            assert_eq!(refused.status_and_code(), (400, "bad_framing"), "{text}");
        }
    }

    #[test]
    fn a_second_host_header_is_refused() {
        let refused = request("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhost: b\r\n\r\n");
        assert_eq!(refused.expect_err("two hosts"), HeadError::DuplicateHost);
        assert_eq!(
            HeadError::DuplicateHost.status_and_code(),
            (400, "duplicate_host")
        );
        assert!(request("GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn a_bare_lf_anywhere_in_a_chunked_body_is_refused() {
        for bad in [
            // In the places the scanner always checked: after a size, after data, at
            // the end of a trailer line and of the body.
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\n\n",
            // In a chunk extension: a parser that ends the line at the LF reads `0` as
            // the last chunk, and what follows as a new request.
            b"5;a=b\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n\r\nhello\r\n0\r\n\r\n",
            b"5;\nx\r\nhello\r\n0\r\n\r\n",
            // In the trailers, inside a line and where one starts.
            b"0\r\nX-T: a\nb\r\n\r\n",
            b"0\r\n\nX-T: 1\r\n\r\n",
            // Other control characters there too.
            b"5;a=\0\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-T: \x0b\r\n\r\n",
        ] {
            // Whole, and a byte at a time (the LF may come alone in a read).
            let mut scanner = Chunked::default();
            assert!(
                scanner.scan(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            let mut scanner = Chunked::default();
            let failed = bad.chunks(1).any(|b| scanner.scan(b, |_| {}).is_err());
            assert!(
                failed,
                "a byte at a time: {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Tabs are allowed where whitespace is.
        let mut scanner = Chunked::default();
        let good = b"5;\ta=b\r\nhello\r\n0\r\nX-T:\t1\r\n\r\n";
        assert_eq!(scanner.scan(good, |_| {}), Ok(good.len()));
        assert!(scanner.is_done());
    }

    #[test]
    fn a_chunked_body_is_followed_to_its_end_in_any_pieces() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..=body.len() {
            let mut scanner = Chunked::default();
            let mut payload = Vec::new();
            let mut consumed = 0;
            for part in body.chunks(piece) {
                if scanner.is_done() {
                    break;
                }
                let used = scanner
                    .scan(part, |d| payload.extend_from_slice(d))
                    .expect("valid");
                consumed += used;
            }
            assert!(scanner.is_done(), "pieces of {piece}");
            assert_eq!(consumed, body.len() - 4, "pieces of {piece}");
            assert_eq!(payload, b"helloabcdefghijklmnopqrstuvwxyz");
        }
    }

    #[test]
    fn a_broken_chunked_body_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello",
            b"fffffffffffffffff\r\n",
        ] {
            let mut scanner = Chunked::default();
            assert!(
                scanner.scan(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut ext = b"1;".to_vec();
        ext.extend(vec![b'a'; MAX_CHUNK_LINE + 1]);
        assert!(Chunked::default().scan(&ext, |_| {}).is_err());
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS {
            trailers.extend_from_slice(b"X: 1\r\n");
        }
        assert!(Chunked::default().scan(&trailers, |_| {}).is_err());
    }

    #[test]
    fn decimals_are_written_without_allocating() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}

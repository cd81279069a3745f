//! The real connection: one HTTP/1.1 keep-alive connection per slot, written and read
//! directly on its socket ([`crate::http1`] encodes and parses).
//!
//! Not a pooled client (reqwest, hyper-util's legacy client): a pool is free to open
//! more connections or to share them, and `--concurrency 8` must mean exactly eight
//! connections, as in wrk. Nor hyper's connection API: it runs each connection in a task
//! of its own and passes every request and answer through channels, which, against a
//! server fast enough that the client is the bottleneck, cost keel load a fifth of wrk's
//! rate. Here, as in wrk, a request is one write of bytes encoded once for the run, and an
//! answer is read into a buffer the connection keeps and parsed where it lies.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Method, Uri};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::LoadError;
use crate::exchange::{Answer, Exchange, Failure, Request};
use crate::http1::{self, BodyDecoder};
use crate::settings::{HeaderLine, Plan, Target};
use crate::spread::SpreadBy;
use crate::verify::{write_key, write_value};

/// The most of a body read to find a backend name or an error code (1 MiB, the data
/// tier's own limit on bodies).
const MAX_READ_BODY: usize = 1 << 20;

/// A connection's read buffer: room for a whole small answer in one read, as wrk's.
const READ_BUFFER: usize = 16 << 10;

/// The most a read buffer grows to hold one response head, or one line of a chunked
/// body; anything longer is not an answer this tool can use.
const MAX_READ_BUFFER: usize = 256 << 10;

/// How to build every request of a run; shared by its connections.
#[derive(Debug)]
pub struct RequestTemplate {
    /// The configured request, whole: every request that is not a write sends these bytes.
    request: Vec<u8>,
    /// It is a `HEAD`, whose answers have no body.
    is_head: bool,
    authority: String,
    headers: Vec<HeaderLine>,
    run_id: String,
    spread_by: SpreadBy,
    timeout: Duration,
    /// For an `https://` target: TLS, and the name its certificate must be valid for.
    tls: Option<TargetTls>,
}

/// TLS towards the target: the connector and the name the certificate must be valid for.
struct TargetTls(
    tokio_rustls::TlsConnector,
    rustls_pki_types::ServerName<'static>,
);

impl std::fmt::Debug for TargetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetTls({:?})", self.1)
    }
}

impl RequestTemplate {
    /// The template of `plan`'s requests; writes are named after `run_id`.
    pub fn new(plan: &Plan, run_id: &str) -> Result<RequestTemplate, LoadError> {
        let bad = |why: &str| {
            LoadError::Plan(crate::settings::PlanError::BadUrl {
                url: plan.target.url.clone(),
                why: why.to_owned(),
            })
        };
        let target = &plan.target;
        target
            .path_and_query
            .parse::<Uri>()
            .map_err(|_| bad("its path is not valid"))?;
        if http::HeaderValue::from_str(&target.authority).is_err() {
            return Err(bad("its host is not valid"));
        }
        let settings = &plan.settings;
        let mut request = Vec::new();
        http1::encode_request(
            &mut request,
            &settings.method,
            &target.path_and_query,
            &target.authority,
            &settings.headers,
            &settings.body,
        );
        Ok(RequestTemplate {
            request,
            is_head: settings.method == Method::HEAD,
            authority: target.authority.clone(),
            headers: settings.headers.clone(),
            run_id: run_id.to_owned(),
            spread_by: settings.spread_by.clone(),
            timeout: settings.timeout,
            tls: match (&settings.tls, target.https) {
                (Some(tls), true) => Some(TargetTls(
                    tokio_rustls::TlsConnector::from(Arc::new(tls.clone())),
                    keel_auth::tls::server_name(&target.host).map_err(|e| bad(&e.to_string()))?,
                )),
                _ => None,
            },
        })
    }

    /// The bytes of `request`: the configured request, or write `n` (`PUT` of its unique
    /// value under its unique key) encoded into `scratch`.
    fn bytes<'a>(&'a self, request: Request, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if !request.write {
            return &self.request;
        }
        scratch.clear();
        // Keys are `load-<hex>-<digits>`: always a valid path.
        http1::encode_request(
            scratch,
            &Method::PUT,
            &format!("/v1/kv/{}", write_key(&self.run_id, request.n)),
            &self.authority,
            &self.headers,
            write_value(&self.run_id, request.n).as_bytes(),
        );
        scratch
    }
}

/// Resolves the target's host to the address to connect to. Unless `allow_remote`, every
/// address the name resolves to must be a loopback one: a `localhost` that resolves
/// elsewhere is refused too.
pub async fn resolve(target: &Target, allow_remote: bool) -> Result<SocketAddr, LoadError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| LoadError::Resolve {
            host: target.host.clone(),
            why: e.to_string(),
        })?
        .collect();
    if !allow_remote && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(LoadError::Plan(crate::settings::PlanError::NotLocal {
            url: target.url.clone(),
        }));
    }
    // IPv4 first: a server told to listen on 127.0.0.1 does not answer on ::1.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| LoadError::Resolve {
            host: target.host.clone(),
            why: "no address".to_owned(),
        })
}

/// One connection slot.
pub struct HttpConn {
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    /// `None` before the first request and after a failure; the next request reconnects.
    wire: Option<Wire>,
    /// Where a write's request is encoded, kept from one to the next.
    scratch: Vec<u8>,
}

impl HttpConn {
    /// A slot that connects to `addr` on its first request.
    pub fn new(addr: SocketAddr, template: Arc<RequestTemplate>) -> HttpConn {
        HttpConn {
            addr,
            template,
            wire: None,
            scratch: Vec::new(),
        }
    }

    /// Opens the connection now (so that a run starts with every connection up, and an
    /// unreachable target is an error before the run rather than a run of errors).
    pub async fn connect(&mut self) -> std::io::Result<()> {
        self.wire = Some(open(self.addr, &self.template).await?);
        Ok(())
    }

    async fn send(&mut self, request: Request) -> Answer {
        let template = &*self.template;
        // A keep-alive connection the server closed while idle is normal; the request
        // then goes on a new one. The connection is taken out of its slot: if anything
        // fails, or the timeout drops this future, it is closed, and the next request
        // cannot read this one's answer as its own.
        let kept = self
            .wire
            .take()
            .and_then(|mut wire| wire.idle_and_open().then_some(wire));
        let mut wire = match kept {
            Some(wire) => wire,
            None => match open(self.addr, template).await {
                Ok(wire) => wire,
                Err(_) => return Answer::Failed(Failure::Connect),
            },
        };
        let bytes = template.bytes(request, &mut self.scratch);
        if wire.stream.write_all(bytes).await.is_err() {
            return Answer::Failed(Failure::Broken);
        }
        match wire.answer(template).await {
            Ok((answer, reusable)) => {
                if reusable {
                    self.wire = Some(wire);
                }
                answer
            }
            Err(failure) => Answer::Failed(failure),
        }
    }
}

impl Exchange for HttpConn {
    async fn exchange(&mut self, request: Request) -> Answer {
        match tokio::time::timeout(self.template.timeout, self.send(request)).await {
            Ok(answer) => answer,
            // The connection was dropped with the request: a new one serves the next.
            Err(_) => Answer::Failed(Failure::Timeout),
        }
    }
}

/// The stream under a connection: TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.write_all(bytes).await,
            // TLS holds what it encrypts until flushed.
            Stream::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf).await,
            Stream::Tls(tls) => tls.read(buf).await,
        }
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

/// An open connection, and the bytes read from it but not yet taken (`buf[start..end]`).
struct Wire {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Wire {
    fn new(stream: Stream) -> Wire {
        Wire {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// Whether the connection can take a request: the server has not closed it, and has
    /// sent nothing unasked for. One read is tried without waiting; on a quiet connection
    /// tokio knows from its readiness that nothing is there and makes no system call.
    fn idle_and_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = ReadBuf::new(&mut self.buf[self.end..]);
        self.stream.poll_read(&mut cx, &mut probe).is_pending()
    }

    /// Reads more from the connection into the buffer: how many bytes came, 0 when the
    /// server closed it.
    async fn fill(&mut self) -> Result<usize, Failure> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_READ_BUFFER {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Err(Failure::BadResponse);
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|_| Failure::Broken)?;
        self.end += n;
        Ok(n)
    }

    /// Reads one answer: what it says, and whether the connection can carry the next
    /// request.
    async fn answer(&mut self, template: &RequestTemplate) -> Result<(Answer, bool), Failure> {
        let spread_by = &template.spread_by;
        // The headers stay in the buffer only until the body is read over them; a spread
        // that reads the body as well keeps a copy (a slower path, and a rarer one).
        let (head, backend, headers) = loop {
            let mut slots = http1::header_slots();
            match http1::parse_head(
                &self.buf[self.start..self.end],
                &mut slots,
                template.is_head,
            ) {
                Ok(Some((head, _))) if head.is_interim() => self.start += head.len,
                Ok(Some((head, headers))) => {
                    let (backend, kept) = if spread_by.needs_body() {
                        (None, Some(header_map(headers)))
                    } else {
                        (spread_by.from_headers(headers), None)
                    };
                    self.start += head.len;
                    break (head, backend, kept);
                }
                Ok(None) => {
                    if self.fill().await? == 0 {
                        return Err(Failure::Broken);
                    }
                }
                Err(_) => return Err(Failure::BadResponse),
            }
        };

        let status = head.status;
        let look = spread_by.needs_body() || status >= 400;
        let mut body = Vec::new();
        // An answer too large to look into still counts as an answer; the rest of it is
        // not read, so the connection cannot be used again.
        let mut too_large = false;
        let mut decoder = BodyDecoder::new(head.framing);
        loop {
            let taken = decoder
                .feed(&self.buf[self.start..self.end], &mut |content: &[u8]| {
                    if !look || too_large {
                    } else if body.len() + content.len() > MAX_READ_BODY {
                        too_large = true;
                        body = Vec::new();
                    } else {
                        body.extend_from_slice(content);
                    }
                })
                .map_err(|_| Failure::BadResponse)?;
            self.start += taken;
            if decoder.is_done() || too_large {
                break;
            }
            if self.fill().await? == 0 {
                if decoder.closed() {
                    break;
                }
                return Err(Failure::Broken);
            }
        }
        // Anything after the answer was not asked for: the connection is not to be trusted.
        let reusable = head.keep_alive && decoder.is_done() && self.start == self.end;
        (self.start, self.end) = (0, 0);

        let backend = match headers {
            Some(headers) => spread_by.from_response(&headers, Some(&body)),
            None => backend,
        };
        let mut error_code = None;
        let mut outcome_unknown = false;
        if status >= 400
            && let Ok(err) = serde_json::from_slice::<ErrorBody>(&body)
        {
            error_code = err.error;
            outcome_unknown = err
                .written
                .and_then(|w| serde_json::from_value::<keel_client::Written>(w).ok())
                == Some(keel_client::Written::Unknown);
        }
        Ok((
            Answer::Response {
                status,
                backend,
                error_code,
                outcome_unknown,
            },
            reusable,
        ))
    }
}

/// The parts of keel's JSON error body the counts use.
#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    /// `false`, `true` or `"unknown"` ([`keel_client::Written`]); read apart, so that a
    /// bad value loses only itself, not the error code beside it.
    written: Option<serde_json::Value>,
}

/// A copy of parsed headers (a header that is not valid HTTP is left out, as it would not
/// name a backend).
fn header_map(headers: &[httparse::Header<'_>]) -> http::HeaderMap {
    headers
        .iter()
        .filter_map(|h| {
            Some((
                http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                http::HeaderValue::from_bytes(h.value).ok()?,
            ))
        })
        .collect()
}

async fn open(addr: SocketAddr, template: &RequestTemplate) -> std::io::Result<Wire> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(template.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    // Every request is one small write; Nagle would hold it back waiting for an ACK.
    stream.set_nodelay(true)?;
    let stream = match &template.tls {
        Some(TargetTls(connector, name)) => Stream::Tls(Box::new(
            tokio::time::timeout(template.timeout, connector.connect(name.clone(), stream))
                .await
                .map_err(|_| timed_out())??,
        )),
        None => Stream::Plain(stream),
    };
    Ok(Wire::new(stream))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::settings::{Bound, Pace, Settings};

    fn template(write_ratio: f64) -> RequestTemplate {
        let plan = Plan::new(Settings {
            url: "http://127.0.0.1:8080/data?x=1".into(),
            pace: Pace::Concurrency(1),
            bound: Bound::Requests(1),
            method: Method::POST,
            body: Bytes::from_static(b"payload"),
            headers: vec!["X-Test: 1".parse().expect("header")],
            timeout: Duration::from_secs(1),
            write_ratio,
            spread_by: SpreadBy::Auto,
            allow_remote: false,
            tls: None,
        })
        .expect("plan");
        RequestTemplate::new(&plan, "abcd0123").expect("template")
    }

    /// A request's method, target, headers (lowercase names) and body, as a server reads
    /// them.
    fn parsed(bytes: &[u8]) -> (String, String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = req.parse(bytes) else {
            panic!("not a whole request: {:?}", String::from_utf8_lossy(bytes));
        };
        let headers = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (
            req.method.unwrap_or_default().to_owned(),
            req.path.unwrap_or_default().to_owned(),
            headers,
            bytes[len..].to_vec(),
        )
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_request_carries_the_method_path_body_host_and_extra_headers() {
        let mut scratch = Vec::new();
        let t = template(0.0);
        let (method, path, headers, body) =
            parsed(t.bytes(Request { n: 0, write: false }, &mut scratch));
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/data?x=1"));
        assert_eq!(header(&headers, "host"), Some("127.0.0.1:8080"));
        assert_eq!(header(&headers, "x-test"), Some("1"));
        assert_eq!(header(&headers, "content-length"), Some("7"));
        assert_eq!(body, b"payload");
    }

    #[test]
    fn a_write_puts_its_unique_value_under_its_unique_key() {
        let mut scratch = Vec::new();
        let t = template(1.0);
        let (method, path, headers, body) =
            parsed(t.bytes(Request { n: 42, write: true }, &mut scratch));
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("PUT", "/v1/kv/load-abcd0123-42")
        );
        assert_eq!(header(&headers, "x-test"), Some("1"));
        assert_eq!(body, write_value("abcd0123", 42).as_bytes());
    }

    /// A server on a free loopback port that reads each request whole and answers the
    /// `n`th request on a connection with `answer(n)` (all connections' requests counted
    /// together); the answer's `close` closes the connection after it. Returns the
    /// address and the number of connections accepted so far.
    async fn server(
        answer: impl Fn(u64) -> (String, bool) + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let answer = Arc::new(answer);
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (answer, requests) = (Arc::clone(&answer), Arc::clone(&requests));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0; 4096];
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        buf.drain(..end);
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        let (text, close) = answer(n);
                        if stream.write_all(text.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get_template(spread_by: SpreadBy) -> Arc<RequestTemplate> {
        let plan = Plan::new(Settings {
            url: "http://127.0.0.1:8080/".into(),
            pace: Pace::Concurrency(1),
            bound: Bound::Requests(1),
            method: Method::GET,
            body: Bytes::new(),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            write_ratio: 0.0,
            spread_by,
            allow_remote: false,
            tls: None,
        })
        .expect("plan");
        Arc::new(RequestTemplate::new(&plan, "abcd0123").expect("template"))
    }

    async fn send(conn: &mut HttpConn, n: u64) -> Answer {
        conn.exchange(Request { n, write: false }).await
    }

    fn answered(status: u16, backend: Option<&str>, error_code: Option<&str>) -> Answer {
        Answer::Response {
            status,
            backend: backend.map(str::to_owned),
            error_code: error_code.map(str::to_owned),
            outcome_unknown: false,
        }
    }

    #[tokio::test]
    async fn answers_of_every_framing_are_read_on_one_kept_connection() {
        let (addr, accepted) = server(|n| {
            let text = match n {
                0 => "HTTP/1.1 200 OK\r\nkeel-backend: app1\r\ncontent-length: 2\r\n\r\nok",
                1 => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nkeel-node: app2\r\n\r\n",
                _ => concat!(
                    "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n",
                    "10\r\n{\"error\":\"failov\r\n",
                    "c\r\ner_in_progre\r\n4\r\nss\"}\r\n0\r\n\r\n"
                ),
            };
            (text.to_owned(), false)
        })
        .await;
        let mut conn = HttpConn::new(addr, get_template(SpreadBy::Auto));
        conn.connect().await.expect("connect");
        assert_eq!(send(&mut conn, 0).await, answered(200, Some("app1"), None));
        assert_eq!(send(&mut conn, 1).await, answered(204, Some("app2"), None));
        assert_eq!(
            send(&mut conn, 2).await,
            answered(503, None, Some("failover_in_progress"))
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_before_the_next_request() {
        // Every answer closes its connection: one after `Connection: close`, the other
        // after a body that runs until the close.
        let (addr, accepted) = server(|n| {
            let text = if n % 2 == 0 {
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
            } else {
                "HTTP/1.0 200 OK\r\n\r\nuntil the close"
            };
            (text.to_owned(), true)
        })
        .await;
        let mut conn = HttpConn::new(addr, get_template(SpreadBy::Auto));
        conn.connect().await.expect("connect");
        for n in 0..4 {
            assert_eq!(send(&mut conn, n).await, Answer::status(200), "request {n}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_json_spread_reads_the_body_and_headers_together() {
        let (addr, _) = server(|_| {
            let body = r#"{"backend_id":"svc2"}"#;
            let text = format!(
                "HTTP/1.1 200 OK\r\nx-db: pg1\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            (text, false)
        })
        .await;
        let by: SpreadBy = "json:backend_id,header:x-db".parse().expect("spread");
        let mut conn = HttpConn::new(addr, get_template(by));
        assert_eq!(
            send(&mut conn, 0).await,
            answered(200, Some("svc2 × pg1"), None)
        );
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_a_bad_response_and_a_cut_one_is_broken() {
        let (addr, _) = server(|n| {
            let text = if n == 0 {
                "SSH-2.0-OpenSSH_9.2\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"
            };
            (text.to_owned(), true)
        })
        .await;
        let mut conn = HttpConn::new(addr, get_template(SpreadBy::Auto));
        assert_eq!(
            send(&mut conn, 0).await,
            Answer::Failed(Failure::BadResponse)
        );
        assert_eq!(send(&mut conn, 1).await, Answer::Failed(Failure::Broken));
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_a_connect_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let mut conn = HttpConn::new(addr, get_template(SpreadBy::Auto));
        assert_eq!(send(&mut conn, 0).await, Answer::Failed(Failure::Connect));
    }
}

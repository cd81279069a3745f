//! `keel proxy` on the wire, against raw-TCP stub backends that record exactly what they
//! receive: HTTP/1.1 framing that cannot be used to smuggle a request past it, whose
//! `X-Forwarded-For` a client can trust, and connections bounded in time on both sides —
//! a slow body, a slow head, an idle connection, a client that does not read, a backend
//! that does not read or stops mid-answer, and a flood of slow clients that must not
//! starve a normal one.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::{KeelProcess, free_port, url_for, wait_until};

/// A `keel proxy` started from a config file (listen and admin are added).
struct Proxy {
    proc: KeelProcess,
    url: String,
    addr: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(body: &str) -> Proxy {
        let dir = support::tempdir();
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.path().join("proxy.toml");
        let text =
            format!("listen = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n{body}");
        std::fs::write(&config, text).expect("write config");
        let config_arg = config.display().to_string();
        let mut proc = KeelProcess::spawn("proxy", &["proxy", "--config", &config_arg]);
        let admin = url_for(admin_port);
        support::wait_for_health(&mut proc, &admin);
        Proxy {
            proc,
            url: url_for(port),
            addr: format!("127.0.0.1:{port}"),
            admin,
            _dir: dir,
        }
    }

    /// A proxy in front of one backend, without active checks (the stubs count only what
    /// the tests send).
    fn before(backend: &str, extra: &str) -> Proxy {
        Proxy::start(&format!(
            "{extra}\n[health]\ninterval = \"0s\"\n[[backend]]\nname = \"stub\"\nurl = \"{backend}\"\n"
        ))
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = support::get_text(&format!("{}/metrics", self.admin));
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// A new connection to the proxy, reads timing out after 10 s.
    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).expect("connect to the proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
    }

    /// Sends `request` on a new connection and reads until the proxy closes it.
    fn exchange(&self, request: &[u8]) -> String {
        let mut stream = self.connect();
        stream.write_all(request).expect("write");
        read_to_close(&mut stream)
    }
}

/// Everything up to the end of the connection; panics if the proxy neither answers nor
/// closes within the read timeout.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if let Err(e) = &read {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the proxy left the connection open: {e} after {answer:?}"
        );
    }
    answer
}

/// The status code of a raw answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of one of the proxy's own answers.
fn json_of(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

/// A backend on a raw socket that records every byte it receives and the head of every
/// request it read whole, and answers by path:
/// - `/double`: a chunked answer that also carries a (wrong) `Content-Length`;
/// - `/big`: 64 MiB with a `Content-Length`;
/// - `/pause`: part of its answer, then nothing more;
/// - `/stop-reading`: reads the head and then nothing, and never answers;
/// - anything else: `200` saying how many body bytes came.
struct RawBackend {
    url: String,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<u8>>,
    heads: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl RawBackend {
    fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let url = url_for(listener.local_addr().expect("addr").port());
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let shared = Arc::clone(&accepting);
                thread::spawn(move || serve_raw(stream, &shared));
            }
        });
        RawBackend { url, shared }
    }

    /// Every byte received so far, on every connection.
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.shared.received.lock().expect("lock")).into_owned()
    }

    /// The heads of the requests read whole so far.
    fn heads(&self) -> Vec<String> {
        self.shared.heads.lock().expect("lock").clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        // Wakes the stalled handlers, and the accept loop with one last connection.
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Reads from a socket, keeping a copy of every byte in the backend's record.
struct Tee<'a> {
    stream: TcpStream,
    shared: &'a Shared,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.shared
            .received
            .lock()
            .expect("lock")
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn serve_raw(stream: TcpStream, shared: &Shared) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(Tee {
        stream: clone,
        shared,
    });
    let mut stream = stream;
    let stall = || {
        while !shared.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    };
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if path == "/stop-reading" {
            stall();
            return;
        }
        let lower = head.to_ascii_lowercase();
        let mut body = 0;
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                if size == 0 {
                    let mut end = String::new();
                    if reader.read_line(&mut end).unwrap_or(0) == 0 {
                        return;
                    }
                    break;
                }
                let mut data = vec![0; size + 2];
                if reader.read_exact(&mut data).is_err() {
                    return;
                }
                body += size;
            }
        } else if let Some(n) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            let mut data = vec![0; n];
            if reader.read_exact(&mut data).is_err() {
                return;
            }
            body = n;
        }
        shared.heads.lock().expect("lock").push(head);
        let answer = match path.as_str() {
            "/double" => {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    .to_owned()
            }
            "/big" => {
                const BIG: usize = 64 << 20;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                let piece = vec![b'x'; 64 * 1024];
                if stream.write_all(head.as_bytes()).is_ok() {
                    let mut sent = 0;
                    while sent < BIG && stream.write_all(&piece).is_ok() {
                        sent += piece.len();
                    }
                }
                return;
            }
            "/pause" => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nthe first part");
                stall();
                return;
            }
            _ => {
                let text = format!("{path} got {body} body bytes\n");
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                )
            }
        };
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_connection_header_naming_content_length_cannot_smuggle_a_request() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(&backend.url, "");
    // Dropping Content-Length as hop-by-hop would leave the body unframed on its way to
    // the backend, which would read `GET /smuggled` as a request of its own.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    request.extend_from_slice(smuggled);
    let answer = proxy.exchange(&request);
    assert_eq!(status_of(&answer), 400, "{answer}");
    let error = json_of(&answer);
    assert_eq!(error["error"], "bad_connection_option", "{answer}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Content-Length"),
        "names the field: {answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{answer}"
    );

    // The control: the backend records what does reach it.
    let answer = proxy.exchange(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&answer), 200, "{answer}");
    let received = backend.received();
    assert!(
        received.starts_with("GET /after HTTP/1.1\r\n"),
        "{received}"
    );
    assert!(
        !received.contains("smuggled") && !received.contains("POST"),
        "the refused request reached the backend: {received}"
    );
}

#[test]
fn a_response_with_both_framings_reaches_the_client_chunked_without_content_length() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(&backend.url, "");
    // Two requests on one connection: had the client been told the length, it would have
    // read the second answer from the middle of the first one's chunks.
    let answer = proxy.exchange(
        b"GET /double HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (first, second) = answer
        .split_once("0\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of chunks: {answer}"));
    let lower = first.to_ascii_lowercase();
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(!lower.contains("content-length"), "{answer}");
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{answer}");
    assert!(
        first.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"),
        "the body intact: {answer}"
    );
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(second.ends_with("/next got 0 body bytes\n"), "{answer}");
}

#[test]
fn each_request_that_breaks_the_framing_rules_is_refused_with_what_was_wrong() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(&backend.url, "");
    // Refused on their head: nothing reaches the backend.
    for (request, code, says) in [
        (
            &b"POST /te HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            "bad_connection_option",
            "Transfer-Encoding",
        ),
        (
            b"GET /host HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n",
            "bad_connection_option",
            "Host",
        ),
        (
            b"POST /empty HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n",
            "bad_framing",
            "Transfer-Encoding is empty",
        ),
        (
            b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "duplicate_host",
            "more than one Host",
        ),
    ] {
        let answer = proxy.exchange(request);
        assert_eq!(status_of(&answer), 400, "{answer}");
        let error = json_of(&answer);
        assert_eq!(error["error"], code, "{answer}");
        assert!(
            error["message"].as_str().unwrap_or_default().contains(says),
            "{answer}"
        );
    }
    assert_eq!(backend.received(), "", "a refused head reached the backend");

    // Refused in the body: a bare LF where a lenient parser would end a line. The head
    // has gone to the backend by then, but nothing from the bare LF on, and the backend's
    // connection is closed with the request unfinished.
    for (body, place) in [
        (
            &b"5;ext\nSMUGGLED / HTTP/1.1\r\n\r\nhello\r\n0\r\n\r\n"[..],
            "chunk extension",
        ),
        (b"5\r\nhello\r\n0\r\nX-T: a\nSMUGGLED\r\n\r\n", "trailers"),
    ] {
        let mut request =
            b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let answer = proxy.exchange(&request);
        assert_eq!(status_of(&answer), 400, "{place}: {answer}");
        let error = json_of(&answer);
        assert_eq!(error["error"], "bad_body", "{place}: {answer}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("bare LF") && message.contains(place),
            "{place}: {answer}"
        );
    }
    let received = backend.received();
    assert!(!received.contains("SMUGGLED"), "{received}");
    assert!(
        backend.heads().is_empty(),
        "no request came whole: {:?}",
        backend.heads()
    );

    // Upgrade must be named in Connection by whoever offers it (RFC 9110, 7.8): the offer
    // is dropped, and the request served as a plain one.
    let answer = proxy.exchange(
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    let heads = backend.heads();
    let head = heads
        .last()
        .expect("the plain request arrived")
        .to_ascii_lowercase();
    assert!(head.starts_with("get /h2c http/1.1\r\n"), "{head}");
    assert!(
        !head.contains("upgrade") && !head.contains("http2-settings"),
        "{head}"
    );
}

#[test]
fn x_forwarded_for_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
    let backend = RawBackend::start();
    let request = b"GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n";
    let forwarded_for = |extra: &str| {
        let proxy = Proxy::before(&backend.url, extra);
        let answer = proxy.exchange(request);
        assert_eq!(status_of(&answer), 200, "{answer}");
        let heads = backend.heads();
        let head = heads.last().expect("arrived").clone();
        head.lines()
            .find_map(|l| l.strip_prefix("X-Forwarded-For: "))
            .unwrap_or_else(|| panic!("no X-Forwarded-For: {head}"))
            .to_owned()
    };
    assert_eq!(
        forwarded_for(""),
        "127.0.0.1",
        "by default a client cannot pose as another address"
    );
    assert_eq!(
        forwarded_for("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]"),
        "127.0.0.1",
        "trusting other peers changes nothing for this one"
    );
    assert_eq!(
        forwarded_for("trusted_proxies = [\"127.0.0.0/8\"]"),
        "203.0.113.9, 127.0.0.1",
        "a trusted proxy's list is kept and the peer appended"
    );
}

#[test]
fn a_slow_body_is_cut_off_with_408_while_nothing_went_to_the_backend() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(&backend.url, "body_timeout = \"500ms\"");
    // The head, and none of its body: 408, and the connection closes.
    let mut stream = proxy.connect();
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        .expect("head");
    let answer = read_to_close(&mut stream);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(json_of(&answer)["error"], "body_timeout", "{answer}");
    assert!(
        json_of(&answer)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("body_timeout"),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{answer}"
    );
    assert_eq!(backend.received(), "", "nothing of it reached the backend");

    // Part of the body, then nothing: the start went on to the backend, so no answer can
    // say what became of the request; the connection is closed without one.
    let mut stream = proxy.connect();
    stream
        .write_all(b"POST /part HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .expect("head and part of the body");
    let answer = read_to_close(&mut stream);
    assert_eq!(answer, "", "closed without an answer");
    assert!(
        backend.received().starts_with("POST /part HTTP/1.1\r\n"),
        "{}",
        backend.received()
    );
    assert!(
        backend.heads().is_empty(),
        "the backend got no whole request"
    );
    assert_eq!(
        proxy.metric("keel_proxy_client_timeouts_total{kind=\"body\"}"),
        2.0
    );
}

#[test]
fn a_slow_head_gets_408_and_an_idle_connection_is_closed() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(
        &backend.url,
        "header_timeout = \"500ms\"\nidle_timeout = \"500ms\"",
    );
    // Half a head, then nothing.
    let mut stream = proxy.connect();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Half:")
        .expect("half a head");
    let answer = read_to_close(&mut stream);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(json_of(&answer)["error"], "header_timeout", "{answer}");

    // A kept-alive connection, idle after its answer: closed.
    let mut stream = proxy.connect();
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let answer = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("/one got 0 body bytes\n"), "{answer}");
    // A connection that never sends anything: closed too.
    let mut silent = proxy.connect();
    assert_eq!(read_to_close(&mut silent), "");
    assert!(proxy.metric("keel_proxy_client_timeouts_total{kind=\"idle\"}") >= 2.0);
    assert_eq!(
        proxy.metric("keel_proxy_client_timeouts_total{kind=\"header\"}"),
        1.0
    );
    assert_eq!(backend.heads().len(), 1, "{:?}", backend.heads());
}

#[test]
fn a_client_that_does_not_read_its_answer_is_cut_off_after_send_timeout() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(&backend.url, "send_timeout = \"500ms\"");
    let mut stream = proxy.connect();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    // The client reads nothing: the proxy gives up on it.
    assert!(
        wait_until(Duration::from_secs(10), || proxy
            .metric("keel_proxy_client_timeouts_total{kind=\"send\"}")
            >= 1.0),
        "{}",
        proxy.proc.log_report()
    );
    assert!(wait_until(Duration::from_secs(5), || proxy
        .metric("keel_proxy_connections_open")
        == 0.0));
    // What the client finds when it reads at last: the start of the answer, then the end
    // of the connection, long before 64 MiB.
    let mut got = 0usize;
    let mut piece = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was left open: {e} after {got} bytes"),
        }
    }
    assert!(got < 64 << 20, "{got} bytes");
}

#[test]
fn a_backend_that_does_not_read_the_body_gets_the_client_a_502_after_send_timeout() {
    let backend = RawBackend::start();
    // request_timeout is long: the 502 comes from the send timeout.
    let proxy = Proxy::before(
        &backend.url,
        "send_timeout = \"500ms\"\nrequest_timeout = \"60s\"",
    );
    let mut stream = proxy.connect();
    let mut writer = stream.try_clone().expect("clone");
    // 32 MiB: far more than the sockets between the proxy and the backend hold.
    const BODY: usize = 32 << 20;
    let sending = thread::spawn(move || {
        let head =
            format!("POST /stop-reading HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
        let piece = vec![b'x'; 64 * 1024];
        if writer.write_all(head.as_bytes()).is_ok() {
            let mut sent = 0;
            while sent < BODY && writer.write_all(&piece).is_ok() {
                sent += piece.len();
            }
        }
    });
    let answer = read_to_close(&mut stream);
    assert_eq!(status_of(&answer), 502, "{answer}");
    let error = json_of(&answer);
    assert_eq!(error["error"], "bad_gateway", "{answer}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("send_timeout"),
        "{answer}"
    );
    drop(stream);
    sending.join().expect("sender");
}

#[test]
fn a_backend_that_stops_mid_answer_is_given_up_after_request_timeout() {
    let backend = RawBackend::start();
    let proxy = Proxy::before(&backend.url, "request_timeout = \"500ms\"");
    let answer = proxy.exchange(b"GET /pause HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nthe first part"),
        "what came, then the end: {answer}"
    );
    assert!(
        proxy.metric("keel_proxy_backend_errors_total{backend=\"stub\",kind=\"no_answer\"}") >= 1.0
    );
}

/// A backend for many connections at once, on a runtime of its own: it answers every
/// GET with `200 ok` and holds every other request, reading its body, until the client
/// closes. Dropping it closes every socket it holds.
struct HoldingBackend {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HoldingBackend {
    fn start() -> HoldingBackend {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, port) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket
                    .bind(([127, 0, 0, 1], 0).into())
                    .expect("bind backend");
                // The proxy opens a connection here for each held request, a thousand in
                // a burst: the usual backlog of 128 would drop some, and the proxy's 1 s
                // connect timeout fail their requests.
                let listener = socket.listen(4096).expect("listen");
                let _ = ready.send(listener.local_addr().expect("addr").port());
                let mut stopped = stopped;
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            if let Ok((stream, _)) = accepted {
                                tokio::spawn(hold_or_answer(stream));
                            }
                        }
                    }
                }
            });
            // Dropping the runtime drops every connection's task, and its socket.
        });
        let port = port.recv().expect("the backend started");
        HoldingBackend {
            url: url_for(port),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for HoldingBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn hold_or_answer(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        match stream.read(&mut piece).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"GET ") {
                // Hold it: read (and drop) until the client goes.
                buf.clear();
                break;
            }
            buf.drain(..end + 4);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[test]
fn a_flood_of_half_sent_bodies_does_not_starve_a_normal_client() {
    const FLOOD: usize = 1_100;
    const MAX_CONNECTIONS: usize = 1_000;
    // This process holds the flood's sockets and the backend's side of them; the proxy,
    // started after, inherits the limit and holds both sides too.
    support::raise_open_files(4096);
    let backend = HoldingBackend::start();
    let proxy = Proxy::before(
        &backend.url,
        &format!("max_connections = {MAX_CONNECTIONS}"),
    );
    // Each holds a request whose body never ends: a head promising 1000 bytes and five.
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| {
            let mut stream = TcpStream::connect(&proxy.addr).expect("connect");
            stream
                .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nfirst")
                .expect("half a request");
            stream
        })
        .collect();
    // The proxy has taken every one: the last hundred each made room by closing the
    // slowest sender.
    let evicted = (FLOOD - MAX_CONNECTIONS) as f64;
    assert!(
        wait_until(Duration::from_secs(30), || proxy
            .metric("keel_proxy_connections_evicted_total")
            >= evicted),
        "evicted {}\n{}",
        proxy.metric("keel_proxy_connections_evicted_total"),
        proxy.proc.log_report()
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let resp = client
        .get(format!("{}/", proxy.url))
        .send()
        .expect("a normal GET is answered within 1 s in the middle of the flood");
    assert_eq!(resp.status(), support::StatusCode::OK);
    assert_eq!(resp.text().unwrap_or_default(), "ok\n");
    assert!(proxy.metric("keel_proxy_connections_evicted_total") > evicted);
    drop(flood);
}
